"""ParetoSweep and pareto_front: the front, the cost model, logging, bad arguments (fast; the effect is in
tests/test_qat_effects.py)."""

import pytest
from lightning.pytorch.loggers import WandbLogger

from litmix.quantization_pareto import ParetoSweep, pareto_front
from litmix.testing import TinyClassifier, TinyDataModule


def test_pareto_front_keeps_only_non_dominated_points():
    costs = [1.0, 2.0, 2.0, 3.0, 0.5, 4.0]
    accs = [0.5, 0.8, 0.7, 0.8, 0.1, 0.9]
    assert pareto_front(costs, accs) == [4, 0, 1, 5]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [0, 1]  # ties dominate nothing
    assert pareto_front([], []) == []
    with pytest.raises(ValueError, match="lengths differ"):
        pareto_front([1.0], [])


class RecordingWandb(WandbLogger):
    def __init__(self):  # no wandb run: only records what would be logged
        self.metrics, self.tables, self.images = [], [], []

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, metrics))

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append((key, columns, data))

    def log_image(self, key, images, step=None, **kwargs):
        self.images.append((key, images))


def test_sweep_costs_table_plot_and_logging():
    logger = RecordingWandb()
    sweep = ParetoSweep(
        lambda w: TinyClassifier(hidden=w),
        lambda seed: TinyDataModule(),
        widths=[4, 16],
        bits=[2, 32],
        first_last_bits=None,
        seeds=[0, 1],
        max_epochs=1,
        logger=logger,
        keep_models=True,
    )
    points = sweep.run()
    macs = {4: 8 * 4 + 4 * 4, 16: 8 * 16 + 16 * 4}
    assert [(p.width, p.bits, p.bit_operations) for p in points] == [
        (w, b, macs[w] * b * b) for w in (4, 16) for b in (2, 32)
    ]
    assert all(len(p.accuracies) == 2 for p in points)
    assert len(sweep.models) == 8
    front = [p for p in points if p.pareto]
    assert front
    assert min(points, key=lambda p: p.bit_operations).pareto  # the cheapest point is always on the front
    assert len(logger.metrics) == 4
    assert logger.metrics[0][1]["pareto/bit_operations"] == macs[4] * 4
    key, columns, rows = logger.tables[0]
    assert key == "pareto/table"
    assert columns == ["width", "bits", "bit_operations", "accuracy", "pareto"]
    assert len(rows) == 4
    if pytest.importorskip("matplotlib"):
        assert logger.images[0][0] == "pareto/scatter"
    assert sweep.to_markdown().count("\n") == 5


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"widths": []}, ValueError, r"widths=\[\]"),
        ({"widths": [0]}, ValueError, r"widths=0"),
        ({"widths": [2.5]}, TypeError, r"widths=2.5"),
        ({"bits": [1]}, ValueError, r"bits=1"),
        ({"bits": [24]}, ValueError, r"bits=24"),
        ({"bits": [4, 64]}, ValueError, r"bits=64"),
        ({"bits": "4"}, TypeError, r"bits='4'"),
        ({"seeds": [-1]}, ValueError, r"seeds=-1"),
        ({"max_epochs": 0}, ValueError, r"max_epochs=0"),
        ({"first_last_bits": 1}, ValueError, r"first_last_bits=1"),
        ({"make_module": 3}, TypeError, r"make_module=3"),
        ({"make_datamodule": None}, TypeError, r"make_datamodule=None"),
        ({"accuracy_fn": "acc"}, TypeError, r"accuracy_fn='acc'"),
        ({"keep_models": 1}, TypeError, r"keep_models=1"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, exc, match):
    base = {"make_module": lambda w: TinyClassifier(hidden=w), "make_datamodule": lambda s: TinyDataModule()}
    with pytest.raises(exc, match=match):
        ParetoSweep(**{**base, **kwargs})
