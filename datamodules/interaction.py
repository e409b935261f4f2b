"""User–item interactions for recommendation: BPR triplets for training, full-ranking user batches for evaluation."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler

from litmix.base import Example
from litmix.datamodules._graph_base import IdRange, SizeCheckedDataModule
from litmix.functional.recsys import bpr_negatives
from litmix.registry import register
from litmix.validation import (
    MissingPathError,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_path,
    check_type,
)

__all__ = ["InteractionDataModule"]

ML100K_FOLDS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
MAX_SEED = 2**32 - 1


class _TripletCollate:
    """Interaction ids -> ``(triplets (B, 3) [user, positive item, negative item], None, ids)``.

    The negatives are drawn for the epoch the sampler is in (``sampler.epoch``, set by Lightning).
    """

    def __init__(self, dm: InteractionDataModule, sampler: DistributedSampler[int]) -> None:
        self.pairs, self.num_items, self.seed = dm.train_pairs, dm.num_items, dm.seed
        self.positives = dm.positive_keys if dm.exclude_positives else None
        self.sampler = sampler

    def __call__(self, ids: list[int]) -> tuple[Tensor, None, Tensor]:
        index = torch.tensor(ids, dtype=torch.long)
        users, items = self.pairs[index, 0], self.pairs[index, 1]
        epoch = int(getattr(self.sampler, "epoch", 0))
        neg = bpr_negatives(users, index, self.num_items, self.seed, epoch, self.positives)
        return torch.stack([users, items, neg], 1), None, index


def _csr(pairs: Tensor, num_rows: int) -> tuple[Tensor, Tensor]:
    """Row pointer and column ids of ``pairs`` grouped by their first column (columns sorted within a row)."""
    order = torch.argsort(pairs[:, 0] * (int(pairs[:, 1].max()) + 1 if pairs.numel() else 1) + pairs[:, 1])
    pairs = pairs[order]
    rowptr = torch.zeros(num_rows + 1, dtype=torch.long)
    rowptr[1:] = torch.bincount(pairs[:, 0], minlength=num_rows).cumsum(0)
    return rowptr, pairs[:, 1].contiguous()


def _row_mask(rowptr: Tensor, cols: Tensor, rows: Tensor, width: int) -> Tensor:
    """Bool ``(len(rows), width)``: the columns of each of ``rows``."""
    start, count = rowptr[rows], rowptr[rows + 1] - rowptr[rows]
    which = torch.repeat_interleave(torch.arange(rows.numel()), count)
    offset = torch.arange(int(count.sum())) - torch.repeat_interleave(count.cumsum(0) - count, count)
    mask = torch.zeros(rows.numel(), width, dtype=torch.bool)
    mask[which, cols[torch.repeat_interleave(start, count) + offset]] = True
    return mask


class _EvalCollate:
    """Positions in ``eval_users`` -> ``({"users", "exclude"}, targets, users)`` with dense ``(B, I)`` masks."""

    def __init__(self, dm: InteractionDataModule) -> None:
        self.users, self.num_items = dm.eval_users, dm.num_items
        self.train_csr, self.test_csr = dm._train_csr, dm._test_csr

    def __call__(self, ids: list[int]) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        users = self.users[torch.tensor(ids, dtype=torch.long)]
        exclude = _row_mask(*self.train_csr, users, self.num_items)
        targets = _row_mask(*self.test_csr, users, self.num_items)
        return {"users": users, "exclude": exclude}, targets, users


def _read_table(owner: str, arg: str, path: Path, min_rating: float | None) -> tuple[Any, Any]:
    """Raw user and item ids (numpy arrays) of a ``user, item[, rating, timestamp]`` CSV/TSV file."""
    import pandas as pd

    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    sep = "\t" if "\t" in first else "," if "," in first else ";" if ";" in first else r"\s+"
    fields = [f for f in (first.split(sep) if sep != r"\s+" else first.split()) if f.strip()]
    if len(fields) < 2:
        raise ValueError(f"{owner}({arg}={str(path)!r}): expected user, item[, rating, timestamp] columns")
    try:
        float(fields[0])
        header = None
    except ValueError:
        header = 0
    frame = pd.read_csv(path, sep=sep, header=header, dtype=str, engine="c" if sep != r"\s+" else "python")
    if frame.shape[1] < 2:
        raise ValueError(f"{owner}({arg}={str(path)!r}): expected at least the user and item columns")
    if min_rating is not None:
        if frame.shape[1] < 3:
            raise ValueError(f"{owner}(min_rating={min_rating!r}): {arg} {str(path)!r} has no rating column")
        rating = pd.to_numeric(frame.iloc[:, 2], errors="coerce")
        frame = frame[rating >= min_rating]
    users = frame.iloc[:, 0].str.strip().to_numpy()
    items = frame.iloc[:, 1].str.strip().to_numpy()
    return users, items


def _factorize(*columns: Any) -> tuple[list[Tensor], int]:
    """Map raw ids (shared across ``columns``) to ``0..n-1`` in sorted order (numerically when all are integers)."""
    import numpy as np
    import pandas as pd

    values = np.concatenate(columns) if columns else np.array([], dtype=str)
    numeric = pd.to_numeric(pd.Series(values), errors="coerce")
    keys = numeric.to_numpy() if not numeric.isna().any() else values
    codes, uniques = pd.factorize(keys, sort=True)
    out, start = [], 0
    for col in columns:
        out.append(torch.from_numpy(codes[start : start + len(col)].astype("int64")))
        start += len(col)
    return out, len(uniques)


@register("datamodule", "graph", paper="")
class InteractionDataModule(SizeCheckedDataModule):
    """User–item interactions (ML-100K or any ``user, item[, rating, timestamp]`` file) for recommendation.

    **Sources** (exactly one): ``root``, a folder with MovieLens-100K's ``<fold>.base`` / ``<fold>.test`` files
    (the ``ml-100k`` folder, or its parent holding ``raw/``: PyG's layout) -- ``fold="u1"`` is the catalogue's
    protocol split (80,000 / 20,000 ratings, 943 users, 1682 items); ``file``, a CSV/TSV/whitespace file whose
    first columns are user and item (then rating, timestamp; a header line is skipped), split into train/test by
    ``test_file`` or else at random (``test_fraction`` of the interactions, seeded by ``seed``); or ``train`` /
    ``test``, ``(n, 2)`` integer tensors of 0-based ``(user, item)`` ids. Raw ids are mapped to ``0..U-1`` and
    ``0..I-1`` in sorted order over train and test together (ML-100K's ids become ``id - 1``). ``min_rating``
    keeps only interactions with ``rating >= min_rating`` in both splits; the catalogue protocol keeps every
    rating as an implicit interaction (``None``, the default). Repeated pairs count once. The loaders never
    download; ML-100K's licence forbids redistribution, so point ``root`` at a local copy.

    After ``setup``: ``num_users``, ``num_items``, ``train_pairs`` / ``test_pairs`` (``(n, 2)`` long),
    ``edge_index`` (the training graph in PyG's homogeneous layout: user ``u`` is node ``u``, item ``i`` node
    ``U + i``, both directions), ``eval_users`` (the users with at least one test item).

    **Training batches** ``(triplets, None, index)``: ``triplets`` ``(B, 3)`` = ``[user, positive item,
    negative item]`` (item ids ``0..I-1``), ``index`` the training interactions' ids. The interactions are
    shuffled per ``(seed, epoch)`` by a ``DistributedSampler`` that shards them over the DDP ranks (rank ``r``
    gets its ``1/W`` share; padded by repetition when ``W`` does not divide them). The negative of interaction
    ``n`` in epoch ``e`` is a uniform item drawn from a hash of ``(seed, e, n)`` (:func:`~litmix.functional.recsys.
    bpr_negatives`), re-drawn while it is one of the user's training items when ``exclude_positives``: each rank
    draws different negatives for its own interactions, and the union of the ranks' triplets is exactly the
    single-process epoch.

    **Evaluation batches** (``val_dataloader`` and ``test_dataloader``, both on the test split: the protocol has
    no validation split) ``({"users": u, "exclude": mask}, targets, u)``: ``eval_batch_size`` users per batch and
    rank (sharded like the training data, no shuffling), ``exclude`` the bool ``(B, I)`` training items to rank
    last, ``targets`` the bool ``(B, I)`` test items; feed them to :class:`~litmix.metrics.RecallAtK` /
    :class:`~litmix.metrics.NDCGAtK`, which count users repeated by the padding once.

    Args:
        root: an ML-100K folder (holding ``<fold>.base``, directly or in ``raw/``), or ``None``.
        fold: the ML-100K split, ``u1``..``u5``, ``ua`` or ``ub``.
        file: an interaction file (``user, item[, rating, timestamp]``; tab, comma, semicolon or spaces), or
            ``None``.
        test_file: the test interactions of ``file`` (same format), or ``None`` for a random split.
        test_fraction: share of ``file``'s interactions held out when ``test_file`` is ``None``, in (0, 1).
        min_rating: keep interactions rated at least this (finite), or ``None`` for all.
        batch_size: BPR triplets per training batch and rank (>= 1).
        eval_batch_size: users per evaluation batch and rank (>= 1).
        exclude_positives: draw negatives outside the user's training items.
        seed: seed of the shuffling, the negatives and a random split, in [0, 2**32 - 1].
        train: ``(n, 2)`` integer training pairs instead of a file, or ``None``.
        test: ``(m, 2)`` integer test pairs (with ``train``).
        num_users: number of users for ``train``/``test`` (default: the largest id + 1).
        num_items: number of items for ``train``/``test`` (default: the largest id + 1).

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``batch_size=2.5``, a float ``train``), naming it.
        ValueError: for none or several of ``root`` / ``file`` / ``train``, ``test_file`` without ``file``,
            ``train`` without ``test``, an unknown ``fold``, ``test_fraction`` outside (0, 1), a non-finite
            ``min_rating`` (or one given with tensors, which carry no ratings), sizes below 1, a negative
            ``seed``, pairs not of shape ``(n, 2)`` or with ids outside ``num_users`` / ``num_items``, naming the
            argument; at ``setup``, an empty training or test split, or (``min_rating``) a file without ratings.
        FileNotFoundError: (also a ``ValueError``) for a missing ``file`` / ``test_file`` / ``root``, or a
            ``root`` without ``<fold>.base`` and ``<fold>.test``, naming the argument.

    Example:
        >>> dm = InteractionDataModule(train=torch.tensor([[0, 0], [0, 1], [1, 1], [2, 2]]),
        ...                            test=torch.tensor([[0, 2], [1, 0]]), batch_size=2)
        >>> dm.setup("fit")
        >>> (dm.num_users, dm.num_items), dm.edge_index.shape, dm.eval_users.tolist()
        ((3, 3), torch.Size([2, 8]), [0, 1])
        >>> triplets, _, index = next(iter(dm.train_dataloader()))
        >>> triplets.shape, index.shape
        (torch.Size([2, 3]), torch.Size([2]))
        >>> inputs, targets, users = next(iter(dm.val_dataloader()))
        >>> inputs["exclude"].tolist(), targets.tolist()
        ([[True, True, False], [False, True, False]], [[False, False, True], [True, False, False]])
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        fold: str = "u1",
        file: str | os.PathLike[str] | None = None,
        test_file: str | os.PathLike[str] | None = None,
        test_fraction: float = 0.2,
        min_rating: float | None = None,
        batch_size: int = 4096,
        eval_batch_size: int = 256,
        exclude_positives: bool = True,
        seed: int = 0,
        train: Tensor | None = None,
        test: Tensor | None = None,
        num_users: int | None = None,
        num_items: int | None = None,
    ) -> None:
        owner = type(self).__name__
        fold = check_choice(owner, "fold", fold, ML100K_FOLDS)
        test_fraction = check_float(owner, "test_fraction", test_fraction, low=0.0, high=1.0, low_open=True,
                                    high_open=True)  # fmt: skip
        min_rating = check_float(owner, "min_rating", min_rating, allow_none=True)
        batch_size = check_int(owner, "batch_size", batch_size, low=1)
        eval_batch_size = check_int(owner, "eval_batch_size", eval_batch_size, low=1)
        exclude_positives = check_bool(owner, "exclude_positives", exclude_positives)
        seed = check_int(owner, "seed", seed, low=0, high=MAX_SEED)
        num_users = check_int(owner, "num_users", num_users, low=1, allow_none=True)
        num_items = check_int(owner, "num_items", num_items, low=1, allow_none=True)
        for name, value in (("train", train), ("test", test)):
            check_type(owner, name, value, Tensor, allow_none=True)
            if value is not None and (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool):
                raise TypeError(f"{owner}({name}=...): {name} must be an integer tensor, got {value.dtype}")
            if value is not None and (value.dim() != 2 or value.shape[1] != 2):
                raise ValueError(f"{owner}({name}=...): {name} must have shape (n, 2), got {tuple(value.shape)}")
            if value is not None and value.numel() and int(value.min()) < 0:
                raise ValueError(f"{owner}({name}=...): {name} holds negative ids")
        root_path = check_path(owner, "root", root, allow_none=True)
        file_path = check_path(owner, "file", file, allow_none=True)
        test_path = check_path(owner, "test_file", test_file, allow_none=True)
        given = [n for n, v in (("root", root_path), ("file", file_path), ("train", train)) if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"{owner}(root={root!r}, file={file!r}, train={'None' if train is None else 'Tensor'}): give exactly "
                f"one source: root (an ML-100K folder), file (an interaction file) or train/test tensors; got "
                f"{given or 'none'}"
            )
        if test_path is not None and file_path is None:
            raise ValueError(f"{owner}(test_file={test_file!r}): test_file needs file (the training interactions)")
        if (train is None) != (test is None):
            raise ValueError(f"{owner}(train=..., test=...): train and test tensors go together")
        if train is not None and min_rating is not None:
            raise ValueError(f"{owner}(min_rating={min_rating!r}): train/test tensors carry no ratings")
        if train is None and (num_users is not None or num_items is not None):
            raise ValueError(
                f"{owner}(num_users={num_users!r}, num_items={num_items!r}): sizes are read from the files; give "
                "them only with train/test tensors"
            )
        if train is not None:
            assert test is not None
            for name, size, col in (("num_users", num_users, 0), ("num_items", num_items, 1)):
                largest = max(int(t[:, col].max()) if t.numel() else -1 for t in (train, test))
                if size is not None and largest >= size:
                    raise ValueError(f"{owner}({name}={size}): the pairs hold ids up to {largest}, outside [0, {size})")
        self.fold_files: tuple[Path, Path] | None = None
        if root_path is not None:
            self.fold_files = self._fold_files(root_path, fold)
        super().__init__()
        self.root, self.fold, self.file, self.test_file = root_path, fold, file_path, test_path
        self.test_fraction, self.min_rating = test_fraction, min_rating
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.exclude_positives, self.seed = exclude_positives, seed
        self._tensors = None if train is None else (train.long().clone(), test.long().clone())  # type: ignore[union-attr]
        self._sizes = (num_users, num_items)
        self._expected: dict[str, int] | None = None
        self._ready = False

    def _fold_files(self, root: Path, fold: str) -> tuple[Path, Path]:
        names = (f"{fold}.base", f"{fold}.test")
        for folder in (root, root / "raw", root / "ml-100k"):
            if all((folder / n).is_file() for n in names):
                return folder / names[0], folder / names[1]
        raise MissingPathError(
            f"{type(self).__name__}(root={str(root)!r}, fold={fold!r}): root holds no {names[0]} and {names[1]} "
            "(looked in root, root/raw and root/ml-100k); point root at the ml-100k folder"
        )

    @classmethod
    def example(cls) -> Example:
        """LightGCN (2 layers, 8-d) on a generated 24-user, 16-item, two-taste interaction set."""
        from litmix.plugins.lightgcn_module import LightGCNModule

        train, test = _tiny_interactions()
        dm = cls(train=train, test=test, batch_size=32, eval_batch_size=8)
        return Example(LightGCNModule(num_users=24, num_items=16, embedding_dim=8, num_layers=2, k=5), dm, [])

    # ------------------------------------------------------------------------------------------------ loading
    def _load(self) -> tuple[Tensor, Tensor, int, int]:
        owner = type(self).__name__
        if self._tensors is not None:
            train, test = self._tensors
            users = self._sizes[0] or 1 + max(int(t[:, 0].max()) if t.numel() else -1 for t in (train, test))
            items = self._sizes[1] or 1 + max(int(t[:, 1].max()) if t.numel() else -1 for t in (train, test))
            return train, test, users, items
        if self.fold_files is not None:
            (tu, ti), (su, si) = (_read_table(owner, "root", p, self.min_rating) for p in self.fold_files)
        else:
            assert self.file is not None
            tu, ti = _read_table(owner, "file", self.file, self.min_rating)
            if self.test_file is not None:
                su, si = _read_table(owner, "test_file", self.test_file, self.min_rating)
            else:
                perm = torch.randperm(len(tu), generator=torch.Generator().manual_seed(self.seed)).numpy()
                n_test = round(self.test_fraction * len(tu))
                held, kept = perm[:n_test], perm[n_test:]
                tu, ti, su, si = tu[kept], ti[kept], tu[held], ti[held]
        (tu_id, su_id), num_users = _factorize(tu, su)
        (ti_id, si_id), num_items = _factorize(ti, si)
        return torch.stack([tu_id, ti_id], 1), torch.stack([su_id, si_id], 1), num_users, num_items

    def setup(self, stage: str | None = None) -> None:
        """Read the interactions and build the indices (idempotent).

        Raises:
            ValueError: for an empty training or test split, or sizes that differ from a loaded state's.
        """
        if self._ready:
            return
        train, test, num_users, num_items = self._load()
        train = torch.unique(train, dim=0) if train.numel() else train
        test = torch.unique(test, dim=0) if test.numel() else test
        for part, pairs in (("training", train), ("test", test)):
            if pairs.numel() == 0:
                raise ValueError(f"{type(self).__name__}: the {part} split is empty (after min_rating filtering)")
        self.train_pairs, self.test_pairs = train, test
        self.num_users, self.num_items = num_users, num_items
        self.positive_keys = torch.sort(train[:, 0] * num_items + train[:, 1]).values
        self._train_csr, self._test_csr = _csr(train, num_users), _csr(test, num_users)
        self.eval_users = torch.unique(test[:, 0])
        users, items = train[:, 0], train[:, 1] + num_users
        self.edge_index = torch.stack([torch.cat([users, items]), torch.cat([items, users])])
        self._mark_ready()

    def _sizes_now(self) -> dict[str, int]:
        return {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_train": int(self.train_pairs.shape[0]),
            "num_test": int(self.test_pairs.shape[0]),
        }

    # ------------------------------------------------------------------------------------------------ loaders
    def train_dataloader(self) -> DataLoader:
        """Shuffled, sharded ``(triplets, None, index)`` batches of ``batch_size`` BPR triplets."""
        world, rank = self._world()
        dataset = IdRange(int(self.train_pairs.shape[0]))
        sampler: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        return DataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, collate_fn=_TripletCollate(self, sampler)
        )

    def _eval_loader(self) -> DataLoader:
        world, rank = self._world()
        dataset = IdRange(int(self.eval_users.numel()))
        sampler: DistributedSampler[int] = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        batch = min(self.eval_batch_size, math.ceil(len(dataset) / world))
        return DataLoader(dataset, batch_size=batch, sampler=sampler, collate_fn=_EvalCollate(self))

    def val_dataloader(self) -> DataLoader:
        """Full-ranking batches of the users with test items (the test split; see the class docstring)."""
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        """Full-ranking batches of the users with test items."""
        return self._eval_loader()


def _tiny_interactions(seed: int = 0, users: int = 24, items: int = 16) -> tuple[Tensor, Tensor]:
    """Two taste groups: users ``u`` like items of parity ``u % 2`` (75 % of them), split 3:1 at random."""
    g = torch.Generator().manual_seed(seed)
    u = torch.arange(users).repeat_interleave(items)
    i = torch.arange(items).repeat(users)
    liked = (torch.rand(users * items, generator=g) < 0.75) & ((u % 2) == (i % 2))
    pairs = torch.stack([u[liked], i[liked]], 1)
    held = torch.rand(pairs.shape[0], generator=g) < 0.25
    return pairs[~held], pairs[held]
