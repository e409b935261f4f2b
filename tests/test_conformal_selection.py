"""Conformal selection (Jin & Candès 2023) and optimized conformal selection (Bai & Jin 2024)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from litmix.functional.conformal_selection import (
    conformal_pvalues,
    conformal_select,
    optimized_conformal_select,
)

QS = (0.1, 0.2, 0.3)
REPS = 200
# candidate conformity scores: ridge regressions on feature subsets (all, bmi, s5, bp, bmi+s5, s3, age+sex)
SUBSETS = [list(range(10)), [2], [8], [3], [2, 8], [6], [0, 1]]


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> np.ndarray:
    xa = np.c_[x, np.ones(len(x))]
    reg = alpha * np.eye(xa.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(xa.T @ xa + reg, xa.T @ y)


@pytest.fixture(scope="module")
def diabetes_runs() -> dict[float, dict[str, np.ndarray]]:
    """FDP and power of every procedure over REPS random train/calibration/test splits of sklearn's diabetes."""
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    c = float(np.quantile(y, 0.7))  # select patients in the top 30% of disease progression
    out: dict[float, dict[str, list[tuple[float, float]]]] = {q: {} for q in QS}
    for rep in range(REPS):
        rng = np.random.default_rng(rep)
        perm = rng.permutation(len(y))
        tr, ca, te = perm[:60], perm[60:260], perm[260:]
        pc, pt = [], []
        for s in SUBSETS:
            w = _ridge(x[tr][:, s], y[tr])
            pc.append(x[ca][:, s] @ w[:-1] + w[-1])
            pt.append(x[te][:, s] @ w[:-1] + w[-1])
        cal, test = torch.tensor(np.array(pc)), torch.tensor(np.array(pt))
        yc, alt = torch.tensor(y[ca]), torch.tensor(y[te]) > c
        for q in QS:
            res = out[q]

            def add(name: str, sel: torch.Tensor, res: dict = res, alt: torch.Tensor = alt) -> None:
                k = int(sel.sum())
                fdp = int((sel & ~alt).sum()) / max(k, 1)
                res.setdefault(name, []).append((fdp, int((sel & alt).sum()) / max(int(alt.sum()), 1)))

            fixed = [conformal_select(cal[k], yc, test[k], c, q) for k in range(len(SUBSETS))]
            for k, sel in enumerate(fixed):
                add(f"fixed{k}", sel)
            # naive reuse: the model with the most selections on the same calibration data (not valid)
            add("naive", fixed[int(np.argmax([int(s.sum()) for s in fixed]))])
            # data splitting: choose on one half of the calibration set, calibrate on the other
            counts = [int(conformal_select(cal[k, :100], yc[:100], test[k], c, q).sum()) for k in range(len(SUBSETS))]
            kb = int(np.argmax(counts))
            add("split", conformal_select(cal[kb, 100:], yc[100:], test[kb], c, q))
            gen = torch.Generator().manual_seed(rep)
            add("optcs", optimized_conformal_select(cal, yc, test, c, q, generator=gen).selected)
    return {q: {k: np.array(v) for k, v in res.items()} for q, res in out.items()}


def _fdr(arr: np.ndarray) -> tuple[float, float]:
    return float(arr[:, 0].mean()), float(arr[:, 0].std() / np.sqrt(len(arr)))


@pytest.mark.slow
@pytest.mark.parametrize("q", QS)
def test_fdr_control_on_diabetes(diabetes_runs: dict, q: float) -> None:
    runs = diabetes_runs[q]
    for name in ("optcs", "fixed0", "split"):
        fdr, se = _fdr(runs[name])
        assert fdr <= q + 2 * se, (name, q, fdr, se)
    if q <= 0.2:  # reusing the calibration data to pick the model breaks FDR control
        fdr, se = _fdr(runs["naive"])
        assert fdr > q + 2 * se, ("naive", q, fdr, se)


