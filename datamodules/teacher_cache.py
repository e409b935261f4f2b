"""A DataModule wrapper serving teacher soft labels from a memory-mapped on-disk cache (plain or FKD crops)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.dataloader import default_collate

from litmix.base import Example, LitmixDataModule
from litmix.distill.augmentation import random_augmentation
from litmix.distill.base import check_teachers, infer_width
from litmix.distill.logit_discriminator import LogitDiscriminatorTerm  # noqa: F401  (registers the "logit_disc" term kind)
from litmix.functional.fkd import PROB_FLOOR, expand_soft_labels, replay_crops, sample_crop_boxes, topk_soft_labels
from litmix.models import load_model, output_logits
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

MANIFEST = "manifest.json"
#: Classes kept per soft label when ``k`` is not given (FKD / MEAL V2's top-5), or all when there are fewer.
DEFAULT_K = 5
#: Version of the on-disk layout (a cache written by another layout version is rebuilt only with overwrite=True).
CACHE_FORMAT = 1
_ARRAYS = ("values", "indices", "sample_index", "boxes", "flips")
__all__ = ["TeacherCacheDataModule"]
_FKD_PAPER = "A Fast Knowledge Distillation Framework for Visual Recognition (https://arxiv.org/abs/2112.01528)"


def _fingerprint(teachers: list[nn.Module]) -> str:
    """sha256 over the teachers' classes and every parameter and buffer (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for teacher in teachers:
        digest.update(type(teacher).__qualname__.encode())
        for name, tensor in sorted(teacher.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:32]


def _split_item(item: Any, owner: str) -> tuple[Any, Any, Any]:
    if not isinstance(item, tuple | list) or len(item) != 3:
        raise ValueError(
            f"{owner}: the wrapped datamodule's training items must be (x, y, index) tuples (wrap the dataset in "
            f"litmix.data.IndexedDataset), got {type(item).__name__} {str(item)[:60]}"
        )
    return item[0], item[1], item[2]


def _call(teacher: nn.Module, x: Any) -> Any:
    return teacher(**x) if isinstance(x, dict) else teacher(x)


def _to(x: Any, device: torch.device, dtype: torch.dtype | None) -> Any:
    if isinstance(x, Tensor):
        x = x.to(device)
        return x.to(dtype) if dtype is not None and x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _to(v, device, dtype) for k, v in x.items()}
    return x


class _Slot:
    """The soft labels of the current training batch, shared by the datamodule and its teacher adapter."""

    def __init__(self) -> None:
        self.value: Tensor | None = None


class _CachedTeacher(nn.Module):
    """A teacher stand-in returning the current batch's cached log-probabilities (no parameters, no compute)."""

    def __init__(self, slot: _Slot) -> None:
        super().__init__()
        self._slot = slot
        self.out_features: int | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Tensor:
        """The cached teacher log-probabilities of the batch being trained on."""
        value = self._slot.value
        if value is None:
            raise RuntimeError(
                "TeacherCacheDataModule.as_teacher(): no cached soft labels for this call; the adapter only answers "
                "during training steps on TeacherCacheDataModule's training batches"
            )
        first = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor)), None)
        if first is not None and first.dim() > 0 and first.shape[0] != value.shape[0]:
            raise ValueError(
                f"TeacherCacheDataModule.as_teacher(): called on {first.shape[0]} rows, but the batch carries "
                f"{value.shape[0]} cached soft labels"
            )
        return value


class _CacheDataset(Dataset):
    """Item ``key`` = ``(x, y, index, position, crop)`` of the wrapped dataset (``key = position + n * crop``)."""

    def __init__(self, dataset: Dataset, n: int) -> None:
        self.dataset, self.n = dataset, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: int) -> tuple[Any, ...]:
        pos, crop = key % self.n, key // self.n
        x, y, index = _split_item(self.dataset[pos], "TeacherCacheDataModule")
        return x, y, index, pos, crop

    def __getitems__(self, keys: list[int]) -> _Fetched:
        """A whole batch at once (the DataLoader's batched fetch): the wrapped items and their positions/crops."""
        keys_np = np.asarray(keys, dtype=np.int64)
        pos, crop = keys_np % self.n, keys_np // self.n
        fetch = getattr(self.dataset, "__getitems__", None)
        positions = pos.tolist()
        items = fetch(positions) if callable(fetch) else [self.dataset[p] for p in positions]
        if items and not (isinstance(items[0], tuple | list) and len(items[0]) == 3):
            _split_item(items[0], "TeacherCacheDataModule")
        return _Fetched(items, pos, crop)


