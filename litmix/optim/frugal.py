"""FRUGAL: state-full AdamW in a low-dimensional subspace, state-free signSGD in the rest (Zmushko et al. 2024)."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from litmix.optim._params import param_list
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

__all__ = ["FRUGAL", "frugal_param_groups"]

_PAPER = (
    "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training "
    "(https://arxiv.org/abs/2411.07837)"
)
PROJECTIONS = ("block", "randk", "svd")
BLOCK_ORDERS = ("random", "ascending", "descending", "mirror")
INACTIVE_RULES = ("sign_sgd", "none")


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python versions)."""
    return zlib.crc32(",".join(str(p) for p in parts).encode()) * 2654435761 % 2**63


@register("optimizer", "optimization", paper=_PAPER, module="litmix.optim")
class FRUGAL(torch.optim.Optimizer):
    """FRUGAL (Full-Rank Updates with GrAdient spLitting), Zmushko et al. 2024.

    "FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training",
    https://arxiv.org/abs/2411.07837. The gradient ``g`` of every *projectable* parameter is split by a projection
    ``P`` into a state-full part, updated by AdamW in the low-dimensional space, and the state-free residual
    ``g - P^-1 P g``, updated by signSGD:

        ``p <- p * (1 - lr * wd) - lr * P^-1(Adam(P g)) - lr * inactive_lr_scale * sign(g - P^-1 P g)``

    so every coordinate moves at every step (a full-rank update) while optimizer state exists only for the
    subspace. Parameters that are not projectable (embeddings, norms, biases, heads; see
    :func:`frugal_param_groups`) get plain AdamW. Every ``update_gap`` steps the subspace is chosen again and,
    with ``reset_statistics``, the Adam moments start from zero. Projections (``projection``):

    * ``"block"`` (the paper's default): a ``density`` fraction of the projectable *tensors* is active
      (full AdamW), the others are state-free; the active set moves through the tensors in ``block_order``
      (``"random"``, ``"ascending"``, ``"descending"`` or ``"mirror"``: ascending then descending);
    * ``"randk"``: per tensor, a random ``density`` fraction of the coordinates is active (their moments are
      stored compactly, with the int64 indices);
    * ``"svd"`` (GaLore's projection): per matrix, the top ``r = ceil(density * min(m, n))`` singular vectors
      of the gradient on the smaller side; moments of the ``r x max(m, n)`` projected gradient. Tensors that
      are not matrices fall back to AdamW.

    Every choice is a function of ``seed``, the re-projection count and the parameter's position, so DDP
    replicas (which see the same reduced gradients) choose the same subspace without communication. The
    active set, indices, projectors, moments and the step counter are all in :meth:`state_dict`, so save ->
    load -> continue equals an uninterrupted run. Measure the state with :func:`litmix.optim.memory_report`:
    with ``"block"`` at ``density=0.25`` the projectable part holds a quarter of AdamW's state.

    Args:
        params: parameters or parameter groups; a group's ``"projectable"`` key (True/False) marks its tensors;
            without it, matrices (2-D tensors) are projectable. :func:`frugal_param_groups` builds the groups
            the paper uses (Linear weights projectable).
        lr: learning rate, a finite number >= 0.
        betas: Adam's ``(beta1, beta2)``, each in [0, 1).
        eps: Adam's epsilon, > 0.
        weight_decay: decoupled weight decay, >= 0 (applied to every parameter).
        density: fraction of the projectable state kept, in [0, 1] (0: signSGD on every projectable tensor;
            1: AdamW everywhere).
        update_gap: steps between re-projections, >= 1.
        projection: ``"block"``, ``"randk"`` or ``"svd"``.
        block_order: order in which ``"block"`` moves the active set.
        inactive_update_rule: ``"sign_sgd"`` (FRUGAL) or ``"none"`` (the state-free part is dropped: GaLore /
            BAdam-style baselines).
        inactive_lr_scale: multiplier of ``lr`` for the state-free update, >= 0 (the paper: 1.0 for
            pre-training, 0.1 for fine-tuning).
        reset_statistics: reset the Adam moments at every re-projection (the paper's default; GaLore keeps them).
        seed: seed of the random choices, >= 0.

    Raises:
        TypeError: for ``params`` that is a single tensor or an argument of the wrong type, naming it.
        ValueError: for an empty ``params`` or a value outside its range, naming the argument and what is allowed.
        RuntimeError: in :meth:`step` for a sparse gradient.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 2))
        >>> opt = FRUGAL(frugal_param_groups(model), lr=1e-2, density=0.25)
        >>> model(torch.randn(4, 8)).sum().backward()
        >>> opt.step()
        >>> [opt.state[m.weight]["active"] for m in model]  # one of the four projectable weights is state-full
        [False, False, True, False]
        >>> sorted(opt.state[model[0].weight])  # a state-free tensor keeps no moments
        ['active']
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        density: float = 0.25,
        update_gap: int = 200,
        projection: str = "block",
        block_order: str = "random",
        inactive_update_rule: str = "sign_sgd",
        inactive_lr_scale: float = 1.0,
        reset_statistics: bool = True,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        lr = check_float(owner, "lr", lr, low=0.0)
        check_type(owner, "betas", betas, (tuple, list))
        if len(betas) != 2:
            raise ValueError(f"{owner}(betas={betas!r}): betas must be a pair (beta1, beta2)")
        b1, b2 = (check_float(owner, f"betas[{i}]", b, low=0.0, high=1.0, high_open=True) for i, b in enumerate(betas))
        eps = check_float(owner, "eps", eps, low=0.0, low_open=True)
        weight_decay = check_float(owner, "weight_decay", weight_decay, low=0.0)
        density = check_float(owner, "density", density, low=0.0, high=1.0)
        update_gap = check_int(owner, "update_gap", update_gap, low=1)
        check_choice(owner, "projection", projection, PROJECTIONS)
        check_choice(owner, "block_order", block_order, BLOCK_ORDERS)
        check_choice(owner, "inactive_update_rule", inactive_update_rule, INACTIVE_RULES)
        inactive_lr_scale = check_float(owner, "inactive_lr_scale", inactive_lr_scale, low=0.0)
        check_bool(owner, "reset_statistics", reset_statistics)
        seed = check_int(owner, "seed", seed, low=0)
        params_checked = param_list(owner, params)
        defaults: dict[str, Any] = {
            "lr": lr,
            "betas": (b1, b2),
            "eps": eps,
            "weight_decay": weight_decay,
            "projectable": None,
        }
        super().__init__(params_checked, defaults)
        self.density, self.update_gap, self.projection = density, update_gap, projection
        self.block_order, self.inactive_update_rule = block_order, inactive_update_rule
        self.inactive_lr_scale, self.reset_statistics, self.seed = inactive_lr_scale, reset_statistics, seed
        # the step counter lives in the first group so that it is part of state_dict()
        self.param_groups[0].setdefault("frugal_step", 0)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group; its ``projectable`` key must be True, False or None (auto: matrices)."""
        if param_group.get("projectable") is not None:
            check_bool(
                type(self).__name__, f"param_groups[{len(self.param_groups)}].projectable", param_group["projectable"]
            )
        super().add_param_group(param_group)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like any optimizer, keeping ``randk``'s coordinate indices int64.

        (``torch.optim.Optimizer.load_state_dict`` casts every state tensor but ``step`` to the parameter's
        dtype, which would turn the indices into floats.)
        """
        indices = {k: v["index"] for k, v in state_dict["state"].items() if isinstance(v, dict) and "index" in v}
        super().load_state_dict(state_dict)
        if indices:
            params = [p for group in self.param_groups for p in group["params"]]
            for k, idx in indices.items():
                p = params[int(k)]
                self.state[p]["index"] = idx.to(device=p.device, dtype=torch.long)

    # -------------------------------------------------------------------------------------------- subspace

    def _projectable(self) -> list[Tensor]:
        """Projectable parameters in group order."""
        out = []
        for group in self.param_groups:
            for p in group["params"]:
                flag = group.get("projectable")
                if flag or (flag is None and p.dim() == 2):
                    out.append(p)
        return out

    def _active_blocks(self, n: int, round_: int) -> set[int]:
        """Indices (into the projectable list) of the state-full tensors of re-projection ``round_``."""
        k = min(n, math.ceil(self.density * n - 1e-9))
        if k == 0:
            return set()
        if self.block_order == "random":
            gen = torch.Generator().manual_seed(_seed(self.seed, round_))
            return {int(i) for i in torch.randperm(n, generator=gen)[:k]}
        order = list(range(n))
        if self.block_order == "descending":
            order.reverse()
        elif self.block_order == "mirror":
            order = order + order[::-1]
        start = (round_ * k) % len(order)
        return {order[(start + j) % len(order)] for j in range(k)}

    def _reproject(self, round_: int) -> None:
        """Choose the subspace of every projectable tensor for the next ``update_gap`` steps."""
        projectable = self._projectable()
        blocks = self._active_blocks(len(projectable), round_) if self.projection == "block" else set()
        for i, p in enumerate(projectable):
            state = self.state[p]
            if self.reset_statistics or "exp_avg" not in state:
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    state.pop(key, None)
            if self.projection == "block":
                state["active"] = i in blocks
                if not state["active"]:
                    for key in ("exp_avg", "exp_avg_sq", "step"):
                        state.pop(key, None)
            elif self.projection == "randk":
                k = min(p.numel(), math.ceil(self.density * p.numel() - 1e-9))
                gen = torch.Generator().manual_seed(_seed(self.seed, round_, i))
                idx = torch.randperm(p.numel(), generator=gen)[:k].sort().values
                state["index"] = idx.to(p.device)
            elif p.dim() == 2 and p.grad is not None:  # svd: projector from the current gradient
                g = p.grad.detach().to(torch.float32)
                m, n = g.shape
                r = min(min(m, n), math.ceil(self.density * min(m, n) - 1e-9))
                if r == 0:
                    state["proj"] = g.new_zeros((m, 0) if m <= n else (n, 0))
                elif m <= n:
                    u, _, _ = torch.linalg.svd(g, full_matrices=False)
                    state["proj"] = u[:, :r].contiguous()
                else:
                    _, _, vh = torch.linalg.svd(g, full_matrices=False)
                    state["proj"] = vh[:r].T.contiguous()
                if (
                    not self.reset_statistics
                    and "exp_avg" in state
                    and state["exp_avg"].shape != ((r, n) if m <= n else (m, r))
                ):
                    for key in ("exp_avg", "exp_avg_sq", "step"):
                        state.pop(key, None)

    # ------------------------------------------------------------------------------------------------ step

    @staticmethod
    def _adam(state: dict[str, Any], g: Tensor, b1: float, b2: float, eps: float) -> Tensor:
        """One bias-corrected Adam direction for ``g`` (moments in ``state``, created on first use)."""
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(g)
            state["exp_avg_sq"] = torch.zeros_like(g)
            state["step"] = torch.zeros((), dtype=torch.float32)
        state["step"] += 1
        t = float(state["step"])
        m, v = state["exp_avg"], state["exp_avg_sq"]
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (v / (1 - b2**t)).sqrt_().add_(eps)
        return (m / (1 - b1**t)) / denom

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One FRUGAL update of every parameter with a gradient; returns the closure's loss (if any).

        Raises:
            RuntimeError: for a sparse gradient.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        t = int(self.param_groups[0]["frugal_step"])
        if t % self.update_gap == 0:
            self._reproject(t // self.update_gap)
        self.param_groups[0]["frugal_step"] = t + 1
        free_scale = self.inactive_lr_scale if self.inactive_update_rule == "sign_sgd" else 0.0
        for group in self.param_groups:
            lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
            b1, b2 = (float(b) for b in group["betas"])
            flag = group.get("projectable")
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                g, state = p.grad, self.state[p]
                projectable = flag or (flag is None and p.dim() == 2)
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                if not projectable or (self.projection == "svd" and "proj" not in state):
                    p.add_(self._adam(state, g, b1, b2, eps), alpha=-lr)
                elif self.projection == "block":
                    if state.get("active", False):
                        p.add_(self._adam(state, g, b1, b2, eps), alpha=-lr)
                    elif free_scale:
                        p.add_(g.sign(), alpha=-lr * free_scale)
                elif self.projection == "randk":
                    idx = state["index"]
                    flat = g.reshape(-1)
                    full = self._adam(state, flat[idx], b1, b2, eps)
                    if free_scale:
                        free = flat.sign()
                        free[idx] = 0.0
                        p.add_(free.view_as(p), alpha=-lr * free_scale)
                    p.view(-1).index_add_(0, idx, full, alpha=-lr)
                else:  # svd
                    proj = state["proj"].to(g.dtype)
                    left = proj.shape[0] == g.shape[0]
                    low = proj.T @ g if left else g @ proj
                    back = proj @ low if left else low @ proj.T
                    if proj.shape[1] > 0:
                        full = self._adam(state, low, b1, b2, eps)
                        p.add_(proj @ full if left else full @ proj.T, alpha=-lr)
                    if free_scale:
                        p.add_((g - back).sign_(), alpha=-lr * free_scale)
        return loss


@register("function", "optimization", paper=_PAPER, module="litmix.optim")
def frugal_param_groups(module: nn.Module, exclude: Iterable[str] = ("lm_head",)) -> list[dict[str, Any]]:
    """Parameter groups for :class:`FRUGAL`: Linear weights projectable, everything else AdamW.

    Projectable: the weights of ``nn.Linear`` (and subclasses, e.g. PyG's and timm's) and of Hugging Face
    ``Conv1D`` layers, except weights tied to an ``nn.Embedding`` and modules whose qualified name contains one
    of ``exclude`` (by default the language-model head). Embeddings, norms, biases and everything else are
    state-full, as in the paper.

    Args:
        module: the model.
        exclude: substrings of module names whose weights stay state-full.

    Returns:
        ``[{"params": projectable, "projectable": True}, {"params": rest, "projectable": False}]`` (empty groups
        dropped).

    Raises:
        TypeError: if ``module`` is not an ``nn.Module`` or ``exclude`` is a string.

    Example:
        >>> model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 10))
        >>> groups = frugal_param_groups(model)
        >>> [(g["projectable"], sum(p.numel() for p in g["params"])) for g in groups]
        [(True, 56), (False, 62)]
    """
    check_type("frugal_param_groups", "module", module, nn.Module)
    if isinstance(exclude, str):
        raise TypeError(f"frugal_param_groups(exclude={exclude!r}): exclude must be a list of name substrings")
    skip = list(exclude)
    tied = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
    chosen: list[Tensor] = []
    for name, m in module.named_modules():
        linear = isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"
        weight = getattr(m, "weight", None)
        wanted = linear and isinstance(weight, Tensor) and id(weight) not in tied
        if wanted and not any(s in name for s in skip) and all(weight is not c for c in chosen):
            chosen.append(weight)  # type: ignore[arg-type]
    ids = {id(p) for p in chosen}
    rest = [p for p in module.parameters() if id(p) not in ids]
    groups = [{"params": chosen, "projectable": True}, {"params": rest, "projectable": False}]
    return [g for g in groups if g["params"]]
