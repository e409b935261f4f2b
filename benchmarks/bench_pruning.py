"""Train-step cost of GradualPruning vs dense training vs Lightning's ModelPruning (MNIST MLP, 1 CPU thread).

Usage: ``python benchmarks/bench_pruning.py [--root ../shared/data/mnist] [--epochs 6] [--repeats 3] [--out ...]``

All three runs train the same 784-300-100-10 MLP (Adam 1e-3, batch 128, 20k MNIST training images, same seed) to
90 % global unstructured magnitude sparsity on the same cubic schedule (0 -> 90 % over the first 60 % of the
steps): GradualPruning updates the masks every 20 steps, ModelPruning at epoch ends (the only granularity it has),
with per-epoch amounts converted to its compounding semantics. Step time = median wall time between consecutive
``on_train_batch_start`` calls (forward, backward, optimizer step and every callback hook). A second part checks
what a ``ckpt_path`` resume does to each method's masks and whether the checkpoint loads strictly into the
user's class; a third measures the bytes each method keeps per masked (prunable) weight.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch as pl
import torch
from _common import MnistMLP, StepTimer, mnist_test_accuracy
from _machine import cpu_model
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ModelPruning
from torch import nn

from litmix.callbacks.gradual_pruning import GradualPruning
from litmix.datamodules.mnist import MNISTDataModule
from litmix.functional.sparsity import cubic_sparsity, sparsity_report
from litmix.testing import make_trainer

REPO = Path(__file__).resolve().parents[1]
TARGET, END_FRACTION, EVERY = 0.9, 0.6, 20
ABLATION = "GradualPruning(zero_second_moments=True)"  # deprecated: zeroes Adam's exp_avg_sq too


class MaskBytes(Callback):
    """At the end of epoch 1: bytes of per-weight state each method adds to the module, per masked weight.

    Counted: ``*_mask`` buffers (GradualPruning: bool; ModelPruning: float), ModelPruning's ``weight_orig``
    parameters and the ``weight`` tensors it recomputes before every forward. Optimizer state is the same for all.
    """

    def __init__(self) -> None:
        self.bytes_per_weight = 0.0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != 1:
            return
        extra = weights = 0
        for module in pl_module.modules():
            for name, buf in module.named_buffers(recurse=False):
                if name.endswith("_mask"):
                    extra += buf.numel() * buf.element_size()
                    weights += buf.numel()
            for name, param in module.named_parameters(recurse=False):
                if name.endswith("_orig"):
                    extra += param.numel() * param.element_size()
                    plain = module.__dict__.get(name[: -len("_orig")])
                    if isinstance(plain, torch.Tensor):
                        extra += plain.numel() * plain.element_size()
        self.bytes_per_weight = extra / max(weights, 1)


class HookClock:
    """CPU time spent inside a callback's per-step hooks, split into mask-update steps and all other steps."""

    HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")

    def __init__(self, cb: GradualPruning) -> None:
        self.cb = cb
        self.update = self.other = 0.0
        self.update_steps: set[int] = set()
        self.steps: set[int] = set()
        for hook in self.HOOKS:  # instance attributes shadow the methods Lightning looks up
            setattr(cb, hook, self._timed(getattr(cb, hook)))

    def _timed(self, fn: Any) -> Any:
        def wrapper(trainer: pl.Trainer, *args: Any) -> Any:
            step, before = trainer.global_step, self.cb.last_update_step
            start = time.process_time()
            out = fn(trainer, *args)
            spent = time.process_time() - start
            if self.cb.last_update_step != before:
                self.update_steps.add(step)
            if step in self.update_steps:
                self.update += spent
            else:
                self.other += spent
            self.steps.add(step)
            return out

        return wrapper


def linear_weights(model: MnistMLP) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.net if isinstance(m, nn.Linear)]


