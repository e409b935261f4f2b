"""Is a DataModule's training data randomly augmented? And a cheap exact checksum of a batch's input rows.

Used by :class:`~litmix.callbacks.KnowledgeDistillation` to refuse its index-keyed teacher cache on augmented
data: at ``setup`` from what the DataModule declares or holds (:func:`random_augmentation`), and at run time
when a cached sample index comes back with other inputs (:func:`row_checksums`).
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

__all__ = ["random_augmentation", "row_checksums"]

#: DataModule attributes that declare a random augmentation when truthy.
AUGMENTATION_FLAGS = ("random_augmentation", "augmentation", "augmented")
#: Attributes holding transforms (torchvision style) on DataModules and datasets.
TRANSFORM_ATTRS = ("transform", "transforms", "train_transform", "train_transforms")
#: DataModule attributes holding the training dataset (the first that is a ``Dataset``).
TRAIN_DATASETS = ("train_dataset", "dataset")
#: Random transforms whose class name does not start with ``Random``.
RANDOM_TRANSFORMS = ("RandAugment", "AutoAugment", "TrivialAugmentWide", "AugMix", "ColorJitter", "ElasticTransform")
_INTEGER_VIEWS = {1: torch.uint8, 2: torch.int16, 4: torch.int32}  # 8-byte values: two int32 halves
_BLOCK = 8  # neighbouring places read together
_SAMPLED: dict[tuple[int, int, str, int | None], tuple[Tensor, Tensor, Any, Any]] = {}  # places, multipliers


def _random_transform(obj: Any, depth: int = 0) -> str | None:
    """The class name of a random transform in ``obj`` (a transform, ``Compose``, list or ``nn.Sequential``)."""
    if obj is None or depth > 6 or isinstance(obj, str | bytes | Tensor):
        return None
    name = type(obj).__name__
    if name.startswith("Random") or name in RANDOM_TRANSFORMS:
        return name
    if isinstance(obj, list | tuple):
        children: Any = obj
    elif isinstance(obj, nn.Module):
        children = list(obj.children())
    else:
        children = getattr(obj, "transforms", None)  # torchvision Compose / RandomApply, StandardTransform
        children = children if isinstance(children, list | tuple) else [getattr(obj, "transform", None)]
    for child in children:
        found = _random_transform(child, depth + 1)
        if found is not None:
            return found
    return None


def _first_input(item: Any) -> Any:
    if isinstance(item, dict):
        return next((item[k] for k in ("x", "input", "inputs", "input_ids") if k in item), None)
    return item[0] if isinstance(item, tuple | list) and item else item


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    to_bytes = getattr(a, "tobytes", None)  # PIL images, numpy arrays
    if callable(to_bytes) and type(a) is type(b):
        return bool(to_bytes() == b.tobytes())
    try:
        return bool(a == b)
    except (TypeError, ValueError, RuntimeError):
        return True  # cannot tell: not evidence of augmentation


def _chain(obj: Any, attr: str, limit: int = 6) -> list[Any]:
    """``obj``, ``obj.<attr>``, ``obj.<attr>.<attr>``, ... (wrapped DataModules or datasets)."""
    out: list[Any] = []
    while obj is not None and len(out) < limit and all(obj is not o for o in out):
        out.append(obj)
        obj = getattr(obj, attr, None)
    return out


def random_augmentation(datamodule: Any, probes: int = 3, dataset: Dataset | None = None) -> str | None:
    """Why ``datamodule``'s training inputs look randomly augmented, or ``None`` when nothing says so.

    Checked on the DataModule and the DataModules it wraps (``.base``): a truthy ``random_augmentation``,
    ``augmentation`` or ``augmented`` attribute; a :class:`~litmix.datamodules.TeacherCacheDataModule` in FKD
    mode (a different stored crop every epoch); a random torchvision-style transform (``Random*``,
    ``RandAugment``, ``AutoAugment``, ``TrivialAugmentWide``, ``AugMix``, ``ColorJitter``, ``ElasticTransform``,
    also inside ``Compose`` / ``nn.Sequential``) in a ``transform(s)`` / ``train_transform(s)`` attribute of the
    DataModule or of its training dataset (its ``train_dataset``, else its ``dataset``, and the datasets that one
    wraps, ``.dataset``); and the training dataset's first ``probes`` samples, read twice (under a forked RNG),
    returning different inputs. A DataModule without such a dataset is only checked by its attributes.
    ``dataset``, when given, is the training dataset ``datamodule`` really serves (its train loader's, which may wrap
    the attribute's), checked instead of its ``train_dataset`` / ``dataset``.

    Example:
        >>> from types import SimpleNamespace
        >>> random_augmentation(SimpleNamespace(random_augmentation=True))
        'SimpleNamespace declares random_augmentation=True'
        >>> from torch.utils.data import TensorDataset
        >>> print(random_augmentation(SimpleNamespace(train_dataset=TensorDataset(torch.ones(4, 2)))))
        None
    """
    if datamodule is None:
        return None
    for dm in _chain(datamodule, "base"):
        owner = type(dm).__name__
        for flag in AUGMENTATION_FLAGS:
            value = getattr(dm, flag, None)
            if value is not None and not isinstance(value, MethodType | Tensor) and bool(value):
                shown = value if isinstance(value, bool | int | str) else type(value).__name__
                return f"{owner} declares {flag}={shown!r}"
        if getattr(dm, "mode", None) == "fkd" and callable(getattr(dm, "as_teacher", None)):
            return f"{owner}(mode='fkd') serves a different stored crop of every sample each epoch"
        train = next((d for d in (getattr(dm, a, None) for a in TRAIN_DATASETS) if isinstance(d, Dataset)), None)
        if dm is datamodule and dataset is not None:
            train = dataset
        datasets = _chain(train, "dataset")
        for holder in (dm, *datasets):
            for attr in TRANSFORM_ATTRS:
                found = _random_transform(getattr(holder, attr, None))
                if found is not None:
                    return f"{type(holder).__name__}.{attr} holds the random transform {found}"
        if train is None:
            continue
        try:
            n = min(len(train), probes)  # type: ignore[arg-type]
        except TypeError:  # an iterable dataset: cannot read one sample twice
            continue
        with torch.random.fork_rng(devices=[]):
            for pos in range(n):
                if not _same(_first_input(train[pos]), _first_input(train[pos])):
                    return f"{owner}'s training dataset returned two different inputs for sample {pos}"
    return None


def _first_tensor(value: Any, rows: int) -> Tensor | None:
    if isinstance(value, Tensor):
        return value if value.dim() >= 1 and value.shape[0] == rows else None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple | list) else ()
    for item in items:
        found = _first_tensor(item, rows)
        if found is not None:
            return found
    return None


def _positions(width: int, device: torch.device, positions: int) -> tuple[Tensor, Tensor, Any, Any]:
    """The fixed sampled places of a row of ``width`` and their odd ``int64`` multipliers (cached per device).

    Blocks of :data:`_BLOCK` neighbouring places at spread offsets (few cache lines per row). Returned as tensors
    on ``device`` and as numpy arrays.
    """
    key = (width, positions, device.type, device.index)
    found = _SAMPLED.get(key)
    if found is None:
        gen = torch.Generator().manual_seed(0)
        where = torch.arange(width)
        if width > positions:
            block = min(_BLOCK, positions)
            starts = torch.randperm(width // block, generator=gen)[: positions // block].sort()[0] * block
            where = (starts[:, None] + torch.arange(block)).reshape(-1)
        weights = torch.randint(-(1 << 62), 1 << 62, (len(where),), generator=gen) * 2 + 1
        if len(_SAMPLED) >= 64:
            _SAMPLED.clear()
        found = _SAMPLED[key] = (where.to(device), weights.to(device), where.numpy(), weights.numpy())
    return found


def row_checksums(value: Any, rows: int, positions: int = 64) -> Tensor | None:
    """An exact ``int64`` checksum per row of the first tensor in ``value`` with ``rows`` rows (``None``: none).

    The row's values at ``positions`` fixed places (all of a row that is no wider; the same places for every row
    of that width; 8-byte values count as two ``int32`` places), read bit for bit as integers and summed with
    odd ``int64`` multipliers in integer arithmetic that wraps around (exact, see :func:`_positions`): the
    checksum does not depend on the batch, the summation order or NaNs, a row equal bit for bit gives the same
    checksum, and a crop, flip, noise or colour
    change almost surely another (it changes most places of a row). It costs a gather of ``rows x positions``
    values, not a pass over the inputs. ``value`` may nest tensors in tuples, lists and
    dicts (a module's ``args`` and ``kwargs``).

    Example:
        >>> x = torch.randn(3, 4)
        >>> bool((row_checksums(x, 3) == row_checksums((x.clone(),), 3)).all())
        True
        >>> bool((row_checksums(x.flip(1), 3) != row_checksums(x, 3)).all()), row_checksums(x, 5)
        (True, None)
    """
    x = _first_tensor(value, rows)
    if x is None:
        return None
    flat = x.reshape(rows, -1)
    if flat.requires_grad:
        flat = flat.detach()
    if not flat.is_contiguous():
        flat = flat.contiguous()
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    bits = flat.view(_INTEGER_VIEWS[min(flat.element_size(), 4)])  # 8-byte values: two int32 columns each
    where, weights, where_np, weights_np = _positions(bits.shape[1], bits.device, positions)
    if bits.device.type == "cpu":  # numpy: no per-op dispatch cost on the cached path
        return torch.from_numpy((bits.numpy()[:, where_np] * weights_np).sum(1))
    return (bits.index_select(1, where) * weights).sum(1)
