"""litmix quickstart: distil + prune + score + unlearn in one script, on data that ships with scikit-learn.

Why mix plugins? You have a strong model (the teacher, trained on the whole training split) and want a small,
80 % sparse model trained on the few labelled images you have (100 digits, 10 per class). Pruning alone costs
accuracy; distilling the teacher into the student while it is pruned buys it back. Side by side:

1. the teacher MLP is trained on every training image; the small student alone (dense) on the 100 labels;
2. the student is pruned to 80 % sparsity by GradualPruning alone ("pruned only"), and again, from the same
   initialisation, with the same data, schedule and epochs, while KnowledgeDistillation distils the teacher
   into it and ZeroCostProxies scores it at fit start ("distilled + pruned": three callbacks in one Trainer);
3. one class is unlearned from the distilled + pruned student with NPO + a retain term (UnlearningModule on
   a ForgetRetainDataModule of its training images), GradualPruning keeping the sparsity fixed;
4. a summary table: test accuracy, sparsity and non-zero weights of every model, what distillation bought,
   the proxy scores, forget/retain accuracy before and after unlearning, and the wall time of every phase.

Data: scikit-learn's bundled 8x8 digits by default (nothing to download; about 20 s on 2 CPU cores), or MNIST
from ``--data ROOT`` (a folder holding the four IDX ``.gz`` files, directly or under ``raw/``, ``MNIST/raw/``
or ``mnist/MNIST/raw/``), fetched there first with ``--download`` (checksums verified; ``--mirror URL`` for
your own mirror); on MNIST the teacher sees the 58,000 training images and the students 1,000. Every phase
logs to CSV under ``--out`` and to Weights & Biases (offline unless WANDB_MODE says otherwise), one W&B run
per phase.

    python examples/quickstart.py                          # digits, bundled with scikit-learn
    python examples/quickstart.py --download --data data   # MNIST, downloaded into data/MNIST/raw
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from torch import nn

from litmix.callbacks import GradualPruning, KnowledgeDistillation, ZeroCostProxies
from litmix.data import split_batch
from litmix.datamodules import DigitsDataModule, ForgetRetainDataModule, MNISTDataModule
from litmix.plugins import UnlearningModule

#: Per data set: input size, model widths, epochs, batch sizes, learning rates and the students' labelled
#: images (chosen for a fast run; the teacher sees the whole training split).
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "in_features": 64,
        "teacher": [256, 128],
        "student": [32],
        "teacher_epochs": 20,
        "teacher_lr": 3e-3,
        "epochs": 80,
        "lr": 1e-2,
        "batch_size": 32,
        "student_labels": 100,
        "unlearn_epochs": 30,
        "unlearn_lr": 3e-3,
    },
    "mnist": {
        "in_features": 784,
        "teacher": [512, 256],
        "student": [128],
        "teacher_epochs": 3,
        "teacher_lr": 1e-3,
        "epochs": 40,
        "lr": 3e-3,
        "batch_size": 128,
        "student_labels": 1000,
        "unlearn_epochs": 10,
        "unlearn_lr": 1e-3,
    },
}


class MLPClassifier(pl.LightningModule):
    """A plain MLP classifier: what a user already has before adding litmix callbacks."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int = 10, lr: float = 1e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        sizes = [in_features, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))
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


