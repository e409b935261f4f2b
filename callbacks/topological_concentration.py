"""Per-node topological concentration (TC) of the training graph, and link-prediction quality by TC group."""

from __future__ import annotations

import io
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.functional.link_prediction import TC_PAPER, node_link_performance, topological_concentration
from litmix.metrics._dedup import first_occurrence
from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int

__all__ = ["TopologicalConcentration"]

_STAGES = ("val", "test")


def _training_graph(owner: str, trainer: pl.Trainer) -> tuple[Tensor, int]:
    dm = getattr(trainer, "datamodule", None)
    graph = getattr(dm, "train_graph", None)
    if not isinstance(graph, dict) or not isinstance(graph.get("edge_index"), Tensor):
        raise ValueError(
            f"{owner}: needs a data module with train_graph = {{'x', 'edge_index'}} after setup (e.g. "
            f"LinkDataModule), got {type(dm).__name__}"
        )
    x = graph.get("x")
    num_nodes = int(getattr(dm, "num_nodes", x.shape[0] if isinstance(x, Tensor) else 0))
    if num_nodes < 1:
        raise ValueError(f"{owner}: the data module's training graph has no nodes")
    return graph["edge_index"], num_nodes


@register("callback", "graph", paper=TC_PAPER)
class TopologicalConcentration(LitmixCallback):
    """Topological concentration (TC) per node, logged as diagnostics, and link quality of high- vs low-TC nodes.

    Wang, Yang, Tang, Derr, Shah, "A Topological Perspective on Demystifying GNN-Based Link Prediction
    Performance" (ICLR 2024, https://arxiv.org/abs/2310.04612). A node's TC is the average (walk-weighted)
    intersection of its ``hops``-hop computation tree with those of its training neighbours
    (:func:`~litmix.functional.link_prediction.topological_concentration`, the authors' ``cal_tc``); the paper
    finds that GNN link prediction works better for high-TC nodes, and that TC tracks per-node performance
    better than degree.

    At ``setup`` the TC of every node of the data module's training graph (``trainer.datamodule.train_graph``,
    e.g. :class:`~litmix.datamodules.LinkDataModule`) is computed on every rank (deterministic; kept in the
    checkpoint state, so a resumed run does not recompute it). ``on_train_start`` logs ``<prefix>/mean``,
    ``<prefix>/median``, ``<prefix>/std``, ``<prefix>/zero_fraction`` (prefix ``tc`` or ``name``) through
    ``pl_module.log`` and, on rank 0 with a :class:`~lightning.pytorch.loggers.WandbLogger`, a per-node W&B
    table (``node``, ``tc``, ``degree``) and a histogram (``wandb.Histogram``, plus a matplotlib image when
    ``images`` and matplotlib is installed).

    If the module's ``validation_step`` / ``test_step`` returns ``{"scores": logits}`` (one per candidate in the
    batch's ``edge_label_index``, as :class:`~litmix.plugins.NCNModule` does), at the end of each validation /
    test epoch the candidates of all ranks are gathered (padding repeats dropped), each node's MRR over its
    positive edges is computed against the split's negatives
    (:func:`~litmix.functional.link_prediction.node_link_performance`), and the callback logs
    ``<prefix>/<stage>_mrr_low`` / ``_mrr_high`` (mean per-node MRR of the nodes in the lowest / highest
    ``1 / groups`` of TC among nodes with a positive edge), ``_spearman`` (Spearman correlation of TC and per-node
    MRR) and ``_spearman_degree`` (the same for training degree). The last per-node values are in
    :attr:`node_mrr`.

    Args:
        hops: ``K``, the depth of the computation trees (1..4).
        beta: hop decay (> 0), or ``None`` for ``1 / mean degree`` (the authors' choice).
        groups: number of TC quantile groups for the low / high comparison (2..10).
        images: log a histogram image to W&B (needs matplotlib).
        name: optional instance name (unique checkpoint key and log prefix).

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range, naming the argument; at ``setup``, before any compute, a data
            module without a training graph, or edges outside its nodes.

    Example:
        >>> from litmix.testing import make_trainer
        >>> module, dm, (cb,) = TopologicalConcentration.example()
        >>> trainer = make_trainer(callbacks=[cb], max_steps=1)
        >>> trainer.fit(module, datamodule=dm)
        >>> cb.tc.shape, bool(((cb.tc >= 0) & (cb.tc <= 1)).all()), "tc/mean" in trainer.callback_metrics
        (torch.Size([40]), True, True)
    """

    default_log_prefix = "tc"

    def __init__(
        self,
        hops: int = 2,
        beta: float | None = None,
        groups: int = 3,
        images: bool = True,
        name: str | None = None,
    ) -> None:
        owner = type(self).__name__
        self.hops = check_int(owner, "hops", hops, low=1, high=4)
        self.beta = check_float(owner, "beta", beta, low=0.0, low_open=True, allow_none=True)
        self.groups = check_int(owner, "groups", groups, low=2, high=10)
        self.images = check_bool(owner, "images", images)
        super().__init__(name=name)
        self.tc: Tensor | None = None
        self.degree: Tensor | None = None
        self.node_mrr: dict[str, Tensor] = {}
        self._seen: dict[str, list[tuple[Tensor, Tensor, Tensor, Tensor]]] = {s: [] for s in _STAGES}

    def _state_key_fields(self) -> dict[str, Any]:
        return {"hops": self.hops, "beta": self.beta}

    @classmethod
    def example(cls) -> Example:
        """NCN on the generated 40-node, 4-block link graph; 2-hop TC."""
        from litmix.plugins.ncn_module import NCNModule

        module, dm, _ = NCNModule.example()
        return Example(module, dm, [cls(hops=2)])

    # ------------------------------------------------------------------------------------------------ TC
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Compute the TC of every node of the training graph (once; also restored from a checkpoint).

        Raises:
            ValueError: for a data module without a training graph (before any compute).
        """
        super().setup(trainer, pl_module, stage)
        edge_index, num_nodes = _training_graph(type(self).__name__, trainer)
        self.degree = torch.bincount(edge_index[0].cpu(), minlength=num_nodes).double()
        if self.tc is None or self.tc.numel() != num_nodes:
            self.tc = topological_concentration(edge_index.cpu(), num_nodes, hops=self.hops, beta=self.beta)

    def summary(self) -> dict[str, float]:
        """``mean``, ``median``, ``std`` and ``zero_fraction`` of the per-node TC."""
        assert self.tc is not None
        tc = self.tc
        return {
            "mean": float(tc.mean()),
            "median": float(tc.median()),
            "std": float(tc.std()) if tc.numel() > 1 else 0.0,
            "zero_fraction": float((tc == 0).double().mean()),
        }

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the TC summary (every rank; identical values) and the per-node table / histogram (rank 0, W&B)."""
        for key, value in self.summary().items():
            pl_module.log(f"{self.log_prefix}/{key}", value, on_epoch=True, sync_dist=True)
        self._log_per_node(trainer)

    @rank_zero_only
    def _log_per_node(self, trainer: pl.Trainer) -> None:
        from lightning.pytorch.loggers import WandbLogger

        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or self.tc is None or self.degree is None:
            return
        import wandb

        rows = [
            [i, float(t), int(d)] for i, (t, d) in enumerate(zip(self.tc.tolist(), self.degree.tolist(), strict=False))
        ]
        payload: dict[str, Any] = {
            f"{self.log_prefix}/per_node": wandb.Table(columns=["node", "tc", "degree"], data=rows),
            f"{self.log_prefix}/histogram": wandb.Histogram(self.tc.tolist()),
        }
        image = self._histogram_image() if self.images else None
        if image is not None:
            payload[f"{self.log_prefix}/histogram_image"] = wandb.Image(image)
        for logger in loggers:
            logger.experiment.log({**payload, "trainer/global_step": trainer.global_step})

    def _histogram_image(self) -> Any:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from PIL import Image
        except ImportError:
            return None
        assert self.tc is not None
        fig, ax = plt.subplots(figsize=(4, 3))
        ax.hist(self.tc.numpy(), bins=30)
        ax.set_xlabel(f"topological concentration (K={self.hops})")
        ax.set_ylabel("nodes")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        buf.seek(0)
        return Image.open(buf)

    # ------------------------------------------------------------------------------------------------ quality
    def _collect(self, stage: str, outputs: Any, batch: Any) -> None:
        scores = outputs.get("scores") if isinstance(outputs, dict) else outputs
        if not isinstance(scores, Tensor):
            return
        graph, label, index = split_batch(batch)
        if not isinstance(graph, dict) or label is None or index is None or "edge_label_index" not in graph:
            return
        pairs = graph["edge_label_index"]
        self._seen[stage].append((index.cpu(), pairs.cpu(), label.cpu(), scores.detach().reshape(-1).cpu()))

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting the validation candidates' scores."""
        self._seen["val"] = []

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start collecting the test candidates' scores."""
        self._seen["test"] = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        """Keep the batch's candidate scores."""
        self._collect("val", outputs, batch)

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:  # fmt: skip
        """Keep the batch's candidate scores."""
        self._collect("test", outputs, batch)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Per-node MRR of the validation positives; low / high TC group means and Spearman correlations."""
        self._quality("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Per-node MRR of the test positives; low / high TC group means and Spearman correlations."""
        self._quality("test", trainer, pl_module)

    def _gathered(self, stage: str) -> tuple[Tensor, Tensor, Tensor] | None:
        import torch.distributed as dist

        parts = self._seen[stage]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            everyone: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(everyone, parts)
            parts = [p for rank in everyone for p in rank]
        if not parts:
            return None
        index, pairs, label, scores = (torch.cat(t, dim=-1) for t in zip(*parts, strict=False))
        keep = first_occurrence(index)
        return pairs[:, keep], label[keep], scores[keep]

    def group_quality(self, node_mrr: Tensor) -> dict[str, float]:
        """``mrr_low``, ``mrr_high``, ``spearman`` and ``spearman_degree`` of per-node MRR values (NaN = no edge)."""
        from torchmetrics.functional import spearman_corrcoef

        assert self.tc is not None
        assert self.degree is not None
        has = ~torch.isnan(node_mrr)
        tc, mrr, deg = self.tc[has], node_mrr[has], self.degree[has]
        if mrr.numel() < 2 * self.groups:
            return {}
        order = torch.argsort(tc, stable=True)
        size = mrr.numel() // self.groups
        return {
            "mrr_low": float(mrr[order[:size]].mean()),
            "mrr_high": float(mrr[order[-size:]].mean()),
            "spearman": float(spearman_corrcoef(tc.float(), mrr.float())),
            "spearman_degree": float(spearman_corrcoef(deg.float(), mrr.float())),
        }

    def _quality(self, stage: str, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.tc is None:
            return
        found = self._gathered(stage)
        self._seen[stage] = []
        if found is None:
            return
        pairs, label, scores = found
        positive = label > 0.5
        node_mrr = node_link_performance(pairs[:, positive], scores[positive], scores[~positive], self.tc.numel())
        self.node_mrr[stage] = node_mrr
        for key, value in self.group_quality(node_mrr).items():
            pl_module.log(f"{self.log_prefix}/{stage}_{key}", value, on_epoch=True, sync_dist=True)

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """``version`` and the per-node TC (``None`` before ``setup``)."""
        return {**super().state_dict(), "tc": None if self.tc is None else self.tc.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the per-node TC (checked against the graph's size at ``setup``).

        Raises:
            ValueError: for a newer state version.
        """
        super().load_state_dict(state_dict)
        tc = state_dict.get("tc")
        self.tc = None if tc is None else tc.clone()
