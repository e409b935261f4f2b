"""SimpleNet (arXiv 1608.06037) model-zoo builder: layout, arguments, digits training and zero-cost proxy scores."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from litmix.models_zoo import simplenet

SEED = 0
MIN_ACCURACY = 0.9  # measured held-out accuracy on digits: see _train_digits


def test_paper_size_and_plain_layout():
    net = simplenet()
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(5.48e6, rel=0.01)  # paper: 5.48M
    kinds = {type(m) for m in net.modules()} - {nn.Sequential}
    assert kinds == {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout,
                     nn.Linear}  # fmt: skip
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [3] * 10 + [1, 1, 3]


def test_small_inputs_keep_all_convolutions():
    for size in (8, 28, 32):
        net = simplenet(in_channels=1, width=0.125, input_size=size)
        assert net(torch.zeros(2, 1, size, size)).shape == (2, 10)
        assert sum(isinstance(m, nn.MaxPool2d) for m in net.modules()) == min(5, int(math.log2(size)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"width": 0.0}, "width"),
        ({"width": float("inf")}, "width"),
        ({"input_size": 0}, "input_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": "10"}, "num_classes"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        simplenet(**kwargs)


def _digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def _train_digits(seed: int, epochs: int = 6) -> tuple[nn.Module, float]:
    (xt, yt), (xv, yv) = _digits()
    torch.manual_seed(seed)
    net = simplenet(num_classes=10, in_channels=1, width=0.25, input_size=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        net.train()
        for idx in torch.randperm(len(yt)).split(64):
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        accuracy = float((net(xv).argmax(1) == yv).float().mean())
    return net, accuracy


@pytest.mark.slow
def test_trains_on_digits_and_proxies_score_it():
    from litmix.functional import zero_cost_proxies

    net, accuracy = _train_digits(SEED)
    assert accuracy >= MIN_ACCURACY, accuracy
    (x, y), _ = _digits()
    names = ("synflow", "snip", "grad_norm", "naswot", "params")
    small = zero_cost_proxies(simplenet(in_channels=1, width=0.125, input_size=8), x[:64], y[:64], names, seed=0)
    large = zero_cost_proxies(simplenet(in_channels=1, width=0.5, input_size=8), x[:64], y[:64], names, seed=0)
    trained = zero_cost_proxies(net, x[:64], y[:64], names, seed=0)
    for scores in (small, large, trained):
        assert all(math.isfinite(float(scores[n])) for n in names), scores
    assert large["params"] > small["params"]
    assert large["synflow"] > small["synflow"]
