"""Loading user models and reading their outputs: one helper for every plugin.

Class paths use one syntax everywhere, the one LightningCLI's ``class_path`` uses: ``"package.module.ClassName"``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from litmix.validation import check_path

__all__ = ["import_class", "load_model", "output_logits"]


def import_class(class_path: str, *, owner: str = "litmix", argument: str = "class_path") -> type:
    """Import ``"package.module.ClassName"``.

    Raises:
        ValueError: for a path without a module part, or a module or class that cannot be imported, naming
            the argument.

    Example:
        >>> import_class("torch.nn.Linear").__name__
        'Linear'
        >>> import_class("Linear", owner="KnowledgeDistillation", argument="teacher_class")
        Traceback (most recent call last):
        ...
        ValueError: KnowledgeDistillation(teacher_class='Linear'): expected 'package.module.ClassName'
    """
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name or not class_name or ":" in class_path:
        raise ValueError(f"{owner}({argument}={class_path!r}): expected 'package.module.ClassName'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{owner}({argument}={class_path!r}): cannot import it ({err})") from err
    if not isinstance(cls, type):
        raise ValueError(f"{owner}({argument}={class_path!r}): {class_path} is not a class")
    return cls


def load_model(
    spec: nn.Module | str | os.PathLike[str],
    *,
    class_path: str | None = None,
    owner: str = "litmix",
    argument: str = "model",
    class_argument: str = "class_path",
) -> nn.Module:
    """Return a module from a module, a file or a folder.

    Args:
        spec: an ``nn.Module`` (returned as is); a folder written by Hugging Face ``save_pretrained`` (loaded
            with ``AutoModelForCausalLM``, or ``class_path``'s ``from_pretrained`` when given); a Lightning
            ``.ckpt`` (needs ``class_path``: a LightningModule is loaded with ``load_from_checkpoint``, any other
            ``nn.Module`` class is built without arguments and gets the checkpoint's ``state_dict``); any other
            file is a whole module saved with ``torch.save(module)`` (pickle: only load files you trust).
        class_path: ``"package.module.ClassName"`` of the saved class.
        owner: the class asking, for error messages.
        argument: the argument that held ``spec``, for error messages.
        class_argument: the argument that held ``class_path``, for error messages.

    Raises:
        TypeError: for a ``spec`` that is neither a module nor a path, or a file that does not hold a module.
        ValueError: for a missing path (also a ``FileNotFoundError``), a folder that is not a Hugging Face
            model folder (no ``config.json``) or a ``.ckpt`` without ``class_path``.

    Example:
        >>> load_model(nn.Linear(2, 2)).out_features
        2
        >>> load_model("/no/such.pt", owner="UnlearningModule")
        Traceback (most recent call last):
        ...
        litmix.validation.MissingPathError: UnlearningModule(model='/no/such.pt'): model: no such file or directory
    """
    if isinstance(spec, nn.Module):
        return spec
    path = check_path(owner, argument, spec)
    assert path is not None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{owner}({argument}={str(spec)!r}): a folder must be a Hugging Face model folder written by "
                "save_pretrained (no config.json in it)"
            )
        if class_path:
            cls = import_class(class_path, owner=owner, argument=class_argument)
            return cls.from_pretrained(str(path))  # type: ignore[attr-defined, no-any-return]
        try:
            from transformers import AutoModelForCausalLM
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{owner}({argument}={str(spec)!r}): loading a Hugging Face folder needs the `transformers` extra: "
                "pip install 'litmix[transformers]'"
            ) from err
        return AutoModelForCausalLM.from_pretrained(str(path))
    if path.suffix == ".ckpt":
        if not class_path:
            raise ValueError(
                f"{owner}({argument}={str(spec)!r}): a Lightning checkpoint needs "
                f"{class_argument}='package.module.ClassName'"
            )
        cls = import_class(class_path, owner=owner, argument=class_argument)
        if hasattr(cls, "load_from_checkpoint"):
            return cls.load_from_checkpoint(str(path), map_location="cpu")  # type: ignore[attr-defined]
        net = cls()
        net.load_state_dict(torch.load(str(path), map_location="cpu", weights_only=False)["state_dict"])
        return net  # type: ignore[no-any-return]
    loaded = torch.load(str(Path(path)), map_location="cpu", weights_only=False)
    if not isinstance(loaded, nn.Module):
        raise TypeError(
            f"{owner}({argument}={str(spec)!r}): the file must hold an nn.Module saved with torch.save(module), "
            f"got {type(loaded).__name__}"
        )
    return loaded


def output_logits(output: Any, *, owner: str = "litmix", who: str = "model") -> Tensor:
    """The logits tensor of a model output.

    Accepts a tensor, an object with a ``.logits`` tensor (Hugging Face), a mapping with ``"logits"``, or a
    tuple/list whose first element is a tensor.

    Raises:
        TypeError: naming ``owner`` and ``who`` when no tensor can be found.

    Example:
        >>> output_logits({"logits": torch.zeros(2, 3)}).shape
        torch.Size([2, 3])
        >>> output_logits((torch.ones(1), "aux")).tolist()
        [1.0]
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]  # type: ignore[no-any-return]
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(
        f"{owner}: cannot find the logits in the {who} output of type {type(output).__name__}: return a tensor, "
        "an object with `.logits`, a dict with 'logits' or a tuple whose first element is the logits"
    )