def model_pruning_amounts(steps_per_epoch: int, epochs: int) -> list[float]:
    """Per-epoch ModelPruning amounts that reach the cubic schedule's absolute targets at each epoch end.

    A float amount prunes that fraction of the *remaining* weights, so amount_e = 1 - (1 - s_e) / (1 - s_{e-1}).
    """
    total = steps_per_epoch * epochs
    t1 = round(END_FRACTION * total)
    amounts, prev = [], 0.0
    for e in range(epochs):
        s = cubic_sparsity((e + 1) * steps_per_epoch, 0, t1, 0.0, TARGET)
        amounts.append(1 - (1 - s) / (1 - prev) if s > prev else 0.0)
        prev = s
    return amounts


class EpochAmount:
    """Picklable callable amount for ModelPruning."""

    def __init__(self, amounts: list[float]) -> None:
        self.amounts = amounts

    def __call__(self, epoch: int) -> float:
        return self.amounts[epoch] if epoch < len(self.amounts) else 0.0


def run(method: str, dm: MNISTDataModule, epochs: int, seed: int) -> dict[str, Any]:
    pl.seed_everything(seed, verbose=False)
    model = MnistMLP()
    timer, probe = StepTimer(), MaskBytes()
    steps_per_epoch = len(dm.train_dataloader())
    callbacks: list[Callback] = [timer]
    clock: HookClock | None = None
    if method == "GradualPruning":
        gp = GradualPruning(TARGET, end_fraction=END_FRACTION, every_n_steps=EVERY, scope="global")
        clock = HookClock(gp)
        callbacks.append(gp)
    elif method == ABLATION:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            callbacks.append(
                GradualPruning(
                    TARGET, end_fraction=END_FRACTION, every_n_steps=EVERY, scope="global", zero_second_moments=True
                )
            )
    elif method == "ModelPruning":
        amounts = model_pruning_amounts(steps_per_epoch, epochs)
        callbacks.append(
            ModelPruning(
                "l1_unstructured",
                parameters_to_prune=linear_weights(model),
                amount=EpochAmount(amounts),
                use_global_unstructured=True,
                use_lottery_ticket_hypothesis=False,
                verbose=0,
            )
        )
    callbacks.append(probe)
    start = time.perf_counter()
    make_trainer(max_epochs=epochs, callbacks=callbacks).fit(model, datamodule=dm)
    wall = time.perf_counter() - start
    if method.startswith("GradualPruning"):
        GradualPruning.make_permanent(model)
    return {
        "times": timer.times,
        "fit": wall,
        "sparsity": sparsity_report(model)["global"],
        "acc": mnist_test_accuracy(model, dm),
        "bytes": probe.bytes_per_weight,
        "hooks": None
        if clock is None
        else (
            clock.other / max(len(clock.steps - clock.update_steps), 1),
            clock.update / max(len(clock.update_steps), 1),
            len(clock.update_steps),
        ),
    }


