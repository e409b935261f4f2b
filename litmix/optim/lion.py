"""Lion: the sign-momentum optimizer found by program search (Chen et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from litmix.optim._params import param_list
from litmix.registry import register
from litmix.validation import check_float, check_type

__all__ = ["Lion"]

_PAPER = "Symbolic Discovery of Optimization Algorithms (https://arxiv.org/abs/2302.06675)"


def _check_group(owner: str, prefix: str, lr: Any, betas: Any, weight_decay: Any) -> tuple[float, tuple[float, float]]:
    """Validate one set of hyperparameters; ``prefix`` locates them (``""`` or ``"param_groups[1]."``)."""
    lr = check_float(owner, f"{prefix}lr", lr, low=0.0)
    check_type(owner, f"{prefix}betas", betas, (tuple, list))
    if len(betas) != 2:
        raise ValueError(f"{owner}({prefix}betas={betas!r}): {prefix}betas must be a pair (beta1, beta2)")
    b1, b2 = (
        check_float(owner, f"{prefix}betas[{i}]", b, low=0.0, high=1.0, high_open=True) for i, b in enumerate(betas)
    )
    check_float(owner, f"{prefix}weight_decay", weight_decay, low=0.0)
    return lr, (b1, b2)


@register("optimizer", "optimization", paper=_PAPER, module="litmix.optim")
class Lion(torch.optim.Optimizer):
    """Lion (EvoLved Sign Momentum), Chen et al., "Symbolic Discovery of Optimization Algorithms", 2023.

    https://arxiv.org/abs/2302.06675. For every parameter ``p`` with gradient ``g`` and momentum ``m``:

    * ``p <- p * (1 - lr * weight_decay)`` (decoupled weight decay);
    * ``p <- p - lr * sign(beta1 * m + (1 - beta1) * g)`` (every coordinate with a nonzero update moves by
      exactly ``lr``);
    * ``m <- beta2 * m + (1 - beta2) * g``.

    The interpolations are computed with ``lerp`` (``m + w * (g - m)``, as in the reference implementation
    lucidrains/lion-pytorch): five passes over memory per step instead of seven, equal to the formula up to
    rounding. One state tensor per parameter (``exp_avg``), half of AdamW's per-element state (see
    :func:`litmix.optim.memory_report`). The paper's advice: an ``lr`` 3-10x smaller and a ``weight_decay``
    3-10x larger than AdamW's. There is no ``torch.optim.Lion``; this one is a plain ``torch.optim.Optimizer``
    (param groups, ``state_dict``) for ``configure_optimizers``.

    Args:
        params: parameters or parameter groups (dicts), as for any ``torch.optim.Optimizer``.
        lr: learning rate, a finite number >= 0 (default 1e-4).
        betas: ``(beta1, beta2)``, each in [0, 1): beta1 interpolates the update direction, beta2 the momentum.
        weight_decay: decoupled weight decay, a finite number >= 0 (default 0).
        foreach: update all tensors of a group with ``torch._foreach_*`` ops (True), one by one (False), or
            choose (None: the foreach path, which gives the same results).

    Raises:
        TypeError: for ``params`` that is a single tensor, or an argument of the wrong type, naming it.
        ValueError: for an empty ``params``, a negative or non-finite ``lr`` or ``weight_decay``, or betas
            outside [0, 1), naming the argument (``param_groups[i].<arg>`` for a group's own value).
        RuntimeError: in :meth:`step` for a sparse gradient.

    Example:
        >>> p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
        >>> opt = Lion([p], lr=0.1, weight_decay=0.5)
        >>> p.grad = torch.tensor([0.5, -0.1, 0.0])
        >>> opt.step()
        >>> p.data  # (1 - 0.1 * 0.5) * p - 0.1 * sign(0.1 * g)
        tensor([ 0.8500, -1.8000,  2.8500])
        >>> opt.state[p]["exp_avg"]  # 0.01 * g
        tensor([ 0.0050, -0.0010,  0.0000])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        foreach: bool | None = None,
    ) -> None:
        owner = type(self).__name__
        lr, betas = _check_group(owner, "", lr, betas, weight_decay)
        weight_decay = float(weight_decay)
        check_type(owner, "foreach", foreach, bool, allow_none=True)
        params_checked = param_list(owner, params)
        defaults: dict[str, Any] = {"lr": lr, "betas": betas, "weight_decay": weight_decay, "foreach": foreach}
        super().__init__(params_checked, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its own ``lr``, ``betas`` and ``weight_decay`` are validated like the constructor's."""
        owner, prefix = type(self).__name__, f"param_groups[{len(self.param_groups)}]."
        given: dict[str, Any] = {k: param_group[k] for k in ("lr", "betas", "weight_decay") if k in param_group}
        if given:
            full: dict[str, Any] = {**self.defaults, **given}
            lr, betas = _check_group(owner, prefix, full["lr"], full["betas"], full["weight_decay"])
            checked: dict[str, Any] = {"lr": lr, "betas": betas}
            param_group = {**param_group, **{k: v for k, v in checked.items() if k in given}}
            if "weight_decay" in given:
                param_group["weight_decay"] = float(given["weight_decay"])
        if "foreach" in param_group:
            check_type(owner, f"{prefix}foreach", param_group["foreach"], bool, allow_none=True)
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One Lion update of every parameter with a gradient; returns the closure's loss (if any).

        Raises:
            RuntimeError: for a sparse gradient.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            moms: list[Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                moms.append(state["exp_avg"])
            if not params:
                continue
            lr, wd = float(group["lr"]), float(group["weight_decay"])
            b1, b2 = (float(b) for b in group["betas"])
            foreach = group.get("foreach")
            if foreach is None or foreach:
                _lion_foreach(params, grads, moms, lr, b1, b2, wd)
            else:
                _lion_loop(params, grads, moms, lr, b1, b2, wd)
        return loss


def _lion_loop(
    params: list[Tensor], grads: list[Tensor], moms: list[Tensor], lr: float, b1: float, b2: float, wd: float
) -> None:
    """The update one tensor at a time (the reference the foreach path must match exactly)."""
    for p, g, m in zip(params, grads, moms, strict=True):
        if wd != 0.0:
            p.mul_(1.0 - lr * wd)
        p.add_(torch.lerp(m, g, 1.0 - b1).sign_(), alpha=-lr)
        m.lerp_(g, 1.0 - b2)


def _lion_foreach(
    params: list[Tensor], grads: list[Tensor], moms: list[Tensor], lr: float, b1: float, b2: float, wd: float
) -> None:
    """The same update with ``torch._foreach_*`` ops (one kernel launch per op for the whole group)."""
    if wd != 0.0:
        torch._foreach_mul_(params, 1.0 - lr * wd)
    updates = torch._foreach_lerp(moms, grads, 1.0 - b1)
    torch._foreach_sign_(updates)
    torch._foreach_add_(params, updates, alpha=-lr)
    torch._foreach_lerp_(moms, grads, 1.0 - b2)
