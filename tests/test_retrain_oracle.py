"""RetrainOracle: seeded retain-only training in its own Trainer, per-sample statistics, the statistics file, and
the gaps UnlearningEvaluator reports against it (``unlearn/<metric>_gap``), on one process and on 2 DDP ranks."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from litmix.callbacks import UnlearningEvaluator
from litmix.datamodules import ForgetRetainDataModule
from litmix.plugins import UnlearningModule
from litmix.testing import TinyDataModule, make_trainer, run_ddp
from litmix.unlearning_oracle import STATISTICS_FORMAT, RetrainOracle
from tests._unlearning_lm import TokenLM, perturbed_lm_loaders

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
SPLITS = ("forget", "retain", "test", "holdout")


def _net() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _datamodule() -> ForgetRetainDataModule:
    """Gaussian blobs (96 train, 48 test); forget = class 0 (24 items; its 12 test items are the holdout)."""
    ds, test = TinyDataModule(n=96).dataset, TinyDataModule(n=48).dataset
    return ForgetRetainDataModule.from_dataset(
        ds, test_dataset=test, forget_classes=[0], batch_size=8, eval_batch_size=32
    )


@pytest.fixture(scope="module")
def trained():
    """An original model (trained on everything) and a fitted oracle with its statistics saved."""
    dm = _datamodule()
    dm.setup("fit")
    original = _net()
    opt = torch.optim.Adam(original.parameters(), 0.03)
    x = torch.stack([dm.train_base[i][0] for i in range(96)])
    y = torch.stack([dm.train_base[i][1] for i in range(96)])
    for _ in range(150):
        loss = nn.functional.cross_entropy(original(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    oracle = RetrainOracle(model=_net(), max_epochs=15, lr=0.03, seed=0)
    oracle.fit(dm)
    return original, oracle, dm


def test_fit_is_seeded_leaves_the_callers_random_state_and_forgets(trained):
    original, oracle, dm = trained
    architecture = _net()
    torch.manual_seed(11)
    before = torch.random.get_rng_state()
    again = RetrainOracle(model=architecture, max_epochs=15, lr=0.03, seed=0).fit(dm)
    assert torch.equal(torch.random.get_rng_state(), before)
    for a, b in zip(oracle.model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
    other = RetrainOracle(model=_net(), max_epochs=15, lr=0.03, seed=1).fit(dm)
    assert not torch.equal(next(other.parameters()), next(again.parameters()))
    summary = RetrainOracle(model=copy.deepcopy(oracle.model), trained=True)
    summary.statistics(dm)
    # the retain-only model never saw the forget items: far lower accuracy there than on retain, and than the
    # original model (measured: forget 0.000 ... retain 1.000 for the oracle; the original 1.000 on both)
    acc = summary.summary()["acc"]
    assert acc["forget"] <= acc["retain"] - 0.5
    trained_on_all = RetrainOracle(model=original, trained=True)
    trained_on_all.statistics(dm)
    assert trained_on_all.summary()["acc"]["forget"] >= acc["forget"] + 0.5


def test_statistics_file_format_and_identical_metrics_when_loaded_twice(trained, tmp_path):
    original, oracle, dm = trained
    stats = RetrainOracle(model=oracle.model, trained=True).statistics(dm)
    path = tmp_path / "oracle.json"
    live = RetrainOracle(model=oracle.model, trained=True)
    live.statistics(dm)
    live.save(path)
    data = json.loads(path.read_text())
    assert data["format"] == STATISTICS_FORMAT
    assert data["version"] == 1
    assert data["task"] == "classification"
    assert sorted(data["loaders"]) == ["forget", "holdout", "retain", "test"]
    forget = data["loaders"]["forget"]
    assert forget["index"] == list(range(24))
    assert set(forget) == {"index", "loss", "prediction", "correct", "count", "entropy", "mia_score", "truth_ratio"}
    assert forget["truth_ratio"] is None
    assert forget == stats["loaders"]["forget"]

    module = UnlearningModule(copy.deepcopy(original), forget_loss="grad_ascent", lr=0.01)
    values = [
        UnlearningEvaluator(oracle=RetrainOracle(statistics=path), images=False).evaluate(module, dm) for _ in range(2)
    ]
    from_model = UnlearningEvaluator(oracle=live, images=False).evaluate(module, dm)
    assert values[0] == values[1]  # exactly, every metric
    assert values[0] == from_model
    assert values[0]["retrain_gap"] > 0


def test_evaluator_reports_the_gap_to_the_oracle_for_every_metric(trained):
    original, oracle, dm = trained
    module = UnlearningModule(copy.deepcopy(original), forget_loss="grad_ascent", lr=0.01)
    evaluator = UnlearningEvaluator(oracle=RetrainOracle(model=oracle.model, trained=True), images=False)
    values = evaluator.evaluate(module, dm)
    ref = evaluator.reference
    expected = {f"{s}_acc_gap": abs(values[f"{s}_acc"] - ref["acc"][s]) for s in SPLITS}
    expected.update({f"{s}_nll_gap": abs(values[f"{s}_nll"] - ref["nll"][s]) for s in SPLITS})
    for key in ("mia_auc", "mia_efficacy", "model_utility"):
        expected[f"{key}_gap"] = abs(values[key] - ref[key])
    gaps = {k: v for k, v in values.items() if k.endswith("_gap") and k != "retrain_gap"}
    assert gaps.keys() == expected.keys()
    for key, value in expected.items():
        assert gaps[key] == pytest.approx(value, abs=1e-12), key
    # the original model is far from the retain-only one on the forget set, close on retain data
    assert values["forget_acc_gap"] >= 0.5
    assert values["retain_acc_gap"] <= 0.1
    # retrain_gap = mean of the forget/retain/test accuracy gaps and the MIA-efficacy gap
    four = [values[f"{s}_acc_gap"] for s in ("forget", "retain", "test")] + [values["mia_efficacy_gap"]]
    assert values["retrain_gap"] == pytest.approx(sum(four) / 4, abs=1e-6)


def _fit_run(oracle: RetrainOracle, relearn: bool = False):
    torch.manual_seed(0)
    module, dm, _ = UnlearningModule.example()
    return module, dm, [UnlearningEvaluator(oracle=oracle, images=False, relearn=relearn, relearn_max_steps=20)]


def test_evaluator_fits_an_untrained_oracle_in_setup_and_keeps_its_statistics_in_the_checkpoint(tmp_path):
    oracle = RetrainOracle(model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), max_epochs=2)
    module, dm, callbacks = _fit_run(oracle)
    trainer = make_trainer(max_epochs=1, callbacks=callbacks)
    trainer.fit(module, datamodule=dm)
    assert oracle.model is not None
    assert "unlearn/forget_acc_gap" in trainer.callback_metrics
    state = callbacks[0].state_dict()
    fresh = UnlearningEvaluator(oracle=RetrainOracle(statistics=_save(oracle, tmp_path)), images=False)
    fresh.load_state_dict(state)
    assert fresh.reference == callbacks[0].reference


def _save(oracle: RetrainOracle, tmp_path) -> str:
    path = str(tmp_path / "o.json")
    oracle.save(path)
    return path


@pytest.mark.ddp
def test_two_ranks_fit_the_oracle_and_log_the_one_process_gaps():
    """Each rank fits the oracle in its own single-device Trainer; gaps and relearn time equal one process's."""

    def run(world):
        oracle = RetrainOracle(model=nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), max_epochs=2)
        module, dm, callbacks = _fit_run(oracle, relearn=True)
        module.lr = 1e-12  # frozen weights: 1 and 2 ranks comparable
        if world == 1:
            trainer = make_trainer(max_epochs=1, callbacks=callbacks)
            trainer.fit(module, datamodule=dm)
        else:
            trainer = run_ddp(callbacks, module, dm, world_size=2, max_epochs=1, max_steps=-1)
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("unlearn/")}

    one, two = run(1), run(2)
    assert one.keys() == two.keys()
    assert any(k.endswith("_acc_gap") for k in one)
    assert "unlearn/relearn_time" in one
    for key, value in one.items():
        assert two[key] == pytest.approx(value, abs=1e-6), key


