"""The ``litmix`` console script: LightningCLI with every litmix plugin addressable by short name.

``litmix list [--kind K] [--family F]`` prints the registry; every other command (``fit``, ``validate``,
``test``, ``predict``) is Lightning's ``LightningCLI`` with subclass mode for models and data, so that
``--model=UnlearningModule`` or ``--trainer.callbacks+=GradualPruning`` resolve litmix classes.
"""

from __future__ import annotations

import argparse
import re
import sys

from litmix import list_plugins, load_all
from litmix.registry import FAMILIES, KINDS


def format_plugin_table(kind: str | None = None, family: str | None = None) -> str:
    """The registry as an aligned text table (name, kind, family, paper).

    Example:
        >>> "KnowledgeDistillation" in format_plugin_table(family="distillation")
        True
    """
    rows = [(p.name, p.kind, p.family, p.paper) for p in list_plugins(kind=kind, family=family)]
    header = ("name", "kind", "family", "paper")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(3)]
    lines = [
        "  ".join(str(col).ljust(widths[i]) if i < 3 else str(col) for i, col in enumerate(row))
        for row in [header, *rows]
    ]
    return "\n".join(line.rstrip() for line in lines)


def _root_message(message: str) -> str:
    r"""The litmix argument error inside jsonargparse's report of every union subtype it tried.

    Example:
        >>> _root_message("Does not validate\n  - GradualPruning(target_sparsity=1.5): must be < 1\n  - other")
        'GradualPruning(target_sparsity=1.5): must be < 1'
    """
    found = re.findall(r"^[\s-]*([A-Za-z_]\w*\(\w+=.*?\): .*)$", message, flags=re.MULTILINE)
    return found[0] if found else message


def _cli_class() -> type:
    """LightningCLI whose invalid argument values are usage errors, not tracebacks."""
    from lightning.pytorch.cli import LightningCLI

    class LitmixCLI(LightningCLI):
        def instantiate_classes(self) -> None:
            try:
                super().instantiate_classes()
            except (TypeError, ValueError) as err:
                self.parser.error(f"invalid configuration: {_root_message(str(err))}")

    return LitmixCLI


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``litmix`` script.

    Raises:
        SystemExit: with status 2 and a one-line usage error when an argument value is refused.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "list":
        parser = argparse.ArgumentParser(prog="litmix list", description="List the registered litmix plugins.")
        parser.add_argument("--kind", choices=KINDS)
        parser.add_argument("--family", choices=FAMILIES)
        ns = parser.parse_args(args[1:])
        print(format_plugin_table(kind=ns.kind, family=ns.family))
        return
    load_all()
    # LightningCLI reads sys.argv itself; passing args as well makes it warn that both were given.
    _cli_class()(
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if argv is None else args,
        save_config_kwargs={"overwrite": True},
    )


if __name__ == "__main__":
    main()
