"""Density-based pruning of concept clusters (DBP) as a DataModule wrapping any DataModule."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from litmix.base import Example
from litmix.data import split_batch
from litmix.datamodules._data_pruning import SubsetDataModule, broadcast_object, dist_group, rank_and_world
from litmix.functional.data_pruning import METRICS, concept_cluster_selection
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_str, check_type

EmbedFn = Callable[[Tensor], Tensor] | nn.Module


@register(
    "datamodule",
    "data",
    paper="Effective pruning of web-scale datasets based on complexity of concept clusters "
    "(https://arxiv.org/abs/2401.04578)",
)
class ConceptClusterPruning(SubsetDataModule):
    """Keep ``keep_fraction`` of any DataModule's training set by density-based pruning of concept clusters.

    Abbas, Rusak, Tirumala, Brendel, Chaudhuri, Morcos, "Effective pruning of web-scale datasets based on
    complexity of concept clusters" (ICLR 2024, https://arxiv.org/abs/2401.04578). The training set is embedded
    once (``embed_fn``: any function or ``nn.Module`` mapping a batch of inputs to ``(batch, d)``; default: the
    flattened inputs), optionally de-duplicated inside clusters (SemDeDup, ``dedup_eps``), clustered by seeded
    k-means; each cluster gets ``N_keep * softmax(d_inter * d_intra / tau)`` samples (capped at its size, the
    overflow redistributed) and keeps its members farthest from the centroid
    (:func:`litmix.functional.data_pruning.concept_cluster_selection`).

    Under DDP every rank embeds a contiguous shard; rank 0 gathers the embeddings, selects, and broadcasts the
    kept positions, so all ranks serve the same subset (Lightning then deals it out in disjoint shards). With
    ``cache_dir`` the embeddings are stored in ``cache_dir/ccp-embeddings-<fingerprint>.pt`` and reused; the
    fingerprint covers the data size, a few raw inputs and ``embed_fn``'s output on two samples. The selection is
    made on first use (the training loader), kept in :meth:`state_dict` (a resumed run serves the checkpointed
    subset without recomputing it), and the per-cluster table (size, after de-duplication, kept, kept
    fraction, ``d_intra``, ``d_inter``, complexity) is logged with the logger's ``log_table`` (W&B) or written as
    CSV next to the logs. Validation, test and predict loaders are the base's, unchanged.

    Args:
        base: the DataModule to prune; after ``setup("fit")`` it exposes ``train_dataset`` (or a train loader
            whose ``dataset`` is map-style) with items ``(x, y, index, ...)``.
        keep_fraction: share of the training set to keep, in (0, 1].
        num_clusters: k of k-means, in [1, number of training samples] (checked at ``setup``).
        tau: softmax temperature over cluster complexity (> 0). The complexity's scale depends on the embedding
            (cosine distances on raw digit pixels give 0.01-0.03), so set ``tau`` to that scale: with 0.1 there
            the keep counts are nearly equal per cluster; the digits effect test uses 0.01.
        dedup_eps: SemDeDup threshold in [0, 2] (pairs with cosine similarity above ``1 - eps`` are duplicates),
            or ``None`` to skip de-duplication.
        num_neighbors: nearest centroids averaged in ``d_inter`` (>= 1).
        metric: ``"cosine"`` (the paper's) or ``"euclidean"`` distances.
        embed_fn: function or module embedding a batch of inputs; ``None``: the flattened inputs.
        cache_dir: folder for the embedding cache, or ``None`` for no cache.
        batch_size: training batch size; ``None``: the base's.
        embed_batch_size: batch size used to embed the training set.
        num_iters: most k-means iterations.
        seed: seed of k-means and of the shuffling.

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a ``keep_fraction`` outside (0, 1], ``num_clusters < 1`` (or, at ``setup``, above the
            number of training samples), a non-positive ``tau``, an ``embed_fn`` whose output on a batch is not
            2-D ``(batch, d)`` (at ``setup``, before the data set is embedded), or another out-of-range argument;
            each message names the argument.

    Example:
        >>> from litmix.datamodules import DigitsDataModule
        >>> dm = ConceptClusterPruning(DigitsDataModule(batch_size=32), keep_fraction=0.5, num_clusters=20)
        >>> dm.setup("fit")
        >>> x, y, idx = next(iter(dm.train_dataloader()))
        >>> len(dm.select()), dm.num_train, tuple(x.shape), dm.table["columns"][:4]
        (629, 1258, (32, 64), ['cluster', 'size', 'after_dedup', 'kept'])
    """

    log_prefix = "concept_cluster_pruning"

    def __init__(
        self,
        base: pl.LightningDataModule,
        keep_fraction: float = 0.5,
        num_clusters: int = 20,
        tau: float = 0.1,
        dedup_eps: float | None = None,
        num_neighbors: int = 20,
        metric: str = "cosine",
        embed_fn: EmbedFn | None = None,
        cache_dir: str | None = None,
        batch_size: int | None = None,
        embed_batch_size: int = 512,
        num_iters: int = 50,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        check_type(name, "base", base, pl.LightningDataModule)
        self.keep_fraction = check_float(name, "keep_fraction", keep_fraction, low=0.0, high=1.0, low_open=True)
        self.num_clusters = check_int(name, "num_clusters", num_clusters, low=1)
        self.tau = check_float(name, "tau", tau, low=0.0, low_open=True)
        self.dedup_eps = check_float(name, "dedup_eps", dedup_eps, low=0.0, high=2.0, allow_none=True)
        self.num_neighbors = check_int(name, "num_neighbors", num_neighbors, low=1)
        self.metric = check_choice(name, "metric", metric, METRICS)
        if embed_fn is not None and not callable(embed_fn):
            raise TypeError(f"{name}(embed_fn={embed_fn!r}): embed_fn must be callable (a function or nn.Module)")
        self.embed_fn = embed_fn
        check_str(name, "cache_dir", cache_dir, allow_none=True, allow_empty=False)
        self.cache_dir = cache_dir
        self.embed_batch_size = check_int(name, "embed_batch_size", embed_batch_size, low=1)
        self.num_iters = check_int(name, "num_iters", num_iters, low=1)
        super().__init__(base, batch_size=batch_size, seed=seed)
        #: ``(n, d)`` embeddings of the training set on rank 0 once computed (``None`` elsewhere).
        self.embeddings: Tensor | None = None
        self.cache_path: Path | None = None

    @classmethod
    def example(cls) -> Example:
        """:class:`~litmix.testing.TinyClassifier` on half of 64 training digits (4 clusters)."""
        from litmix.datamodules.digits import DigitsDataModule
        from litmix.testing import TinyClassifier

        base = DigitsDataModule(batch_size=16, train_size=64)
        return Example(TinyClassifier(in_features=64, num_classes=10), cls(base, num_clusters=4), [])

    # ---- embedding ----------------------------------------------------------------------------------------
    def _embed(self, x: Any) -> Tensor:
        fn = self.embed_fn
        if fn is None:
            return torch.as_tensor(x).flatten(1).float()
        device = None
        if isinstance(fn, nn.Module):
            param = next(fn.parameters(), None)
            device = param.device if param is not None else None
        if device is not None and isinstance(x, Tensor):
            x = x.to(device)
        with torch.no_grad():
            out = fn(x)
        return out.detach().float().cpu() if isinstance(out, Tensor) else out

    def _loader(self, positions: list[int]) -> DataLoader:
        loader = self._base_loader()
        return DataLoader(
            Subset(self.train_base, positions),
            batch_size=self.embed_batch_size,
            shuffle=False,
            collate_fn=loader.collate_fn if loader is not None else None,
        )

    def _embed_positions(self, positions: list[int]) -> Tensor:
        chunks = []
        module = self.embed_fn if isinstance(self.embed_fn, nn.Module) else None
        was_training = module.training if module is not None else False
        if module is not None:
            module.eval()
        try:
            for batch in self._loader(positions):
                x, _, _ = split_batch(batch)
                chunks.append(self._check_output(self._embed(x), len(x)))
        finally:
            if module is not None:
                module.train(was_training)
        return torch.cat(chunks) if chunks else torch.zeros(0, self._dim)

    def _check_output(self, out: Any, batch: int) -> Tensor:
        name = type(self).__name__
        if not isinstance(out, Tensor):
            raise ValueError(f"{name}(embed_fn={self.embed_fn!r}): embed_fn must return a tensor, got {type(out)}")
        if out.dim() != 2 or out.shape[0] != batch or out.shape[1] < 1:
            raise ValueError(
                f"{name}(embed_fn={self.embed_fn!r}): embed_fn must map a batch of {batch} inputs to a 2-D tensor "
                f"({batch}, d), got shape {tuple(out.shape)}"
            )
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"{name}(embed_fn={self.embed_fn!r}): embed_fn returned NaN or inf")
        return out

    def _check_data(self) -> None:
        """``num_clusters <= n`` and one probe batch of 2 samples through ``embed_fn`` (shape (2, d))."""
        name = type(self).__name__
        n = self.num_train
        if n < 1:
            raise ValueError(f"{name}(base=...): the base DataModule's training set is empty")
        if self.num_clusters > n:
            raise ValueError(
                f"{name}(num_clusters={self.num_clusters}): num_clusters must be <= {n}, the training samples"
            )
        probe = self._embed_positions(list(range(min(2, n))))
        self._dim = probe.shape[1]
        self._probe = probe

    def _fingerprint(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.num_train}:{self._dim}".encode())
        digest.update(self._probe.numpy().tobytes())
        for pos in sorted({0, self.num_train // 2, self.num_train - 1}):
            x, _, _ = split_batch(self.train_base[pos])
            if isinstance(x, Tensor):
                digest.update(x.detach().cpu().contiguous().numpy().tobytes())
            else:
                digest.update(repr(x).encode())
        return digest.hexdigest()[:24]

    def compute_embeddings(self) -> Tensor | None:
        """Embed the training set (cached); every rank embeds its shard, rank 0 returns all ``(n, d)``.

        Other ranks return ``None``. Must be called on every rank under DDP (it uses collectives).
        """
        rank, world = rank_and_world()
        path: Path | None = None
        if self.cache_dir is not None:
            path = Path(self.cache_dir) / f"ccp-embeddings-{self._fingerprint()}.pt"
            self.cache_path = path
        cached = broadcast_object(path is not None and path.is_file()) if rank == 0 else broadcast_object(None)
        if cached:
            if rank != 0:
                return None
            assert path is not None
            emb = torch.load(path, map_location="cpu", weights_only=True)
            if emb.shape[0] != self.num_train:  # pragma: no cover - a fingerprint collision
                raise ValueError(f"{type(self).__name__}: cached embeddings {path} do not match the data")
            return emb  # type: ignore[no-any-return]
        bounds = torch.linspace(0, self.num_train, world + 1).round().long().tolist()
        mine = self._embed_positions(list(range(bounds[rank], bounds[rank + 1])))
        dist = dist_group()
        if dist is not None and world > 1:
            parts: list[Any] = [None] * world
            dist.all_gather_object(parts, mine)
            if rank != 0:
                return None
            emb = torch.cat(parts)
        else:
            emb = mine
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            torch.save(emb, tmp)
            os.replace(tmp, path)
        return emb

    def _compute_selection(self) -> dict[str, Any] | None:
        emb = self.compute_embeddings()
        if emb is None:
            return None
        self.embeddings = emb
        sel = concept_cluster_selection(
            emb,
            self.keep_fraction,
            self.num_clusters,
            tau=self.tau,
            dedup_eps=self.dedup_eps,
            num_neighbors=self.num_neighbors,
            metric=self.metric,
            seed=self.seed,
            num_iters=self.num_iters,
        )
        self.selection = sel
        rows = [
            [
                c,
                int(sel.sizes[c]),
                int(sel.dedup_sizes[c]),
                int(sel.counts[c]),
                float(sel.counts[c]) / max(1, int(sel.sizes[c])),
                float(sel.d_intra[c]),
                float(sel.d_inter[c]),
                float(sel.complexity[c]),
            ]
            for c in range(len(sel.sizes))
        ]
        columns = ["cluster", "size", "after_dedup", "kept", "kept_fraction", "d_intra", "d_inter", "complexity"]
        return {"kept": sel.kept, "table": {"columns": columns, "data": rows}}
