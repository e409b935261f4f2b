"""The functional entry point: registry entry and argument checks before any compute."""

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
