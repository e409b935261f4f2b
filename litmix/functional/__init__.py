"""Pure-tensor algorithms behind the litmix plugins, one module per method family.

The most used entry points are re-exported here; the family modules hold the rest
(:mod:`litmix.functional.distillation`, :mod:`~litmix.functional.sparsity`, :mod:`~litmix.functional.proxies`,
:mod:`~litmix.functional.unlearning`, ...).
"""

from litmix.functional.distillation import kd_loss, top1_agreement
from litmix.functional.proxies import (
    ProxyContext,
    ProxySpec,
    get_proxy,
    list_proxies,
    register_proxy,
    resolve_layer_filter,
    zero_cost_proxies,
)
from litmix.functional.sparsity import (
    cubic_sparsity,
    default_parameter_selection,
    magnitude_masks,
    mask_optimizer_state,
    pack_mask,
    reset_optimizer_state,
    sparsity_report,
    unpack_mask,
)
from litmix.functional.unlearning import npo_loss

__all__ = [
    "ProxyContext",
    "ProxySpec",
    "cubic_sparsity",
    "default_parameter_selection",
    "get_proxy",
    "kd_loss",
    "list_proxies",
    "magnitude_masks",
    "mask_optimizer_state",
    "npo_loss",
    "pack_mask",
    "register_proxy",
    "reset_optimizer_state",
    "resolve_layer_filter",
    "sparsity_report",
    "top1_agreement",
    "unpack_mask",
    "zero_cost_proxies",
]
