"""MST-compression regulariser for binary layers, as a loss-term callback."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example
from litmix.functional.binary import PAPER, mst_compress, mst_regularizer
from litmix.layers.binary import BinaryConv2d, BinaryLinear
from litmix.loss_terms import LossTermCallback
from litmix.registry import register
from litmix.validation import check_float, check_int


@register("callback", "quantization", paper=PAPER)
class MSTCompression(LossTermCallback):
    """Lower the MST cost of a model's binary layers with a regulariser, and log that cost.

    Paper: "MST-compression: Compressing and Accelerating Binary Neural Networks with Minimum Spanning Tree",
    Vo et al., ICCV 2023 (https://arxiv.org/abs/2308.13735).

    Every :class:`~litmix.layers.BinaryLinear` / :class:`~litmix.layers.BinaryConv2d` of the module (convert a
    model with :func:`litmix.layers.to_binary`) gets a minimum spanning tree over its output channels
    (:func:`litmix.functional.binary.mst_compress`), rebuilt from the current signs every ``update_every``
    optimizer steps. The loss gains ``weight * sum_layers mst_regularizer(W, parent)``
    (:func:`litmix.functional.binary.mst_regularizer`: for each tree edge, the smaller magnitude of every pair of
    differing latent bits, normalised), which pulls children towards their parents' signs, so the tree cost
    ``C_in + sum of Hamming distances`` falls. The term goes through :mod:`litmix.loss_terms` (counted once,
    logged as ``mst/loss``). At each training epoch end the tree cost of every binary layer is logged:
    ``mst/cost`` (sum over layers), ``mst/cost_ratio`` (over ``sum C_out * C_in``) and ``mst/cost_ratio/<layer>``.

    Measured (digits MLP 64-256-256-10 with BatchNorm, the two hidden Linears binary, Adam 1e-3, batch 64,
    20 epochs, seeds 0/1/2; tree cost without the regulariser 0.381/0.380/0.381 of ``C_out * C_in``):
    ``weight=0.003`` lowers the tree cost by 14.3/14.8/14.8 % at 0.19/0.74/0.37 points of accuracy;
    ``weight=0.01`` by 31.9/30.3/30.1 % at 0.19/1.30/0.56 points.

    State (checkpointed): the parents of every layer's current tree and the step it was built at, so a resumed
    run uses the same trees. DDP: weights are equal on all ranks, so every rank builds the same tree. FSDP and
    DeepSpeed are refused (the tree needs whole weight rows).

    Args:
        weight: factor of the regulariser in the loss (finite, >= 0; 0 only logs the cost).
        update_every: rebuild the trees every this many optimizer steps (>= 1).
        name: instance name: logging prefix and checkpoint key (default prefix ``"mst"``).

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a negative or non-finite ``weight`` or ``update_every < 1``.
        MisconfigurationException: at ``setup``, when the module has no binary layer or the strategy shards
            parameters.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> example = MSTCompression.example()
        >>> trainer = fit_tiny(example.callbacks, module=example.module, max_steps=4)
        >>> sorted(k for k in trainer.callback_metrics if k.startswith("mst/cost"))
        ['mst/cost', 'mst/cost_ratio', 'mst/cost_ratio/net.0', 'mst/cost_ratio/net.2']
        >>> bool(trainer.callback_metrics["mst/cost_ratio"] < 1)
        True
    """

    default_log_prefix = "mst"

    def __init__(self, weight: float = 0.003, update_every: int = 20, name: str | None = None) -> None:
        super().__init__(name=name)
        owner = type(self).__name__
        self.weight = check_float(owner, "weight", weight, low=0.0)
        self.update_every = int(check_int(owner, "update_every", update_every, low=1))
        self.loss_term_weight = self.weight
        self._layers: dict[str, BinaryLinear | BinaryConv2d] = {}
        self._parents: dict[str, Tensor] = {}
        self._tree_step = -1

    @classmethod
    def example(cls) -> Example:
        """``TinyClassifier`` with both Linears binary, trees rebuilt every 2 steps."""
        from litmix.layers.binary import to_binary
        from litmix.testing import TinyClassifier, TinyDataModule

        module = TinyClassifier()
        to_binary(module)
        return Example(module, TinyDataModule(), [cls(weight=0.01, update_every=2)])

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the binary layers; refuse sharded strategies."""
        super().setup(trainer, pl_module, stage)
        owner = type(self).__name__
        refuse_sharded_strategy(owner, trainer.strategy, "the tree is built over whole weight rows")
        self._layers = {n: m for n, m in pl_module.named_modules() if isinstance(m, BinaryLinear | BinaryConv2d)}
        if not self._layers:
            raise MisconfigurationException(
                f"{owner}: the module has no BinaryLinear or BinaryConv2d layer; convert it with "
                "litmix.layers.to_binary(model) before fitting"
            )

    def _rebuild(self, step: int) -> None:
        self._parents = {n: mst_compress(m.weight).parent for n, m in self._layers.items()}
        self._tree_step = step

    def loss_term(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, outputs: Any
    ) -> Tensor | None:
        """``sum over binary layers of mst_regularizer(W, parent)``, trees rebuilt every ``update_every`` steps."""
        step = trainer.global_step
        stale = self._parents.keys() != self._layers.keys()
        if stale or (step - self._tree_step >= self.update_every):
            self._rebuild(step)
        if self.weight == 0.0:
            return None
        terms = [mst_regularizer(m.weight, self._parents[n]) for n, m in self._layers.items()]
        return torch.stack(terms).sum()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the tree cost of every binary layer."""
        super().on_train_epoch_end(trainer, pl_module)
        cost = dense = 0
        for n, m in self._layers.items():
            tree = m.mst()
            cost += tree.cost
            dense += tree.dense_cost
            pl_module.log(f"{self.log_prefix}/cost_ratio/{n}", tree.cost / tree.dense_cost, rank_zero_only=True)
        pl_module.log(f"{self.log_prefix}/cost", float(cost), rank_zero_only=True)
        pl_module.log(f"{self.log_prefix}/cost_ratio", cost / max(dense, 1), prog_bar=True, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        """Version, the step the trees were built at and every layer's parents."""
        return {
            **super().state_dict(),
            "tree_step": self._tree_step,
            "parents": {n: p.clone() for n, p in self._parents.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        super().load_state_dict(state_dict)
        self._tree_step = int(state_dict.get("tree_step", -1))
        self._parents = {n: p.clone() for n, p in state_dict.get("parents", {}).items()}
