"""litmix quickstart: distil + prune + score + unlearn on MNIST in one script (< 5 min on 2 CPU cores).

1. a teacher MLP is trained briefly (and, for reference, the student alone);
2. a small student is distilled from it (KnowledgeDistillation) while GradualPruning takes it to 80 %
   sparsity and ZeroCostProxies scores it at fit start -- three callbacks in one Trainer;
3. one class is unlearned from the pruned student with NPO + a retain term (UnlearningModule on a
   ForgetRetainDataModule), GradualPruning keeping the sparsity fixed;
4. a summary table (accuracy, sparsity, proxy scores, forget/retain accuracy, wall time per phase).

Every phase logs to Weights & Biases (offline unless WANDB_MODE says otherwise) and to CSV under --out.

    python examples/quickstart.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn

from litmix.callbacks import GradualPruning, KnowledgeDistillation, ZeroCostProxies
from litmix.data import split_batch
from litmix.datamodules import ForgetRetainDataModule, MNISTDataModule
from litmix.plugins import UnlearningModule


class MLPClassifier(pl.LightningModule):
    """A plain MLP classifier: what a user already has before adding litmix callbacks."""

    def __init__(self, hidden: list[int], lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        sizes = [784, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], 10))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = split_batch(batch)
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/ce", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y, _ = split_batch(batch)
        self.log("val/acc", (self(x).argmax(-1) == y).float().mean(), prog_bar=True)

    test_step = validation_step

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def accuracy(model: nn.Module, loader) -> float:
    model.eval()
    hits = total = 0
    with torch.no_grad():
        for batch in loader:
            x, y, _ = split_batch(batch)
            hits += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    return hits / total


def loggers(out: Path, phase: str, offline_wandb: bool) -> list:
    result = [CSVLogger(out, name=phase)]
    if offline_wandb:
        result.append(WandbLogger(project="litmix-quickstart", name=phase, save_dir=str(out), offline=True))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding mnist/ (the offline data sets)")
    parser.add_argument("--out", default="runs/quickstart", help="where logs, checkpoints and the summary go")
    parser.add_argument("--train-size", type=int, default=None, help="MNIST training images used (default: all)")
    parser.add_argument("--teacher-epochs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5, help="student epochs")
    parser.add_argument("--forget-class", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--no-wandb", action="store_true", help="log to CSV only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    use_wandb = not args.no_wandb
    times: dict[str, float] = {}
    trainer_kw = {"accelerator": "cpu", "devices": 1, "enable_checkpointing": False, "enable_model_summary": False}

    pl.seed_everything(args.seed, verbose=False)
    mnist = MNISTDataModule(
        os.path.join(args.data, "mnist"), batch_size=128, train_size=args.train_size, val_size=2000, flatten=True
    )
    mnist.setup("fit")

    # 1. teacher
    t0 = time.perf_counter()
    teacher = MLPClassifier([512, 256])
    pl.Trainer(max_epochs=args.teacher_epochs, logger=loggers(out, "teacher", use_wandb), **trainer_kw).fit(
        teacher, datamodule=mnist
    )
    times["teacher"] = time.perf_counter() - t0
    teacher_acc = accuracy(teacher, mnist.test_dataloader())

    # reference: the same student trained alone, dense
    t0 = time.perf_counter()
    pl.seed_everything(args.seed, verbose=False)
    alone = MLPClassifier([128])
    pl.Trainer(max_epochs=args.epochs, logger=loggers(out, "student-alone", use_wandb), **trainer_kw).fit(
        alone, datamodule=mnist
    )
    times["student alone"] = time.perf_counter() - t0
    alone_acc = accuracy(alone, mnist.test_dataloader())

    # 2. student: distil + prune + score, three callbacks in one Trainer
    t0 = time.perf_counter()
    pl.seed_everything(args.seed, verbose=False)
    student = MLPClassifier([128])
    proxies = ZeroCostProxies(names=["synflow", "snip", "grad_norm", "naswot", "params", "flops"])
    pruning = GradualPruning(target_sparsity=args.sparsity, start_fraction=0.1, end_fraction=0.7, every_n_steps=20)
    kd = KnowledgeDistillation(teacher, temperature=4.0, weight=0.9)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=[proxies, kd, pruning],
        logger=loggers(out, "student", use_wandb),
        **trainer_kw,
    )
    trainer.fit(student, datamodule=mnist)
    times["distil+prune+score"] = time.perf_counter() - t0
    student_acc = accuracy(student, mnist.test_dataloader())
    GradualPruning.make_permanent(student)
    sparsity = pruning.current_sparsity

    # 3. unlearn one class from the pruned student, keeping its sparsity
    t0 = time.perf_counter()
    forget = ForgetRetainDataModule(
        mnist, forget_classes=[args.forget_class], batch_size=64, eval_retain_size=2000, seed=args.seed
    )
    unlearn = UnlearningModule(student.net, method="npo", retain_loss="nll", beta=0.1, lr=1e-3, cache_reference=True)
    keep_sparse = GradualPruning(
        target_sparsity=args.sparsity, initial_sparsity=args.sparsity, start_step=0, end_step=1, every_n_steps=1
    )
    forget.setup("fit")
    before = pl.Trainer(logger=False, **trainer_kw).validate(unlearn, datamodule=forget, verbose=False)
    pl.Trainer(max_epochs=2, callbacks=[keep_sparse], logger=loggers(out, "unlearn", use_wandb), **trainer_kw).fit(
        unlearn, datamodule=forget
    )
    after = pl.Trainer(logger=False, **trainer_kw).validate(unlearn, datamodule=forget, verbose=False)
    times["unlearn"] = time.perf_counter() - t0

    def metric(results, key):
        return next((float(r[key]) for r in results if key in r), float("nan"))

    summary = {
        "teacher test accuracy": teacher_acc,
        "student alone test accuracy (dense)": alone_acc,
        "student test accuracy (distilled, pruned)": student_acc,
        "student sparsity": sparsity,
        **{f"proxy {k}": v for k, v in proxies.scores.items()},
        "forget accuracy before/after unlearning": (
            metric(before, "unlearn/forget_acc"),
            metric(after, "unlearn/forget_acc"),
        ),
        "retain accuracy before/after": (metric(before, "unlearn/retain_acc"), metric(after, "unlearn/retain_acc")),
        "test accuracy (retained classes) before/after": (
            metric(before, "unlearn/test_acc"),
            metric(after, "unlearn/test_acc"),
        ),
        "MIA AUC before/after": (metric(before, "unlearn/mia_auc"), metric(after, "unlearn/mia_auc")),
        **{f"wall time {k} (s)": v for k, v in times.items()},
        "wall time total (s)": sum(times.values()),
    }
    lines = ["| quantity | value |", "|---|---|"]
    for key, value in summary.items():
        shown = " → ".join(f"{v:.4g}" for v in value) if isinstance(value, tuple) else f"{value:.4g}"
        lines.append(f"| {key} | {shown} |")
    table = "\n".join(lines)
    print("\n" + table)
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
