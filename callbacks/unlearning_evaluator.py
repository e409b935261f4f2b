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
from litmix.functional.relearn import forget_level, relearn_time
from litmix.functional.unlearning import sequence_correct
from litmix.functional.unlearning_metrics import harmonic_mean
from litmix.metrics.forget_quality import ForgetQuality
from litmix.metrics.indexed_mean import IndexedMean
from litmix.metrics.mia_efficacy import MIAEfficacy
from litmix.metrics.mia_variants import ATTACKS, MIAScoreAUC
from litmix.metrics.prediction_wasserstein import PredictionWasserstein
from litmix.metrics.truth_ratio import TruthRatio
from litmix.registry import register
from litmix.unlearning_oracle import (
    RetrainOracle,
    batch_truth_ratio,
    model_logits,
    per_sample_nll,
    summarize,
    to_device,
)
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
    "gaps",
)
#: Metrics whose value the retrain oracle also has: ``<metric>_gap = |value - oracle's value|``.
GAP_METRICS = ("acc", "nll", "mia_auc", "mia_efficacy", "model_utility", "truth_ratio")


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
    - with ``retrain_model`` (the model trained without the forget set) or ``oracle`` (a
      :class:`~litmix.unlearning_oracle.RetrainOracle`: trained in its own Trainer in ``setup`` when needed, or
      loaded from a statistics file), evaluated once, its statistics kept in this callback's checkpoint state:
      ``forget_quality`` = exact KS p-value of the per-item forget statistic
      against the retrained model's: TOFU's truth ratio when a ``forget_perturbed`` loader serves items with
      ``paraphrased`` and ``perturbed`` answers (:class:`~litmix.datamodules.TOFUDataModule`), else the NLL
      (:class:`~litmix.metrics.ForgetQuality`; mind its lattice), ``privleak``
      (MUSE, about 0 = like retraining, -100 = memorised), ``wasserstein`` = W1 between the true-answer
      probabilities of the two models on the forget set, ``retrain_gap`` = mean absolute difference to the
      retrained model of forget, retain and test accuracy and MIA efficacy (the "average gap" of SalUn,
      https://arxiv.org/abs/2310.12508);
    - with a reference, ``<metric>_gap`` (``gaps``) = ``|value - the retrained model's value|`` for every metric
      the oracle also has: ``<split>_acc``, ``<split>_nll``, ``mia_auc``, ``mia_efficacy``, ``model_utility``,
      ``<split>_truth_ratio`` (forget quality, privleak, Wasserstein distance and ``retrain_gap`` already compare
      with it);
    - ``relearn_time`` (``relearn=True``, classifier or regression items): fine-tuning steps on the whole forget
      set until its accuracy (``relearn_metric="accuracy"``) or loss is back at the original model's level,
      measured in ``on_fit_start`` before unlearning (:func:`~litmix.functional.relearn.relearn_time`; 0 for the
      original model, ``relearn_max_steps + 1`` when not back in time); rank 0's value on every rank;
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
            ``privleak``, ``wasserstein``, ``retrain_gap``, ``truth_ratio``, ``utility``, ``gaps`` (None = all that
            the splits and the reference allow).
        attack: membership attack of ``mia_auc`` / ``privleak`` (see :class:`~litmix.metrics.MIAScoreAUC`;
            ``reference`` is not available here).
        k: share of lowest tokens for the min-k attacks, in ``(0, 1]``.
        retrain_model: the retrain-only model (an ``nn.Module``), or None.
        images: log the histogram and curves as images when W&B and matplotlib are present.
        name: distinct name (checkpoint key and log prefix) when several evaluators run.
        oracle: a :class:`~litmix.unlearning_oracle.RetrainOracle` instead of ``retrain_model``, or None.
        relearn: log ``relearn_time`` at every evaluation.
        relearn_metric: ``"accuracy"`` or ``"loss"`` (the level to get back to).
        relearn_lr: Adam learning rate of the relearning fine-tune (finite, > 0).
        relearn_max_steps: most relearning steps (>= 1).
        relearn_batch_size: forget items per relearning step (>= 1).

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``every_n_epochs < 1``, an unknown metric name or attack, ``k`` outside ``(0, 1]``;
            ``forget_quality`` / ``privleak`` / ``wasserstein`` / ``retrain_gap`` / ``gaps`` asked for without
            ``retrain_model`` or ``oracle``, or both given; ``relearn_lr <= 0``, ``relearn_max_steps`` or
            ``relearn_batch_size`` < 1, an unknown ``relearn_metric``; at evaluation, an empty loader or items
            without an index (naming the split).
        MisconfigurationException: in ``setup``, a datamodule without a ``forget`` loader.

    Example:
        >>> import logging; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> module, datamodule, callbacks = UnlearningEvaluator.example()
        >>> from litmix.testing import make_trainer
        >>> trainer = make_trainer(max_epochs=1, callbacks=callbacks)
        >>> trainer.fit(module, datamodule=datamodule)
        >>> logged = [k[8:] for k in trainer.callback_metrics if k.startswith("unlearn/")]
        >>> keys = sorted(k for k in logged if not k.endswith("_gap") or k == "retrain_gap")
        >>> keys  # doctest: +NORMALIZE_WHITESPACE
        ['forget_acc', 'forget_nll', 'forget_quality', 'mia_auc', 'mia_efficacy', 'model_utility', 'privleak',
         'retain_acc', 'retain_nll', 'retrain_gap', 'score', 'test_acc', 'test_nll', 'wasserstein']
        >>> gaps = sorted(k for k in logged if k.endswith("_gap") and k != "retrain_gap")
        >>> gaps  # doctest: +NORMALIZE_WHITESPACE
        ['forget_acc_gap', 'forget_nll_gap', 'mia_auc_gap', 'mia_efficacy_gap', 'model_utility_gap', 'retain_acc_gap',
         'retain_nll_gap', 'test_acc_gap', 'test_nll_gap']
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
        oracle: RetrainOracle | None = None,
        relearn: bool = False,
        relearn_metric: Literal["accuracy", "loss"] = "accuracy",
        relearn_lr: float = 1e-3,
        relearn_max_steps: int = 100,
        relearn_batch_size: int = 32,
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
        check_type(owner, "oracle", oracle, RetrainOracle, allow_none=True)
        check_bool(owner, "relearn", relearn)
        check_choice(owner, "relearn_metric", relearn_metric, ("accuracy", "loss"))
        check_float(owner, "relearn_lr", relearn_lr, low=0.0, low_open=True)
        check_int(owner, "relearn_max_steps", relearn_max_steps, low=1)
        check_int(owner, "relearn_batch_size", relearn_batch_size, low=1)
        if retrain_model is not None and oracle is not None:
            raise ValueError(
                f"{owner}(retrain_model=..., oracle=...): give one reference, the retrained model or a RetrainOracle"
            )
        needs_ref = sorted({"forget_quality", "privleak", "wasserstein", "retrain_gap", "gaps"} & set(metrics or []))
        if needs_ref and retrain_model is None and oracle is None:
            raise ValueError(
                f"{owner}(metrics={metrics!r}, retrain_model=None, oracle=None): {needs_ref} compare with the model "
                "retrained without the forget set; pass retrain_model or oracle (a RetrainOracle)"
            )
        self.every_n_epochs, self.attack, self.k, self.images = every_n_epochs, attack, float(k), images
        self.metrics = list(metrics) if metrics is not None else list(METRICS)
        self.retrain_model = retrain_model
        self.oracle = oracle
        self._wrapped_model: RetrainOracle | None = None
        self.relearn, self.relearn_metric, self.relearn_lr = relearn, relearn_metric, float(relearn_lr)
        self.relearn_max_steps, self.relearn_batch_size = relearn_max_steps, relearn_batch_size
        #: The original model's forget accuracy (or loss), measured in ``on_fit_start`` (``relearn=True``).
        self.original_level: float | None = None
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
        oracle = self._oracle()
        if oracle is not None and not oracle.ready and self.reference is None:
            oracle.fit(dm)  # its own single-device Trainer, seeded (the same model on every rank)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """With ``relearn=True``, measure the original model's forget level before unlearning (kept in state)."""
        if self.relearn and self.original_level is None:
            forget = self._forget_tensors(self._loaders(getattr(trainer, "datamodule", None))["forget"])
            if forget is not None:
                model = self._model(pl_module)
                self.original_level = forget_level(model, *_on(forget, _device(model)), self.relearn_metric)

    def _oracle(self) -> RetrainOracle | None:
        """The oracle given, or one wrapping ``retrain_model`` (already trained)."""
        if self.oracle is not None:
            return self.oracle
        if self.retrain_model is None:
            return None
        if self._wrapped_model is None or self._wrapped_model.model is not self.retrain_model:
            self._wrapped_model = RetrainOracle(model=self.retrain_model, trained=True)
        return self._wrapped_model

    @staticmethod
    def _forget_tensors(loader: DataLoader) -> tuple[Tensor, Tensor] | None:
        """All forget ``(inputs, targets)`` as tensors (classifier / regression items; None for dict items)."""
        xs, ys = [], []
        for batch in loader:
            if isinstance(batch, dict):
                return None
            x, y, _ = split_batch(batch)
            if not isinstance(x, Tensor) or y is None:
                return None
            xs.append(x)
            ys.append(y)
        return (torch.cat(xs), torch.cat(ys)) if xs else None

    def _relearn_time(self, model: nn.Module, loader: DataLoader, world_size: int) -> float | None:
        """Relearn steps to the original level on the whole forget set (rank 0's value on every rank)."""
        value = None
        forget = self._forget_tensors(loader) if self.original_level is not None else None
        if forget is not None and self.original_level is not None:
            value = float(
                relearn_time(
                    model,
                    *_on(forget, _device(model)),
                    level=self.original_level,
                    metric=self.relearn_metric,  # type: ignore[arg-type]
                    lr=self.relearn_lr,
                    batch_size=self.relearn_batch_size,
                    max_steps=self.relearn_max_steps,
                )
            )
        if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            box = [value]
            torch.distributed.broadcast_object_list(box, src=0)
            value = box[0]
        return value

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
        return {
            **super().state_dict(),
            "history": [dict(h) for h in self.history],
            "reference": self.reference,
            "original_level": self.original_level,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore history and reference statistics (the retrained model is not needed again)."""
        super().load_state_dict(state_dict)
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.reference = state_dict.get("reference")
        self.original_level = state_dict.get("original_level")

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

    @torch.no_grad()
    def _per_sample(
        self, model: nn.Module, loader: DataLoader, split: str, device: torch.device
    ) -> list[tuple[Tensor, Tensor, Tensor]]:
        out = []
        self._truth_ratios = []
        for batch in loader:
            batch = to_device(batch, device)
            out.append(model_logits(model, batch, split, owner="UnlearningEvaluator"))
            tr = batch_truth_ratio(model, batch)
            if tr is not None:
                self._truth_ratios.append((tr, out[-1][2]))
        if not out:
            raise ValueError(f"UnlearningEvaluator: the {split} loader is empty; give it at least one item")
        return out

    def _compute_reference(self, loaders: dict[str, DataLoader], device: torch.device) -> dict[str, Any]:
        """The oracle's summary (its per-sample statistics on these loaders, gathered over ranks)."""
        oracle = self._oracle()
        assert oracle is not None
        if oracle.model is not None:
            oracle.model.to(device)
        return summarize(oracle.statistics(loaders, attack=self.attack, k=self.k, device=device))

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
        full_forget = loaders["forget"]
        loaders = {s: self._shard(dl, world_size, rank) for s, dl in loaders.items()}
        model = self._model(pl_module)
        device = next(iter(model.parameters()), torch.zeros(0)).device
        holdout = "holdout" if "holdout" in loaders else ("test" if "test" in loaders else None)
        if self._oracle() is not None and self.reference is None:
            self.reference = self._compute_reference(loaders, device)
        was_training = model.training
        model.eval()
        acc = {s: IndexedMean().to(device) for s in loaders}
        nll = {s: IndexedMean().to(device) for s in loaders}
        auc = MIAScoreAUC(self.attack, self.k).to(device)
        eff = MIAEfficacy().to(device)
        ref_tr = self.reference.get("forget_truth_ratio") if self.reference else None
        use_tr = "forget_perturbed" in loaders and bool(ref_tr)
        ref_nll = self.reference.get("forget_nll") if self.reference else None  # None: a truth-ratio-only oracle log
        ref_stat = ref_tr if use_tr else ref_nll
        fq = ForgetQuality(reference_values=ref_stat).to(device)
        truth = {
            s: TruthRatio("forget" if s.startswith("forget") else "retain").to(device)
            for s in loaders
            if s.endswith("_perturbed")
        }
        w1 = PredictionWasserstein(reference_values=[math.exp(-v) for v in ref_nll] if ref_nll else None).to(device)
        is_lm = False
        for split, loader in loaders.items():
            for logits, y, index in self._per_sample(model, loader, split, device):
                is_lm = logits.dim() == 3
                sample_nll = per_sample_nll(logits, y)
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
            if ref_stat:
                quality = float(fq.compute())
                if "forget_quality" in want:
                    values["forget_quality"] = quality
            if "wasserstein" in want and ref_nll:
                values["wasserstein"] = float(w1.compute())
            ref_auc = self.reference["mia_auc"]
            if "privleak" in want and holdout is not None and ref_auc < 1.0 and not math.isnan(ref_auc):
                gap = (1.0 - values.get("mia_auc", float(auc.compute()))) - (1.0 - ref_auc)
                values["privleak"] = gap / (1.0 - ref_auc) * 100.0
            if "retrain_gap" in want and self.reference.get("acc"):
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
        if self.reference is not None and "gaps" in want:
            values.update(self._gaps(values))
        if self.relearn:
            steps = self._relearn_time(model, full_forget, world_size)
            if steps is not None:
                values["relearn_time"] = steps
        return values

    def _gaps(self, values: dict[str, float]) -> dict[str, float]:
        """``<metric>_gap = |value - the oracle's value|`` for every metric the oracle also has."""
        ref = self.reference or {}
        theirs: dict[str, Any] = {f"{s}_acc": v for s, v in ref.get("acc", {}).items()}
        theirs.update({f"{s}_nll": v for s, v in ref.get("nll", {}).items()})
        theirs.update({f"{s}_truth_ratio": v for s, v in ref.get("truth_ratio", {}).items()})
        theirs.update({k: ref.get(k) for k in ("mia_auc", "mia_efficacy", "model_utility")})
        out = {}
        for key, value in theirs.items():
            if key in values and value is not None and not math.isnan(float(value)):
                out[f"{key}_gap"] = abs(values[key] - float(value))
        return out

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
        if self.reference is not None and self.reference.get("forget_nll"):
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


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.zeros(0)).device


def _on(pair: tuple[Tensor, Tensor], device: torch.device) -> tuple[Tensor, Tensor]:
    return pair[0].to(device), pair[1].to(device)
