"""The M-FAC optimizer: steps along the inverse damped empirical Fisher of a sliding window of gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from litmix.functional.mfac import window_coefficients
from litmix.optim._params import param_list
from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["MFAC"]

_PAPER = "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information (https://arxiv.org/abs/2107.03356)"


def _check_group(owner: str, prefix: str, group: dict[str, Any]) -> dict[str, Any]:
    """Validate the hyperparameters in ``group`` (``prefix`` locates them: ``""`` or ``"param_groups[1]."``)."""
    out: dict[str, Any] = {}
    if "lr" in group:
        out["lr"] = check_float(owner, f"{prefix}lr", group["lr"], low=0.0)
    if "num_grads" in group:
        out["num_grads"] = check_int(owner, f"{prefix}num_grads", group["num_grads"], low=1, high=65536)
    if "damp" in group:
        out["damp"] = check_float(owner, f"{prefix}damp", group["damp"], low=0.0, low_open=True)
    if "momentum" in group:
        out["momentum"] = check_float(owner, f"{prefix}momentum", group["momentum"], low=0.0, high=1.0, high_open=True)
    if "weight_decay" in group:
        out["weight_decay"] = check_float(owner, f"{prefix}weight_decay", group["weight_decay"], low=0.0)
    return out


@register("optimizer", "optimization", paper=_PAPER, module="litmix.optim")
class MFAC(torch.optim.Optimizer):
    """M-FAC: a second-order optimizer stepping along the inverse empirical Fisher of recent gradients.

    Frantar, Kurtic and Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information",
    NeurIPS 2021, https://arxiv.org/abs/2107.03356 (the reference's ``optim.MFAC``, IST-DASLab/M-FAC). Each
    parameter group keeps a ring buffer of its last ``num_grads`` (``m``) gradients ``G`` (all the group's parameters
    together, one row per step; rows never filled are zeros, as in the reference) and steps along the inverse of the
    damped empirical Fisher ``F = damp * I + G^T G / m``:

    * ``g <- grad + weight_decay * p`` (coupled weight decay, as the reference);
    * ``g`` replaces the oldest row of ``G`` (:func:`litmix.functional.mfac.window_update`);
    * ``u = F^-1 g`` by the dynamic algorithm (:func:`litmix.functional.mfac.window_inverse_mul`: an ``m x m``
      solve from the Gram matrix ``G G^T`` kept in the state, two passes over ``G``);
    * with ``momentum > 0``: ``v <- momentum * v + (1 - momentum) * u`` and ``u <- v`` (the reference's averaging);
    * ``p <- p - lr * u``.

    Memory: ``m`` gradients per parameter element (``4 m`` bytes for float32, plus 4 with momentum) and an ``m x m``
    Gram matrix per group (see :func:`litmix.optim.memory_report`); the paper uses ``m = 1024`` on GPUs, 32-128 suit
    a CPU. A step costs two passes over the window plus an ``O(m^3)`` solve. Every parameter of a group must be on
    one device. Parameters without a gradient in a step count as a zero gradient in the window and are not moved.
    The whole window is in ``state_dict()``, so save -> load -> continue equals an uninterrupted run.

    Args:
        params: parameters or parameter groups (dicts), as for any ``torch.optim.Optimizer``.
        lr: learning rate, a finite number >= 0 (default 1e-3, the paper's).
        num_grads: window size ``m``, an int in [1, 65536] (default 1024, the paper's).
        damp: dampening ``> 0`` of the Fisher (default 1e-5, the paper's).
        momentum: averaging of the updates, in [0, 1) (default 0).
        weight_decay: coupled L2 weight decay, a finite number >= 0 (default 0).

    Raises:
        TypeError: for ``params`` that is a single tensor, or an argument of the wrong type, naming it.
        ValueError: for an empty ``params`` or an argument out of range, naming it (``param_groups[i].<arg>`` for
            a group's own value).
        RuntimeError: in :meth:`step` for a sparse gradient or a group whose parameters are on several devices.

    Example:
        >>> p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
        >>> opt = MFAC([p], lr=0.6, num_grads=5, damp=1.0)
        >>> p.grad = torch.tensor([3.0, 4.0])
        >>> opt.step()  # one gradient in the window: F^-1 g = g / (damp + |g|^2 / m) = g / 6
        >>> p.data
        tensor([0.7000, 1.6000])
        >>> opt.state[p]["grads"].shape, opt.state[p]["gram"][0, 0].item()  # the window and its Gram matrix
        (torch.Size([5, 2]), 25.0)
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        num_grads: int = 1024,
        damp: float = 1e-5,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        owner = type(self).__name__
        defaults = _check_group(
            owner,
            "",
            {"lr": lr, "num_grads": num_grads, "damp": damp, "momentum": momentum, "weight_decay": weight_decay},
        )
        super().__init__(param_list(owner, params), defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its own hyperparameters are validated like the constructor's."""
        owner, prefix = type(self).__name__, f"param_groups[{len(self.param_groups)}]."
        super().add_param_group({**param_group, **_check_group(owner, prefix, param_group)})

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One M-FAC update of every group with at least one gradient; returns the closure's loss (if any).

        Raises:
            RuntimeError: for a sparse gradient or a group whose parameters are on several devices.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params: list[Tensor] = list(group["params"])
        if not params or all(p.grad is None for p in params):
            return
        m, damp = int(group["num_grads"]), float(group["damp"])
        lr, mom, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        device = params[0].device
        head = self.state[params[0]]  # the group's step counter and Gram matrix live with its first parameter
        if "gram" not in head:
            head["step"] = torch.tensor(0.0)
            head["gram"] = torch.zeros(m, m, dtype=params[0].dtype, device=device)
        for p in params:
            if p.device != device:
                raise RuntimeError(f"{type(self).__name__}: every parameter of a group must be on one device")
            if p.grad is not None and p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if "grads" not in state:
                state["grads"] = torch.zeros(m, *p.shape, dtype=p.dtype, device=device)
            if mom > 0.0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        slot = int(head["step"].item()) % m
        gram: Tensor = head["gram"]
        grads: list[Tensor] = []
        dots = torch.zeros(m, dtype=torch.float64, device=device)
        for p in params:
            window = self.state[p]["grads"].view(m, -1)
            if p.grad is None:
                window[slot].zero_()
                grads.append(window[slot])
                continue
            g = p.grad.reshape(-1)
            if wd != 0.0:
                g = g.add(p.reshape(-1), alpha=wd)
            window[slot] = g
            grads.append(window[slot])
            dots += (window @ window[slot]).to(torch.float64)
        gram[slot, :] = dots.to(gram.dtype)
        gram[:, slot] = dots.to(gram.dtype)
        coef = window_coefficients(gram, dots, damp)
        for p, g in zip(params, grads, strict=True):
            if p.grad is None:
                continue
            state = self.state[p]
            window = state["grads"].view(m, -1)
            update = (g - window.T @ coef.to(window.dtype)).div_(damp)
            if mom > 0.0:
                buf = state["momentum_buffer"].view(-1)
                buf.mul_(mom).add_(update, alpha=1.0 - mom)
                update = buf
            p.add_(update.view(p.shape), alpha=-lr)
        head["step"] += 1
