"""Unlearning evaluation during training: named loaders, DDP-correct metrics, ``unlearn/score`` for checkpointing."""

from __future__ import annotations

import io
import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.functional.unlearning import sequence_correct, sequence_nll
from litmix.functional.unlearning_metrics import harmonic_mean, truth_ratio
from litmix.metrics.forget_quality import ForgetQuality
from litmix.metrics.indexed_mean import IndexedMean
from litmix.metrics.mia_efficacy import MIAEfficacy
from litmix.metrics.mia_variants import ATTACKS, MIAScoreAUC
from litmix.metrics.prediction_wasserstein import PredictionWasserstein
from litmix.metrics.truth_ratio import TruthRatio
from litmix.models import output_logits
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

SPLITS = ("forget", "retain", "test", "holdout")
METRICS = (
    "accuracy",
    "nll",
    "mia_auc",
    "mia_efficacy",
    "forget_quality",
    "privleak",
    "wasserstein",
    "retrain_gap",
    "truth_ratio",
    "utility",
)
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")


@register(
    "callback",
    "unlearning",
    paper="TOFU: A Task of Fictitious Unlearning for LLMs (https://arxiv.org/abs/2401.06121)",
)
class UnlearningEvaluator(LitmixCallback):
    """Evaluate unlearning on named loaders every ``every_n_epochs`` epochs and log ``unlearn/...`` metrics.

    Loaders come from the datamodule (``eval_dataloader(split)`` of
    :class:`~litmix.datamodules.ForgetRetainDataModule`, or its ``val_loader_names`` + ``val_dataloader()``);
    items are ``(x, y, index)`` (classifiers) or dicts with ``input_ids`` / ``labels`` (causal LMs, ``-100`` on
    the prompt). The model evaluated is ``pl_module.model`` when that is a module, else ``pl_module``. Under DDP
    every rank evaluates its :class:`~torch.utils.data.DistributedSampler` shard; all states are torchmetrics
    ``cat`` states de-duplicated by item index, so the padding the sampler adds changes nothing and every rank
    logs the same values (one process = any number of ranks).

    Logged in ``on_train_epoch_end`` under ``<prefix>/`` (``unlearn`` unless ``name`` is given):

    - ``<split>_acc``, ``<split>_nll`` (``accuracy``, ``nll``): accuracy (token accuracy for LMs) and mean
      per-sample NLL (per-token mean for LMs) of each split present;
    - ``mia_auc`` (``mia_auc``): :class:`~litmix.metrics.MIAScoreAUC` with ``attack`` on forget vs holdout (test
      when there is no holdout): 1 = memorised, 0.5 = indistinguishable;
    - ``mia_efficacy`` (classifiers): :class:`~litmix.metrics.MIAEfficacy`, entropy attacker fit on retain vs test;
    - with ``retrain_model`` (the model trained without the forget set; evaluated once, its statistics kept in
      this callback's checkpoint state): ``forget_quality`` = exact KS p-value of the per-item forget statistic
      against the retrained model's: TOFU's truth ratio when a ``forget_perturbed`` loader serves items with
      ``paraphrased`` and ``perturbed`` answers (:class:`~litmix.datamodules.TOFUDataModule`), else the NLL
      (:class:`~litmix.metrics.ForgetQuality`; mind its lattice), ``privleak``
      (MUSE, about 0 = like retraining, -100 = memorised), ``wasserstein`` = W1 between the true-answer
      probabilities of the two models on the forget set, ``retrain_gap`` = mean absolute difference to the
      retrained model of forget, retain and test accuracy and MIA efficacy (the "average gap" of SalUn,
      https://arxiv.org/abs/2310.12508);
    - ``model_utility`` (``utility``): harmonic mean of the retain and test accuracies present (TOFU's utility
      needs generation; compute it with :class:`~litmix.metrics.ModelUtility`);
    - ``<split>_truth_ratio`` (``truth_ratio``) for every ``*_perturbed`` loader: TOFU's aggregate of the truth
      ratio (``forget*``: ``mean(min(tr, 1/tr))``, others ``mean(max(0, 1 - tr))``);
    - ``score``: **harmonic mean of model utility and forget quality** (the retrained reference present), else
      of model utility and ``1 - forget_acc``; high only when both are high, so
      ``ModelCheckpoint(monitor="unlearn/score", mode="max")`` keeps the best epoch (forget quality peaks then
      decays during unlearning).

    Put ``ModelCheckpoint(..., every_n_epochs=every_n_epochs, save_on_train_epoch_end=True)`` after this callback
    (Lightning runs monitoring callbacks last in ``on_train_epoch_end``). With a
    :class:`~lightning.pytorch.loggers.WandbLogger` and matplotlib installed, a histogram of the per-item forget
    NLL (vs the retrained model's) and the forget/retain accuracy curves are logged as images on rank 0;
    without either, nothing is drawn. :meth:`evaluate` runs the same evaluation outside ``fit``: a reloaded
    checkpoint gives identical metrics.

    Args:
        every_n_epochs: evaluate after every this many training epochs (>= 1).
        metrics: names out of ``accuracy``, ``nll``, ``mia_auc``, ``mia_efficacy``, ``forget_quality``,
            ``privleak``, ``wasserstein``, ``retrain_gap``, ``utility`` (None = all that the splits and the
            reference allow).
        attack: membership attack of ``mia_auc`` / ``privleak`` (see :class:`~litmix.metrics.MIAScoreAUC`;
            ``reference`` is not available here).
        k: share of lowest tokens for the min-k attacks, in ``(0, 1]``.
        retrain_model: the retrain-only model (an ``nn.Module``), or None.
        images: log the histogram and curves as images when W&B and matplotlib are present.
        name: distinct name (checkpoint key and log prefix) when several evaluators run.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``every_n_epochs < 1``, an unknown metric name or attack, ``k`` outside ``(0, 1]``;
            ``forget_quality`` / ``privleak`` / ``wasserstein`` / ``retrain_gap`` asked for without
            ``retrain_model``; at evaluation, an empty loader or items without an index (naming the split).
        MisconfigurationException: in ``setup``, a datamodule without a ``forget`` loader.

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> module, datamodule, callbacks = UnlearningEvaluator.example()
        >>> from litmix.testing import make_trainer
        >>> trainer = make_trainer(max_epochs=1, callbacks=callbacks)
        >>> trainer.fit(module, datamodule=datamodule)
        >>> keys = sorted(k[8:] for k in trainer.callback_metrics if k.startswith("unlearn/"))
        >>> keys  # doctest: +NORMALIZE_WHITESPACE
        ['forget_acc', 'forget_nll', 'forget_quality', 'mia_auc', 'mia_efficacy', 'model_utility', 'privleak',
         'retain_acc', 'retain_nll', 'retrain_gap', 'score', 'test_acc', 'test_nll', 'wasserstein']
        >>> 0.0 <= float(trainer.callback_metrics["unlearn/score"]) <= 1.0
        True
    """

    default_log_prefix = "unlearn"
    state_version = 1

    def __init__(
        self,
        every_n_epochs: int = 1,
        metrics: list[str] | None = None,
        attack: Literal["loss", "zlib", "min_k", "min_k_plus_plus"] = "loss",
        k: float = 0.4,
        retrain_model: nn.Module | None = None,
        images: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        owner = type(self).__name__
        check_int(owner, "every_n_epochs", every_n_epochs, low=1)
        check_type(owner, "metrics", metrics, list, allow_none=True)
        for m in metrics or []:
            check_choice(owner, "metrics", m, METRICS)
        check_choice(owner, "attack", attack, tuple(a for a in ATTACKS if a != "reference"))
        check_float(owner, "k", k, low=0.0, high=1.0, low_open=True)
        check_type(owner, "retrain_model", retrain_model, nn.Module, allow_none=True)
        check_bool(owner, "images", images)
        needs_ref = sorted({"forget_quality", "privleak", "wasserstein", "retrain_gap"} & set(metrics or []))
        if needs_ref and retrain_model is None:
            raise ValueError(
                f"{owner}(metrics={metrics!r}, retrain_model=None): {needs_ref} compare with the model retrained "
                "without the forget set; pass retrain_model"
            )
        self.every_n_epochs, self.attack, self.k, self.images = every_n_epochs, attack, float(k), images
        self.metrics = list(metrics) if metrics is not None else list(METRICS)
        self.retrain_model = retrain_model
        #: The retrained model's statistics: ``forget_nll`` (per item, by index), ``mia_auc``; computed once.
        self.reference: dict[str, Any] | None = None
        #: One dict of logged values per evaluation (with ``epoch``), kept in the checkpoint.
        self.history: list[dict[str, float]] = []
        self._last_forget_nll: list[float] = []
        self._pending_tr: dict[str, float] = {}
        self._truth_ratios: list[tuple[Tensor, Tensor]] = []

    # ------------------------------------------------------------------ Lightning plumbing
    @classmethod
    def example(cls) -> Example:
        """NPO+RT on Gaussian blobs (:meth:`UnlearningModule.example`) evaluated against an untrained reference."""
        from litmix.plugins.unlearning_module import UnlearningModule

        module, datamodule, _ = UnlearningModule.example()
        torch.manual_seed(0)
        reference = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        return Example(module, datamodule, [cls(retrain_model=reference, images=False)])

    def _state_key_fields(self) -> dict[str, Any]:
        return {}

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the datamodule serves a forget loader; move the reference model to the module's device."""
        super().setup(trainer, pl_module, stage)
        if stage != "fit":
            return
        dm = getattr(trainer, "datamodule", None)
        names = self._split_names(dm)
        if "forget" not in names:
            raise MisconfigurationException(
                f"{type(self).__name__}: the datamodule serves no 'forget' evaluation loader (found {names}); use "
                "ForgetRetainDataModule or a datamodule with eval_dataloader(split) and val_loader_names"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Evaluate every ``every_n_epochs`` epochs and log the metrics (same values on every rank)."""
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0 or trainer.sanity_checking:
            return
        loaders = self._loaders(getattr(trainer, "datamodule", None))
        values = self.evaluate(pl_module, loaders, world_size=trainer.world_size, rank=trainer.global_rank)
        for key, value in values.items():
            pl_module.log(f"{self.log_prefix}/{key}", value, on_step=False, on_epoch=True, sync_dist=False)
        self.history.append({"epoch": float(trainer.current_epoch), **values})
        if self.images:
            self._log_images(trainer)

    def state_dict(self) -> dict[str, Any]:
        """History of evaluations and the retrained model's statistics."""
        return {**super().state_dict(), "history": [dict(h) for h in self.history], "reference": self.reference}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore history and reference statistics (the retrained model is not needed again)."""
        super().load_state_dict(state_dict)
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.reference = state_dict.get("reference")

    # ------------------------------------------------------------------ evaluation
    @staticmethod
    def _split_names(dm: Any) -> list[str]:
        names = getattr(dm, "val_loader_names", None)
        if names:
            return list(names)
        datasets = getattr(dm, "eval_datasets", None)
        return [s for s in SPLITS if isinstance(datasets, dict) and s in datasets]

    def _loaders(self, dm: Any) -> dict[str, DataLoader]:
        names = self._split_names(dm)
        if dm is not None and callable(getattr(dm, "eval_dataloader", None)):
            return {s: dm.eval_dataloader(s) for s in names}
        return dict(zip(names, dm.val_dataloader(), strict=True))

    @staticmethod
    def _shard(loader: DataLoader, world_size: int, rank: int) -> DataLoader:
        if world_size <= 1:
            return loader
        sampler: DistributedSampler = DistributedSampler(
            loader.dataset, num_replicas=world_size, rank=rank, shuffle=False
        )
        return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, collate_fn=loader.collate_fn)

    @staticmethod
    def _model(pl_module: nn.Module) -> nn.Module:
        inner = getattr(pl_module, "model", None)
        return inner if isinstance(inner, nn.Module) else pl_module

    @staticmethod
    def _forward(model: nn.Module, batch: Any, split: str) -> tuple[Tensor, Tensor, Tensor]:
        x, y, index = split_batch(batch)
        if index is None or y is None:
            raise ValueError(
                f"UnlearningEvaluator: {split} items must carry targets and their index ((x, y, index) or dicts "
                "with 'labels' and 'index'), as ForgetRetainDataModule's loaders do"
            )
        if isinstance(batch, dict):
            logits = output_logits(model(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}))
        else:
            logits = output_logits(model(x))
        return logits, y, index

    @torch.no_grad()
    def _per_sample(
        self, model: nn.Module, loader: DataLoader, split: str, device: torch.device
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        out = []
        self._truth_ratios = []
        for batch in loader:
            batch = _to_device(batch, device)
            logits, y, index = self._forward(model, batch, split)
            out.append((logits, y, index))
            if isinstance(batch, dict) and isinstance(batch.get("paraphrased"), dict) and "perturbed" in batch:
                self._truth_ratios.append((_truth_ratio(model, batch), index))
        if not out:
            raise ValueError(f"UnlearningEvaluator: the {split} loader is empty; give it at least one item")
        return out

    def _compute_reference(
        self, loaders: dict[str, DataLoader], device: torch.device, holdout: str | None
    ) -> dict[str, Any]:
        assert self.retrain_model is not None
        model = self.retrain_model.to(device)
        was_training = model.training
        model.eval()
        nll = ForgetQuality().to(device)
        auc = MIAScoreAUC(self.attack, self.k).to(device)
        eff = MIAEfficacy().to(device)
        ref_tr = ForgetQuality().to(device)
        acc = {s: IndexedMean().to(device) for s in loaders}
        is_lm = False
        for split, loader in loaders.items():
            for logits, y, index in self._per_sample(model, loader, split, device):
                is_lm = logits.dim() == 3
                if is_lm:
                    correct, count = sequence_correct(logits, y)
                else:
                    correct, count = (logits.argmax(-1) == y).long(), torch.ones_like(y)
                    if split in ("retain", "test", "forget"):
                        eff.update(logits, y, index, split)
                acc[split].update(correct, index, weight=count)
                if split == "forget":
                    nll.update(_nll(logits, y), index)
                if split == "forget" or split == holdout:
                    auc.update(logits, y, index, holdout=split != "forget")
            if split == "forget_perturbed":
                for tr, index in self._truth_ratios:
                    ref_tr.update(tr, index)
        model.train(was_training)
        values, index = nll.rows(0)
        ref_truth = ref_tr.rows(0)[0].reshape(-1).cpu().tolist() if "forget_perturbed" in loaders else None
        mia = float(auc.compute()) if holdout is not None else float("nan")
        efficacy = float(eff.compute()) if not is_lm and {"retain", "test"} <= set(loaders) else None
        return {
            "forget_nll": values.reshape(-1).cpu().tolist(),
            "forget_index": index.cpu().tolist(),
            "mia_auc": mia,
            "mia_efficacy": efficacy,
            "acc": {s: float(m.compute()) for s, m in acc.items()},
            "forget_truth_ratio": ref_truth,
        }

    def evaluate(
        self,
        pl_module: nn.Module,
        loaders: dict[str, DataLoader] | Any,
        world_size: int = 1,
        rank: int = 0,
    ) -> dict[str, float]:
        """Evaluate ``pl_module`` on named ``loaders`` (or a datamodule) and return ``{metric: value}``.

        Runs on every rank with ``world_size > 1`` (collectives inside); the result is the same on each.

        Raises:
            ValueError: an empty loader, items without an index, or no ``forget`` loader.
        """
        if not isinstance(loaders, dict):
            if hasattr(loaders, "setup") and not getattr(loaders, "eval_datasets", None):
                loaders.setup("validate")
            loaders = self._loaders(loaders)
        if "forget" not in loaders:
            raise ValueError(f"UnlearningEvaluator.evaluate: no 'forget' loader among {sorted(loaders)}")
        loaders = {s: self._shard(dl, world_size, rank) for s, dl in loaders.items()}
        model = self._model(pl_module)
        device = next(iter(model.parameters()), torch.zeros(0)).device
        holdout = "holdout" if "holdout" in loaders else ("test" if "test" in loaders else None)
        if self.retrain_model is not None and self.reference is None:
            self.reference = self._compute_reference(loaders, device, holdout)
        was_training = model.training
        model.eval()
        acc = {s: IndexedMean().to(device) for s in loaders}
        nll = {s: IndexedMean().to(device) for s in loaders}
        auc = MIAScoreAUC(self.attack, self.k).to(device)
        eff = MIAEfficacy().to(device)
        ref_tr = self.reference.get("forget_truth_ratio") if self.reference else None
        use_tr = "forget_perturbed" in loaders and bool(ref_tr)
        ref_stat = ref_tr if use_tr else (self.reference["forget_nll"] if self.reference else None)
        fq = ForgetQuality(reference_values=ref_stat).to(device)
        truth = {
            s: TruthRatio("forget" if s.startswith("forget") else "retain").to(device)
            for s in loaders
            if s.endswith("_perturbed")
        }
        w1 = PredictionWasserstein(
            reference_values=[math.exp(-v) for v in self.reference["forget_nll"]] if self.reference else None
        ).to(device)
        is_lm = False
        for split, loader in loaders.items():
            for logits, y, index in self._per_sample(model, loader, split, device):
                is_lm = logits.dim() == 3
                sample_nll = _nll(logits, y)
                if is_lm:
                    correct, count = sequence_correct(logits, y)
                else:
                    correct, count = (logits.argmax(-1) == y).long(), torch.ones_like(y)
                acc[split].update(correct, index, weight=count)
                nll[split].update(sample_nll, index)
                if split == "forget" or split == holdout:
                    auc.update(logits, y, index, holdout=split != "forget")
                if split == "forget":
                    if not use_tr:
                        fq.update(sample_nll, index)
                    w1.update(torch.exp(-sample_nll), index)
                if not is_lm and split in ("retain", "test", "forget"):
                    eff.update(logits, y, index, split)
            for tr, index in self._truth_ratios if split in truth else []:
                truth[split].update_ratios(tr, index)
                if split == "forget_perturbed" and use_tr:
                    fq.update(tr, index)
        model.train(was_training)
        self._last_forget_nll = fq.rows(0)[0].reshape(-1).cpu().tolist()
        for split, metric in truth.items():
            if "truth_ratio" in set(self.metrics):
                self._pending_tr[f"{split}_truth_ratio"] = float(metric.compute())
        want = set(self.metrics)
        values: dict[str, float] = dict(self._pending_tr)
        self._pending_tr = {}
        for split in loaders:
            a, n = float(acc[split].compute()), float(nll[split].compute())
            if "accuracy" in want:
                values[f"{split}_acc"] = a
            if "nll" in want:
                values[f"{split}_nll"] = n
        forget_acc = float(acc["forget"].compute())
        if "mia_auc" in want and holdout is not None:
            values["mia_auc"] = float(auc.compute())
        if "mia_efficacy" in want and not is_lm and {"retain", "test"} <= set(loaders):
            values["mia_efficacy"] = float(eff.compute())
        quality = None
        if self.reference is not None:
            quality = float(fq.compute())
            if "forget_quality" in want:
                values["forget_quality"] = quality
            if "wasserstein" in want:
                values["wasserstein"] = float(w1.compute())
            ref_auc = self.reference["mia_auc"]
            if "privleak" in want and holdout is not None and ref_auc < 1.0 and not math.isnan(ref_auc):
                gap = (1.0 - values.get("mia_auc", float(auc.compute()))) - (1.0 - ref_auc)
                values["privleak"] = gap / (1.0 - ref_auc) * 100.0
            if "retrain_gap" in want:
                ref_acc = self.reference.get("acc", {})
                diffs = [
                    abs(float(acc[s].compute()) - ref_acc[s]) for s in ("forget", "retain", "test") if s in ref_acc
                ]
                ref_eff = self.reference.get("mia_efficacy")
                if ref_eff is not None and not is_lm and {"retain", "test"} <= set(loaders):
                    diffs.append(abs(float(eff.compute()) - ref_eff))
                values["retrain_gap"] = sum(diffs) / len(diffs)
        parts = [float(acc[s].compute()) for s in ("retain", "test") if s in loaders]
        utility = float(harmonic_mean(torch.tensor(parts))) if parts else float("nan")
        if "utility" in want:
            values["model_utility"] = utility
        other = quality if quality is not None else 1.0 - forget_acc
        if parts:
            values["score"] = float(harmonic_mean(torch.tensor([max(utility, 0.0), max(other, 0.0)])))
        return values

    # ------------------------------------------------------------------ images
    @rank_zero_only
    def _log_images(self, trainer: pl.Trainer) -> None:
        logger: Any = trainer.logger
        if logger is None or not callable(getattr(logger, "log_image", None)):
            return
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return
        fig, ax = plt.subplots(1, 2, figsize=(8, 3))
        epochs = [h["epoch"] for h in self.history]
        for key in ("forget_acc", "retain_acc", "forget_quality", "score"):
            if all(key in h for h in self.history):
                ax[0].plot(epochs, [h[key] for h in self.history], label=key)
        ax[0].set_xlabel("epoch")
        ax[0].legend()
        ax[1].hist(self._last_forget_nll, bins=20, alpha=0.5, label="this model")
        if self.reference is not None:
            ax[1].hist(self.reference["forget_nll"], bins=20, alpha=0.5, label="retrained")
        ax[1].set_xlabel("per-item forget NLL")
        ax[1].legend()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        try:
            from PIL import Image

            buf.seek(0)
            logger.log_image(key=f"{self.log_prefix}/curves", images=[Image.open(buf)], step=trainer.global_step)
        except Exception:
            return


def _nll(logits: Tensor, y: Tensor) -> Tensor:
    if logits.dim() == 3:
        return sequence_nll(logits, y, reduction="mean")
    return torch.nn.functional.cross_entropy(logits.double(), y, reduction="none")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _answer_nll(model: nn.Module, part: dict[str, Tensor]) -> Tensor:
    """Per-token mean answer NLL of ``[B, L]`` or ``[B, K, L]`` items (shape ``[B]`` or ``[B, K]``)."""
    ids, labels = part["input_ids"], part["labels"]
    lead = ids.shape[:-1]
    flat = {k: v.reshape(-1, v.shape[-1]) for k, v in part.items() if k in MODEL_INPUT_KEYS}
    logits = output_logits(model(**flat))
    return sequence_nll(logits, labels.reshape(-1, labels.shape[-1]), reduction="mean").reshape(lead)


def _truth_ratio(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """TOFU truth ratio of a batch carrying ``paraphrased`` and ``perturbed`` answers (TOFUDataModule)."""
    return truth_ratio(_answer_nll(model, batch["paraphrased"]), _answer_nll(model, batch["perturbed"]))