def resume_check(dm_small: MNISTDataModule, tmp: Path, method: str) -> tuple[float, float, list[str], str]:
    """Final sparsity of an uninterrupted 2-epoch run and of a run resumed from the epoch-0 checkpoint.

    Also the ``net.0.*`` keys of the checkpoint and whether ``MLP.load_from_checkpoint`` (strict) loads it.
    """

    def callbacks(model: MnistMLP) -> list[Callback]:
        if method == "ModelPruning":  # 0.5 per epoch, compounding: 50 % after epoch 0, 75 % after epoch 1
            return [
                ModelPruning(
                    "l1_unstructured",
                    parameters_to_prune=linear_weights(model),
                    amount=0.5,
                    use_global_unstructured=True,
                    use_lottery_ticket_hypothesis=False,
                    verbose=0,
                )
            ]
        return [GradualPruning(0.75, start_step=0, end_step=2 * len(dm_small.train_dataloader()) - 1, every_n_steps=5)]

    out = tmp / method
    pl.seed_everything(0, verbose=False)
    full = MnistMLP()
    ckpt = ModelCheckpoint(dirpath=out, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    make_trainer(max_epochs=2, callbacks=[*callbacks(full), ckpt], enable_checkpointing=True).fit(
        full, datamodule=dm_small
    )
    first = sorted(out.glob("epoch=0-*.ckpt"))[0]
    keys = [k for k in torch.load(first, weights_only=True)["state_dict"] if k.startswith("net.0.")]
    try:
        MnistMLP.load_from_checkpoint(first)
        strict = "yes"
    except RuntimeError as err:
        strict = "no: " + str(err).splitlines()[1].strip()[:60]
    pl.seed_everything(0, verbose=False)
    resumed = MnistMLP()
    make_trainer(max_epochs=2, callbacks=callbacks(resumed)).fit(resumed, datamodule=dm_small, ckpt_path=str(first))
    if method == "GradualPruning":
        GradualPruning.make_permanent(full)
        GradualPruning.make_permanent(resumed)
    return sparsity_report(full)["global"], sparsity_report(resumed)["global"], keys, strict


def sqrt_cost(repeats: int = 200) -> tuple[float, float, float]:
    """Microseconds per ``sqrt`` of a dense 300x784 tensor, one with 90 % exact zeros and one of denormals."""
    gen = torch.Generator().manual_seed(0)
    dense = torch.rand(300, 784, generator=gen)
    sparse = dense * (torch.rand(300, 784, generator=gen) > 0.9)
    denormal = torch.full((300, 784), 1e-40)
    out = []
    for x in (dense, sparse, denormal):
        x.sqrt()
        start = time.perf_counter()
        for _ in range(repeats):
            x.sqrt()
        out.append((time.perf_counter() - start) / repeats * 1e6)
    return out[0], out[1], out[2]


def adam_cost(repeats: int = 50) -> dict[tuple[str, str], float]:
    """Microseconds per Adam step on a 300x784 weight with 90 % pruned coordinates (gradient and exp_avg 0 there).

    By implementation (for-loop, foreach, fused) and by what ``exp_avg_sq`` holds at the pruned coordinates: its
    decayed values (the default), exact zeros (``zero_second_moments=True``) or denormals (where the default's
    values end up after ~ln(1e-38 / g^2) / ln(beta2) steps).
    """
    gen = torch.Generator().manual_seed(0)
    keep = torch.rand(300, 784, generator=gen) > 0.9
    out = {}
    for impl in ("for-loop", "foreach", "fused"):
        for held in ("decayed", "zeros", "denormals"):
            p = nn.Parameter(torch.randn(300, 784, generator=gen) * keep)
            kwargs = {"fused": True} if impl == "fused" else {"foreach": impl == "foreach"}
            opt = torch.optim.Adam([p], lr=1e-3, **kwargs)
            p.grad = torch.randn(300, 784, generator=gen)
            opt.step()
            p.grad.mul_(keep)
            opt.state[p]["exp_avg"].mul_(keep)
            if held == "zeros":
                opt.state[p]["exp_avg_sq"].mul_(keep)
            elif held == "denormals":
                opt.state[p]["exp_avg_sq"].masked_fill_(~keep, 1e-40)
            opt.step()
            best = math.inf
            for _ in range(3):
                start = time.perf_counter()
                for _ in range(repeats):
                    opt.step()
                best = min(best, (time.perf_counter() - start) / repeats * 1e6)
            out[impl, held] = best
    return out


# ----------------------------------------------------------------------------- every pruner vs dense (issue 7 §4)
RATIO_TARGET = 1.05
PRUNERS = ("GradualPruning", "DynamicSparseTraining", "LotteryTicket", "PolarizationPruning", "OneShotPruning")
CHANGE_AT, SETTLE = 5, 10  # every pruner's (last) mask change by step 5; steps >= 10 are "between mask updates"


class CharGPT(pl.LightningModule):
    """The char-GPT of ``train_char_gpt.py`` (Hugging Face GPT-2 from a config) as a LightningModule, AdamW 1e-3."""

    def __init__(self, vocab: int, block: int) -> None:
        super().__init__()
        from train_char_gpt import build

        self.model = build(vocab, n_layer=4, n_head=4, n_embd=96, block=block)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x).logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def make_pruner(name: str, sparsity: float, gates: list[str]) -> Callback:
    """Each pruner with its (last) mask change at step ``CHANGE_AT`` at the latest, fixed masks afterwards."""
    from litmix.callbacks import DynamicSparseTraining, LotteryTicket, OneShotPruning, PolarizationPruning

    if name == "GradualPruning":
        return GradualPruning(sparsity, start_step=0, end_step=CHANGE_AT, every_n_steps=1)
    if name == "DynamicSparseTraining":  # random initial mask, one RigL update at step 5
        return DynamicSparseTraining(sparsity, update_every=CHANGE_AT, end_step=CHANGE_AT + 1, distribution="uniform")
    if name == "LotteryTicket":
        return LotteryTicket(sparsity, prune_every=CHANGE_AT, unit="step")
    if name == "PolarizationPruning":
        return PolarizationPruning(0.5, weight=1e-4, prune_at=CHANGE_AT, unit="step", parameter_names=gates)
    return OneShotPruning("magnitude", sparsity, calibration_batches=1)  # pruned at fit start


