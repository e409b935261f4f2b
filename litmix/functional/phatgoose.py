"""PHATGOOSE (Muqeeth et al., 2024): post-hoc routing among independently trained LoRA experts; pure tensors.

Each expert ``i`` is a LoRA adapter ``(A_i, B_i)`` beside a frozen linear layer, trained on its own task. After it,
with the adapter and the base frozen, a gate vector ``g_i`` is trained per module so that the adapter's output is
scaled by ``sigmoid(g_i . x)`` (:func:`gated_lora_delta`). At inference the gate vectors of all experts become the
router of that module: the input ``x`` and every gate vector are standardized (zero mean, unit variance over the
features), the scores are their dot products divided by ``sqrt(d)`` (:func:`phatgoose_scores`), each token goes to its
``top_k`` experts with weights ``softmax`` over the selected scores (:func:`top_k_routing`), and the output is the
weighted sum of those experts' LoRA outputs (:func:`lora_mixture`). The layer lives in
:mod:`litmix.layers.phatgoose`.

Paper: "Learning to Route Among Specialized Experts for Zero-Shot Generalization", Muqeeth, Liu, Liu, Raffel
(ICML 2024, https://arxiv.org/abs/2402.05859).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int, check_type

__all__ = ["gated_lora_delta", "lora_mixture", "phatgoose_scores", "routing_matrix", "standardize", "top_k_routing"]

PAPER = (
    "Learning to Route Among Specialized Experts for Zero-Shot Generalization "
    "(Muqeeth, Liu, Liu, Raffel, ICML 2024; https://arxiv.org/abs/2402.05859)"
)
_MODULE = "litmix.functional.phatgoose"


def _check_tensor(owner: str, name: str, value: object, ndim_low: int = 1) -> Tensor:
    check_type(owner, name, value, Tensor)
    assert isinstance(value, Tensor)
    if value.dim() < ndim_low:
        raise ValueError(f"{owner}({name}=...): {name} needs at least {ndim_low} dimension(s), got {value.dim()}")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{owner}({name}=...): {name} holds NaN or inf")
    if not value.is_floating_point():
        raise TypeError(f"{owner}({name}=...): {name} must be a floating-point tensor, got {value.dtype}")
    return value


def _standardize(x: Tensor, eps: float) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], eps=eps)


@register("function", "optimization", paper=PAPER, module=_MODULE)
def standardize(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean and unit (biased) variance over the last dimension: PHATGOOSE's normalisation of tokens and gates.

    ``(x - mean) / sqrt(var + eps)``, a layer norm without affine parameters (the reference code's
    ``LayerNorm(d, elementwise_affine=False)``).

    Args:
        x: ``(..., d)`` floating-point tensor.
        eps: added to the variance, > 0.

    Returns:
        a tensor of the shape of ``x``.

    Raises:
        TypeError: if ``x`` is not a floating-point tensor.
        ValueError: for a 0-d or non-finite ``x`` or ``eps <= 0``.

    Example:
        >>> y = standardize(torch.tensor([[1.0, 2.0, 3.0, 6.0]]))
        >>> round(float(y.mean()), 6), round(float(y.var(unbiased=False)), 4)
        (0.0, 1.0)
    """
    owner = "standardize"
    x = _check_tensor(owner, "x", x)
    eps = check_float(owner, "eps", eps, low=0.0, low_open=True)
    return _standardize(x, eps)


def _scores(x: Tensor, gates: Tensor, eps: float, scale: bool) -> Tensor:
    scores = _standardize(x, eps) @ _standardize(gates, eps).to(x.dtype).T
    return scores / math.sqrt(x.shape[-1]) if scale else scores


@register("function", "optimization", paper=PAPER, module=_MODULE)
def phatgoose_scores(x: Tensor, gates: Tensor, eps: float = 1e-5, scale: bool = True) -> Tensor:
    """Router scores of every token for every expert: ``standardize(x) @ standardize(gates).T / sqrt(d)``.

    The gate vectors trained after each expert are stacked into ``gates`` ``(E, d)``; tokens and gate vectors are
    standardized (:func:`standardize`), so a score is ``sqrt(d)`` times the Pearson correlation of the token with the
    gate vector (``scale=False`` leaves out the ``1 / sqrt(d)``).

    Args:
        x: tokens ``(..., d)``.
        gates: stacked gate vectors ``(E, d)``.
        eps: variance epsilon of the standardization, > 0.
        scale: divide by ``sqrt(d)`` (the paper does).

    Returns:
        scores ``(..., E)``.

    Raises:
        TypeError: for a non-tensor or non-float ``x``/``gates`` or a non-bool ``scale``.
        ValueError: if ``gates`` is not 2-d, the feature sizes differ, a tensor holds NaN/inf, or ``eps <= 0``.

    Example:
        >>> x = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        >>> gates = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
        >>> s = phatgoose_scores(x, gates)  # (3 + 3 * 1/3) / sqrt(4) and (-1 - 1 + 1/3 + 1/3) / sqrt(4)
        >>> [round(v, 3) for v in s[0].tolist()]
        [2.0, -0.667]
    """
    owner = "phatgoose_scores"
    x = _check_tensor(owner, "x", x)
    gates = _check_tensor(owner, "gates", gates, ndim_low=2)
    if gates.dim() != 2:
        raise ValueError(f"{owner}(gates=...): gates must be (num_experts, d), got shape {tuple(gates.shape)}")
    if gates.shape[1] != x.shape[-1]:
        raise ValueError(
            f"{owner}(x=..., gates=...): gates has {gates.shape[1]} features, x has {x.shape[-1]} in its last dimension"
        )
    eps = check_float(owner, "eps", eps, low=0.0, low_open=True)
    scale = check_bool(owner, "scale", scale)
    return _scores(x, gates, eps, scale)


