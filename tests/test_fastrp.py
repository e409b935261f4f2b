"""FastRP (litmix.functional.fastrp): exactness against a dense reference, validation, speed and the Cora probe."""

from __future__ import annotations

import math
import time
import warnings

import numpy as np
import pytest
import torch

from litmix.functional.fastrp import fastrp, sparse_random_projection
from litmix.registry import get_plugin


def _ring(n: int = 10) -> torch.Tensor:
    a = torch.arange(n)
    return torch.cat([torch.stack([a, (a + 1) % n]), torch.stack([(a + 1) % n, a])], 1)


def _dense_reference(edge_index, n, dim, weights, beta, s, normalize_layers, standardize, seed):
    adj = torch.zeros(n, n, dtype=torch.float64)
    adj[edge_index[0], edge_index[1]] = 1.0
    deg = adj.sum(1)
    m = adj / deg.clamp(min=1).unsqueeze(1)
    r = sparse_random_projection(n, dim, s, torch.Generator().manual_seed(seed)).double()
    r = r * deg.clamp(min=1).pow(beta).unsqueeze(1)
    out = torch.zeros(n, dim, dtype=torch.float64)
    u = r
    for w in weights:
        u = m @ u
        layer = torch.nn.functional.normalize(u, dim=1) if normalize_layers else u
        out += w * layer
    if standardize:
        std = out.std(0, unbiased=False)
        out = (out - out.mean(0)) / torch.where(std > 0, std, torch.ones_like(std))
    return out


@pytest.mark.parametrize("normalize_layers", [False, True])
@pytest.mark.parametrize("standardize", [False, True])
def test_matches_dense_reference(normalize_layers, standardize):
    g = torch.Generator().manual_seed(1)
    n = 30
    ei = torch.randint(0, n, (2, 90), generator=g)
    ei = torch.cat([ei, ei.flip(0), ei[:, :5]], 1)  # duplicates count once
    weights = (0.5, 0.0, 1.0, 2.0)
    got = fastrp(ei, n, dim=16, weights=weights, normalization_strength=-0.5, s=3.0,
                 normalize_layers=normalize_layers, standardize=standardize, seed=4)  # fmt: skip
    want = _dense_reference(ei, n, 16, weights, -0.5, 3.0, normalize_layers, standardize, 4)
    assert got.dtype == torch.float32
    assert got.shape == (n, 16)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_seed_determinism_and_isolated_nodes():
    ei = _ring(8)
    a, b, c = fastrp(ei, 10, dim=8, seed=0), fastrp(ei, 10, dim=8, seed=0), fastrp(ei, 10, dim=8, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    raw = fastrp(ei, 10, dim=8, standardize=False)
    assert torch.isfinite(a).all()
    assert torch.equal(raw[8:], torch.zeros(2, 8)), "nodes 8, 9 have no edges: zero rows"
    # standardised columns: mean 0, variance 1 (a column that is constant, e.g. all-zero in R, stays 0)
    torch.testing.assert_close(a.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    std = a.std(0, unbiased=False)
    constant = raw.std(0) == 0
    torch.testing.assert_close(std[~constant], torch.ones(int((~constant).sum())), atol=1e-4, rtol=0)
    assert torch.equal(std[constant], torch.zeros(int(constant.sum())))


def test_sparse_projection_statistics():
    for s in (3.0, 50.0):
        r = sparse_random_projection(4000, 64, s, torch.Generator().manual_seed(0))
        nonzero = (r != 0).float().mean().item()
        assert abs(nonzero - 1 / s) < 0.1 / s
        values = torch.tensor([-math.sqrt(s), 0.0, math.sqrt(s)])
        torch.testing.assert_close(r.unique(), values)
        assert abs(r.pow(2).mean().item() - 1.0) < 0.1
        assert abs(r.mean().item()) < 0.05
    # s=None: sqrt(n), so about sqrt(n) non-zeros per column of a 1024-node graph's projection
    ei = _ring(1024)
    assert fastrp(ei, 1024, dim=4, s=None, standardize=False).abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"edge_index": torch.tensor([[0, 1], [1, 5]])}, ValueError, "edge_index"),
        ({"edge_index": torch.tensor([[0, -1], [1, 2]])}, ValueError, "edge_index"),
        ({"edge_index": torch.tensor([0, 1, 2])}, ValueError, "edge_index"),
        ({"edge_index": torch.tensor([[0.0, 1.0], [1.0, 2.0]])}, TypeError, "edge_index"),
        ({"edge_index": [[0, 1], [1, 2]]}, TypeError, "edge_index"),
        ({"num_nodes": 0}, ValueError, "num_nodes"),
        ({"num_nodes": 2.5}, TypeError, "num_nodes"),
        ({"dim": 0}, ValueError, "dim"),
        ({"dim": True}, TypeError, "dim"),
        ({"weights": ()}, ValueError, "weights"),
        ({"weights": (0.0, 0.0)}, ValueError, "weights"),
        ({"weights": (1.0, float("nan"))}, ValueError, "weights"),
        ({"weights": "abc"}, TypeError, "weights"),
        ({"weights": 1.0}, TypeError, "weights"),
        ({"weights": (1.0,) * 17}, ValueError, "weights"),
        ({"normalization_strength": float("inf")}, ValueError, "normalization_strength"),
        ({"s": 0.5}, ValueError, "s="),
        ({"s": "3"}, TypeError, "s="),
        ({"normalize_layers": 1}, TypeError, "normalize_layers"),
        ({"standardize": None}, TypeError, "standardize"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, name):
    args = {"edge_index": _ring(4), "num_nodes": 4, **kwargs}
    with pytest.raises(error, match=name):
        fastrp(**args)


def test_registered_as_graph_function():
    info = get_plugin("fastrp")
    assert (info.kind, info.family, info.module) == ("function", "graph", "litmix.functional.fastrp")
    assert "1908.11512" in info.paper


def test_cora_embedding_is_fast(cora):
    fastrp(cora.edge_index, cora.num_nodes)  # warm-up
    start = time.perf_counter()
    emb = fastrp(cora.edge_index, cora.num_nodes)
    elapsed = time.perf_counter() - start
    assert emb.shape == (2708, 128)
    assert torch.isfinite(emb).all()
    assert elapsed < 1.0, f"FastRP on Cora took {elapsed:.3f} s (measured 0.006-0.015 s on one thread)"


def _probe(features: np.ndarray, y: np.ndarray, seed: int) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(np.arange(len(y)), test_size=0.5, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=1000).fit(features[train], y[train])
    return float(clf.score(features[test], y[test]))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cora_linear_probe_beats_raw_features(cora, seed):
    """Logistic-regression probe on a random 50/50 split (catalogue section 3's protocol).

    Measured (raw / FastRP / FastRP + raw): seed 0 0.741 / 0.758 / 0.792, seed 1 0.753 / 0.765 / 0.823,
    seed 2 0.750 / 0.782 / 0.818 (the catalogue's raw-feature 0.694 used another probe set-up).
    """
    y, raw = cora.y.numpy(), cora.x.numpy()
    emb = fastrp(cora.edge_index, cora.num_nodes, seed=seed).numpy()
    acc_raw = _probe(raw, y, seed)
    acc_fastrp = _probe(emb, y, seed)
    acc_both = _probe(np.concatenate([emb, raw], 1), y, seed)
    assert acc_fastrp >= acc_raw + 0.01, (acc_raw, acc_fastrp)
    assert acc_both >= acc_raw + 0.04, (acc_raw, acc_both)