def test_regression_statistics_hold_predictions():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=gen)
    y = x.sum(1)
    dm = ForgetRetainDataModule.from_dataset(
        TensorDataset(x[:30], y[:30]), TensorDataset(x[30:], y[30:]), forget_indices=list(range(6)), batch_size=8
    )
    oracle = RetrainOracle(model=nn.Linear(3, 1), max_epochs=3, lr=0.05)
    oracle.fit(dm)
    stats = oracle.statistics(dm)
    forget = stats["loaders"]["forget"]
    assert stats["task"] == "regression"
    assert forget["correct"] is None
    assert forget["mia_score"] is None
    with torch.no_grad():
        preds = oracle.model(x[:6]).reshape(-1).double().tolist()
    assert forget["prediction"] == pytest.approx(preds, abs=1e-6)
    assert forget["loss"] == pytest.approx([abs(p - float(t)) for p, t in zip(preds, y[:6], strict=True)], abs=1e-5)


def test_bad_inputs_are_named(tmp_path, trained):
    _, oracle, dm = trained
    with pytest.raises(ValueError, match="statistics"):
        RetrainOracle()
    with pytest.raises(ValueError, match="statistics"):
        RetrainOracle(model=_net(), statistics=str(tmp_path / "x.json"))
    with pytest.raises(TypeError, match="model"):
        RetrainOracle(model="net")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trained"):
        RetrainOracle(statistics=str(tmp_path / "x.json"), trained=True)
    with pytest.raises(ValueError, match="statistics"):  # missing file
        RetrainOracle(statistics=str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="statistics"):
        RetrainOracle(statistics=str(bad))
    bad.write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="format"):
        RetrainOracle(statistics=str(bad))
    bad.write_text(json.dumps({"format": STATISTICS_FORMAT, "version": 2, "loaders": {"forget": {}}}))
    with pytest.raises(ValueError, match="version 2"):
        RetrainOracle(statistics=str(bad))
    with pytest.raises(ValueError, match="max_epochs"):
        RetrainOracle(model=_net(), max_epochs=0)
    with pytest.raises(ValueError, match="lr"):
        RetrainOracle(model=_net(), lr=float("nan"))
    with pytest.raises(ValueError, match="no statistics"):
        RetrainOracle(model=oracle.model, trained=True).save(tmp_path / "none.json")
    scored = RetrainOracle(model=oracle.model, trained=True)
    scored.statistics(dm)
    path = _save(scored, tmp_path)
    with pytest.raises(ValueError, match="attack"):
        RetrainOracle(statistics=path).statistics(dm, attack="zlib")
    with pytest.raises(ValueError, match="no model"):
        RetrainOracle(statistics=path).fit(dm)
    with pytest.raises(ValueError, match="oracle"):
        UnlearningEvaluator(retrain_model=_net(), oracle=RetrainOracle(statistics=path))
    with pytest.raises(TypeError, match="oracle"):
        UnlearningEvaluator(oracle=_net())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="oracle"):
        UnlearningEvaluator(metrics=["gaps"])
    with pytest.raises(ValueError, match="retain_dataset"):
        RetrainOracle(model=_net()).fit(TinyDataModule())


