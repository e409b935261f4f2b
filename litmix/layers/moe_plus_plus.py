"""MoE++: a mixture-of-experts layer with zero-computation experts and gating residuals."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int, check_type

__all__ = ["MoEPlusPlus"]

PAPER = (
    "MoE++: Accelerating Mixture-of-Experts Methods with Zero-Computation Experts "
    "(Jin et al., ICLR 2025; https://arxiv.org/abs/2410.07348)"
)


def _balance_loss(probs: Tensor, expert_index: Tensor, eta: Tensor) -> Tensor:
    """Heterogeneous load-balance loss ``E * sum_i eta_i f_i P_i``.

    ``probs``: router probabilities ``(T, E)``; ``expert_index``: chosen experts ``(T, k)``; ``eta``: per-expert
    weights ``(E,)`` (1 for FFN experts, ``tau`` for zero-computation experts). ``f_i`` is the share of the
    ``T * k`` assignments that went to expert ``i`` (no gradient), ``P_i`` its mean router probability.
    """
    num_experts = probs.shape[-1]
    counts = torch.bincount(expert_index.reshape(-1), minlength=num_experts).to(probs.dtype)
    share = counts / expert_index.numel()
    return num_experts * (eta * share * probs.mean(0)).sum()


@register("layer", "optimization", paper=PAPER, module="litmix.layers")
class MoEPlusPlus(nn.Module):
    """Top-k mixture of FFN experts and zero-computation experts (zero, copy, constant) with gating residuals.

    Jin, Zhu, Yuan and Yan, "MoE++: Accelerating Mixture-of-Experts Methods with Zero-Computation Experts"
    (ICLR 2025, https://arxiv.org/abs/2410.07348). Beside ``num_experts`` FFN experts the router may pick

    * zero experts, ``E(x) = 0`` (the slot is discarded),
    * copy experts, ``E(x) = x`` (the slot skips the layer),
    * constant experts, ``E(x) = a_1 x + a_2 v`` with a learned vector ``v`` and ``[a_1, a_2] = softmax(W_c x)``,

    so a token uses between 0 and ``top_k`` FFN experts. The router logits are ``W x`` plus, with
    ``gating_residual`` and ``prev_logits`` given, ``W_g`` times the previous MoE++ layer's logits (the paper's
    gating residuals; pass ``prev_logits=previous_layer.router_logits``). Output: ``sum_{i in top-k} p_i E_i(x)``
    with ``p = softmax(logits)``. Dispatch groups the ``(token, slot)`` assignments by expert (one sort, one
    gather and one ``index_add_`` per expert; no per-token loop), so the FFNs only see the tokens routed to them
    and tokens sent to zero-computation experts cost no FFN compute. With no zero-computation experts and
    ``gating_residual=False`` the layer is a plain top-k MoE (the vanilla baseline).

    After each forward the layer keeps: ``aux_loss`` (the paper's heterogeneous load-balance loss
    ``E * sum_i eta_i f_i P_i``, ``eta_i = 1`` for FFN experts and ``tau`` for zero-computation experts; add
    ``weight * aux_loss`` to the training loss, or :meth:`total_aux_loss` of a whole model), ``router_logits``
    ``(tokens, experts)``, ``expert_load`` (assignments per expert), ``ffn_tokens`` (assignments sent to FFN
    experts) and ``ffn_fraction`` (``ffn_tokens / (tokens * top_k)``).

    Args:
        embed_dim: feature size ``d`` of the input ``(..., d)``, >= 1.
        num_experts: FFN experts, >= 1.
        hidden: hidden width of each FFN expert (``None``: ``4 * embed_dim``), >= 1.
        zero_experts: zero (discard) experts, >= 0.
        copy_experts: copy (skip) experts, >= 0.
        constant_experts: constant experts, >= 0.
        top_k: experts per token, in [1, all experts].
        tau: load-balance weight of zero-computation experts relative to FFN experts, in (0, 1]; smaller sends
            more tokens to zero-computation experts.
        gating_residual: add a learned projection of the previous layer's router logits.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a count below its minimum, ``top_k`` above the number of experts, ``tau`` outside (0, 1];
            in :meth:`forward`, an input whose last size is not ``embed_dim`` or ``prev_logits`` of the wrong shape.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> first = MoEPlusPlus(8, num_experts=4, zero_experts=1, copy_experts=1, constant_experts=2, top_k=2)
        >>> second = MoEPlusPlus(8, num_experts=4, zero_experts=1, copy_experts=1, constant_experts=2, top_k=2)
        >>> x = torch.randn(2, 5, 8)
        >>> h = first(x)
        >>> y = second(h, prev_logits=first.router_logits)
        >>> y.shape, second.router_logits.shape, int(second.expert_load.sum())
        (torch.Size([2, 5, 8]), torch.Size([10, 8]), 20)
        >>> bool(second.ffn_fraction <= 1.0), second.aux_loss.ndim
        (True, 0)
    """

    def __init__(
        self,
        embed_dim: int,
        num_experts: int = 4,
        hidden: int | None = None,
        zero_experts: int = 1,
        copy_experts: int = 1,
        constant_experts: int = 2,
        top_k: int = 2,
        tau: float = 0.75,
        gating_residual: bool = True,
    ) -> None:
        owner = type(self).__name__
        embed_dim = check_int(owner, "embed_dim", embed_dim, low=1)
        num_experts = check_int(owner, "num_experts", num_experts, low=1)
        hidden = check_int(owner, "hidden", hidden, low=1, allow_none=True)
        zero_experts = check_int(owner, "zero_experts", zero_experts, low=0)
        copy_experts = check_int(owner, "copy_experts", copy_experts, low=0)
        constant_experts = check_int(owner, "constant_experts", constant_experts, low=0)
        top_k = check_int(owner, "top_k", top_k, low=1)
        tau = check_float(owner, "tau", tau, low=0.0, high=1.0, low_open=True)
        gating_residual = check_bool(owner, "gating_residual", gating_residual)
        total = num_experts + zero_experts + copy_experts + constant_experts
        if top_k > total:
            raise ValueError(
                f"{owner}(top_k={top_k}, num_experts={num_experts}, zero_experts={zero_experts}, "
                f"copy_experts={copy_experts}, constant_experts={constant_experts}): top_k must be <= the number "
                f"of experts ({total})"
            )
        super().__init__()
        self.embed_dim, self.num_experts, self.top_k, self.tau = embed_dim, num_experts, top_k, tau
        self.hidden = hidden if hidden is not None else 4 * embed_dim
        self.zero_experts, self.copy_experts, self.constant_experts = zero_experts, copy_experts, constant_experts
        self.total_experts = total
        self.router = nn.Linear(embed_dim, total, bias=False)
        self.residual = nn.Linear(total, total, bias=False) if gating_residual else None
        if self.residual is not None:
            nn.init.zeros_(self.residual.weight)  # starts as a plain router; W_g is learned
        self.ffn = nn.ModuleList(
            nn.Sequential(nn.Linear(embed_dim, self.hidden), nn.GELU(), nn.Linear(self.hidden, embed_dim))
            for _ in range(num_experts)
        )
        self.constant = nn.Parameter(torch.randn(constant_experts, embed_dim) * embed_dim**-0.5)
        self.constant_gate = nn.Parameter(torch.zeros(constant_experts, 2, embed_dim))
        eta = torch.full((total,), tau)
        eta[:num_experts] = 1.0
        self.eta: Tensor
        self.register_buffer("eta", eta, persistent=False)
        self.aux_loss: Tensor = torch.zeros(())
        self.router_logits: Tensor = torch.zeros(0, total)
        self.expert_load: Tensor = torch.zeros(total, dtype=torch.long)
        self.ffn_tokens: Tensor = torch.zeros((), dtype=torch.long)
        self.ffn_fraction: Tensor = torch.zeros(())

    def forward(self, x: Tensor, prev_logits: Tensor | None = None) -> Tensor:
        """Route every position of ``x`` ``(..., embed_dim)``; ``prev_logits``: the previous layer's logits."""
        owner = type(self).__name__
        check_type(owner, "x", x, Tensor)
        if x.shape[-1] != self.embed_dim:
            raise ValueError(f"{owner}.forward(x): last size must be embed_dim={self.embed_dim}, got {x.shape[-1]}")
        shape = x.shape
        tokens = x.reshape(-1, self.embed_dim)
        n = tokens.shape[0]
        logits = self.router(tokens)
        if prev_logits is not None and self.residual is not None:
            if prev_logits.shape != logits.shape:
                raise ValueError(
                    f"{owner}.forward(prev_logits): shape must be {tuple(logits.shape)}, got {tuple(prev_logits.shape)}"
                )
            logits = logits + self.residual(prev_logits)
        probs = logits.softmax(-1)
        weight, index = probs.topk(self.top_k, dim=-1)  # (n, k)
        self.router_logits = logits
        self.aux_loss = _balance_loss(probs, index, self.eta)

        flat_expert = index.reshape(-1)
        flat_weight = weight.reshape(-1, 1).to(x.dtype)
        flat_token = torch.arange(n, device=x.device).repeat_interleave(self.top_k)
        order = torch.argsort(flat_expert, stable=True)
        load = torch.bincount(flat_expert, minlength=self.total_experts)
        self.expert_load = load.detach()
        self.ffn_tokens = load[: self.num_experts].sum().detach()
        self.ffn_fraction = self.ffn_tokens.float() / max(flat_expert.numel(), 1)
        sorted_token, sorted_weight = flat_token[order], flat_weight[order]
        out = torch.zeros_like(tokens)
        bounds = [0, *torch.cumsum(load, 0).tolist()]
        for e in range(self.num_experts):
            start, stop = bounds[e], bounds[e + 1]
            if stop > start:
                idx = sorted_token[start:stop]
                out.index_add_(0, idx, self.ffn[e](tokens[idx]) * sorted_weight[start:stop])
        # zero experts [num_experts, num_experts + zero_experts): nothing to add
        first_copy = self.num_experts + self.zero_experts
        first_const = first_copy + self.copy_experts
        start, stop = bounds[first_copy], bounds[first_const]
        if stop > start:
            idx = sorted_token[start:stop]
            out.index_add_(0, idx, tokens[idx] * sorted_weight[start:stop])
        start, stop = bounds[first_const], bounds[self.total_experts]
        if stop > start:
            idx = sorted_token[start:stop]
            which = flat_expert[order][start:stop] - first_const
            xs = tokens[idx]
            gates = (xs @ self.constant_gate.reshape(-1, self.embed_dim).T).view(-1, self.constant_experts, 2)
            alpha = gates.gather(1, which.view(-1, 1, 1).expand(-1, 1, 2)).squeeze(1).softmax(-1)
            value = alpha[:, :1] * xs + alpha[:, 1:] * self.constant[which]
            out.index_add_(0, idx, value * sorted_weight[start:stop])
        if torch.is_grad_enabled():
            # experts that got no token still join the graph (0 * weight), so DDP needs no find_unused_parameters
            idle: list[Tensor] = [
                p for e in range(self.num_experts) if bounds[e + 1] == bounds[e] for p in self.ffn[e].parameters()
            ]
            if self.constant_experts and bounds[first_const] == bounds[self.total_experts]:
                idle += [self.constant, self.constant_gate]
            if self.residual is not None and prev_logits is None:
                idle.append(self.residual.weight)
            if idle:
                out = out + sum(p.reshape(-1)[:1].sum() for p in idle) * 0.0
        return out.reshape(shape)

    @staticmethod
    def total_aux_loss(module: nn.Module) -> Tensor:
        """Sum of ``aux_loss`` over every :class:`MoEPlusPlus` inside ``module`` (after a forward).

        Raises:
            TypeError: if ``module`` is not an ``nn.Module``.
        """
        check_type("MoEPlusPlus.total_aux_loss", "module", module, nn.Module)
        losses = [m.aux_loss for m in module.modules() if isinstance(m, MoEPlusPlus)]
        return torch.stack(losses).sum() if losses else torch.zeros(())

    def extra_repr(self) -> str:
        """Sizes and expert counts."""
        return (
            f"embed_dim={self.embed_dim}, num_experts={self.num_experts}, hidden={self.hidden}, "
            f"zero_experts={self.zero_experts}, copy_experts={self.copy_experts}, "
            f"constant_experts={self.constant_experts}, top_k={self.top_k}, tau={self.tau}, "
            f"gating_residual={self.residual is not None}"
        )