class _Fetched:
    """A batch's wrapped ``(x, y, index)`` items with their cache positions and crops."""

    def __init__(self, items: list[Any], pos: np.ndarray, crop: np.ndarray) -> None:
        self.items, self.pos, self.crop = items, pos, crop


class _CropSampler(Sampler[int]):
    """The wrapped sampler's positions, each with its stored crop for this epoch (cycles through the crops)."""

    def __init__(self, inner: Any, n: int, crops: int, seed: int) -> None:
        self.inner, self.n, self.crops = inner, n, crops
        gen = torch.Generator().manual_seed(seed + 7919)
        self.offset = torch.randint(0, crops, (n,), generator=gen).numpy() if crops > 1 else np.zeros(n, np.int64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's crops; forwarded to the wrapped sampler."""
        self.epoch = int(epoch)
        if callable(getattr(self.inner, "set_epoch", None)):
            self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator[int]:
        if self.crops == 1:  # plain index cache: the wrapped order as it is
            yield from self.inner
            return
        pos = np.fromiter(self.inner, dtype=np.int64)  # one vectorised pass per epoch, no per-item Python work
        yield from (pos + self.n * ((self.epoch + self.offset[pos]) % self.crops)).tolist()


class _Collate:
    """Collates ``(x, y, index)`` with the wrapped collate, replays crops, attaches the cached log-probabilities."""

    def __init__(self, directory: str, inner: Callable[[list[Any]], Any], num_classes: int, fkd: bool, size: Any):
        self.directory, self.inner, self.num_classes, self.fkd, self.size = directory, inner, num_classes, fkd, size
        self._arrays: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = _open_arrays(self.directory)
        return self._arrays

    def __call__(self, items: _Fetched | list[tuple[Any, ...]]) -> tuple[Any, ...]:
        arrays = self.arrays()
        if isinstance(items, _Fetched):
            x, y, index = self.inner(items.items)
            pos, crop = items.pos, items.crop
        else:
            x, y, index = self.inner([(it[0], it[1], it[2]) for it in items])
            pos = np.fromiter((it[3] for it in items), dtype=np.int64, count=len(items))
            crop = np.fromiter((it[4] for it in items), dtype=np.int64, count=len(items))
        stored = arrays["sample_index"][pos]
        if isinstance(index, Tensor) and not np.array_equal(stored, index.numpy()):
            bad = index.numpy()[stored != index.numpy()][:8].tolist()
            raise RuntimeError(
                f"TeacherCacheDataModule: sample indices {bad} are not where the cache stored them; the wrapped "
                "dataset changed since the cache was built (rebuild it with overwrite=True)"
            )
        logp = torch.from_numpy(
            _expand_log_np(arrays["values"][pos, crop], arrays["indices"][pos, crop], self.num_classes)
        )
        if self.fkd:
            boxes = torch.from_numpy(np.asarray(arrays["boxes"][pos, crop]))
            flips = torch.from_numpy(np.asarray(arrays["flips"][pos, crop]))
            x = replay_crops(x, boxes, flips, self.size)
        return x, y, index, logp


def _expand_log_np(values: np.ndarray, indices: np.ndarray, classes: int) -> np.ndarray:
    """``log(expand_soft_labels(values, indices, classes))`` in numpy (a few microseconds per batch)."""
    kept = values.astype(np.float32)
    k = kept.shape[-1]
    residual = np.clip(1.0 - kept.sum(-1, keepdims=True), 0.0, None)
    other = residual / (classes - k) if classes > k else residual * 0.0
    other = np.minimum(other, kept.min(-1, keepdims=True))
    full = np.repeat(other, classes, axis=-1)
    np.put_along_axis(full, indices.astype(np.int64), kept, axis=-1)
    np.maximum(full, np.float32(PROB_FLOOR), out=full)
    full /= full.sum(-1, keepdims=True)
    return np.log(full, out=full)


def _open_arrays(directory: str) -> dict[str, np.ndarray]:
    root = Path(directory)
    # plain ndarray views of the read-only maps: no copy, without np.memmap's per-indexing overhead
    return {
        name: np.asarray(np.load(root / f"{name}.npy", mmap_mode="r"))
        for name in _ARRAYS
        if (root / f"{name}.npy").is_file()
    }


@register("datamodule", "distillation", paper=_FKD_PAPER)
class TeacherCacheDataModule(LitmixDataModule):
    """Teacher soft labels cached on disk once and served with the batches of any wrapped DataModule.

    Papers: FKD, "A Fast Knowledge Distillation Framework for Visual Recognition", Shen and Xing
    (https://arxiv.org/abs/2112.01528), as used by MEAL V2 (https://arxiv.org/abs/2009.08453; ensembles of
    teachers averaged in probability).

    In ``setup("fit")`` the teacher(s) label every training sample once; the labels are stored in memory-mapped
    ``.npy`` files under ``cache_dir`` (never held in RAM) as the top ``k`` probabilities at ``temperature``
    (``float16`` value + ``int16`` class, 4 bytes per kept class) with the residual mass spread uniformly over
    the other classes when read. Several teachers are averaged in probability. A ``manifest.json`` records the
    teacher fingerprint (sha256 of the weights), ``k``, ``temperature``, the mode and crop settings, the dataset
    size and a data fingerprint, and the layout version: a later run (a restart, a resumed fit, another process)
    with the same settings opens the files and runs **no** teacher forward. Under DDP every rank labels its
    share of fixed-size chunks (chunk ``c`` on rank ``c % world_size``) into one file at disjoint offsets, then
    the ranks meet at a barrier and rank 0 publishes the manifest: the files equal a 1-rank fill bitwise.

    **Modes.** ``mode="index"``: one soft label per sample. A random augmentation in the wrapped datamodule would
    make those labels wrong (they belong to another view), so it is an error: a datamodule declaring
    ``random_augmentation = True`` (or a truthy ``augmentation`` attribute), or whose training dataset returns
    two different inputs for one index, is refused in ``setup``. ``mode="fkd"``: per sample ``crops``
    random-resized-crop boxes and flips (torchvision's sampling, scale ``[scale_min, scale_max]``) are stored
    with the teacher's soft label **of each crop**; training batches replay the epoch's stored crop (each crop
    once every ``crops`` epochs, in an order fixed by ``seed``) with :func:`litmix.functional.fkd.replay_crops`,
    so the student sees exactly the view the teacher labelled. FKD needs ``[C, H, W]`` image inputs and the
    wrapped datamodule without its own augmentation.

    **Batch format.** Training batches are ``(x, y, index, teacher_logprob)``: the wrapped batch (``x`` replaced by
    the replayed crops in FKD mode) plus ``[B, C]`` float32 teacher log-probabilities at ``temperature`` (top-k
    with the spread residual). :func:`litmix.data.split_batch` still reads ``(x, y, index)``. To feed them to
    :class:`~litmix.callbacks.KnowledgeDistillation` or :class:`~litmix.plugins.DistillationModule`, pass
    :meth:`as_teacher` as their teacher: a parameter-free module returning the current batch's cached
    log-probabilities (set in ``on_after_batch_transfer``). KD at temperature ``tau`` on them matches the student
    to ``softmax(log p / tau)``; store with ``temperature=1`` to apply the consumer's temperature to the teacher's
    logits exactly (up to the top-k smoothing). Only logit terms (``"."``) can read a cache. Validation and test
    loaders are the wrapped datamodule's.

    :meth:`validate_cache` re-runs the teacher on a sample and raises naming the indices whose stored labels
    disagree with it.

    Args:
        base: the wrapped ``LightningDataModule`` (training items ``(x, y, index)``).
        teacher: a teacher module or path (:func:`litmix.models.load_model`), or a list of them (averaged in
            probability, MEAL V2).
        cache_dir: the directory of the cache (created in ``setup``).
        k: classes kept per soft label, >= 1 and at most the number of classes; ``None`` = 5 (FKD's top-5), or all
            classes when the teacher has fewer.
        temperature: softmax temperature of the stored labels, > 0.
        mode: ``"index"`` or ``"fkd"``.
        crops: stored crops per sample in FKD mode, in [1, 64].
        crop_size: side of the replayed crops; ``None`` = the input's size.
        scale_min: smallest crop area fraction, in (0, 1].
        scale_max: largest crop area fraction, in [scale_min, 1].
        flip_prob: probability of a horizontal flip per crop, in [0, 1].
        seed: seed of the crops and their order, >= 0.
        fill_batch_size: samples per teacher forward (and per DDP chunk) while filling, >= 1.
        overwrite: rebuild a cache in ``cache_dir`` that was written with other settings or another teacher.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value outside its range; ``k`` above the teacher's number of classes (here when the
            teacher's width can be read, else in ``setup``); a ``cache_dir`` holding the cache of another teacher
            or other settings (without ``overwrite=True``), naming what differs; in ``setup``, a random
            augmentation with ``mode="index"`` or in the wrapped datamodule with ``mode="fkd"``, FKD on inputs
            that are not ``[C, H, W]`` images, or training items that are not ``(x, y, index)``.
            :meth:`validate_cache`: stored labels that disagree with the teacher, naming the sample indices.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, dm, _ = TeacherCacheDataModule.example()
        >>> trainer = fit_tiny(module=module, datamodule=dm, max_steps=2)
        >>> x, y, index, teacher_logprob = next(iter(dm.train_dataloader()))
        >>> tuple(teacher_logprob.shape), round(float(teacher_logprob.exp().sum(-1)[0]), 4)
        ((16, 10), 1.0)
        >>> dm.validate_cache(8)["checked"], dm.bytes_per_sample
        (8, 20)
    """

    def __init__(
        self,
        base: pl.LightningDataModule,
        teacher: nn.Module | str | list[nn.Module | str],
        cache_dir: str,
        k: int | None = None,
        temperature: float = 1.0,
        mode: Literal["index", "fkd"] = "index",
        crops: int = 8,
        crop_size: int | None = None,
        scale_min: float = 0.08,
        scale_max: float = 1.0,
        flip_prob: float = 0.5,
        seed: int = 0,
        fill_batch_size: int = 256,
        overwrite: bool = False,
    ) -> None:
        owner = type(self).__name__
        check_type(owner, "base", base, pl.LightningDataModule)
        listed = check_teachers(owner, "teacher", teacher, number_single=False)
        check_type(owner, "cache_dir", cache_dir, (str, os.PathLike))
        if not str(cache_dir).strip() or "\x00" in str(cache_dir):
            raise ValueError(f"{owner}(cache_dir={cache_dir!r}): cache_dir must be a non-empty path")
        check_int(owner, "k", k, low=1, allow_none=True)
        self.temperature = check_float(owner, "temperature", temperature, low=0.0, low_open=True)
        self.mode = check_choice(owner, "mode", mode, ("index", "fkd"))
        self.crops = check_int(owner, "crops", crops, low=1, high=64)
        self.crop_size = check_int(owner, "crop_size", crop_size, low=1, allow_none=True)
        self.scale_min = check_float(owner, "scale_min", scale_min, low=0.0, high=1.0, low_open=True)
        self.scale_max = check_float(owner, "scale_max", scale_max, low=self.scale_min, high=1.0)
        self.flip_prob = check_float(owner, "flip_prob", flip_prob, low=0.0, high=1.0)
        self.seed = check_int(owner, "seed", seed, low=0, high=2**32 - 1)
        self.fill_batch_size = check_int(owner, "fill_batch_size", fill_batch_size, low=1)
        self.overwrite = check_bool(owner, "overwrite", overwrite)
        self.cache_dir = Path(os.fspath(cache_dir)).expanduser()
        teachers = [load_model(t, owner=owner, argument="teacher") for t in listed]
        widths = [w for w in (infer_width(t, ".") for t in teachers) if w is not None]
        self.k: int = k if k is not None else min([DEFAULT_K, *widths])
        self._k_given = k is not None
        for width in widths:
            if self.k > width:
                raise ValueError(f"{owner}(k={self.k}): k must be <= {width}, the teacher's number of classes")
        super().__init__()
        self.base = base
        self._teachers = [t.eval().requires_grad_(False) for t in teachers]
        self.teacher_fingerprint = _fingerprint(self._teachers)
        try:
            existing = self._read_manifest()
        except (OSError, ValueError) as err:
            raise ValueError(f"{owner}(cache_dir={str(cache_dir)!r}): cannot read the cache manifest: {err}") from None
        if existing is not None and not self.overwrite:
            theirs = existing.get("teacher_fingerprint")
            if theirs != self.teacher_fingerprint:
                raise ValueError(
                    f"{owner}(teacher=..., cache_dir={str(self.cache_dir)!r}): the cache there was written by another "
                    f"teacher (fingerprint {theirs}, this teacher {self.teacher_fingerprint}); use another cache_dir "
                    "or overwrite=True"
                )
        self._slot = _Slot()
        self._adapter = _CachedTeacher(self._slot)
        self._manifest: dict[str, Any] | None = None
        self._arrays: dict[str, np.ndarray] | None = None
        self.teacher_forwards = 0  # teacher forward calls made by this instance (fill and validation)

    # --------------------------------------------------------------------------------------------- basics

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    @classmethod
    def example(cls) -> Example:
        """A :class:`~litmix.testing.TinyClassifier` on 64 digits, with a seeded 64-32-10 teacher's top-3 labels."""
        from litmix.datamodules.digits import DigitsDataModule
        from litmix.testing import TinyClassifier

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1234)
            teacher = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        directory = Path(tempfile.gettempdir()) / "litmix-teacher-cache-example"
        dm = cls(DigitsDataModule(batch_size=16, train_size=64), teacher, str(directory), k=3)
        return Example(TinyClassifier(in_features=64, num_classes=10), dm, [])

    @property
    def teachers(self) -> list[nn.Module]:
        """The frozen teachers (used only to fill and validate the cache)."""
        return self._teachers

    def as_teacher(self) -> nn.Module:
        """A parameter-free teacher module returning the current training batch's cached log-probabilities.

        Pass it as ``teacher`` of :class:`~litmix.callbacks.KnowledgeDistillation` or ``teachers`` of
        :class:`~litmix.plugins.DistillationModule`: they then read the cache instead of running a teacher.
        """
        return self._adapter

    def state_dict(self) -> dict[str, Any]:
        """Version and the wrapped datamodule's state."""
        state = super().state_dict()
        base_state = getattr(self.base, "state_dict", None)
        if callable(base_state):
            state["base"] = base_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check the version; restore the wrapped datamodule's state."""
        super().load_state_dict(state_dict)
        if "base" in state_dict and callable(getattr(self.base, "load_state_dict", None)):
            self.base.load_state_dict(state_dict["base"])

    def prepare_data(self) -> None:
        """The wrapped datamodule's ``prepare_data``."""
        self.base.prepare_data()

    # --------------------------------------------------------------------------------------------- cache

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.cache_dir / MANIFEST
        if not path.is_file():
            return None
        return dict(json.loads(path.read_text()))

    def _settings(self, n: int, data_fingerprint: str) -> dict[str, Any]:
        fkd = self.mode == "fkd"
        return {
            "format": CACHE_FORMAT,
            "teacher_fingerprint": self.teacher_fingerprint,
            "teachers": len(self._teachers),
            "k": self.k,
            "temperature": self.temperature,
            "mode": self.mode,
            "crops": self.crops if fkd else 1,
            "crop_size": self.crop_size if fkd else None,
            "scale": [self.scale_min, self.scale_max] if fkd else None,
            "flip_prob": self.flip_prob if fkd else None,
            "seed": self.seed if fkd else None,
            "dataset_size": n,
            "data_fingerprint": data_fingerprint,
        }

    def _data_fingerprint(self, dataset: Dataset, n: int) -> str:
        digest = hashlib.sha256(str(n).encode())
        for pos in sorted({0, n // 3, n // 2, n - 1} if n else set()):
            x, y, index = _split_item(dataset[pos], type(self).__name__)
            for part in (x, y, index):
                t = torch.as_tensor(part) if not isinstance(part, Tensor) else part
                digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:32]

    def _check_augmentation(self, dataset: Dataset) -> None:
        """Refuse randomly augmented training inputs (:func:`~litmix.distill.augmentation.random_augmentation`)."""
        why = random_augmentation(self.base, dataset=dataset)
        if why is None:
            return
        owner = type(self).__name__
        if self.mode == "index":
            raise ValueError(
                f"{owner}(mode='index'): {why}; a plain index cache would label every augmented view with the "
                "label of one view. Use mode='fkd' (stored crops replayed with their own labels) and turn the "
                "wrapped datamodule's augmentation off, or train without augmentation"
            )
        raise ValueError(
            f"{owner}(mode='fkd'): {why}; FKD replays its own stored crops, so the wrapped datamodule must serve "
            "un-augmented inputs (turn its augmentation off)"
        )

    def setup(self, stage: str | None = None) -> None:
        """Set up the wrapped datamodule; for ``fit``, open the cache or fill it (every rank its chunks).

        Raises:
            ValueError: see the class's ``Raises``.
        """
        self.base.setup(stage or "fit")
        if stage not in (None, "fit"):
            return
        self._prepare_cache()

    def _prepare_cache(self) -> None:
        owner = type(self).__name__
        dataset = self.base.train_dataloader().dataset
        n = len(dataset)  # type: ignore[arg-type]
        self._check_augmentation(dataset)
        existing = self._read_manifest()
        if not self._k_given and existing is not None and "num_classes" in existing:
            self.k = min(self.k, int(existing["num_classes"]))
        settings = self._settings(n, self._data_fingerprint(dataset, n))
        if existing is not None and existing.get("complete"):
            differs = {k: (existing.get(k), v) for k, v in settings.items() if existing.get(k) != v}
            files_ok = all((self.cache_dir / f"{name}.npy").is_file() for name in existing.get("arrays", []))
            if not differs and files_ok:
                self._manifest = existing
                self._arrays = _open_arrays(str(self.cache_dir))
                self._adapter.out_features = int(existing["num_classes"])
                return
            if differs and not self.overwrite:
                shown = ", ".join(f"{k}: cache {a!r} vs asked {b!r}" for k, (a, b) in differs.items())
                raise ValueError(
                    f"{owner}(cache_dir={str(self.cache_dir)!r}): the cache there was built with other settings "
                    f"({shown}); use another cache_dir or overwrite=True"
                )
        self._fill(dataset, n, settings)

    def _teacher_probs(self, x: Any, device: torch.device) -> Tensor:
        """Mean teacher probability at ``temperature`` (float32, on the CPU)."""
        total: Tensor | None = None
        for teacher in self._teachers:
            teacher.eval()
            dtype = next((p.dtype for p in teacher.parameters() if p.is_floating_point()), None)
            with torch.no_grad():
                logits = output_logits(_call(teacher, _to(x, device, dtype)), owner=type(self).__name__, who="teacher")
            self.teacher_forwards += 1
            probs = torch.softmax(logits.float() / self.temperature, dim=-1)
            total = probs if total is None else total + probs
        assert total is not None
        return (total / len(self._teachers)).cpu()

    def _fkd_view(self, x: Any, boxes: Tensor, flips: Tensor) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{type(self).__name__}(mode='fkd'): FKD crops need [C, H, W] float image inputs, got batches of "
                f"{shape}"
            )
        return replay_crops(x, boxes, flips, self.crop_size)

    def _fill(self, dataset: Dataset, n: int, settings: dict[str, Any]) -> None:
        owner = type(self).__name__
        trainer = self.trainer
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        fkd = self.mode == "fkd"
        crops = self.crops if fkd else 1
        token = uuid.uuid4().hex[:12]
        if trainer is not None and world > 1:
            token = trainer.strategy.broadcast(token, src=0)
        for t in self._teachers:
            t.to(device)
        chunk = self.fill_batch_size
        starts = list(range(0, n, chunk))
        collate = default_collate

        def batch_at(start: int) -> tuple[Any, Tensor]:
            items = [_split_item(dataset[p], owner) for p in range(start, min(start + chunk, n))]
            x, _, index = collate(items)
            return x, torch.as_tensor(index).reshape(-1)

        # The shapes: one probe of the first sample (every rank, deterministic).
        probe_x, _ = batch_at(0) if n else (None, None)
        height = width = 0
        boxes = flips = None
        if fkd:
            if not isinstance(probe_x, Tensor) or probe_x.dim() != 4:
                self._fkd_view(probe_x, torch.zeros(0, 4), torch.zeros(0, dtype=torch.bool))
            assert isinstance(probe_x, Tensor)
            height, width = int(probe_x.shape[-2]), int(probe_x.shape[-1])
            gen = torch.Generator().manual_seed(self.seed)
            boxes, flips = sample_crop_boxes(
                n, crops, height, width, scale=(self.scale_min, self.scale_max), flip_prob=self.flip_prob, generator=gen
            )
            probe_x = self._fkd_view(probe_x[:1], boxes[:1, 0].long(), flips[:1, 0])
        classes = int(self._teacher_probs(probe_x[:1] if isinstance(probe_x, Tensor) else probe_x, device).shape[-1])
        if not self._k_given:
            self.k = settings["k"] = min(self.k, classes)
        if self.k > classes:
            raise ValueError(f"{owner}(k={self.k}): k must be <= {classes}, the teacher's number of classes")
        index_dtype = np.int16 if classes <= np.iinfo(np.int16).max else np.int32
        specs: dict[str, tuple[Any, tuple[int, ...]]] = {
            "values": (np.float16, (n, crops, self.k)),
            "indices": (index_dtype, (n, crops, self.k)),
            "sample_index": (np.int64, (n,)),
        }
        if fkd:
            specs["boxes"] = (np.int16, (n, crops, 4))
            specs["flips"] = (np.bool_, (n, crops))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staged = {name: self.cache_dir / f"{name}.{token}.part.npy" for name in specs}
        if rank == 0:
            for name, (dtype, shape) in specs.items():
                np.lib.format.open_memmap(staged[name], mode="w+", dtype=dtype, shape=shape).flush()
        if trainer is not None:
            trainer.strategy.barrier("teacher_cache_created")
        arrays = {name: np.load(staged[name], mmap_mode="r+") for name in specs}
        mine = [s for c, s in enumerate(starts) if c % world == rank]
        rank_zero_info(f"{owner}: labelling {n} samples x {crops} view(s) into {self.cache_dir} on {world} rank(s)")
        for start in mine:
            x, index = batch_at(start)
            stop = start + len(index)
            arrays["sample_index"][start:stop] = index.numpy()
            for r in range(crops):
                view = x
                if fkd:
                    assert boxes is not None
                    assert flips is not None
                    b, f = boxes[start:stop, r], flips[start:stop, r]
                    arrays["boxes"][start:stop, r] = b.numpy()
                    arrays["flips"][start:stop, r] = f.numpy()
                    view = self._fkd_view(x, b.long(), f)
                values, indices = topk_soft_labels(self._teacher_probs(view, device), self.k)
                arrays["values"][start:stop, r] = values.numpy()
                arrays["indices"][start:stop, r] = indices.numpy()
        for array in arrays.values():
            array.flush()  # type: ignore[attr-defined]
        del arrays
        if trainer is not None:
            trainer.strategy.barrier("teacher_cache_filled")
        manifest = {
            **settings,
            "num_classes": classes,
            "arrays": list(specs),
            "bytes": {name: int(np.prod(shape)) * np.dtype(dtype).itemsize for name, (dtype, shape) in specs.items()},
            "complete": True,
        }
        if rank == 0:
            for name in specs:
                os.replace(staged[name], self.cache_dir / f"{name}.npy")
            tmp = self.cache_dir / f"{MANIFEST}.{token}.tmp"
            tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
            os.replace(tmp, self.cache_dir / MANIFEST)
        if trainer is not None:
            trainer.strategy.barrier("teacher_cache_published")
        for t in self._teachers:
            t.to("cpu")
        self._manifest = manifest
        self._arrays = _open_arrays(str(self.cache_dir))
        self._adapter.out_features = classes

    @property
    def num_classes(self) -> int:
        """Classes of the stored soft labels (after ``setup``)."""
        return int(self._require_manifest()["num_classes"])

    def _require_manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            raise RuntimeError(f"{type(self).__name__}: call setup('fit') first (the cache is opened there)")
        return self._manifest

    def _require_arrays(self) -> dict[str, np.ndarray]:
        self._require_manifest()
        if self._arrays is None:
            self._arrays = _open_arrays(str(self.cache_dir))
        return self._arrays

    @property
    def cache_bytes(self) -> int:
        """Bytes of the cache's arrays on disk (soft labels, sample indices, crop boxes and flips)."""
        return int(sum(self._require_manifest()["bytes"].values()))

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of the soft labels (and crops) per training sample: ``crops x (k x 4 [+ 9])`` (+ 8 for the index)."""
        manifest = self._require_manifest()
        return self.cache_bytes // max(1, int(manifest["dataset_size"]))

    def soft_labels(self, positions: Tensor, crop: int = 0) -> Tensor:
        """Stored soft labels (full ``[len(positions), C]`` probabilities) of dataset positions, for one crop."""
        arrays = self._require_arrays()
        pos = positions.long().numpy()
        values = torch.from_numpy(np.asarray(arrays["values"][pos, crop]))
        indices = torch.from_numpy(np.asarray(arrays["indices"][pos, crop]))
        return expand_soft_labels(values, indices, self.num_classes)

    def validate_cache(self, n: int = 64, atol: float = 2e-3) -> dict[str, Any]:
        """Re-run the teacher(s) on ``n`` random stored samples (and crops) and check the cache agrees.

        Every stored top-k probability must be within ``atol`` of the teacher's fresh probability of that class
        (float16 storage keeps about 3 decimal digits) and the stored top-1 class must be the teacher's top-1.

        Returns:
            ``{"checked": n, "max_abs_diff": float, "top1_agreement": float}``.

        Raises:
            RuntimeError: before ``setup("fit")``.
            ValueError: for a bad ``n`` or ``atol``, or when the cache disagrees, naming the sample indices.
        """
        owner = type(self).__name__
        manifest = self._require_manifest()
        size = int(manifest["dataset_size"])
        n = min(check_int(owner, "n", n, low=1), size)
        atol = check_float(owner, "atol", atol, low=0.0)
        arrays = self._require_arrays()
        dataset = self.base.train_dataloader().dataset
        gen = torch.Generator().manual_seed(self.seed + 104729)
        pos = torch.randperm(size, generator=gen)[:n].sort().values
        crop = torch.randint(0, int(manifest["crops"]), (n,), generator=gen)
        items = [_split_item(dataset[int(p)], owner) for p in pos]
        x, _, index = default_collate(items)
        pos_np, crop_np = pos.numpy(), crop.numpy()
        if self.mode == "fkd":
            boxes = torch.from_numpy(np.asarray(arrays["boxes"][pos_np, crop_np])).long()
            flips = torch.from_numpy(np.asarray(arrays["flips"][pos_np, crop_np]))
            x = self._fkd_view(x, boxes, flips)
        probs = self._teacher_probs(x, torch.device("cpu"))
        values = torch.from_numpy(np.asarray(arrays["values"][pos_np, crop_np])).float()
        indices = torch.from_numpy(np.asarray(arrays["indices"][pos_np, crop_np])).long()
        fresh = probs.gather(-1, indices)
        diff = (fresh - values).abs().amax(-1)
        wrong_top1 = probs.argmax(-1) != indices[:, 0]
        ties = (probs.gather(-1, probs.argmax(-1, keepdim=True)).squeeze(-1) - fresh[:, 0]).abs() <= atol
        bad = (diff > atol) | (wrong_top1 & ~ties)
        stored_index = torch.from_numpy(np.asarray(arrays["sample_index"][pos_np]))
        bad = bad | (stored_index != torch.as_tensor(index).reshape(-1))
        if bool(bad.any()):
            named = torch.as_tensor(index).reshape(-1)[bad].tolist()
            raise ValueError(
                f"{owner}.validate_cache: the cache in {str(self.cache_dir)!r} disagrees with the teacher at sample "
                f"indices {named[:20]}{' ...' if len(named) > 20 else ''} (max |p_cache - p_teacher| "
                f"{float(diff.max()):.4g} > atol {atol}); rebuild it with overwrite=True"
            )
        return {
            "checked": n,
            "max_abs_diff": float(diff.max()),
            "top1_agreement": float((~wrong_top1).float().mean()),
        }

    # --------------------------------------------------------------------------------------------- loaders

    def train_dataloader(self) -> DataLoader:
        """The wrapped training loader's order and batch size, batches ``(x, y, index, teacher_logprob)``."""
        manifest = self._require_manifest()
        inner = self.base.train_dataloader()
        if inner.batch_size is None:
            raise ValueError(
                f"{type(self).__name__}: the wrapped training loader uses a batch_sampler; give it a batch_size"
            )
        n = int(manifest["dataset_size"])
        fkd = self.mode == "fkd"
        sampler = _CropSampler(inner.sampler, n, int(manifest["crops"]), self.seed)
        collate = _Collate(str(self.cache_dir), inner.collate_fn, int(manifest["num_classes"]), fkd, self.crop_size)
        return DataLoader(
            _CacheDataset(inner.dataset, n),
            batch_size=inner.batch_size,
            sampler=sampler,
            collate_fn=collate,
            drop_last=inner.drop_last,
            num_workers=inner.num_workers,
            pin_memory=inner.pin_memory,
            persistent_workers=inner.persistent_workers if inner.num_workers > 0 else False,
        )

    def val_dataloader(self) -> Any:
        """The wrapped datamodule's validation loader."""
        return self.base.val_dataloader()

    def test_dataloader(self) -> Any:
        """The wrapped datamodule's test loader."""
        return self.base.test_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Hand the training batch's cached log-probabilities to :meth:`as_teacher`'s module."""
        trainer = self.trainer
        if (
            trainer is not None
            and trainer.training
            and isinstance(batch, tuple | list)
            and len(batch) == 4
            and isinstance(batch[3], Tensor)
        ):
            self._slot.value = batch[3]
        return batch

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(base={type(self.base).__name__}, cache_dir={str(self.cache_dir)!r}, k={self.k}, "
            f"temperature={self.temperature}, mode={self.mode!r}, crops={self.crops})"
        )