@pytest.mark.slow
@pytest.mark.parametrize("q", QS)
def test_optcs_more_powerful_than_splitting_and_a_priori_choice(diabetes_runs: dict, q: float) -> None:
    runs = diabetes_runs[q]
    power = {k: float(v[:, 1].mean()) for k, v in runs.items()}
    fixed_mean = float(np.mean([power[f"fixed{k}"] for k in range(len(SUBSETS))]))
    print(q, {k: round(v, 3) for k, v in power.items()}, {k: round(_fdr(v)[0], 3) for k, v in runs.items()})
    assert power["optcs"] > power["split"] + 0.01
    assert power["optcs"] > fixed_mean + 0.05


def test_pvalues_superuniform_and_single_model_matches_bh() -> None:
    gen = torch.Generator().manual_seed(0)
    n, m, reps = 50, 1, 4000
    y = torch.randn(reps, n + m, generator=gen)
    mu = y + torch.randn(reps, n + m, generator=gen)
    p = torch.stack([conformal_pvalues(mu[r, :n], y[r, :n], mu[r, n:], 0.5) for r in range(reps)]).squeeze(1)
    null = y[:, n] <= 0.5
    for t in (0.05, 0.1, 0.3):
        assert float(((p <= t) & null).float().mean()) <= t + 0.01
    # with one candidate model the first step contains the BH set
    out = optimized_conformal_select(mu[:1, :n], y[0, :n], mu[1:2, :20].reshape(1, -1), 0.0, 0.3)
    bh = conformal_select(mu[0, :n], y[0, :n], mu[1, :20], 0.0, 0.3)
    assert bool((out.first_step | ~bh).all())


def test_randomized_pvalues_use_generator() -> None:
    cal, y, test = torch.zeros(10), torch.zeros(10), torch.zeros(3)
    a = conformal_pvalues(cal, y, test, 0.5, randomized=True, generator=torch.Generator().manual_seed(1))
    b = conformal_pvalues(cal, y, test, 0.5, randomized=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert bool((a <= 1).all())
    assert bool((a > 0).all())


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"q": 0.0}, ValueError, "q="),
        ({"q": 1.0}, ValueError, "q="),
        ({"q": float("nan")}, ValueError, "q="),
        ({"q": "0.1"}, TypeError, "q="),
        ({"calib_scores": torch.zeros(0), "calib_labels": torch.zeros(0)}, ValueError, "calib_scores"),
        ({"calib_labels": torch.zeros(4)}, ValueError, "calib_labels"),
        ({"test_scores": torch.zeros(0)}, ValueError, "test_scores"),
        ({"test_scores": [1.0]}, TypeError, "test_scores"),
        ({"calib_scores": torch.tensor([1.0, float("inf"), 0.0])}, ValueError, "calib_scores"),
        ({"threshold": float("inf")}, ValueError, "threshold"),
        ({"randomized": 1}, TypeError, "randomized"),
    ],
)
def test_bad_inputs_conformal_select(kwargs: dict, error: type, name: str) -> None:
    args: dict[str, object] = {
        "calib_scores": torch.zeros(3),
        "calib_labels": torch.zeros(3),
        "test_scores": torch.zeros(2),
    }
    args.update({"threshold": 0.0, "q": 0.1})
    args.update(kwargs)
    with pytest.raises(error, match=name):
        conformal_select(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"q": 1.5}, ValueError, "q="),
        ({"pruning": "none"}, ValueError, "pruning"),
        ({"calib_scores": torch.zeros(3)}, ValueError, "calib_scores"),
        ({"test_scores": torch.zeros(3, 2)}, ValueError, "test_scores"),
        ({"calib_labels": torch.zeros(2)}, ValueError, "calib_labels"),
        ({"calib_scores": torch.zeros(2, 0), "calib_labels": torch.zeros(0)}, ValueError, "calib_scores"),
        ({"generator": 3}, TypeError, "generator"),
    ],
)
def test_bad_inputs_optimized(kwargs: dict, error: type, name: str) -> None:
    args: dict[str, object] = {
        "calib_scores": torch.zeros(2, 3),
        "calib_labels": torch.zeros(3),
        "test_scores": torch.zeros(2, 4),
    }
    args.update({"threshold": 0.0, "q": 0.1})
    args.update(kwargs)
    with pytest.raises(error, match=name):
        optimized_conformal_select(**args)  # type: ignore[arg-type]