def test_open_unlearning_log_of_the_retain_model_gives_the_same_forget_quality(tmp_path):
    loaders = perturbed_lm_loaders()
    live = RetrainOracle(model=TokenLM(1), trained=True)
    stats = live.statistics(loaders)
    assert stats["task"] == "language_model"

    def by_index(split, field, key):
        entry = stats["loaders"][split]
        return {str(i): {key: v} for i, v in zip(entry["index"], entry[field], strict=True)}

    log = {
        "forget_Q_A_Prob": {"agg_value": 0.0, "value_by_index": by_index("forget", "loss", "avg_loss")},
        "forget_truth_ratio": {
            "agg_value": 0.0,
            "value_by_index": by_index("forget_perturbed", "truth_ratio", "score"),
        },
        "model_utility": {"agg_value": 0.5},
    }
    path = tmp_path / "TOFU_EVAL.json"
    path.write_text(json.dumps(log))
    model = TokenLM(0)
    from_log = UnlearningEvaluator(oracle=RetrainOracle(statistics=path), images=False).evaluate(model, loaders)
    from_model = UnlearningEvaluator(oracle=live, images=False).evaluate(model, loaders)
    assert from_log["forget_quality"] == from_model["forget_quality"]  # KS on the truth ratios, exactly
    assert from_log["forget_nll_gap"] == from_model["forget_nll_gap"]
    assert "retain_acc_gap" in from_model
    assert "retain_acc_gap" not in from_log  # the log has no retain statistics: no made-up gap
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"retain_Q_A_Prob": {"value_by_index": {"0": {"prob": 0.5}}}}))
    with pytest.raises(ValueError, match="forget"):
        RetrainOracle(statistics=bad)
