"""litmix: research methods as PyTorch Lightning plugins you can mix in one Trainer.

Subpackages: :mod:`litmix.callbacks`, :mod:`litmix.plugins` (LightningModules),
:mod:`litmix.datamodules`, and the pure-tensor algorithms in :mod:`litmix.functional`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from litmix.registry import PluginInfo, get_plugin, register

__version__ = "0.1.0.dev0"
__all__ = ["PluginInfo", "__version__", "get_plugin", "list_plugins", "load_all", "register"]

SUBPACKAGES = ("litmix.callbacks", "litmix.plugins", "litmix.datamodules")
#: Core modules whose utilities, losses, metrics and functions register themselves on import.
CORE_MODULES = (
    "litmix.functional",
    "litmix.active_learning_policy",
    "litmix.distill",
    "litmix.functional.fastrp",
    "litmix.functional.dgmlp",
    "litmix.functional.random_walks",
    "litmix.functional.teddy",
    "litmix.functional.token_pruning",
    "litmix.graph_transforms",
    "litmix.graph",
    "litmix.functional.conformal_selection",
    "litmix.functional.flag_aggregator",
    "litmix.functional.forget_selection",
    "litmix.functional.graph_proxies",
    "litmix.functional.graph_kernels",
    "litmix.functional.graph_valuation",
    "litmix.functional.inductive_bias",
    "litmix.functional.link_prediction",
    "litmix.functional.pamc",
    "litmix.layers",
    "litmix.functional.quantization",
    "litmix.functional.regression_unlearning",
    "litmix.functional.relearn",
    "litmix.functional.uld",
    "litmix.functional.zeroth_order",
    "litmix.metrics",
    "litmix.models_zoo",
    "litmix.nas",
    "litmix.optim",
    "litmix.quantization_pareto",
    "litmix.sparse_search",
    "litmix.sparsity",
    "litmix.sparsity.removal",
    "litmix.functional.head_importance",
    "litmix.unlearning_oracle",
)


def load_all(extensions: bool = True) -> None:
    """Import every subpackage (and ``litmix.extensions`` entry points) so the registry is complete."""
    for name in (*SUBPACKAGES, *CORE_MODULES):
        importlib.import_module(name)
    if extensions:
        for ep in entry_points(group="litmix.extensions"):
            importlib.import_module(ep.value)


def list_plugins(kind: str | None = None, family: str | None = None) -> list[PluginInfo]:
    """Every registered item (plugins, utilities, losses, metrics, functions), filtered by kind and family.

    Example:
        >>> import litmix
        >>> names = [p.name for p in litmix.list_plugins(kind="callback")]
        >>> "GradualPruning" in names
        True
    """
    from litmix import registry

    load_all()
    return registry.list_plugins(kind=kind, family=family)
