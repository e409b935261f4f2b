"""The functional entry point: registry entry and argument checks before any compute."""

import math

import pytest
import torch
from torch import nn

from litmix.functional.proxies import zero_cost_proxies
from litmix.registry import get_plugin


def test_registered_as_function():
    info = get_plugin("zero_cost_proxies")
    assert (info.kind, info.family, info.import_path) == ("function", "proxy", "litmix.functional.zero_cost_proxies")
    assert info.cls is zero_cost_proxies
    assert "2101.08134" in info.paper


@pytest.mark.parametrize(
    ("kwargs", "error", "arg"),
    [
        ({"model": "net"}, TypeError, "model"),
        ({"names": 3}, TypeError, "names"),
        ({"per_layer": 1}, TypeError, "per_layer"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"nan_policy": "zero"}, ValueError, "nan_policy"),
        ({"nan_policy": float("nan")}, ValueError, "nan_policy"),
        ({"return_timings": "yes"}, TypeError, "return_timings"),
        ({"shared": None}, TypeError, "shared"),
        ({"options": [1]}, TypeError, "options"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, error, arg):
    call = {"model": nn.Linear(3, 2), "inputs": torch.randn(4, 3), "names": ["params"], **kwargs}
    with pytest.raises(error, match=rf"zero_cost_proxies\({arg}="):
        zero_cost_proxies(**call)


class _ReLULinear(nn.Module):
    """A wrapper whose type name contains 'ReLU' (as NB201's ReLUConvBN): BayesWatch's selection hooks it too."""

    def __init__(self, i, o):
        super().__init__()
        self.act, self.lin = nn.ReLU(), nn.Linear(i, o)

    def forward(self, x):
        return self.lin(self.act(x))


def test_callback_passes_reference_quirk_options():
    """ZeroCostProxies(proxy_options=...) selects the reference quirks as the functional API does."""
    from litmix.callbacks import ZeroCostProxies
    from litmix.testing import TinyClassifier, fit_tiny

    def module():
        torch.manual_seed(0)
        m = TinyClassifier()
        m.net = nn.Sequential(nn.Linear(8, 64), _ReLULinear(64, 64), _ReLULinear(64, 4))
        return m

    scores = {}
    for count in ("modules", "reference"):
        cb = ZeroCostProxies(names=["naswot"], batch_size=8, proxy_options={"naswot": {"count": count}})
        fit_tiny([cb], module=module(), max_steps=1)
        scores[count] = cb.scores["naswot"]
    assert math.isfinite(scores["modules"])
    assert scores["reference"] > scores["modules"] + 1.0  # the wrapped ReLUs' codes counted twice
    with pytest.raises(ValueError, match="count='all'"):
        fit_tiny([ZeroCostProxies(names=["naswot"], proxy_options={"naswot": {"count": "all"}})], max_steps=1)
    with pytest.raises(ValueError, match=r"proxy_options.*unknown proxy 'nwot'"):
        ZeroCostProxies(proxy_options={"nwot": {}})
    with pytest.raises(TypeError, match="proxy_options"):
        ZeroCostProxies(proxy_options={"naswot": "reference"})
