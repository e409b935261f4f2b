"""DSL: dynamic sparse learning of recommendation embedding tables (RigL on ``nn.Embedding`` weights)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch

from litmix.base import Example
from litmix.callbacks.dynamic_sparse_training import DynamicSparseTraining
from litmix.registry import register

__all__ = ["DynamicSparseEmbedding"]

PAPER = "Dynamic Sparse Learning: A Novel Paradigm for Efficient Recommendation (https://arxiv.org/abs/2402.02855)"


@register("callback", "sparsity", paper=PAPER)
class DynamicSparseEmbedding(DynamicSparseTraining):
    """DSL: train recommendation embedding tables at a fixed parameter budget with periodic prune / grow.

    Wang et al., "Dynamic Sparse Learning: A Novel Paradigm for Efficient Recommendation" (WSDM 2024),
    https://arxiv.org/abs/2402.02855. The same loop as :class:`~litmix.callbacks.DynamicSparseTraining` (built on
    :class:`~litmix.sparsity.MaskEngine`), pointed at the embedding tables: by default every ``nn.Embedding``
    weight of the module (e.g. ``model.embedding.weight`` of :class:`~litmix.plugins.LightGCNModule`, whose single
    table holds users and items and is therefore ranked as a whole, or ``user_embedding.weight`` /
    ``item_embedding.weight`` of :class:`~litmix.plugins.UltraGCNModule`), each table at density
    ``1 - sparsity``. A random initial mask; every ``update_every`` optimizer steps until ``T_end`` each table
    drops the fraction ``zeta_t = zeta / 2 * (1 + cos(pi t / T_end))`` of its kept entries with the smallest
    ``|w|`` and grows as many inactive entries with the largest ``|gradient|`` (``method="rigl"``, DSL) or at
    random (``"set"``); grown entries start at 0 with fresh (zero) Adam moments. Users and items thus end with
    different numbers of kept entries (adaptive effective embedding sizes). Masks, update count and generator
    are checkpointed; decisions are made on rank 0 and broadcast under DDP. The gradients must be dense (no
    ``nn.Embedding(sparse=True)``).

    Args:
        sparsity: fraction of pruned embedding entries, in [0, 1).
        method: ``"rigl"`` (grow by gradient magnitude, DSL) or ``"set"`` (grow at random).
        update_every: optimizer steps between mask updates (>= 1).
        zeta: initial drop fraction, in (0, 1].
        end_fraction: ``T_end`` as a fraction of ``trainer.estimated_stepping_batches``, in (0, 1].
        end_step: absolute ``T_end`` in optimizer steps (>= 1); overrides ``end_fraction``.
        parameter_names: the tables to sparsify (``named_parameters`` names); default ``None``: every
            ``nn.Embedding`` weight.
        seed: seed of the initial masks and of SET's growth (>= 0).
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        ValueError: for arguments out of range and, when fit starts, a module without ``nn.Embedding`` (with
            ``parameter_names=None``) or unknown parameter names.
        TypeError: for arguments of the wrong type.
        MisconfigurationException: under manual optimization or a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.testing import make_trainer
        >>> module, dm, [cb] = DynamicSparseEmbedding.example()
        >>> make_trainer(max_steps=4, callbacks=[cb]).fit(module, datamodule=dm)
        >>> cb.engine.sparsity_report()["model.embedding.weight"], cb.n_updates
        (0.5, 3)
    """

    default_log_prefix: ClassVar[str] = "dsl"

    def __init__(
        self,
        sparsity: float = 0.8,
        method: Literal["rigl", "set"] = "rigl",
        update_every: int = 100,
        zeta: float = 0.3,
        end_fraction: float = 0.75,
        end_step: int | None = None,
        parameter_names: list[str] | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        super().__init__(
            sparsity=sparsity,
            method=method,
            update_every=update_every,
            zeta=zeta,
            end_fraction=end_fraction,
            end_step=end_step,
            distribution="uniform",
            parameter_names=parameter_names,
            seed=seed,
            name=name,
        )
        self._auto_names = parameter_names is None

    @classmethod
    def example(cls) -> Example:
        """DSL at 50 % on LightGCN's embedding table (tiny interaction set), updating every step."""
        from litmix.plugins.lightgcn_module import LightGCNModule

        module, dm, _ = LightGCNModule.example()
        return Example(module, dm, [cls(sparsity=0.5, update_every=1, end_fraction=1.0)])

    def _state_key_fields(self) -> dict[str, Any]:
        return {} if self._auto_names else super()._state_key_fields()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Find the embedding tables (when not named), then set up as :class:`DynamicSparseTraining`.

        Raises:
            ValueError: if ``parameter_names`` is ``None`` and the module has no ``nn.Embedding``.
        """
        if stage == "fit" and self._auto_names:
            names = [
                f"{n}.weight" if n else "weight"
                for n, m in pl_module.named_modules()
                if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad
            ]
            if not names:
                raise ValueError(
                    f"{type(self).__name__}(parameter_names=None): {type(pl_module).__name__} has no trainable "
                    "nn.Embedding; name the tables in parameter_names"
                )
            self.parameter_names = names
        super().setup(trainer, pl_module, stage)