def predictions(model: nn.Module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted and true labels over a loader."""
    model.eval()
    preds, targets = [], []
    with torch.no_grad():
        for batch in loader:
            x, y, _ = split_batch(batch)
            preds.append(model(x).argmax(-1))
            targets.append(y)
    return torch.cat(preds), torch.cat(targets)


def accuracy(model: nn.Module, loader) -> float:
    pred, y = predictions(model, loader)
    return float((pred == y).float().mean())


def class_accuracies(model: nn.Module, loader, forget_class: int) -> tuple[float, float]:
    """Accuracy on the forgotten class and on every other class."""
    pred, y = predictions(model, loader)
    hit = (pred == y).float()
    return float(hit[y == forget_class].mean()), float(hit[y != forget_class].mean())


def linear_sparsity(model: nn.Module) -> tuple[float, int]:
    """Share of zero weights over every ``nn.Linear`` weight, and the number of non-zero weights."""
    weights = [m.weight.detach() for m in model.modules() if isinstance(m, nn.Linear)]
    total = sum(w.numel() for w in weights)
    nonzero = sum(int(w.count_nonzero()) for w in weights)
    return 1.0 - nonzero / total, nonzero


def fit(
    module: pl.LightningModule,
    data: pl.LightningDataModule,
    phase: str,
    out: Path,
    use_wandb: bool,
    epochs: int,
    callbacks: list | None = None,
    **trainer_kw: Any,
) -> pl.Trainer:
    """One phase: a CPU Trainer logging to CSV and (offline) W&B, one W&B run per phase."""
    loggers: list = [CSVLogger(out, name=phase)]
    if use_wandb:
        loggers.append(WandbLogger(project="litmix-quickstart", name=phase, save_dir=str(out), offline=True))
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks or [],
        logger=loggers,
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        log_every_n_steps=10,
        **trainer_kw,
    )
    trainer.fit(module, datamodule=data)
    if use_wandb:
        import wandb

        wandb.finish()  # the next phase gets its own run
    return trainer


def pruning(sparsity: float) -> GradualPruning:
    """The pruning schedule both pruned students share: 0 -> ``sparsity`` between 10 % and 70 % of the run."""
    return GradualPruning(target_sparsity=sparsity, start_fraction=0.1, end_fraction=0.7, every_n_steps=10)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--data",
        default=None,
        help="MNIST root: a folder holding the four IDX .gz files (or raw/, MNIST/raw/, mnist/MNIST/raw/ below it); "
        "default: scikit-learn's bundled digits (or ./data with --download)",
    )
    parser.add_argument("--download", action="store_true", help="download MNIST into --data (checksums verified)")
    parser.add_argument(
        "--mirror",
        action="append",
        default=None,
        help="base URL to download MNIST from instead of the usual mirrors (repeatable)",
    )
    parser.add_argument("--out", default="runs/quickstart", help="where logs and the summary go")
    parser.add_argument("--train-size", type=int, default=None, help="MNIST images of the teacher (default: all)")
    parser.add_argument(
        "--student-labels",
        type=int,
        default=None,
        help="labelled training images the students see (stratified); default: 100 (digits), 1000 (MNIST)",
    )
    parser.add_argument("--teacher-epochs", type=int, default=None, help="default: 20 (digits), 3 (MNIST)")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs; default: 80 (digits), 40 (MNIST)")
    parser.add_argument("--unlearn-epochs", type=int, default=None, help="default: 30 (digits), 10 (MNIST)")
    parser.add_argument("--unlearn-lr", type=float, default=None, help="default: 3e-3 (digits), 1e-3 (MNIST)")
    parser.add_argument("--forget-class", type=int, default=3)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--no-wandb", action="store_true", help="log to CSV only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the models are tiny)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    torch.set_num_threads(args.threads)  # tiny models: one thread is fastest, above all on a shared machine
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    use_wandb = not args.no_wandb
    start = time.perf_counter()
    times: dict[str, float] = {}

    dataset = "mnist" if (args.data is not None or args.download) else "digits"
    cfg = PRESETS[dataset]
    teacher_epochs = args.teacher_epochs if args.teacher_epochs is not None else cfg["teacher_epochs"]
    epochs = args.epochs if args.epochs is not None else cfg["epochs"]
    unlearn_epochs = args.unlearn_epochs if args.unlearn_epochs is not None else cfg["unlearn_epochs"]
    unlearn_lr = args.unlearn_lr if args.unlearn_lr is not None else cfg["unlearn_lr"]
    labels = args.student_labels if args.student_labels is not None else cfg["student_labels"]
    data: pl.LightningDataModule  # the whole training split: the teacher's data
    few: pl.LightningDataModule  # a stratified subset of it: the labelled images the students have
    if dataset == "mnist":
        common = {
            "val_size": 2000,
            "flatten": True,
            "download": args.download,
            "mirrors": args.mirror,
            "seed": args.seed,
        }
        data = MNISTDataModule(args.data or "data", batch_size=cfg["batch_size"], train_size=args.train_size, **common)
        data.prepare_data()  # downloads when --download and the files are missing
        few = MNISTDataModule(args.data or "data", batch_size=32, train_size=labels, **common)
    else:
        data = DigitsDataModule(batch_size=cfg["batch_size"], seed=args.seed)
        few = DigitsDataModule(batch_size=32, train_size=labels, seed=args.seed)
    data.setup("fit")
    few.setup("fit")
    test_loader = data.test_dataloader()
    n_teacher, n_student = len(data.train_dataset), len(few.train_dataset)  # type: ignore[attr-defined]
    print(f"data: {dataset}; teacher: {n_teacher} labelled images, students: {n_student}")

    def student() -> MLPClassifier:
        pl.seed_everything(args.seed, verbose=False)  # every student starts from the same weights
        return MLPClassifier(cfg["in_features"], cfg["student"], lr=cfg["lr"])

    results: dict[str, dict[str, float]] = {}

    def record(row: str, model: nn.Module, phase: str, t0: float) -> None:
        times[phase] = time.perf_counter() - t0
        sparsity, nonzero = linear_sparsity(model)
        results[row] = {"test accuracy": accuracy(model, test_loader), "sparsity": sparsity, "weights": nonzero}
        results[row]["wall time (s)"] = times[phase]

    # 1. teacher, and the student alone (dense) for reference
    t0 = time.perf_counter()
    pl.seed_everything(args.seed, verbose=False)
    teacher = MLPClassifier(cfg["in_features"], cfg["teacher"], lr=cfg["teacher_lr"])
    fit(teacher, data, "teacher", out, use_wandb, teacher_epochs)
    record("teacher (dense)", teacher, "teacher", t0)

    t0 = time.perf_counter()
    alone = student()
    fit(alone, few, "student-alone", out, use_wandb, epochs)
    record("student alone (dense)", alone, "student alone", t0)

    # 2a. the student pruned only
    t0 = time.perf_counter()
    pruned = student()
    fit(pruned, few, "student-pruned", out, use_wandb, epochs, [pruning(args.sparsity)])
    GradualPruning.make_permanent(pruned)
    record("student pruned only", pruned, "pruned only", t0)

    # 2b. the same student distilled + pruned + scored: three callbacks in one Trainer
    t0 = time.perf_counter()
    distilled = student()
    # naswot needs no more samples than activation units: score on 32 samples
    proxies = ZeroCostProxies(names=["synflow", "snip", "grad_norm", "naswot", "params", "flops"], batch_size=32)
    kd = KnowledgeDistillation(teacher, temperature=4.0, weight=0.9)
    trainer = fit(
        distilled, few, "student-distilled-pruned", out, use_wandb, epochs, [proxies, kd, pruning(args.sparsity)]
    )
    GradualPruning.make_permanent(distilled)
    record("student distilled + pruned", distilled, "distilled + pruned + scored", t0)
    proxy_scores = {
        key.rsplit("/", 1)[-1]: float(value)
        for key, value in trainer.callback_metrics.items()
        if key.rsplit("/", 1)[-1] in proxies.names
    }

    # 3. unlearn one class from the distilled + pruned student, keeping its sparsity
    t0 = time.perf_counter()
    forget = ForgetRetainDataModule(few, forget_classes=[args.forget_class], batch_size=8, seed=args.seed)
    unlearn = UnlearningModule(
        distilled.net, method="npo", retain_loss="nll", beta=0.1, lr=unlearn_lr, cache_reference=True
    )
    keep_sparse = GradualPruning(
        target_sparsity=args.sparsity, initial_sparsity=args.sparsity, start_step=0, end_step=1, every_n_steps=1
    )
    forget.setup("fit")
    forget_train = torch.utils.data.DataLoader(forget.forget_dataset, batch_size=256)
    before = (accuracy(distilled, forget_train), *class_accuracies(distilled, test_loader, args.forget_class))
    fit(unlearn, forget, "unlearn", out, use_wandb, unlearn_epochs, [keep_sparse], limit_val_batches=0)
    GradualPruning.make_permanent(unlearn)
    after = (accuracy(unlearn.model, forget_train), *class_accuracies(unlearn.model, test_loader, args.forget_class))
    times["unlearn"] = time.perf_counter() - t0
    unlearned_sparsity, _ = linear_sparsity(unlearn.model)

    # 4. summary
    gain = results["student distilled + pruned"]["test accuracy"] - results["student pruned only"]["test accuracy"]
    lines = [
        f"litmix quickstart on {dataset} (seed {args.seed}): teacher {cfg['teacher']} on {n_teacher} labelled images, "
        f"{teacher_epochs} epochs; students {cfg['student']} on {n_student}, {epochs} epochs; "
        f"target sparsity {args.sparsity:.0%}",
        "",
        "| model | test accuracy | sparsity | non-zero weights | wall time (s) |",
        "|---|---|---|---|---|",
    ]
    for row, r in results.items():
        acc, sparsity, weights, seconds = r["test accuracy"], r["sparsity"], int(r["weights"]), r["wall time (s)"]
        lines.append(f"| {row} | {acc:.4f} | {sparsity:.1%} | {weights} | {seconds:.1f} |")
    lines += [
        "",
        f"distillation bought {100 * gain:+.2f} points of test accuracy at {args.sparsity:.0%} sparsity",
        "zero-cost proxies of the student at fit start: " + ", ".join(f"{k} {v:.4g}" for k, v in proxy_scores.items()),
        "",
        f"| unlearning class {args.forget_class} (NPO + retain NLL, sparsity kept at {unlearned_sparsity:.1%}) "
        "| before | after |",
        "|---|---|---|",
        f"| forgotten class, training images (forget set) | {before[0]:.4f} | {after[0]:.4f} |",
        f"| forgotten class, test images | {before[1]:.4f} | {after[1]:.4f} |",
        f"| other classes, test images | {before[2]:.4f} | {after[2]:.4f} |",
        "",
        f"wall time: total {time.perf_counter() - start:.1f} s; unlearning {times['unlearn']:.1f} s",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    summary: dict[str, Any] = {
        "data": dataset,
        "seed": args.seed,
        "epochs": epochs,
        "teacher_epochs": teacher_epochs,
        "teacher_images": n_teacher,
        "student_images": n_student,
        "target_sparsity": args.sparsity,
        "models": results,
        "distillation_gain": gain,
        "proxies": proxy_scores,
        "unlearning": {
            "forget_class": args.forget_class,
            "forget_set_accuracy": [before[0], after[0]],
            "forget_class_test_accuracy": [before[1], after[1]],
            "other_classes_test_accuracy": [before[2], after[2]],
            "sparsity_after": unlearned_sparsity,
        },
        "wall_time_s": {**times, "total": time.perf_counter() - start},
    }
    (out / "summary.md").write_text(table + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