@register("function", "optimization", paper=PAPER, module=_MODULE)
def top_k_routing(scores: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """The ``top_k`` experts of every token and their weights, ``softmax`` over the selected scores.

    This equals a softmax over all scores followed by keeping the top ``k`` probabilities and renormalising them
    (what the reference implementation does with ``normalize_topk``).

    Args:
        scores: ``(..., E)`` router scores (:func:`phatgoose_scores`).
        top_k: experts per token, in ``[1, E]``.

    Returns:
        ``(weights, index)``, both ``(..., top_k)``, sorted by decreasing score; ``weights`` sum to 1.

    Raises:
        TypeError: for a non-float ``scores`` or a non-int ``top_k``.
        ValueError: for ``top_k`` outside ``[1, E]`` or a NaN/inf score.

    Example:
        >>> weights, index = top_k_routing(torch.tensor([[0.0, 2.0, 1.0, -1.0]]), top_k=2)
        >>> index.tolist(), [round(w, 4) for w in weights[0].tolist()]  # softmax([2, 1])
        ([[1, 2]], [0.7311, 0.2689])
        >>> full = torch.tensor([[0.0, 2.0, 1.0, -1.0]]).softmax(-1)[0, [1, 2]]
        >>> torch.allclose(full / full.sum(), weights[0])  # = renormalised top-k of the full softmax
        True
    """
    owner = "top_k_routing"
    scores = _check_tensor(owner, "scores", scores)
    top_k = check_int(owner, "top_k", top_k, low=1, high=scores.shape[-1])
    values, index = scores.topk(top_k, dim=-1)
    return values.softmax(-1), index


@register("function", "optimization", paper=PAPER, module=_MODULE)
def routing_matrix(weights: Tensor, index: Tensor, num_experts: int) -> Tensor:
    """Scatter the top-k ``weights`` at ``index`` into a dense ``(..., num_experts)`` mixing matrix (zeros elsewhere).

    Args:
        weights: ``(..., k)`` routing weights.
        index: ``(..., k)`` expert indices (int64) in ``[0, num_experts)``.
        num_experts: number of experts ``E`` (>= 1).

    Returns:
        ``(..., num_experts)`` tensor.

    Raises:
        TypeError: for a non-float ``weights`` or non-integer ``index``.
        ValueError: for mismatched shapes or an index outside ``[0, num_experts)``.

    Example:
        >>> routing_matrix(torch.tensor([[0.75, 0.25]]), torch.tensor([[2, 0]]), 3)
        tensor([[0.2500, 0.0000, 0.7500]])
    """
    owner = "routing_matrix"
    weights = _check_tensor(owner, "weights", weights)
    check_type(owner, "index", index, Tensor)
    num_experts = check_int(owner, "num_experts", num_experts, low=1)
    if index.dtype not in (torch.int64, torch.int32) or index.shape != weights.shape:
        raise ValueError(f"{owner}(index=...): index must be an integer tensor of the shape of weights")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= num_experts):
        raise ValueError(f"{owner}(index=...): index must lie in [0, num_experts={num_experts})")
    return _routing_matrix(weights, index, num_experts)


def _routing_matrix(weights: Tensor, index: Tensor, num_experts: int) -> Tensor:
    out = weights.new_zeros(*weights.shape[:-1], num_experts)
    return out.scatter_add_(-1, index.long(), weights)


def _check_bank(owner: str, x: Tensor, lora_a: Tensor, lora_b: Tensor) -> None:
    if lora_a.dim() != 3 or lora_b.dim() != 3:
        raise ValueError(f"{owner}(lora_a=..., lora_b=...): lora_a must be (E, r, in) and lora_b (E, out, r)")
    experts, rank, d_in = lora_a.shape
    if lora_b.shape[0] != experts or lora_b.shape[2] != rank:
        raise ValueError(
            f"{owner}(lora_b=...): lora_b shape {tuple(lora_b.shape)} does not match lora_a {tuple(lora_a.shape)}"
        )
    if x.shape[-1] != d_in:
        raise ValueError(f"{owner}(x=...): x has {x.shape[-1]} features, lora_a expects {d_in}")


