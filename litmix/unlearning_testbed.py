"""A CPU testbed for LM unlearning effects: the synthetic TOFU-shaped task, a tiny causal transformer, evaluation.

TOFU (Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", https://arxiv.org/abs/2401.06121) needs a
fine-tuned LLM; no such weights are offline and real TOFU cannot be memorised by a tiny CPU model. The effect
tests of the unlearning family therefore use the synthetic task of
:func:`litmix.functional.synthetic_tofu.make_synthetic_tofu` (entities whose answer is 3 random tokens), read by
:class:`litmix.datamodules.TOFUDataModule` with word tokens, and two models trained on it here: the
**original** (trained on ``full``) and the **retrain oracle** (trained on the retain split only). Both are cached
per process (:func:`synthetic_tofu_models`), so every test of a session shares one training run.

:func:`evaluate_lm` gives what TOFU reports: token accuracy and per-item truth ratio on the forget and retain
splits, forget quality (exact KS p-value of the forget truth ratios against the oracle's) and a model utility
(harmonic mean of retain answer probability and retain truth-ratio score, :class:`litmix.metrics.ModelUtility`).
"""

from __future__ import annotations

import copy
import functools
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from litmix.functional.unlearning import sequence_correct, sequence_nll
from litmix.functional.unlearning_metrics import ks_2samp_exact, truth_ratio, truth_ratio_aggregate

__all__ = ["SyntheticTOFU", "TinyCausalTransformer", "evaluate_lm", "lm_batch", "synthetic_tofu_models"]

TOKEN_KEYS = ("input_ids", "attention_mask", "labels")


