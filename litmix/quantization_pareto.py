"""Cost-vs-accuracy sweeps of quantized models over widths x bits, and their Pareto front (AQT methodology).

"Pareto-Optimal Quantized ResNet Is Mostly 4-bit" (Abdolrashidi et al., https://arxiv.org/abs/2105.03536) trains
every (width, bits) configuration, plots accuracy against the bit-operations cost ``MACs x b_w x b_a`` and reads
off the Pareto front: at equal cost, wider 4-bit models beat narrower 8-bit/bf16 ones.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch

from litmix.data import split_batch
from litmix.registry import register
from litmix.validation import check_bool, check_int, check_type

__all__ = ["ParetoSweep", "SweepPoint", "pareto_front"]

PAPER = "Pareto-Optimal Quantized ResNet Is Mostly 4-bit (https://arxiv.org/abs/2105.03536)"
FLOAT_BITS = 32


@register("function", "quantization", paper=PAPER)
def pareto_front(costs: Sequence[float], accuracies: Sequence[float]) -> list[int]:
    """Indices of the Pareto-optimal points, sorted by cost.

    A point is dominated when another has lower-or-equal cost and higher-or-equal accuracy, one of them strictly.

    Args:
        costs: the cost of each point (lower is better).
        accuracies: the accuracy of each point (higher is better), as many as ``costs``.

    Raises:
        ValueError: when the two sequences differ in length.

    Example:
        >>> pareto_front([1.0, 2.0, 3.0, 2.5], [0.5, 0.9, 0.8, 0.95])
        [0, 1, 3]
    """
    if len(costs) != len(accuracies):
        raise ValueError(
            f"pareto_front(costs=<{len(costs)} values>, accuracies=<{len(accuracies)} values>): lengths differ"
        )
    front = []
    for i, (c, a) in enumerate(zip(costs, accuracies, strict=True)):
        dominated = any(
            (c2 <= c and a2 >= a) and (c2 < c or a2 > a)
            for j, (c2, a2) in enumerate(zip(costs, accuracies, strict=True))
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (costs[i], -accuracies[i]))


@dataclass
class SweepPoint:
    """One configuration of a :class:`ParetoSweep`: its cost and its accuracy (mean over seeds)."""

    width: int
    bits: int
    bit_operations: float
    accuracy: float
    accuracies: list[float]
    pareto: bool = False


def _default_accuracy(module: pl.LightningModule, datamodule: pl.LightningDataModule) -> float:
    """Top-1 accuracy of ``module`` on ``datamodule.val_dataloader()``."""
    module.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in datamodule.val_dataloader():
            x, y, _ = split_batch(batch)
            assert y is not None, "the default accuracy needs (x, y) batches; pass accuracy_fn"
            out = module(x.to(module.device))
            correct += int((out.argmax(-1).cpu() == y).sum())
            total += int(y.numel())
    return correct / max(total, 1)


@register("utility", "quantization", paper=PAPER)
class ParetoSweep:
    """Train every ``width x bits`` configuration, measure (bit-operations, accuracy), return the Pareto front.

    Implements the methodology of "Pareto-Optimal Quantized ResNet Is Mostly 4-bit" (AQT,
    https://arxiv.org/abs/2105.03536). Each configuration is trained ``max_epochs`` per seed from
    ``make_module(width)``: ``bits == 32`` in plain float, other bits with
    :class:`~litmix.callbacks.QuantizationAwareTraining` (``bits_w = bits_a = bits``, first and last layers at
    ``first_last_bits``). The cost is the per-sample bit-operations ``sum MACs x b_w x b_a`` over the model's
    Linear/Conv layers (float layers at 32 x 32 bits); the accuracy is ``accuracy_fn(module, datamodule)``
    (default: top-1 on ``val_dataloader()``), measured with the quantized forward, averaged over ``seeds``.

    :meth:`run` returns one :class:`SweepPoint` per configuration with ``pareto=True`` on the front. With a
    Lightning ``logger`` every point goes to ``logger.log_metrics`` under ``pareto/``; a ``WandbLogger`` also gets
    the table (``pareto/table``) and the scatter plot image (``pareto/scatter``, when matplotlib is installed).
    :meth:`figure` draws the scatter plot; :meth:`to_markdown` renders the table.

    Args:
        make_module: ``width -> LightningModule`` (a fresh model for each configuration and seed).
        make_datamodule: ``seed -> LightningDataModule``.
        widths: widths to sweep (ints >= 1, non-empty); default ``[32, 64, 128]``.
        bits: bit widths to sweep: ints in [2, 16] or 32 (float), non-empty; default ``[4, 8, 32]``.
        first_last_bits: bits of the first and last layer of quantized models ([2, 16]) or ``None``.
        seeds: seeds per configuration (``pl.seed_everything`` before building each model).
        max_epochs: training epochs per run (>= 1).
        trainer_kwargs: extra ``Trainer`` arguments (a quiet CPU trainer by default).
        accuracy_fn: ``(module, datamodule) -> float``; default top-1 accuracy on the validation loader.
        logger: an optional Lightning logger for the points, the table and the plot.
        keep_models: keep every trained model in :attr:`models` (``{(width, bits, seed): module}``).

    Raises:
        TypeError: for arguments of the wrong type (non-callable factories, non-int widths or bits).
        ValueError: for empty lists, widths < 1, bits outside [2, 16] other than 32, ``max_epochs < 1``.

    Example:
        >>> from litmix.testing import TinyClassifier, TinyDataModule
        >>> sweep = ParetoSweep(lambda w: TinyClassifier(hidden=w), lambda seed: TinyDataModule(),
        ...                     widths=[4, 16], bits=[4, 32], max_epochs=1)
        >>> points = sweep.run()
        >>> [(p.width, p.bits, p.bit_operations) for p in points]
        [(4, 4, 3072.0), (4, 32, 49152.0), (16, 4, 12288.0), (16, 32, 196608.0)]
        >>> any(p.pareto for p in points)
        True
    """

    def __init__(
        self,
        make_module: Callable[[int], pl.LightningModule],
        make_datamodule: Callable[[int], pl.LightningDataModule],
        widths: list[int] | None = None,
        bits: list[int] | None = None,
        first_last_bits: int | None = 8,
        seeds: list[int] | None = None,
        max_epochs: int = 10,
        trainer_kwargs: dict[str, Any] | None = None,
        accuracy_fn: Callable[[pl.LightningModule, pl.LightningDataModule], float] | None = None,
        logger: Any = None,
        keep_models: bool = False,
    ) -> None:
        cls = type(self).__name__
        widths = [32, 64, 128] if widths is None else widths
        bits = [4, 8, FLOAT_BITS] if bits is None else bits
        if not callable(make_module):
            raise TypeError(f"{cls}(make_module={make_module!r}): make_module must be a callable width -> module")
        if not callable(make_datamodule):
            raise TypeError(
                f"{cls}(make_datamodule={make_datamodule!r}): make_datamodule must be a callable seed -> datamodule"
            )
        for arg, values in (("widths", widths), ("bits", bits), ("seeds", seeds if seeds is not None else [0])):
            check_type(cls, arg, values, (list, tuple))
            if not values:
                raise ValueError(f"{cls}({arg}=[]): {arg} must be a non-empty list")
        for w in widths:
            check_int(cls, "widths", w, low=1)
        for b in bits:
            check_int(cls, "bits", b, low=2, high=FLOAT_BITS)
            if 16 < b < FLOAT_BITS:
                raise ValueError(f"{cls}(bits={b}): bits must be in [2, 16] (quantized) or 32 (float)")
        for s in seeds or []:
            check_int(cls, "seeds", s, low=0)
        first_last_bits = check_int(cls, "first_last_bits", first_last_bits, low=2, high=16, allow_none=True)
        max_epochs = check_int(cls, "max_epochs", max_epochs, low=1)
        check_type(cls, "trainer_kwargs", trainer_kwargs, dict, allow_none=True)
        if accuracy_fn is not None and not callable(accuracy_fn):
            raise TypeError(f"{cls}(accuracy_fn={accuracy_fn!r}): accuracy_fn must be callable or None")
        self.make_module = make_module
        self.make_datamodule = make_datamodule
        self.widths = list(widths)
        self.bits = list(bits)
        self.first_last_bits = first_last_bits
        self.seeds = list(seeds) if seeds is not None else [0]
        self.max_epochs = max_epochs
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.accuracy_fn = accuracy_fn or _default_accuracy
        self.logger = logger
        self.keep_models = check_bool(cls, "keep_models", keep_models)
        self.points: list[SweepPoint] = []
        self.models: dict[tuple[int, int, int], pl.LightningModule] = {}

    def _fit_one(self, width: int, bits: int, seed: int) -> tuple[float, float]:
        from litmix.callbacks.quantization_aware_training import QuantizationAwareTraining
        from litmix.testing import make_trainer

        pl.seed_everything(seed, verbose=False)
        module = self.make_module(width)
        datamodule = self.make_datamodule(seed)
        qat = None
        if bits != FLOAT_BITS:
            qat = QuantizationAwareTraining(bits_w=bits, bits_a=bits, first_last_bits=self.first_last_bits)
        kwargs = {"max_epochs": self.max_epochs, **self.trainer_kwargs}
        make_trainer(callbacks=[qat] if qat is not None else [], **kwargs).fit(module, datamodule=datamodule)
        if qat is None:  # count the MACs of the float model with a probe (its quantized forward is discarded)
            qat = QuantizationAwareTraining(bits_w=8, bits_a=None, first_last_bits=None)
            qat.attach(module)
            batch = next(iter(datamodule.train_dataloader()))
            x, _, _ = split_batch(batch)
            with torch.no_grad():
                module(x[:1].to(module.device))
            qat.detach()
            cost = qat.bit_operations(fp32=True)
            accuracy = self.accuracy_fn(module, datamodule)
        else:
            cost = qat.bit_operations()
            qat.attach(module)
            try:
                accuracy = self.accuracy_fn(module, datamodule)
            finally:
                qat.detach()
        assert cost is not None
        if self.keep_models:
            self.models[(width, bits, seed)] = module
        return float(cost), float(accuracy)

    def run(self) -> list[SweepPoint]:
        """Train and measure every configuration; mark the Pareto front; log when a logger is set."""
        points = []
        for width in self.widths:
            for bits in self.bits:
                runs = [self._fit_one(width, bits, seed) for seed in self.seeds]
                accs = [a for _, a in runs]
                points.append(SweepPoint(width, bits, runs[0][0], statistics.fmean(accs), accs))
        front = set(pareto_front([p.bit_operations for p in points], [p.accuracy for p in points]))
        for i, p in enumerate(points):
            p.pareto = i in front
        self.points = points
        if self.logger is not None:
            self._log()
        return points

    def table(self) -> tuple[list[str], list[list[Any]]]:
        """Columns and rows of the sweep (one row per configuration)."""
        columns = ["width", "bits", "bit_operations", "accuracy", "pareto"]
        return columns, [[p.width, p.bits, p.bit_operations, p.accuracy, p.pareto] for p in self.points]

    def to_markdown(self) -> str:
        """The sweep as a markdown table (accuracy per seed included)."""
        lines = [
            "| width | bits | bit-operations / sample | accuracy (mean) | per seed | Pareto |",
            "|---|---|---|---|---|---|",
        ]
        for p in self.points:
            seeds = ", ".join(f"{a:.4f}" for a in p.accuracies)
            lines.append(
                f"| {p.width} | {p.bits} | {p.bit_operations:.4g} | {p.accuracy:.4f} | {seeds} | "
                f"{'yes' if p.pareto else ''} |"
            )
        return "\n".join(lines)

    def figure(self) -> Any:
        """Scatter plot of accuracy vs bit-operations (log x) and the front; ``None`` without matplotlib."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for bits in sorted({p.bits for p in self.points}):
            sel = [p for p in self.points if p.bits == bits]
            label = "fp32" if bits == FLOAT_BITS else f"{bits}-bit"
            ax.scatter([p.bit_operations for p in sel], [p.accuracy for p in sel], label=label)
            for p in sel:
                ax.annotate(str(p.width), (p.bit_operations, p.accuracy), fontsize=7)
        front = sorted((p for p in self.points if p.pareto), key=lambda p: p.bit_operations)
        ax.plot([p.bit_operations for p in front], [p.accuracy for p in front], "k--", lw=0.8, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("bit-operations per sample (MACs x b_w x b_a)")
        ax.set_ylabel("accuracy")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    def _log(self) -> None:
        for i, p in enumerate(self.points):
            self.logger.log_metrics(
                {f"pareto/{k}": float(v) for k, v in asdict(p).items() if k != "accuracies"}, step=i
            )
        from lightning.pytorch.loggers import WandbLogger

        if isinstance(self.logger, WandbLogger):
            columns, rows = self.table()
            self.logger.log_table(key="pareto/table", columns=columns, data=rows)
            fig = self.figure()
            if fig is not None:
                import matplotlib.pyplot as plt

                self.logger.log_image(key="pareto/scatter", images=[fig])
                plt.close(fig)
