"""Zero-cost proxies: a registry of pure scoring functions and :func:`zero_cost_proxies`.

Importing this package registers the built-in proxies: ``synflow, snip, grasp, fisher, grad_norm, plain,
jacob_cov, naswot, zen, epe_nas, l2_norm, params, flops``.
"""

from litmix.functional.proxies import activation, data_free, gradient, shared  # noqa: F401  (registers them)
from litmix.functional.proxies.core import (
    LayerFilter,
    ProxyContext,
    ProxySpec,
    get_proxy,
    list_proxies,
    register_proxy,
    resolve_layer_filter,
    signed_log,
    weight_of,
    zero_cost_proxies,
)

__all__ = [
    "LayerFilter",
    "ProxyContext",
    "ProxySpec",
    "get_proxy",
    "list_proxies",
    "register_proxy",
    "resolve_layer_filter",
    "signed_log",
    "weight_of",
    "zero_cost_proxies",
]
