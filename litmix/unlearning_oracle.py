"""The retrain oracle of machine unlearning: the retain-only model's per-sample statistics, trained or loaded.

:class:`RetrainOracle` trains the model without the forget set in its own Trainer (or takes one already trained, or
loads the statistics a previous run saved) and serves, per named evaluation loader, per-sample losses,
predictions, correctness, prediction entropies, membership-attack scores and truth ratios. Its
:meth:`RetrainOracle.summary` gives the aggregate metrics the :class:`~litmix.callbacks.UnlearningEvaluator` compares
with (``unlearn/<metric>_gap``, ``retrain_gap``, forget quality, privleak, Wasserstein distance).

The helpers below (:func:`model_logits`, :func:`per_sample_nll`, :func:`batch_truth_ratio`) are the evaluation
forward passes shared with the evaluator.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from litmix.data import split_batch
from litmix.functional.unlearning import sequence_correct, sequence_nll
from litmix.functional.unlearning_metrics import (
    harmonic_mean,
    mia_efficacy,
    rank_auroc,
    truth_ratio,
    truth_ratio_aggregate,
)
from litmix.metrics._indexed_rows import IndexedRows
from litmix.metrics.mia_variants import ATTACKS, mia_attack_scores
from litmix.models import output_logits
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_path, check_type

__all__ = [
    "STATISTICS_FORMAT",
    "RetrainOracle",
    "batch_truth_ratio",
    "from_open_unlearning",
    "model_logits",
    "per_sample_nll",
    "reinitialise",
    "summarize",
    "to_device",
]

#: ``format`` field of a statistics file written by :meth:`RetrainOracle.save`.
STATISTICS_FORMAT = "litmix.RetrainOracle"
STATISTICS_VERSION = 1
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")
FIELDS = ("loss", "prediction", "correct", "count", "entropy", "mia_score", "truth_ratio")
_PAPER = (
    "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in both Image Classification and "
    "Generation (https://arxiv.org/abs/2310.12508)"
)


# ---------------------------------------------------------------------------------------------------------
# evaluation forward passes (shared with UnlearningEvaluator)


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` (tensors, dicts, lists, tuples) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def model_logits(
    model: nn.Module, batch: Any, split: str, owner: str = "RetrainOracle"
) -> tuple[Tensor, Tensor, Tensor]:
    """``(outputs, targets, index)`` of an evaluation batch: ``(x, y, index)`` items or LM dicts with ``labels``.

    Raises:
        ValueError: items without targets or index, naming ``split``.
    """
    x, y, index = split_batch(batch)
    if index is None or y is None:
        raise ValueError(
            f"{owner}: {split} items must carry targets and their index ((x, y, index) or dicts with 'labels' and "
            "'index'), as ForgetRetainDataModule's loaders do"
        )
    out = model(**{k: v for k, v in batch.items() if k in MODEL_INPUT_KEYS}) if isinstance(batch, dict) else model(x)
    return output_logits(out), y, index


def per_sample_nll(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample NLL: float64 cross-entropy of classifier logits, per-token mean answer NLL of LM logits."""
    if logits.dim() == 3:
        return sequence_nll(logits, y, reduction="mean")
    return F.cross_entropy(logits.double(), y, reduction="none")


def _answer_nll(model: nn.Module, part: dict[str, Tensor]) -> Tensor:
    """Per-token mean answer NLL of ``[B, L]`` or ``[B, K, L]`` items (shape ``[B]`` or ``[B, K]``)."""
    ids, labels = part["input_ids"], part["labels"]
    lead = ids.shape[:-1]
    flat = {k: v.reshape(-1, v.shape[-1]) for k, v in part.items() if k in MODEL_INPUT_KEYS}
    logits = output_logits(model(**flat))
    return sequence_nll(logits, labels.reshape(-1, labels.shape[-1]), reduction="mean").reshape(lead)