class TinyCausalTransformer(nn.Module):
    """Token + position embeddings, ``layers`` pre-norm causal transformer blocks (no dropout), final norm, head.

    ``forward(input_ids, attention_mask=None)`` returns logits ``[B, T, V]`` (right padding: the causal mask
    alone keeps real positions independent of the padding). The blocks live in ``self.layers`` (an
    ``nn.ModuleList``), so :func:`litmix.functional.uld.truncate_layers` can keep the first ``K``.

    Example:
        >>> TinyCausalTransformer(10, dim=8, layers=1, heads=2)(torch.zeros(2, 5, dtype=torch.long)).shape
        torch.Size([2, 5, 10])
    """

    def __init__(self, vocab_size: int, dim: int = 32, layers: int = 1, heads: int = 4, max_len: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(max_len, dim)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True, norm_first=True)
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, T, V]``."""
        t = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos(torch.arange(t, device=input_ids.device))
        mask = torch.triu(torch.full((t, t), float("-inf"), device=input_ids.device), diagonal=1)
        for layer in self.layers:
            h = layer(h, src_mask=mask)
        return self.head(self.norm(h))  # type: ignore[no-any-return]


def lm_batch(items: list[dict[str, Any]], pad_id: int = 0) -> dict[str, Tensor]:
    """Stack pre-tokenised TOFU items (``input_ids``, ``attention_mask``, ``labels``, optional ``perturbed``)."""
    from litmix.datamodules.tofu import TOFUCollator

    keys = [k for k in (*TOKEN_KEYS, "perturbed") if k in items[0]]
    return TOFUCollator(pad_id)([{k: it[k] for k in keys} for it in items])  # type: ignore[no-any-return]


@dataclass
class SyntheticTOFU:
    """The synthetic task as tensors and its two trained models (see the module docstring).

    Attributes:
        forget, retain: training batches of the forget / retain split (dicts of ``[N, T]`` tensors).
        forget_perturbed, retain_perturbed: the ``*_perturbed`` rows with ``perturbed`` ``[N, K, T]`` tensors.
        original: the model trained on forget + retain.
        oracle: the model trained on retain only.
        datamodule: the :class:`~litmix.datamodules.TOFUDataModule` that read the files.
        config: the arguments of :func:`synthetic_tofu_models`.
    """

    forget: dict[str, Tensor]
    retain: dict[str, Tensor]
    forget_perturbed: dict[str, Any]
    retain_perturbed: dict[str, Any]
    original: nn.Module
    oracle: nn.Module
    datamodule: Any
    config: dict[str, Any]

    def fresh_original(self) -> nn.Module:
        """A trainable deep copy of the original model."""
        return copy.deepcopy(self.original).train().requires_grad_(True)


def _train(model: nn.Module, data: dict[str, Tensor], steps: int, lr: float, batch: int, seed: int) -> nn.Module:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = data["input_ids"].shape[0]
    model.train()
    for _ in range(steps):
        idx = torch.randint(n, (batch,), generator=gen)
        loss = sequence_nll(model(data["input_ids"][idx]), data["labels"][idx], reduction="mean").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=8)
def synthetic_tofu_models(
    seed: int = 0,
    n_entities: int = 100,
    dim: int = 32,
    layers: int = 1,
    steps: int = 800,
    lr: float = 3e-3,
    batch: int = 64,
) -> SyntheticTOFU:
    """Write the synthetic task (``forget10``), train the original and the retrain oracle; cached per process.

    ``seed`` seeds the task's answers and both models' initialisation and batches. Returned models are frozen
    and in eval mode: deep-copy them before training (:meth:`SyntheticTOFU.fresh_original`).

    Example:
        >>> task = synthetic_tofu_models(seed=0, n_entities=20, steps=2)
        >>> task.forget["input_ids"].shape[0], task.retain["input_ids"].shape[0]
        (2, 18)
    """
    from litmix.datamodules.tofu import TOFUDataModule
    from litmix.functional.synthetic_tofu import make_synthetic_tofu

    root = make_synthetic_tofu(tempfile.mkdtemp(prefix="litmix-testbed-"), n_entities=n_entities, seed=seed)
    dm = TOFUDataModule(
        root,
        forget_split="forget10",
        tokenizer="word",
        prompt_template="{question} :",
        val_splits=["forget", "retain", "forget_perturbed", "retain_perturbed"],
    )
    dm.setup("fit")
    pad = dm.tokenizer.pad_id
    forget, retain = lm_batch(dm.forget_dataset.items, pad), lm_batch(dm.retain_dataset.items, pad)
    fp = lm_batch(dm.eval_dataset("forget_perturbed").items, pad)  # type: ignore[attr-defined]
    rp = lm_batch(dm.eval_dataset("retain_perturbed").items, pad)  # type: ignore[attr-defined]
    full = {k: torch.cat([retain[k], forget[k]]) for k in TOKEN_KEYS}
    max_len = int(full["input_ids"].shape[1])
    models = []
    for i, data in enumerate((full, retain)):
        torch.manual_seed(seed * 1000 + i)
        model = TinyCausalTransformer(dm.vocab_size, dim=dim, layers=layers, max_len=max_len)
        models.append(_train(model, data, steps, lr, batch, seed * 1000 + i))
    config = {
        "seed": seed,
        "n_entities": n_entities,
        "dim": dim,
        "layers": layers,
        "steps": steps,
        "lr": lr,
        "batch": batch,
    }
    return SyntheticTOFU(forget, retain, fp, rp, models[0], models[1], dm, config)


@torch.no_grad()
def _accuracy(model: nn.Module, data: dict[str, Tensor]) -> float:
    correct, count = sequence_correct(model(data["input_ids"]), data["labels"])
    return float(correct.sum() / count.sum())


@torch.no_grad()
def _truth_ratios(model: nn.Module, data: dict[str, Any]) -> Tensor:
    para = sequence_nll(model(data["input_ids"]), data["labels"], reduction="mean")
    pert = data["perturbed"]
    b, k, t = pert["input_ids"].shape
    nll = sequence_nll(model(pert["input_ids"].reshape(b * k, t)), pert["labels"].reshape(b * k, t), "mean")
    return truth_ratio(para, nll.reshape(b, k)).double()


@torch.no_grad()
def evaluate_lm(model: nn.Module, task: SyntheticTOFU, oracle_forget_tr: Tensor | None = None) -> dict[str, float]:
    """TOFU-style numbers of ``model`` on the task (model put in eval mode, then back to its previous mode).

    Returns ``forget_acc``, ``retain_acc`` (answer-token accuracy), ``forget_nll`` (mean per-item summed NLL),
    ``forget_truth_ratio`` (TOFU's forget aggregate), ``forget_quality`` (exact KS p-value between the forget
    truth ratios of ``model`` and of the oracle; pass ``oracle_forget_tr`` to skip recomputing them), and
    ``model_utility`` (:class:`~litmix.metrics.ModelUtility` over ``retain_prob`` = mean ``exp(-avgNLL)`` of the
    retain answers and ``retain_truth_ratio`` = mean ``max(0, 1 - tr)`` on ``retain_perturbed``).

    Example:
        >>> task = synthetic_tofu_models(seed=0, n_entities=20, steps=2)
        >>> sorted(evaluate_lm(task.oracle, task))[:3]
        ['forget_acc', 'forget_nll', 'forget_quality']
    """
    from litmix.metrics.model_utility import ModelUtility

    was_training = model.training
    model.eval()
    try:
        f_tr = _truth_ratios(model, task.forget_perturbed)
        ref = oracle_forget_tr if oracle_forget_tr is not None else _truth_ratios(task.oracle, task.forget_perturbed)
        r_tr = _truth_ratios(model, task.retain_perturbed)
        r_nll = sequence_nll(model(task.retain["input_ids"]), task.retain["labels"], reduction="mean")
        mu = ModelUtility(components=["retain_prob", "retain_truth_ratio"])
        mu.update("retain_prob", torch.exp(-r_nll).double(), torch.arange(len(r_nll)))
        mu.update("retain_truth_ratio", (1.0 - r_tr).clamp_min(0.0), torch.arange(len(r_tr)))
        return {
            "forget_acc": _accuracy(model, task.forget),
            "retain_acc": _accuracy(model, task.retain),
            "forget_nll": float(sequence_nll(model(task.forget["input_ids"]), task.forget["labels"]).mean()),
            "forget_truth_ratio": float(truth_ratio_aggregate(f_tr, "forget")),
            "forget_quality": float(ks_2samp_exact(f_tr, ref)),
            "model_utility": float(mu.compute()),
        }
    finally:
        model.train(was_training)


def oracle_forget_truth_ratios(task: SyntheticTOFU) -> Tensor:
    """The oracle's per-item forget truth ratios (the reference sample of forget quality)."""
    return _truth_ratios(task.oracle, task.forget_perturbed)


