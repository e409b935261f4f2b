"""PA&DA data sampling: draw training samples in proportion to their gradient norms (mixed with uniform)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from litmix.base import Example, LitmixCallback
from litmix.data import IndexedDataset, split_batch
from litmix.loss_terms import LossTermCallback
from litmix.nas.pada import (
    PADA_SEMANTICS,
    pada_data_probs,
    pada_reference_importance,
    pada_tau,
    softmax_ce_grad_norm,
)
from litmix.nas.sampling import make_generator
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int


class _WeightedIndexSampler(Sampler[int]):
    """``num_samples`` positions drawn with replacement from ``probs``, seeded by ``(seed, epoch)``."""

    def __init__(self, probs: Tensor, seed: int) -> None:
        self.probs = probs
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.probs)

    def __iter__(self) -> Iterator[int]:
        gen = make_generator(self.seed, self.epoch, 7)
        return iter(torch.multinomial(self.probs.double(), len(self.probs), replacement=True, generator=gen).tolist())


def _index_values(dataset: Dataset) -> Tensor | None:
    """The ``index`` value each position of ``dataset`` yields, resolved without loading items when possible."""
    if isinstance(dataset, IndexedDataset):
        return torch.arange(len(dataset))
    if isinstance(dataset, Subset):
        inner = _index_values(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(list(dataset.indices), dtype=torch.long)]
    return None


def _item_index(item: Any, position: int) -> int:
    """The dataset index an item carries (its 3rd element, or its ``"index"`` key: :func:`litmix.data.split_batch`).

    Raises:
        MisconfigurationException: for an item without an index.
    """
    _, _, index = split_batch(item)
    if index is None:
        raise MisconfigurationException(
            f"PADASampling needs items that carry their dataset index ((x, y, index) or a dict with 'index', see "
            f"litmix.data.IndexedDataset); item {position} has none"
        )
    return int(index)


@register(
    "callback",
    "nas",
    paper="PA&DA: Jointly Sampling PAth and DAta for Consistent NAS (https://arxiv.org/abs/2302.14772)",
)
class PADASampling(LossTermCallback):
    """Importance-sample training data by per-sample gradient norm (the data half of PA&DA).

    Lu et al., https://arxiv.org/abs/2302.14772. During an epoch every seen sample ``i`` records
    ``g_i = ||softmax(z_i) - onehot(y_i)||`` (the norm of dCE/dlogits, from the ``"logits"`` entry of the
    ``training_step`` output, or a no-grad forward pass when absent). At the epoch end the statistics are combined
    over DDP ranks and the next epoch draws ``N`` samples **with replacement** from
    ``p_i = tau * g_i / sum(g) + (1 - tau) / N``. Two semantics, chosen with ``semantics``:

    * **loss** -- paper (default): importance-weighted ``mean_i w_i CE_i`` with ``w_i = 1 / (N p_i)``, the
      unbiased estimator of the data-set loss that the paper's variance analysis assumes; reference: the plain
      mean cross-entropy of the drawn batch (the sampler concentrates steps on hard samples; the estimate is
      biased).
    * **tau of the next epoch's distribution** -- paper: the fraction of training done, ``(epoch + 1) /
      max_epochs`` (:func:`litmix.nas.pada.pada_tau`); reference: ``epoch / epochs`` of the finished epoch, one
      epoch earlier.
    * **samples not drawn in an epoch** -- paper: keep their last importance; reference: importance 0 (so
      probability ``(1 - tau) / N``).
    * **repeated draws of a sample** -- paper: the mean of the epoch's norms; reference: a pairwise running
      average in draw order (:func:`litmix.nas.pada.pada_reference_importance`).

    ``weighted_loss`` overrides the loss choice alone (``weighted_loss=False`` with paper semantics is this
    callback's behaviour before the option existed, the configuration of the variance test below). The weighted
    loss replaces the module's own loss through the :mod:`litmix.loss_terms` mechanism (``task_loss_scale = 0``);
    its logits are the ``"logits"`` entry of the ``training_step`` output when it carries a gradient, else one extra
    forward ``pl_module(x)`` of the module as it is after ``training_step`` (the active path of a supernet). It
    therefore needs automatic optimization (or a module with ``collects_loss_terms``) and a cross-entropy task.
    Under DDP the reference merge takes the draws rank by rank (the order differs from a one-process run).
    The path half's ``tau`` (:class:`litmix.plugins.NB201SupernetModule`) always follows the paper. On digits the
    data half alone (paper ramp, unweighted) did not lower the shared-weight gradient variance (ratio to uniform
    0.89-1.26 over 3 seeds); together with PA&DA path sampling it did (0.53-0.78), see ``tests/test_pada.py``.

    Mechanism: ``setup`` wraps the datamodule's ``train_dataloader`` so that its loader uses a sampler owned by
    this callback (same dataset, batch size, collate function, workers); ``teardown`` removes the wrapper. Draws
    are seeded by ``(seed, epoch)``, identical on all ranks (Lightning shards them with its
    ``DistributedSamplerWrapper``) and after a resume. Items must carry their dataset index
    (``(x, y, index)`` as :class:`litmix.data.IndexedDataset` yields). Hooks: ``setup``, ``on_train_epoch_start``,
    ``on_train_batch_end``, ``on_train_epoch_end``, ``teardown``. Logs ``<prefix>/data_tau`` and
    ``<prefix>/data_prob_max`` to every logger, ``<prefix>`` being ``name`` or ``"pada"``.

    Args:
        tau_max: cap of the ramp ``tau``, in ``[0, 1]``.
        seed: seed of the draws (>= 0).
        name: prefix of the logged keys and of the checkpoint key (default ``"pada"``).
        semantics: ``"paper"`` or ``"reference"`` (table above).
        weighted_loss: importance-weight the loss; ``None`` follows ``semantics`` (paper: on, reference: off).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for ``tau_max`` outside ``[0, 1]``, a negative seed, an empty name or an unknown
            ``semantics``; at an epoch end, when the run's length is unknown.
        MisconfigurationException: in ``setup`` without a datamodule, or when batches carry no targets or indices.

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import fit_tiny
        >>> cb = PADASampling()
        >>> _ = fit_tiny([cb], max_epochs=2, max_steps=-1)
        >>> round(float(cb.probs.sum()), 4), bool(cb.probs.max() > cb.probs.min())
        (1.0, True)
    """

    default_log_prefix = "pada"

    def __init__(
        self,
        tau_max: float = 1.0,
        seed: int = 0,
        name: str | None = None,
        semantics: Literal["paper", "reference"] = "paper",
        weighted_loss: bool | None = None,
    ) -> None:
        check_float("PADASampling", "tau_max", tau_max, low=0.0, high=1.0)
        check_int("PADASampling", "seed", seed, low=0)
        check_choice("PADASampling", "semantics", semantics, PADA_SEMANTICS)
        if weighted_loss is not None:
            check_bool("PADASampling", "weighted_loss", weighted_loss)
        super().__init__(name=name)
        self.tau_max, self.seed = float(tau_max), int(seed)
        self.semantics = semantics
        self.weighted_loss = (semantics == "paper") if weighted_loss is None else bool(weighted_loss)
        self.task_loss_scale = 0.0 if self.weighted_loss else 1.0  # the weighted term replaces the module's loss
        self._order_pos: list[Tensor] = []  # reference semantics: this epoch's draws in order
        self._order_g: list[Tensor] = []
        self.probs = torch.empty(0, dtype=torch.float64)
        self.importance = torch.empty(0, dtype=torch.float64)
        self._sum = torch.empty(0, dtype=torch.float64)
        self._count = torch.empty(0, dtype=torch.float64)
        self._pos_of_index: dict[int, int] | None = None
        self._sampler: _WeightedIndexSampler | None = None
        self._datamodule: Any = None

    @classmethod
    def example(cls) -> Example:
        """A default instance on :class:`~litmix.testing.TinyClassifier` and its indexed blobs."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls()])

    def _state_key_fields(self) -> dict[str, Any]:
        """Two unnamed instances differ by their ramp cap and seed."""
        return {
            "tau_max": self.tau_max,
            "seed": self.seed,
            "semantics": self.semantics,
            "weighted_loss": self.weighted_loss,
        }

    # ------------------------------------------------------------------------------------------ wiring
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Wrap ``trainer.datamodule.train_dataloader`` to use the PA&DA sampler (and the loss wrapper if weighted)."""
        if self.weighted_loss:
            super().setup(trainer, pl_module, stage)  # installs the loss-term wrapper
        else:
            LitmixCallback.setup(self, trainer, pl_module, stage)
        if stage != "fit":
            return
        dm = getattr(trainer, "datamodule", None)
        if dm is None:
            raise MisconfigurationException(
                "PADASampling needs a LightningDataModule (trainer.fit(model, datamodule=...)); got plain dataloaders"
            )
        if "train_dataloader" in vars(dm):  # already wrapped (a second fit)
            return
        original = dm.train_dataloader

        def train_dataloader() -> DataLoader:
            loader = original()
            if not isinstance(loader, DataLoader):
                raise MisconfigurationException(
                    f"PADASampling: train_dataloader() must return one DataLoader, got {type(loader).__name__}"
                )
            self._bind(loader.dataset)
            assert self._sampler is not None
            return DataLoader(
                loader.dataset,
                batch_size=loader.batch_size,
                sampler=self._sampler,
                num_workers=loader.num_workers,
                collate_fn=loader.collate_fn,
                pin_memory=loader.pin_memory,
                drop_last=loader.drop_last,
            )

        dm.train_dataloader = train_dataloader
        self._datamodule = dm

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Remove the dataloader wrapper (and the loss wrapper)."""
        if self.weighted_loss:
            super().teardown(trainer, pl_module, stage)
        if self._datamodule is not None and "train_dataloader" in vars(self._datamodule):
            del self._datamodule.train_dataloader
        self._datamodule = None

    def _bind(self, dataset: Dataset) -> None:
        n = len(dataset)  # type: ignore[arg-type]
        values = _index_values(dataset)
        if values is None:  # generic dataset: read each item's index (litmix.data.split_batch: 3rd element) once
            values = torch.tensor([_item_index(dataset[i], i) for i in range(n)])
        self._pos_of_index = {int(v): p for p, v in enumerate(values.tolist())}
        if len(self.probs) != n:
            self.probs = torch.full((n,), 1.0 / n, dtype=torch.float64)
            self.importance = torch.zeros(n, dtype=torch.float64)
        if len(self._sum) != n:
            self._sum = torch.zeros(n, dtype=torch.float64)
            self._count = torch.zeros(n, dtype=torch.float64)
        self._sampler = _WeightedIndexSampler(self.probs, self.seed)

    # ------------------------------------------------------------------------------------------ hooks
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Hand the current probabilities and epoch to the sampler."""
        super().on_train_epoch_start(trainer, pl_module)
        if self._sampler is not None:
            self._sampler.probs = self.probs
            self._sampler.set_epoch(trainer.current_epoch)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Record ``||softmax(z) - onehot(y)||`` for the batch's samples."""
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        x, y, idx = split_batch(batch)
        if y is None or idx is None:
            raise MisconfigurationException("PADASampling needs (x, y, index) batches (see litmix.data.IndexedDataset)")
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        if logits is None:
            with torch.no_grad():
                logits = pl_module(x)
        g = softmax_ce_grad_norm(logits, y).double().cpu()
        assert self._pos_of_index is not None
        pos = torch.tensor([self._pos_of_index[int(i)] for i in idx.tolist()], dtype=torch.long)
        self._sum.index_add_(0, pos, g)
        self._count.index_add_(0, pos, torch.ones_like(g))
        if self.semantics == "reference":
            self._order_pos.append(pos)
            self._order_g.append(g)

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor | None:
        """Importance-weighted cross-entropy ``mean_i w_i CE_i``, ``w_i = 1 / (N p_i)`` (``weighted_loss`` only).

        The logits are the ``"logits"`` entry of the ``training_step`` output when it carries a gradient,
        otherwise a forward ``pl_module(x)`` (one extra forward of the module in its current state).
        """
        if not self.weighted_loss:
            return None
        x, y, idx = split_batch(batch)
        if y is None or idx is None:
            raise MisconfigurationException("PADASampling needs (x, y, index) batches (see litmix.data.IndexedDataset)")
        logits = outputs.get("logits") if isinstance(outputs, dict) else None
        if not (isinstance(logits, Tensor) and logits.requires_grad):
            logits = pl_module(x)
        assert self._pos_of_index is not None
        pos = torch.tensor([self._pos_of_index[int(i)] for i in idx.tolist()], dtype=torch.long)
        weights = (1.0 / (len(self.probs) * self.probs[pos])).to(device=logits.device, dtype=logits.dtype)
        return (weights * nn.functional.cross_entropy(logits, y, reduction="none")).mean()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Reduce the statistics over ranks and compute the next epoch's distribution."""
        super().on_train_epoch_end(trainer, pl_module)
        if len(self._sum) == 0:
            return
        device = pl_module.device
        if self.semantics == "reference":
            pos = torch.cat(self._order_pos) if self._order_pos else torch.zeros(0, dtype=torch.long)
            g = torch.cat(self._order_g) if self._order_g else torch.zeros(0, dtype=torch.float64)
            if trainer.world_size > 1:  # rank-major draw order (equal shard sizes under the distributed sampler)
                pos = trainer.strategy.all_gather(pos.to(device)).reshape(-1).cpu()
                g = trainer.strategy.all_gather(g.to(device)).reshape(-1).double().cpu()
            self.importance = pada_reference_importance(pos, g, len(self._sum))
            self._order_pos, self._order_g = [], []
        else:
            total = trainer.strategy.reduce(self._sum.to(device), reduce_op="sum").double().cpu()
            count = trainer.strategy.reduce(self._count.to(device), reduce_op="sum").double().cpu()
            seen = count > 0
            self.importance[seen] = total[seen] / count[seen]
        tau = pada_tau(trainer, self.tau_max, owner=type(self).__name__, semantics=self.semantics)
        self.probs = pada_data_probs(self.importance, tau)
        self._sum.zero_()
        self._count.zero_()
        sync = trainer.world_size > 1  # identical on every rank already: no change, no "use sync_dist" warning
        pl_module.log(f"{self.log_prefix}/data_tau", float(tau), sync_dist=sync)
        pl_module.log(f"{self.log_prefix}/data_prob_max", float(self.probs.max()), sync_dist=sync)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Probabilities, importances and the running epoch statistics."""
        return {
            **super().state_dict(),
            "probs": self.probs.clone(),
            "importance": self.importance.clone(),
            "sum": self._sum.clone(),
            "count": self._count.clone(),
            "order_pos": torch.cat(self._order_pos) if self._order_pos else torch.zeros(0, dtype=torch.long),
            "order_g": torch.cat(self._order_g) if self._order_g else torch.zeros(0, dtype=torch.float64),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        empty = torch.empty(0, dtype=torch.float64)
        self.probs = state_dict.get("probs", empty).clone()
        self.importance = state_dict.get("importance", empty).clone()
        self._sum = state_dict.get("sum", empty).clone()
        self._count = state_dict.get("count", empty).clone()
        order_pos = state_dict.get("order_pos", torch.zeros(0, dtype=torch.long))
        self._order_pos = [order_pos.clone()] if len(order_pos) else []
        self._order_g = [state_dict.get("order_g", empty).clone()] if len(order_pos) else []
        if self._sampler is not None:
            self._sampler.probs = self.probs