class PrunerHookTimer:
    """Thread CPU time inside a callback's per-step hooks, summed over the steps >= SETTLE."""

    HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end")

    def __init__(self, cb: Callback) -> None:
        self.spent = 0.0
        self.steps: set[int] = set()
        for hook in self.HOOKS:  # instance attributes shadow the methods Lightning looks up
            setattr(cb, hook, self._timed(getattr(cb, hook)))

    def _timed(self, fn: Any) -> Any:
        def wrapper(trainer: pl.Trainer, *args: Any) -> Any:
            step, start = trainer.global_step, time.thread_time()
            out = fn(trainer, *args)
            if step >= SETTLE:
                self.spent += time.thread_time() - start
                self.steps.add(step)
            return out

        return wrapper


def step_ratio_runs(
    make_module: Any, loader: Any, steps: int, sparsity: float, gates: list[str], repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Per method and repeat: the median thread-CPU step (steps >= SETTLE) and the pruner's hook CPU per step."""
    methods = ("dense", *PRUNERS)
    out: dict[str, dict[str, list[float]]] = {m: {"step": [], "hooks": []} for m in methods}

    def run(method: str) -> tuple[float, float]:
        pl.seed_everything(0, verbose=False)
        module, timer = make_module(), StepTimer()
        callbacks: list[Callback] = [timer]
        hooks = None
        if method != "dense":
            cb = make_pruner(method, sparsity, gates)
            hooks = PrunerHookTimer(cb)
            callbacks.insert(0, cb)
        make_trainer(max_steps=steps, callbacks=callbacks).fit(module, train_dataloaders=loader)
        step = statistics.median(t[4] for t in timer.times if t[1] >= SETTLE)
        return step, 0.0 if hooks is None else hooks.spent / max(len(hooks.steps), 1)

    run("dense")  # warm-up (first-call costs), not counted
    for r in range(repeats):  # interleaved, the order rotated: load changes and position hit every method alike
        for m in methods[r % len(methods) :] + methods[: r % len(methods)]:
            step, hooks = run(m)
            out[m]["step"].append(step)
            out[m]["hooks"].append(hooks)
    return out


def pruner_step_ratios(root: str, text: str, repeats: int, mlp_steps: int, gpt_steps: int) -> list[str]:
    """Markdown: every pruner's step over the dense step between mask updates, MNIST MLP and char-GPT side by side."""
    from torch.utils.data import DataLoader, TensorDataset
    from train_char_gpt import load_splits, random_windows

    mlp_steps, gpt_steps = max(mlp_steps, SETTLE + 5), max(gpt_steps, SETTLE + 5)  # steps to time after SETTLE

    dm = MNISTDataModule(root, batch_size=128, val_size=0, train_size=128 * mlp_steps, flatten=True, seed=0)
    dm.setup()
    mlp = step_ratio_runs(MnistMLP, dm.train_dataloader(), mlp_steps, 0.9, ["net.0.bias", "net.2.bias"], repeats)
    chars, train_ids, _ = load_splits(text)
    block, batch = 64, 16
    windows = random_windows(train_ids, batch * gpt_steps, block, torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(windows[:, :-1], windows[:, 1:]), batch_size=batch)
    probe = CharGPT(len(chars), block)
    gates = [n for n, p in probe.named_parameters() if ".ln_" in n and n.endswith("weight")]
    n_params = sum(p.numel() for p in probe.parameters())
    gpt = step_ratio_runs(lambda: CharGPT(len(chars), block), loader, gpt_steps, 0.5, gates, repeats)

    def cells(runs: dict[str, dict[str, list[float]]], m: str) -> str:
        dense, own = runs["dense"]["step"], runs[m]["step"]
        ratios = [a / b for a, b in zip(own, dense, strict=True)]
        best = min(own) / min(dense)
        hooks = statistics.median(runs[m]["hooks"]) / statistics.median(dense)
        mark = "" if best <= RATIO_TARGET else " **(misses)**"
        return (
            f"**{best:.3f}x**{mark} | {statistics.median(ratios):.3f}x ({min(ratios):.3f}-{max(ratios):.3f}) | "
            f"{statistics.median(runs[m]['hooks']) * 1e6:.0f} us ({hooks:.1%})"
        )

    lines = [
        "| pruner | MLP: best step / best dense step | MLP: step / dense step per repeat, median (range) | MLP: "
        "pruner hooks per step (share of the dense step) | char-GPT: best step / best dense step | char-GPT: per "
        "repeat, median (range) | char-GPT: pruner hooks per step |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in PRUNERS:
        lines.append(f"| {m} | {cells(mlp, m)} | {cells(gpt, m)} |")
    lines.append(
        f"| (dense step, ms, per repeat) | {', '.join(f'{v * 1e3:.2f}' for v in mlp['dense']['step'])} | | | "
        f"{', '.join(f'{v * 1e3:.2f}' for v in gpt['dense']['step'])} | | |"
    )
    lines += [
        "",
        f"Target (issue 7 §4): every pruner's training step <= {RATIO_TARGET:.2f}x the dense step between mask "
        f"updates. {repeats} interleaved repeats in one process (order rotated per repeat, after one uncounted "
        "dense warm-up run); per run the median step. Best: the smallest of a pruner's medians over the repeats "
        "divided by the dense one's (the least disturbed by other load on this shared machine: the target's "
        "column); per repeat: the ratio to the dense run of the same repeat. Hooks: thread CPU time inside the "
        "pruner's per-step hooks (`on_train_batch_start`, `on_before_optimizer_step`, `on_train_batch_end`) per "
        "step. A step is the thread "
        f"CPU time (`time.thread_time`) between consecutive batch starts (forward, backward, optimizer step, every "
        f"hook), over steps >= {SETTLE}; every pruner's last mask change happens by step {CHANGE_AT}. "
        f"MNIST MLP 784-300-100-10, Adam 1e-3, batch 128, {mlp_steps} steps per run, 90 % sparsity; "
        f"char-GPT (Hugging Face GPT-2 from a config: 4 blocks, d=96, {n_params:,} parameters), AdamW 1e-3, "
        f"batch {batch} x {block} characters of Tiny Shakespeare, {gpt_steps} steps per run, 50 % sparsity. "
        "GradualPruning: steps 0..5 every step; DynamicSparseTraining: RigL, random initial mask, one update at "
        "step 5; LotteryTicket: one round at step 5 (rewind to init, optimizer reset); PolarizationPruning: the "
        "MLP's hidden biases (it has no BatchNorm) / the GPT's LayerNorm weights as gates, 50 % pruned at step 5; "
        "OneShotPruning: magnitude, at fit start.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(REPO.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "pruning.md"))
    parser.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    parser.add_argument("--ratio-repeats", type=int, default=5)
    parser.add_argument("--ratio-mlp-steps", type=int, default=100)
    parser.add_argument("--ratio-gpt-steps", type=int, default=30)
    parser.add_argument("--ratios-only", action="store_true", help="only the every-pruner step ratios (a few minutes)")
    parser.add_argument("--ratio-out", default=str(REPO / "benchmarks" / "results" / "pruner_step_ratios.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    ratio_lines = pruner_step_ratios(
        args.root, args.text, args.ratio_repeats, args.ratio_mlp_steps, args.ratio_gpt_steps
    )
    ratio_text = "\n".join(
        [
            "# Every pruner's training step vs the dense step between mask updates (MNIST MLP, char-GPT)",
            "",
            f"Machine: {cpu_model()} ({os.cpu_count()} cores, shared), 1 thread, torch {torch.__version__}, "
            f"lightning {lightning.__version__}; 1-min load average {os.getloadavg()[0]:.1f}. Generated by "
            f"`benchmarks/bench_pruning.py --ratios-only` in {time.perf_counter() - t_start:.0f} s.",
            "",
            *ratio_lines,
        ]
    )
    print(ratio_text)
    Path(args.ratio_out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.ratio_out).write_text(ratio_text + "\n")
    if args.ratios_only:
        return
    dm = MNISTDataModule(args.root, batch_size=128, val_size=0, train_size=args.train_size, flatten=True, seed=0)
    dm.setup()
    methods = ("dense", "GradualPruning", ABLATION, "ModelPruning")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for _ in range(args.repeats):  # interleaved, so that load changes on a shared machine hit all methods
        for m in methods:
            runs[m].append(run(m, dm, args.epochs, args.seed))
    results: dict[str, dict[str, float]] = {}
    for m, rs in runs.items():
        steps = [t for r in rs for t in r["times"] if t[0] >= 1]  # (epoch, step, wall, process CPU, thread CPU)
        results[m] = {
            "p10": statistics.quantiles([t[3] for t in steps], n=10)[0],
            "cpu": statistics.median(t[3] for t in steps),
            "wall": statistics.median(t[2] for t in steps),
            "fit": statistics.median(r["fit"] for r in rs),
            "sparsity": rs[0]["sparsity"],
            "acc": rs[0]["acc"],
            "bytes": rs[0]["bytes"],
        }

    dense, mp = results["dense"], results["ModelPruning"]
    lines = [
        f"Machine: {cpu_model()} ({os.cpu_count()} cores, shared), 1 thread (torch.set_num_threads(1)), "
        f"torch {torch.__version__}, lightning {lightning.__version__}, Python {platform.python_version()}; "
        f"1-min load average at the end of the runs {os.getloadavg()[0]:.1f} (on a loaded machine compare ratios, "
        "and prefer the CPU-time columns).",
        "",
        f"MNIST MLP 784-300-100-10, Adam 1e-3, batch 128, {args.train_size} training images, {args.epochs} epochs, "
        f"seed {args.seed}, {args.repeats} interleaved repeat(s); target {TARGET:.0%} global unstructured magnitude "
        f"sparsity, cubic schedule over the first {END_FRACTION:.0%} of the steps (GradualPruning: every {EVERY} "
        "steps; ModelPruning: at epoch ends, its only granularity). Step = median time between consecutive batch "
        "starts (forward, backward, optimizer step, all hooks) over epochs >= 1, when ModelPruning's forward "
        "pre-hooks are active; CPU = process time (robust to other load on the machine), wall = wall clock. "
        "Test accuracy on the full t10k set.",
        "",
        "| method | CPU ms/step | vs dense | vs ModelPruning | fastest-10 % CPU ms/step | vs dense | wall ms/step "
        "| vs dense | vs ModelPruning | fit wall (s) | final sparsity | test acc | bytes per masked weight |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['cpu'] * 1e3:.2f} | {r['cpu'] / dense['cpu']:.2f}x | {r['cpu'] / mp['cpu']:.2f}x | "
            f"{r['p10'] * 1e3:.2f} | {r['p10'] / dense['p10']:.2f}x | "
            f"{r['wall'] * 1e3:.2f} | {r['wall'] / dense['wall']:.2f}x | {r['wall'] / mp['wall']:.2f}x | "
            f"{r['fit']:.1f} | {r['sparsity']:.4f} | {r['acc']:.4f} | {r['bytes']:.2f} |"
        )

    other, update, n_updates = runs["GradualPruning"][0]["hooks"]
    lines += [
        "",
        f"CPU time inside GradualPruning's per-step hooks (first repeat): {other * 1e6:.0f} us per ordinary step "
        f"({other / dense['cpu']:.1%} of the dense step's median), {update * 1e3:.1f} ms per mask-update step "
        f"({n_updates} updates over the fit).",
    ]
    small = MNISTDataModule(args.root, batch_size=128, val_size=0, train_size=2560, flatten=True, seed=0)
    small.setup()
    tmp = Path(__import__("tempfile").mkdtemp(prefix="bench_pruning_"))
    lines += [
        "",
        "Resume check (2 epochs of 20 steps on 2560 images; resume from the epoch-0 checkpoint with `ckpt_path`):",
        "",
        "| method | final sparsity, uninterrupted | final sparsity, resumed | `net.0.*` keys in the checkpoint "
        "| `MLP.load_from_checkpoint` (strict) |",
        "|---|---|---|---|---|",
    ]
    for method in ("GradualPruning", "ModelPruning"):
        a, b, keys, strict = resume_check(small, tmp, method)
        lines.append(f"| {method} | {a:.4f} | {b:.4f} | {', '.join(keys)} | {strict} |")
    dense_sq, sparse_sq, denormal_sq = sqrt_cost()
    adam = adam_cost()
    n_masked = 784 * 300 + 300 * 100 + 100 * 10
    lines += [
        "",
        "GradualPruning's engine: one in-place multiply of each masked gradient by its bool mask (viewed as uint8, "
        "no float copy) per optimizer step in `on_before_optimizer_step`; first moments are zeroed at newly pruned "
        "coordinates when the masks change, so Adam gives pruned weights an exactly zero update and the weights "
        "are never re-masked (tests/test_pruning_engine.py proves it per optimizer family). "
        f"Masks: 1 byte per masked weight in memory (bool), 1/8 byte in the checkpoint (bit-packed in the callback's "
        f"state: {-(-n_masked // 8)} bytes for this MLP's {n_masked} weights); ModelPruning keeps a float mask, "
        "`weight_orig` and the recomputed `weight` (12 bytes per masked weight). "
        f"Why zeroing `exp_avg_sq` costs time: `Tensor.sqrt` of a 300x784 tensor takes {dense_sq:.0f} us dense, "
        f"{sparse_sq:.0f} us when 90 % of it is exactly 0 and {denormal_sq:.0f} us when it holds denormals on this "
        "CPU; Adam takes `exp_avg_sq.sqrt()` every step. The deprecated `zero_second_moments=True` row zeroes it; "
        "the default leaves it to decay (it scales an update that is already zero). Left alone, the pruned "
        "coordinates of `exp_avg_sq` decay by beta2 per step into the denormal range (from g^2 = 1e-6: after about "
        "73k steps with beta2=0.999, 7.3k with 0.99, 1.4k with 0.95) and then to exact zeros, where the slow `sqrt` "
        "returns on this CPU (GPUs do not have this cost). Adam step on a 300x784 weight at 90 % sparsity, us, "
        "by what `exp_avg_sq` holds at pruned coordinates (decayed / zeros / denormals): "
        + "; ".join(
            f"{impl} {adam[impl, 'decayed']:.0f} / {adam[impl, 'zeros']:.0f} / {adam[impl, 'denormals']:.0f}"
            for impl in ("for-loop", "foreach", "fused")
        )
        + ". `Adam(fused=True)` is the cheapest in every case on CPU.",
        "",
        f"Total benchmark time: {time.perf_counter() - t_start:.0f} s.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("# GradualPruning benchmark\n\n" + text)


if __name__ == "__main__":
    main()
