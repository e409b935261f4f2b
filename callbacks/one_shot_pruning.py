"""One-shot pruning with calibration data at fit start, then fine-tuning with the mask fixed."""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from litmix.base import Example
from litmix.functional.oneshot_pruning import check_prune_options, parse_structure, prune_model
from litmix.registry import register
from litmix.sparsity._callback import MaskedPruningCallback, check_parameter_names
from litmix.validation import check_choice, check_float, check_int, check_str

__all__ = ["OneShotPruning"]

PAPER = (
    "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot (https://arxiv.org/abs/2301.00774); "
    "A Simple and Effective Pruning Approach for Large Language Models (https://arxiv.org/abs/2306.11695)"
)
_METHODS = ("magnitude", "wanda", "sparsegpt", "mfac_obs")


@register("callback", "sparsity", paper=PAPER)
class OneShotPruning(MaskedPruningCallback):
    """Prune the module one-shot with calibration data when fit starts, then fine-tune it with the mask fixed.

    Implements SparseGPT (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot", https://arxiv.org/abs/2301.00774), Wanda (Sun et al., "A Simple and Effective Pruning Approach for
    Large Language Models", https://arxiv.org/abs/2306.11695) and magnitude pruning, with optional DSnoT refinement
    (https://arxiv.org/abs/2310.08915), OWL layer sparsities (https://arxiv.org/abs/2310.05175) and M-FAC OBS
    (``method="mfac_obs"``), through :func:`litmix.functional.oneshot_pruning.prune_model`: layer by layer, each
    layer calibrated on the outputs of the layers already pruned, memory bounded by one layer's Hessian.

    **When.** In ``on_fit_start`` (after a checkpoint's state is restored): global rank 0 runs the calibration
    batches through the module and prunes it; the masks (and, for SparseGPT / M-FAC, the reconstructed weights) are
    broadcast to every rank. A resumed fit (``Trainer.fit(ckpt_path=...)``) restores the masks from this callback's
    state and does **not** prune again. **Calibration data**: the DataModule's ``calibration_dataloader()`` when it
    has one, else the first ``calibration_batches`` batches of its ``train_dataloader()`` (or of the dataloader
    given to ``fit``). The module's ``forward`` is called on the batch inputs (``model(**batch)`` for dict batches
    without an ``x``/``input`` key, as Hugging Face models take them).

    **Fine-tuning.** The masks are held by the shared :class:`~litmix.sparsity.MaskEngine`: non-persistent bool
    buffers (the module's ``state_dict`` stays strict-loadable into its own class), gradients of pruned weights
    zeroed in ``on_before_optimizer_step``, first moments masked, weights re-masked after the step for optimizers
    that could revive them; masks checkpointed at one bit per weight.

    Logs like every litmix pruner (see :class:`~litmix.callbacks.GradualPruning`: sparsity per layer and overall
    and a per-layer image once pruned, final values at the end of fit) plus ``<prefix>/prune_seconds`` at the end;
    ``<prefix>`` is ``name`` when given, else ``oneshot``.

    Args:
        method: ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` or ``"mfac_obs"``.
        sparsity: fraction of each pruned layer's weights set to zero, in [0, 1) (ignored for N:M).
        structure: ``"unstructured"`` or ``"N:M"`` (``"2:4"``: 2 kept in every 4 consecutive inputs).
        refine: ``None`` or ``"dsnot"``.
        sparsity_profile: ``"uniform"`` or ``"owl"``.
        calibration_batches: batches taken from the train dataloader when the DataModule has no
            ``calibration_dataloader()`` (>= 1).
        sequential: ``"auto"`` (layer by layer for SparseGPT / DSnoT, block by block otherwise), ``"layer"`` or
            ``"block"`` (see ``prune_model``).
        parameter_names: weights to prune; default: every Linear / HF Conv1D weight (a tied ``lm_head`` stays dense).
        blocksize: SparseGPT lazy block size (>= 1).
        percdamp: SparseGPT relative damping (>= 0).
        owl_m: OWL outlier threshold (> 0).
        owl_lamda: OWL sparsity half-range, in [0, 0.5].
        name: optional instance name (checkpoint key and logging prefix).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for arguments out of range (in ``__init__``: sparsity outside [0, 1), an unknown method,
            structure, refinement or profile, OWL with N:M) and, when fit starts, for no calibration data, a module
            with nothing prunable, or N:M whose M does not divide a layer's inputs (``prune_model``'s messages).
        MisconfigurationException: under a sharded strategy (FSDP, DeepSpeed).

    Example:
        >>> from litmix.testing import fit_tiny, TinyClassifier
        >>> model = TinyClassifier()
        >>> cb = OneShotPruning(method="sparsegpt", sparsity=0.5, calibration_batches=2)
        >>> _ = fit_tiny([cb], module=model, max_steps=3)
        >>> cb.layer_sparsity["global"], float((model.net[0].weight == 0).float().mean())
        (0.5, 0.5)
        >>> sorted(k for k in model.state_dict() if k.endswith("_mask"))  # masks live in the callback's state
        []
    """

    default_log_prefix: ClassVar[str] = "oneshot"
    state_version: ClassVar[int] = 1
    requires_automatic_optimization: ClassVar[bool] = False
    sharded_reason: ClassVar[str] = "masks are decided on rank 0 from whole weight matrices and per-layer Hessians"
    sharded_instead: ClassVar[str] = "DDP or a single device"
    measured_state_keys: ClassVar[tuple[str, ...]] = ("prune_seconds",)

    def __init__(
        self,
        method: Literal["magnitude", "wanda", "sparsegpt", "mfac_obs"] = "wanda",
        sparsity: float = 0.5,
        structure: str = "unstructured",
        refine: Literal["dsnot"] | None = None,
        sparsity_profile: Literal["uniform", "owl"] = "uniform",
        calibration_batches: int = 8,
        sequential: Literal["auto", "layer", "block"] = "auto",
        parameter_names: list[str] | None = None,
        blocksize: int = 128,
        percdamp: float = 0.01,
        owl_m: float = 5.0,
        owl_lamda: float = 0.08,
        name: str | None = None,
    ) -> None:
        cls = type(self).__name__
        method = check_choice(cls, "method", method, _METHODS)
        sparsity = check_float(cls, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
        check_str(cls, "structure", structure)
        nm = parse_structure(structure, owner=cls)
        refine = check_choice(cls, "refine", refine, (None, "dsnot"))
        sparsity_profile = check_choice(cls, "sparsity_profile", sparsity_profile, ("uniform", "owl"))
        calibration_batches = check_int(cls, "calibration_batches", calibration_batches, low=1)
        sequential = check_choice(cls, "sequential", sequential, ("auto", "layer", "block"))
        parameter_names = check_parameter_names(cls, parameter_names)
        blocksize = check_int(cls, "blocksize", blocksize, low=1)
        percdamp = check_float(cls, "percdamp", percdamp, low=0.0)
        owl_m = check_float(cls, "owl_m", owl_m, low=0.0, low_open=True)
        owl_lamda = check_float(cls, "owl_lamda", owl_lamda, low=0.0, high=0.5)
        check_prune_options(cls, method, structure, nm, refine, sparsity_profile)
        super().__init__(name=name)
        self.method: str = method
        self.sparsity: float = sparsity
        self.structure: str = structure
        self.refine: str | None = refine
        self.sparsity_profile: str = sparsity_profile
        self.calibration_batches: int = calibration_batches
        self.sequential: str = sequential
        self.parameter_names = parameter_names
        self.blocksize: int = blocksize
        self.percdamp: float = percdamp
        self.owl_m: float = owl_m
        self.owl_lamda: float = owl_lamda
        # state (checkpointed)
        self.pruned: bool = False
        self.layer_targets: dict[str, float] = {}
        self.prune_seconds: float = 0.0

    @classmethod
    def example(cls) -> Example:
        """Wanda-prunes ``TinyClassifier`` to 50 % from 2 calibration batches, then fine-tunes it."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls(method="wanda", sparsity=0.5, calibration_batches=2)])

    def _target_sparsity(self) -> float:
        return self.sparsity

    # ------------------------------------------------------------------ fit
    def _select(self, pl_module: pl.LightningModule) -> tuple[list[str], dict[str, str]]:
        names, excluded = super()._select(pl_module)
        if not names:
            raise ValueError(
                f"{type(self).__name__}(parameter_names={self.parameter_names!r}): nothing prunable (no nn.Linear or "
                f"Hugging Face Conv1D weight) in {type(pl_module).__name__}"
            )
        return names, excluded

    def _initial_masks(self, names: list[str]) -> dict[str, Tensor | None]:
        """All kept until pruning, or the masks of a pruned state restored before setup."""
        pending = dict(self._engine.masks) if self.pruned else {}
        return {n: pending.get(n) for n in names}

    def _calibration_data(self, trainer: pl.Trainer) -> list[Any]:
        cls = type(self).__name__
        dm = getattr(trainer, "datamodule", None)
        loader: Any = None
        limit: int | None = self.calibration_batches
        if dm is not None and callable(getattr(dm, "calibration_dataloader", None)):
            loader, limit = dm.calibration_dataloader(), None
        elif dm is not None:
            loader = dm.train_dataloader()
        else:
            source = getattr(getattr(trainer, "fit_loop", None), "_data_source", None)
            if source is not None and source.is_defined():
                loader = source.dataloader()
        if loader is None:
            raise ValueError(
                f"{cls}(calibration_batches={self.calibration_batches}): no calibration data: fit with a DataModule "
                "(a calibration_dataloader() or a train_dataloader()) or a train dataloader"
            )
        batches = list(loader if limit is None else itertools.islice(loader, limit))
        if not batches:
            raise ValueError(f"{cls}(calibration_batches={self.calibration_batches}): the calibration loader is empty")
        return batches

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Prune on rank 0 and broadcast masks (and reconstructed weights); after a resume only re-apply masks."""
        if self.pruned:
            self._engine.apply()
            self._masks_changed()
            return
        names = self._engine.names
        payload: dict[str, Any] | None = None
        if trainer.is_global_zero:
            start = time.perf_counter()
            result = prune_model(
                pl_module,
                self._calibration_data(trainer),
                method=self.method,  # type: ignore[arg-type]
                sparsity=self.sparsity,
                structure=self.structure,
                refine=self.refine,  # type: ignore[arg-type]
                sparsity_profile=self.sparsity_profile,  # type: ignore[arg-type]
                sequential=self.sequential,  # type: ignore[arg-type]
                parameter_names=names,
                blocksize=self.blocksize,
                percdamp=self.percdamp,
                owl_m=self.owl_m,
                owl_lamda=self.owl_lamda,
            )
            params = dict(pl_module.named_parameters())
            updates_weights = self.method in ("sparsegpt", "mfac_obs")
            payload = {
                "masks": {n: m.detach().cpu() for n, m in result.masks.items()},
                "weights": {n: params[n].detach().cpu() for n in names} if updates_weights else {},
                "targets": dict(result.target),
                "seconds": time.perf_counter() - start,
            }
        payload = trainer.strategy.broadcast(payload, src=0)
        assert payload is not None
        params = dict(pl_module.named_parameters())
        with torch.no_grad():
            for n, w in payload["weights"].items():
                params[n].copy_(w.to(params[n].device, params[n].dtype))
        self._engine.update(payload["masks"], trainer.optimizers)
        self.layer_targets = payload["targets"]
        self.prune_seconds = float(payload["seconds"])
        self.pruned = True
        self._masks_changed()
        rank_zero_info(
            f"{type(self).__name__}: {self.method} ({self.structure}, {self.sparsity_profile}"
            f"{', dsnot' if self.refine else ''}) pruned {len(names)} weights to {self.layer_sparsity['global']:.4f} "
            f"sparsity in {self.prune_seconds:.2f} s"
        )

    def _final_metrics(self) -> dict[str, float]:
        return {"prune_seconds": self.prune_seconds}

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        """Whether pruning happened, per-layer sparsities and targets, pruning time (then the masks)."""
        return {
            "pruned": self.pruned,
            "layer_sparsity": dict(self.layer_sparsity),
            "layer_targets": dict(self.layer_targets),
            "prune_seconds": self.prune_seconds,
        }

    def _load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        """A restored pruned state is never pruned again."""
        self.pruned = bool(state_dict.get("pruned", False))
        self.layer_sparsity = {str(k): float(v) for k, v in state_dict.get("layer_sparsity", {}).items()}
        self.layer_targets = {str(k): float(v) for k, v in state_dict.get("layer_targets", {}).items()}
        self.prune_seconds = float(state_dict.get("prune_seconds", 0.0))

    def _load_masks(self, state_dict: Mapping[str, Any]) -> None:
        self._engine.load_state_dict(state_dict, strict=self._engine.attached)
        self._log_pending = True