def _mixture(x: Tensor, lora_a: Tensor, lora_b: Tensor, mix: Tensor, scaling: float) -> Tensor:
    experts, rank, d_in = lora_a.shape
    hidden = x @ lora_a.reshape(experts * rank, d_in).T  # every expert's down-projection in one matmul
    hidden = (hidden.unflatten(-1, (experts, rank)) * mix.unsqueeze(-1)).flatten(-2)
    return (hidden @ lora_b.permute(1, 0, 2).reshape(lora_b.shape[1], experts * rank).T) * scaling


@register("function", "optimization", paper=PAPER, module=_MODULE)
def lora_mixture(x: Tensor, lora_a: Tensor, lora_b: Tensor, mix: Tensor, scaling: float = 1.0) -> Tensor:
    """``scaling * sum_e mix[..., e] * B_e A_e x`` for a bank of LoRA experts (two matmuls for the whole bank).

    With ``mix`` from :func:`routing_matrix` this is PHATGOOSE's routed adapter output; with ``mix = 1 / E``
    everywhere it is the uniform average (merge) of the adapters, and with a one-hot ``mix`` a single adapter.

    Args:
        x: tokens ``(..., in)``.
        lora_a: down-projections ``(E, r, in)``.
        lora_b: up-projections ``(E, out, r)``.
        mix: per-token expert weights ``(..., E)`` (broadcast against ``x``'s leading dimensions).
        scaling: LoRA scaling ``alpha / r`` (finite).

    Returns:
        ``(..., out)``.

    Raises:
        TypeError: for a non-tensor argument.
        ValueError: for inconsistent shapes or a non-finite value.

    Example:
        >>> a = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # two rank-1 experts on 2 features
        >>> b = torch.tensor([[[1.0]], [[10.0]]])           # 1 output feature
        >>> lora_mixture(torch.tensor([[2.0, 3.0]]), a, b, torch.tensor([[0.25, 0.75]]))  # .25*2 + .75*30
        tensor([[23.]])
    """
    owner = "lora_mixture"
    x = _check_tensor(owner, "x", x)
    lora_a = _check_tensor(owner, "lora_a", lora_a, ndim_low=3)
    lora_b = _check_tensor(owner, "lora_b", lora_b, ndim_low=3)
    mix = _check_tensor(owner, "mix", mix)
    _check_bank(owner, x, lora_a, lora_b)
    if mix.shape[-1] != lora_a.shape[0]:
        raise ValueError(f"{owner}(mix=...): mix has {mix.shape[-1]} experts, the bank has {lora_a.shape[0]}")
    scaling = check_float(owner, "scaling", scaling)
    return _mixture(x, lora_a, lora_b, mix, scaling)


@register("function", "optimization", paper=PAPER, module=_MODULE)
def gated_lora_delta(x: Tensor, lora_a: Tensor, lora_b: Tensor, gate: Tensor, scaling: float = 1.0) -> Tensor:
    """One expert's gate-training output ``sigmoid(gate . x) * scaling * B A x`` (PHATGOOSE's second stage).

    Args:
        x: tokens ``(..., in)``.
        lora_a: the expert's down-projection ``(r, in)``.
        lora_b: the expert's up-projection ``(out, r)``.
        gate: the expert's gate vector ``(in,)``.
        scaling: LoRA scaling ``alpha / r``.

    Returns:
        ``(..., out)``.

    Raises:
        TypeError: for a non-tensor argument.
        ValueError: for inconsistent shapes or a non-finite value.

    Example:
        >>> a, b = torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0]])
        >>> gated_lora_delta(torch.tensor([[1.0, 2.0]]), a, b, torch.zeros(2))  # sigmoid(0) * 2 * 3
        tensor([[3.]])
    """
    owner = "gated_lora_delta"
    x = _check_tensor(owner, "x", x)
    lora_a = _check_tensor(owner, "lora_a", lora_a, ndim_low=2)
    lora_b = _check_tensor(owner, "lora_b", lora_b, ndim_low=2)
    gate = _check_tensor(owner, "gate", gate)
    if lora_a.dim() != 2 or lora_b.dim() != 2 or lora_b.shape[1] != lora_a.shape[0]:
        raise ValueError(f"{owner}(lora_a=..., lora_b=...): lora_a must be (r, in) and lora_b (out, r)")
    if gate.shape != (lora_a.shape[1],) or x.shape[-1] != lora_a.shape[1]:
        raise ValueError(f"{owner}(x=..., gate=...): x's last size and gate must both be in={lora_a.shape[1]}")
    scaling = check_float(owner, "scaling", scaling)
    return torch.sigmoid(x @ gate).unsqueeze(-1) * ((x @ lora_a.T) @ lora_b.T) * scaling