class TrajectoryRecorder(Callback):
    """Records :func:`evaluate_lm` of ``pl_module.model`` (or the module itself) every ``every`` optimizer steps.

    ``rows`` holds ``(global_step, metrics)``. With ``configs`` (a dict of name -> attribute overrides of the
    module, e.g. ``{"w-1": {"weight": -1.0}}``) each row holds one metrics dict per configuration instead.
    """

    def __init__(self, task: SyntheticTOFU, every: int, configs: dict[str, dict[str, Any]] | None = None) -> None:
        self.task, self.every, self.configs = task, every, configs
        self.oracle_tr = oracle_forget_truth_ratios(task)
        self.rows: list[tuple[int, Any]] = []

    def _evaluate(self, pl_module: nn.Module) -> dict[str, float]:
        model = getattr(pl_module, "model", pl_module)
        return evaluate_lm(model, self.task, self.oracle_tr)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Evaluate at every ``every``-th optimizer step."""
        if trainer.global_step % self.every:
            return
        if self.configs is None:
            self.rows.append((trainer.global_step, self._evaluate(pl_module)))
            return
        row = {}
        for name, overrides in self.configs.items():
            saved = {k: getattr(pl_module, k) for k in overrides}
            for k, v in overrides.items():
                setattr(pl_module, k, v)
            row[name] = self._evaluate(pl_module)
            for k, v in saved.items():
                setattr(pl_module, k, v)
        self.rows.append((trainer.global_step, row))


def run_trajectory(
    task: SyntheticTOFU,
    module: Any,
    steps: int,
    every: int,
    batch_size: int = 5,
    configs: dict[str, dict[str, Any]] | None = None,
) -> list[tuple[int, Any]]:
    """Fit ``module`` on the task's :class:`~litmix.datamodules.TOFUDataModule` for ``steps``; the recorded rows."""
    from litmix.datamodules.tofu import TOFUDataModule
    from litmix.testing import make_trainer

    dm = TOFUDataModule(
        task.datamodule.data_dir,
        tokenizer="word",
        prompt_template="{question} :",
        batch_size=batch_size,
        seed=int(task.config["seed"]),
    )
    recorder = TrajectoryRecorder(task, every, configs)
    trainer = make_trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[recorder])
    trainer.fit(module, datamodule=dm)
    return recorder.rows


@functools.lru_cache(maxsize=16)
def unlearning_trajectory(
    seed: int,
    forget_loss: str,
    retain_loss: str | None = None,
    lr: float = 3e-4,
    steps: int = 300,
    every: int = 25,
    batch_size: int = 5,
    n_entities: int = 100,
    task_steps: int = 300,
    task_lr: float = 1e-2,
) -> tuple[tuple[int, dict[str, float]], ...]:
    """:class:`~litmix.plugins.UnlearningModule` on :func:`synthetic_tofu_models`' original; cached per process.

    Returns the recorded ``(step, metrics)`` rows (see :func:`run_trajectory`), so tests comparing against the
    same run (e.g. NPO+RT) share one training. ``cache_reference`` is on for the losses that support it.
    """
    from litmix.functional.unlearning_losses import resolve_forget_loss
    from litmix.plugins.unlearning_module import UnlearningModule

    task = synthetic_tofu_models(seed=seed, n_entities=n_entities, steps=task_steps, lr=task_lr)
    cache = resolve_forget_loss(forget_loss).needs in ("ref_nll", "ref_logits")
    module = UnlearningModule(
        task.fresh_original(), forget_loss=forget_loss, retain_loss=retain_loss, lr=lr, cache_reference=cache
    )
    return tuple(run_trajectory(task, module, steps, every, batch_size))


def best_at_utility(
    rows: Sequence[tuple[int, dict[str, float]]], utility: float, key: str = "forget_quality", lowest: bool = False
) -> float:
    """Best ``key`` (highest, or lowest) among rows whose ``model_utility`` is at least ``utility`` (NaN if none)."""
    ok = [m[key] for _, m in rows if m["model_utility"] >= utility]
    if not ok:
        return float("nan")
    return min(ok) if lowest else max(ok)


__all__ += [
    "TrajectoryRecorder",
    "best_at_utility",
    "oracle_forget_truth_ratios",
    "run_trajectory",
    "unlearning_trajectory",
]