def batch_truth_ratio(model: nn.Module, batch: Any) -> Tensor | None:
    """TOFU truth ratio of a batch carrying ``paraphrased`` and ``perturbed`` answers, else None."""
    if not (isinstance(batch, dict) and isinstance(batch.get("paraphrased"), dict) and "perturbed" in batch):
        return None
    return truth_ratio(_answer_nll(model, batch["paraphrased"]), _answer_nll(model, batch["perturbed"]))


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` with every submodule's ``reset_parameters()`` re-drawn under ``seed``.

    The global random state is left as it was.

    Example:
        >>> a, b = reinitialise(nn.Linear(3, 2), seed=0), reinitialise(nn.Linear(3, 2), seed=0)
        >>> torch.equal(a.weight, b.weight)
        True
    """
    fresh = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return fresh


# ---------------------------------------------------------------------------------------------------------
# retain-only training in its own Trainer


class _StatisticRows(IndexedRows):
    """Per-sample statistic columns (:data:`FIELDS`) of one loader, gathered and de-duplicated by index."""

    def update(self, values: Tensor, index: Tensor) -> None:
        """Add ``[B, len(FIELDS)]`` rows for the items ``index``."""
        self._add(values, index, 0)

    def compute(self) -> Tensor:
        """The de-duplicated rows, sorted by index."""
        return self.rows(0)[0]


class _RetainOnly(pl.LightningModule):
    """Supervised training of the oracle's model on retain items (cross-entropy or L1)."""

    def __init__(self, model: nn.Module, task: str, lr: float, optimizer: str, weight_decay: float) -> None:
        super().__init__()
        self.model, self.task = model, task
        self.lr, self.optimizer_name, self.weight_decay = lr, optimizer, weight_decay

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        logits, y, _ = model_logits(self.model, batch, "retain")
        if self.task == "regression":
            return F.l1_loss(logits.reshape(-1).float(), y.reshape(-1).float())
        if logits.dim() == 3:
            return sequence_nll(logits, y, reduction="mean").mean()
        return F.cross_entropy(logits, y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[self.optimizer_name]
        return cls(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)  # type: ignore[no-any-return]


def _task_of(targets: Tensor, logits: Tensor) -> str:
    if logits.dim() == 3:
        return "language_model"
    return "regression" if targets.is_floating_point() else "classification"


@register("utility", "unlearning", paper=_PAPER, module="litmix.unlearning_oracle")
class RetrainOracle:
    """The retain-only model of an unlearning run, trained here or loaded as saved per-sample statistics.

    Retraining without the forget set is the exact-unlearning reference every approximate method is compared with
    (the "gap to retrain" of SalUn, https://arxiv.org/abs/2310.12508; the retain model of TOFU's forget quality,
    https://arxiv.org/abs/2401.06121). Three ways to get it:

    - ``RetrainOracle(model=...)`` with an architecture (an ``nn.Module``, re-initialised under ``seed``; a
      LightningModule with a ``.model`` uses that) or a zero-argument factory (called under ``seed``):
      :meth:`fit` trains it on the datamodule's ``retain_dataset`` in its own Trainer (``max_epochs``, optimizer
      ``optimizer`` with ``lr``; cross-entropy for integer targets, L1 for float targets, per-token NLL for LMs);
      seeded, so two fits give the same weights. The caller's random state is left unchanged.
    - ``RetrainOracle(model=..., trained=True)``: ``model`` already is the retain-only model.
    - ``RetrainOracle(statistics="oracle.json")``: the per-sample statistics a previous :meth:`save` wrote (no
      model needed), or an open-unlearning evaluation log of a retain model (``{metric: {"agg_value",
      "value_by_index"}}``; its ``forget_truth_ratio`` and ``*_Q_A_Prob`` items are read, see
      :func:`from_open_unlearning`), so users reuse their retain logs.

    :meth:`statistics` evaluates the model on named loaders (under DDP each rank its shard; the rows are gathered
    and de-duplicated by index, so every rank returns the same dict) and keeps the result; :meth:`summary`
    aggregates it. Pass the oracle to :class:`~litmix.callbacks.UnlearningEvaluator` (``oracle=``), which fits it
    in ``setup`` when needed and reports ``unlearn/<metric>_gap`` for every metric the oracle also has.

    **Statistics file** (JSON, written by :meth:`save`; floats round-trip exactly, so loading a file twice gives
    identical metrics)::

        {"format": "litmix.RetrainOracle", "version": 1,
         "task": "classification" | "regression" | "language_model",
         "attack": "loss", "k": 0.4,                 # membership attack of "mia_score"
         "loaders": {"<loader name>": {              # e.g. forget, retain, test, holdout, forget_perturbed
             "index":      [int, ...],               # item index in the loader, sorted ascending
             "loss":       [float, ...],             # cross-entropy / per-token mean NLL / absolute error
             "prediction": [float, ...] | null,      # argmax class / regression output / null for LMs
             "correct":    [float, ...] | null,      # correct count (0/1; answer tokens for LMs); null: regression
             "count":      [float, ...],             # weight of "correct" (1; answer tokens for LMs)
             "entropy":    [float, ...] | null,      # prediction entropy (classifiers), for MIA efficacy
             "mia_score":  [float, ...] | null,      # attack score (higher = looks unseen); null: regression
             "truth_ratio": [float, ...] | null}}}   # TOFU truth ratio (loaders serving perturbed answers)

    Args:
        model: the architecture to train, a factory returning it, or (``trained=True``) the retain-only model;
            None with ``statistics``.
        statistics: path of a statistics file written by :meth:`save`; None with ``model``.
        trained: ``model`` is already trained without the forget set (no :meth:`fit`).
        max_epochs: training epochs over the retain set (>= 1).
        lr: learning rate (finite, > 0).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"``.
        weight_decay: weight decay (finite, >= 0).
        batch_size: training batch size; None = the datamodule's ``batch_size``.
        seed: seed of the initialisation and of the shuffling (>= 0).

    Raises:
        TypeError: an argument of the wrong type (e.g. ``model="net"``, ``lr="0.1"``), naming it.
        ValueError: neither or both of ``model`` and ``statistics``; ``trained`` without ``model``; a missing
            ``statistics`` file (also a ``FileNotFoundError``) or one that is not a statistics file of a known
            version; ``max_epochs < 1``, ``lr <= 0``, a negative ``weight_decay``, NaN or infinite numbers, an
            unknown ``optimizer``; in :meth:`fit`, a datamodule without ``retain_dataset``; in :meth:`statistics`,
            an empty loader, items without index, or an attack other than the one a loaded file was scored with.

    Example:
        >>> import logging, tempfile; logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
        >>> from litmix.plugins.unlearning_module import UnlearningModule
        >>> module, dm, _ = UnlearningModule.example()
        >>> oracle = RetrainOracle(model=module.model, max_epochs=2, lr=1e-2)
        >>> _ = oracle.fit(dm)
        >>> stats = oracle.statistics(dm)
        >>> sorted(stats["loaders"]), stats["task"], len(stats["loaders"]["forget"]["loss"])
        (['forget', 'retain', 'test'], 'classification', 10)
        >>> path = tempfile.mkdtemp() + "/oracle.json"
        >>> oracle.save(path)
        >>> RetrainOracle(statistics=path).summary() == oracle.summary()
        True
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module] | None = None,
        statistics: str | os.PathLike[str] | None = None,
        trained: bool = False,
        max_epochs: int = 10,
        lr: float = 1e-3,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        weight_decay: float = 0.0,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        if model is not None and not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(
                f"{name}(model={model!r}): model must be an nn.Module, a zero-argument factory or None, "
                f"got {type(model).__name__}"
            )
        check_type(name, "statistics", statistics, (str, os.PathLike), allow_none=True)
        check_bool(name, "trained", trained)
        check_int(name, "max_epochs", max_epochs, low=1)
        check_float(name, "lr", lr, low=0.0, low_open=True)
        check_choice(name, "optimizer", optimizer, ("adam", "adamw", "sgd"))
        check_float(name, "weight_decay", weight_decay, low=0.0)
        check_int(name, "batch_size", batch_size, low=1, allow_none=True)
        check_int(name, "seed", seed, low=0)
        if (model is None) == (statistics is None):
            raise ValueError(
                f"{name}(model={type(model).__name__ if model is not None else None}, statistics={statistics!r}): "
                "give exactly one of model (to train or evaluate) and statistics (a saved file)"
            )
        if trained and model is None:
            raise ValueError(f"{name}(trained=True, model=None): trained=True says model is the retain-only model")
        self.max_epochs, self.lr, self.optimizer, self.weight_decay = max_epochs, float(lr), optimizer, weight_decay
        self.batch_size, self.seed, self.trained = batch_size, seed, trained
        self._factory = model
        #: The retain-only model (after :meth:`fit`, or given with ``trained=True``); None when loaded from a file.
        self.model: nn.Module | None = _as_module(model) if trained and model is not None else None
        self._statistics: dict[str, Any] | None = None
        if statistics is not None:
            path = check_path(name, "statistics", statistics)
            assert path is not None
            self._statistics = _read_statistics(path, name)

    # ------------------------------------------------------------------ training
    @property
    def ready(self) -> bool:
        """True when statistics can be served without training (a trained model or loaded statistics)."""
        return self.model is not None or self._statistics is not None

    def build(self) -> nn.Module:
        """A freshly initialised model under ``seed`` (the factory's result, or the architecture re-drawn)."""
        if isinstance(self._factory, nn.Module):
            return reinitialise(_as_module(self._factory), self.seed)
        assert self._factory is not None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            built = self._factory()
        if not isinstance(built, nn.Module):
            raise TypeError(
                f"RetrainOracle(model=<factory>): the factory returned {type(built).__name__}, not nn.Module"
            )
        return built

    def fit(self, datamodule: Any) -> nn.Module:
        """Train the retain-only model on ``datamodule.retain_dataset`` in its own Trainer and keep it.

        Does nothing (returns the model) when the oracle is already trained; statistics-only oracles refuse.

        Raises:
            ValueError: a datamodule without ``retain_dataset`` or an oracle loaded from a statistics file.
        """
        if self.model is not None:
            return self.model
        if self._factory is None:
            raise ValueError("RetrainOracle.fit: this oracle was loaded from a statistics file; there is no model")
        if not hasattr(datamodule, "retain_dataset"):
            datamodule.setup("fit")
        retain = getattr(datamodule, "retain_dataset", None)
        if retain is None:
            raise ValueError(
                f"RetrainOracle.fit: the datamodule {type(datamodule).__name__} has no retain_dataset; use "
                "ForgetRetainDataModule"
            )
        batch_size = self.batch_size or int(getattr(datamodule, "batch_size", 32))
        model = self.build()
        cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda):  # the caller's random state is left as it was
            torch.manual_seed(self.seed)
            first = next(iter(DataLoader(retain, batch_size=2)))
            with torch.no_grad():
                logits, y, _ = model_logits(model, first, "retain")
            task = _task_of(y, logits)
            loader = DataLoader(
                retain, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(self.seed)
            )
            # one device: this rank's GPU when there is one (also inside a multi-GPU DDP run), else the CPU
            gpu = torch.cuda.is_available()
            trainer = pl.Trainer(
                max_epochs=self.max_epochs,
                accelerator="gpu" if gpu else "cpu",
                devices=[torch.cuda.current_device()] if gpu else 1,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
            )
            trainer.fit(_RetainOnly(model, task, self.lr, self.optimizer, self.weight_decay), train_dataloaders=loader)
        self.model = model.eval()
        self._statistics = None
        return self.model

    # ------------------------------------------------------------------ statistics
    def statistics(
        self,
        loaders: Mapping[str, DataLoader] | Any | None = None,
        attack: str = "loss",
        k: float = 0.4,
        device: torch.device | None = None,
    ) -> dict[str, Any]:
        """Per-sample statistics on named ``loaders`` (or a datamodule's evaluation loaders); kept once computed.

        Under DDP pass each rank's shard: rows are gathered and de-duplicated by index (collectives inside: call
        on every rank). ``attack``/``k`` choose the membership attack of ``mia_score``
        (:class:`~litmix.metrics.MIAScoreAUC`).

        Raises:
            ValueError: no loaders for an oracle without statistics, an empty loader, items without index, or an
                ``attack``/``k`` other than the one loaded statistics were scored with.
        """
        check_choice("RetrainOracle.statistics", "attack", attack, tuple(a for a in ATTACKS if a != "reference"))
        if self._statistics is not None:
            if self._statistics.get("task") != "regression" and (
                self._statistics.get("attack") != attack or not math.isclose(float(self._statistics["k"]), k)
            ):
                raise ValueError(
                    f"RetrainOracle.statistics(attack={attack!r}, k={k}): the oracle's statistics were scored with "
                    f"attack={self._statistics.get('attack')!r}, k={self._statistics.get('k')}; use the same attack"
                )
            return self._statistics
        if self.model is None:
            raise ValueError("RetrainOracle.statistics: the oracle is not trained; call fit(datamodule) first")
        if loaders is None:
            raise ValueError("RetrainOracle.statistics: give named loaders or a datamodule")
        if not isinstance(loaders, Mapping):
            loaders = _datamodule_loaders(loaders)
        if device is None:
            device = next(iter(self.model.parameters()), torch.zeros(0)).device
        self._statistics = _collect(self.model, dict(loaders), attack, k, device)
        return self._statistics

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the statistics (see the class docstring for the format) as JSON.

        Raises:
            ValueError: when no statistics were computed or loaded yet.
        """
        if self._statistics is None:
            raise ValueError("RetrainOracle.save: no statistics yet; call statistics(loaders) first")
        Path(path).write_text(json.dumps(self._statistics))

    def summary(self) -> dict[str, Any]:
        """Aggregates of the statistics, in the layout :class:`~litmix.callbacks.UnlearningEvaluator` keeps.

        Keys: ``acc`` and ``nll`` (per loader), ``forget_nll`` and ``forget_index`` (per forget item),
        ``forget_prediction``, ``mia_auc`` (forget vs holdout, else test; NaN when neither), ``mia_efficacy``
        (classifiers with retain and test loaders, else None), ``model_utility`` (harmonic mean of retain and test
        accuracy), ``truth_ratio`` (TOFU aggregate per perturbed loader), ``forget_truth_ratio`` (per item).

        Raises:
            ValueError: when no statistics were computed or loaded yet.
        """
        if self._statistics is None:
            raise ValueError("RetrainOracle.summary: no statistics yet; call statistics(loaders) first")
        return summarize(self._statistics)


def _as_module(model: Any) -> nn.Module:
    inner = getattr(model, "model", None)
    if isinstance(model, pl.LightningModule) and isinstance(inner, nn.Module):
        return inner
    return cast(nn.Module, model)


def _datamodule_loaders(dm: Any) -> dict[str, DataLoader]:
    if not getattr(dm, "eval_datasets", None) and hasattr(dm, "setup"):
        dm.setup("validate")
    names = list(getattr(dm, "val_loader_names", None) or [])
    if callable(getattr(dm, "eval_dataloader", None)):
        return {s: dm.eval_dataloader(s) for s in names}
    return dict(zip(names, dm.val_dataloader(), strict=True))


@torch.no_grad()
def _collect(model: nn.Module, loaders: dict[str, DataLoader], attack: str, k: float, device: torch.device) -> dict:
    was_training = model.training
    model.eval()
    rows: dict[str, _StatisticRows] = {}
    present: dict[str, set[str]] = {}
    task = "classification"
    for split, loader in loaders.items():
        metric = rows[split] = _StatisticRows().to(device)
        seen = present[split] = set()
        n = 0
        for batch in loader:
            batch = to_device(batch, device)
            logits, y, index = model_logits(model, batch, split)
            task = _task_of(y, logits)
            cols = _columns(task, logits, y, attack, k)
            tr = batch_truth_ratio(model, batch)
            if tr is not None:
                cols["truth_ratio"] = tr.double()
            seen.update(cols)
            metric._add(
                torch.stack([cols.get(f, torch.full_like(cols["loss"], math.nan)) for f in FIELDS], 1), index, 0
            )
            n += int(index.numel())
        if n == 0:
            raise ValueError(f"RetrainOracle.statistics: the {split} loader is empty; give it at least one item")
    model.train(was_training)
    out: dict[str, Any] = {"format": STATISTICS_FORMAT, "version": STATISTICS_VERSION, "task": task}
    out.update({"attack": attack, "k": float(k), "loaders": {}})
    for split, metric in rows.items():
        values, index = metric.rows(0)
        entry: dict[str, Any] = {"index": index.cpu().tolist()}
        for col, field in enumerate(FIELDS):
            entry[field] = values[:, col].cpu().tolist() if field in present[split] else None
        out["loaders"][split] = entry
    return out


def _columns(task: str, logits: Tensor, y: Tensor, attack: str, k: float) -> dict[str, Tensor]:
    if task == "regression":
        preds = logits.reshape(logits.shape[0], -1)[:, 0].double()
        return {"loss": (preds - y.reshape(-1).double()).abs(), "prediction": preds, "count": torch.ones_like(preds)}
    loss = per_sample_nll(logits, y).double()
    cols = {"loss": loss, "mia_score": mia_attack_scores(attack, logits, y, k).double()}
    if task == "language_model":
        correct, count = sequence_correct(logits, y)
        cols.update(correct=correct.double(), count=count.double())
    else:
        logp = torch.log_softmax(logits.float(), dim=-1)
        cols.update(
            prediction=logits.argmax(-1).double(),
            correct=(logits.argmax(-1) == y).double(),
            count=torch.ones_like(loss),
            entropy=(-(logp.exp() * logp).sum(-1)).double(),
        )
    return cols


def summarize(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Aggregate metrics of per-sample statistics (see :meth:`RetrainOracle.summary`)."""
    loaders: Mapping[str, Any] = stats["loaders"]

    def col(split: str, field: str) -> Tensor | None:
        values = loaders.get(split, {}).get(field)
        return None if values is None else torch.tensor(values, dtype=torch.float64)

    acc: dict[str, float] = {}
    nll: dict[str, float] = {}
    truth: dict[str, float] = {}
    for split in loaders:
        correct, count, loss = col(split, "correct"), col(split, "count"), col(split, "loss")
        if correct is not None and count is not None and float(count.sum()) > 0:
            acc[split] = float(correct.sum() / count.sum())
        if loss is not None and stats.get("task") != "regression":
            nll[split] = float(loss.mean())
        tr = col(split, "truth_ratio")
        if split.endswith("_perturbed") and tr is not None:
            truth[split] = float(truth_ratio_aggregate(tr, "forget" if split.startswith("forget") else "retain"))
    holdout = "holdout" if "holdout" in loaders else ("test" if "test" in loaders else None)
    forget_scores, holdout_scores = col("forget", "mia_score"), col(holdout, "mia_score") if holdout else None
    mia = float("nan")
    if forget_scores is not None and holdout_scores is not None and holdout_scores.numel() > 0:
        scores = torch.cat([forget_scores, holdout_scores])
        labels = torch.cat([torch.zeros_like(forget_scores), torch.ones_like(holdout_scores)]).long()
        mia = float(rank_auroc(scores, labels))
    entropies = [col(s, "entropy") for s in ("retain", "test", "forget")]
    efficacy = None
    if all(e is not None and e.numel() > 0 for e in entropies):
        efficacy = float(mia_efficacy(*cast(list[Tensor], entropies)))
    parts = [acc[s] for s in ("retain", "test") if s in acc]
    perturbed = loaders.get("forget_perturbed", {}).get("truth_ratio")
    return {
        "forget_nll": list(loaders["forget"]["loss"]) if loaders["forget"].get("loss") is not None else None,
        "forget_index": list(loaders["forget"]["index"]),
        "forget_prediction": loaders["forget"].get("prediction"),
        "mia_auc": mia,
        "mia_efficacy": efficacy,
        "acc": acc,
        "nll": nll,
        "model_utility": float(harmonic_mean(torch.tensor(parts))) if parts else None,
        "truth_ratio": truth,
        "forget_truth_ratio": list(perturbed) if perturbed else None,
    }


def _is_open_unlearning(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("value_by_index"), dict)


def from_open_unlearning(log: Mapping[str, Any], owner: str = "from_open_unlearning") -> dict[str, Any]:
    """Statistics (the :class:`RetrainOracle` file layout) from an open-unlearning evaluation log of a retain model.

    open-unlearning (locuslab/open-unlearning) writes ``{metric: {"agg_value": ..., "value_by_index": {index:
    {...}}}}``. Read: ``<split>_Q_A_Prob`` (per item ``avg_loss``, else ``prob``: loss ``-log(prob)``) as the
    ``<split>`` loader's per-token mean NLL (also its ``loss`` attack score), and ``<split>_truth_ratio`` (per item
    ``score``, taken as the truth ratio as is) as the ``<split>_perturbed`` loader's truth ratios, which forget
    quality compares with. Other metrics are ignored.

    Raises:
        ValueError: no ``forget_Q_A_Prob`` / ``forget_truth_ratio`` entry, or items without a number.

    Example:
        >>> ratios = {"1": {"score": 0.7}, "0": {"score": 0.5}}
        >>> log = {"forget_truth_ratio": {"agg_value": 0.6, "value_by_index": ratios},
        ...        "forget_Q_A_Prob": {"agg_value": 0.5, "value_by_index": {"0": {"prob": 0.5, "avg_loss": 0.69}}}}
        >>> stats = from_open_unlearning(log)
        >>> stats["loaders"]["forget_perturbed"]["index"], stats["loaders"]["forget_perturbed"]["truth_ratio"]
        ([0, 1], [0.5, 0.7])
        >>> stats["loaders"]["forget"]["loss"]
        [0.69]
    """
    loaders: dict[str, dict[str, Any]] = {}

    def entry(split: str) -> dict[str, Any]:
        return loaders.setdefault(split, {"index": [], **dict.fromkeys(FIELDS)})

    for key, value in log.items():
        if not _is_open_unlearning(value):
            continue
        if key.endswith("_Q_A_Prob"):
            split, field = key[: -len("_Q_A_Prob")], "loss"
        elif key.endswith("_truth_ratio"):
            split, field = key[: -len("_truth_ratio")] + "_perturbed", "truth_ratio"
        else:
            continue
        rows = []
        for index, item in value["value_by_index"].items():
            if field == "loss":
                number = item.get("avg_loss") if isinstance(item, dict) else None
                if number is None and isinstance(item, dict) and item.get("prob") is not None:
                    number = -math.log(max(float(item["prob"]), 1e-300))
            else:
                number = item.get("score") if isinstance(item, dict) else None
            if not isinstance(number, int | float) or isinstance(number, bool):
                raise ValueError(f"{owner}: {key} item {index!r} has no number ({item!r})")
            rows.append((int(index), float(number)))
        rows.sort()
        target = entry(split)
        if target["index"] and target["index"] != [i for i, _ in rows]:
            raise ValueError(f"{owner}: {key} covers other items than the {split} loader's other metrics")
        target["index"] = [i for i, _ in rows]
        target[field] = [v for _, v in rows]
        if field == "loss":
            target["mia_score"] = list(target["loss"])
            target["count"] = [1.0] * len(rows)
    if "forget" not in loaders and "forget_perturbed" not in loaders:
        raise ValueError(f"{owner}: the log has neither forget_Q_A_Prob nor forget_truth_ratio per-item values")
    if "forget" not in loaders:  # forget quality needs the truth ratios only; the forget loader mirrors them
        loaders["forget"] = {**loaders["forget_perturbed"], "truth_ratio": None}
        loaders["forget"]["loss"] = None
    return {
        "format": STATISTICS_FORMAT,
        "version": STATISTICS_VERSION,
        "task": "language_model",
        "attack": "loss",
        "k": 0.4,
        "loaders": loaders,
    }


def _read_statistics(path: Path, owner: str) -> dict[str, Any]:
    try:
        stats = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{owner}(statistics={str(path)!r}): not a JSON statistics file ({err})") from err
    if isinstance(stats, dict) and "format" not in stats and any(_is_open_unlearning(v) for v in stats.values()):
        stats = from_open_unlearning(stats, f"{owner}(statistics={str(path)!r})")
    if not isinstance(stats, dict) or stats.get("format") != STATISTICS_FORMAT:
        raise ValueError(
            f"{owner}(statistics={str(path)!r}): not a statistics file written by RetrainOracle.save "
            f"(no format={STATISTICS_FORMAT!r})"
        )
    version = stats.get("version")
    if not isinstance(version, int) or version > STATISTICS_VERSION:
        raise ValueError(
            f"{owner}(statistics={str(path)!r}): statistics version {version!r} is not supported (this code reads "
            f"versions up to {STATISTICS_VERSION})"
        )
    loaders = stats.get("loaders")
    if not isinstance(loaders, dict) or "forget" not in loaders:
        raise ValueError(f"{owner}(statistics={str(path)!r}): the file has no 'forget' loader statistics")
    for split, entry in loaders.items():
        n = len(entry.get("index", []))
        for field in FIELDS:
            if entry.get(field) is not None and len(entry[field]) != n:
                raise ValueError(
                    f"{owner}(statistics={str(path)!r}): loader {split!r} has {len(entry[field])} {field} values "
                    f"for {n} indices"
                )
    return stats
