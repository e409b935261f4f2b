"""Zero-TPrune token importance, token selection and similarity merging (pure tensors).

Wang et al., "Zero-TPrune: Zero-Shot Token Pruning through Leveraging of the Attention Graph in Pre-Trained
Transformers" (CVPR 2024, https://arxiv.org/abs/2305.17328). The Lightning shell is
:class:`litmix.callbacks.TokenPruning`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from litmix.registry import register

__all__ = ["cls_attention_importance", "merge_tokens", "select_tokens", "wpr_importance"]

PAPER = (
    "Zero-TPrune: Zero-Shot Token Pruning through Leveraging of the Attention Graph in Pre-Trained Transformers "
    "(https://arxiv.org/abs/2305.17328)"
)
_MODULE = "litmix.functional.token_pruning"


def _check_attn(name: str, attn: Tensor) -> None:
    if not isinstance(attn, Tensor) or attn.dim() != 4 or attn.shape[-1] != attn.shape[-2]:
        shape = tuple(attn.shape) if isinstance(attn, Tensor) else type(attn).__name__
        raise ValueError(f"{name}: attn must be a [batch, heads, tokens, tokens] tensor, got {shape}")


@register("function", "sparsity", paper=PAPER, module=_MODULE)
def wpr_importance(attn: Tensor, iters: int = 30, head_weighting: bool = True) -> Tensor:
    """Token importance by the weighted PageRank (WPR) of the attention graph (Zero-TPrune's I-stage).

    The attention matrix ``A`` of each head (row ``i`` = how query ``i`` spreads its attention over the keys) is
    read as a graph whose edge ``i -> j`` has weight ``A[i, j]``: a token is important when important tokens
    attend to it. From the uniform score ``s = 1/N`` the iteration ``s <- A^T s`` runs ``iters`` times per head
    (``A`` is row-stochastic, so ``s`` stays a distribution). Heads are then aggregated: with
    ``head_weighting`` a head's weight is the total-variation distance of its scores from uniform (normalised
    over heads), so near-uniform, uninformative heads count little (the paper's emphasis on informative heads;
    its exact weighting is in the PDF, this is our reading); else the heads are averaged.

    Args:
        attn: ``[batch, heads, N, N]`` attention probabilities (rows sum to 1).
        iters: power iterations (>= 1).
        head_weighting: down-weight near-uniform heads.

    Returns:
        ``[batch, N]`` importance scores, each row summing to 1.

    Raises:
        ValueError: ``attn`` is not ``[batch, heads, N, N]`` or ``iters < 1``.

    Example:
        >>> import torch
        >>> # a star: leaves 1 and 2 attend to the centre 0, the centre attends to itself
        >>> a = torch.tensor([[1.0, 0, 0], [1, 0, 0], [1, 0, 0]]).view(1, 1, 3, 3)
        >>> s = wpr_importance(a, iters=5)
        >>> int(s.argmax()), round(float(s.sum()), 4)
        (0, 1.0)
    """
    _check_attn("wpr_importance", attn)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"wpr_importance(iters={iters!r}): iters must be an int >= 1")
    a = attn.float()
    n = a.shape[-1]
    # s_T = (A^T)^T s_0 = ((A^T)^iters) 1/N: repeated squaring, O(log iters) matmuls
    s = torch.linalg.matrix_power(a.transpose(-1, -2), iters).sum(-1) / n  # [B, H, N]
    s = s / s.sum(-1, keepdim=True).clamp_min(1e-12)
    if head_weighting:
        w = (s - 1.0 / n).abs().sum(-1)  # [B, H] total variation from uniform (x2)
        w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        w = torch.where(w.sum(-1, keepdim=True) > 0, w, torch.full_like(w, 1.0 / w.shape[-1]))
        return (s * w.unsqueeze(-1)).sum(1)
    return s.mean(1)


@register("function", "sparsity", paper=PAPER, module=_MODULE)
def cls_attention_importance(attn: Tensor) -> Tensor:
    """The CLS-attention baseline (EViT): token ``j`` scores the head-mean attention that CLS (token 0) pays it.

    Args:
        attn: ``[batch, heads, N, N]`` attention probabilities.

    Returns:
        ``[batch, N]`` scores.

    Raises:
        ValueError: ``attn`` is not ``[batch, heads, N, N]``.

    Example:
        >>> import torch
        >>> a = torch.tensor([[0.1, 0.2, 0.7], [1, 0, 0], [1, 0, 0]]).view(1, 1, 3, 3)
        >>> cls_attention_importance(a).tolist()
        [[0.10000000149011612, 0.20000000298023224, 0.699999988079071]]
    """
    _check_attn("cls_attention_importance", attn)
    return attn[:, :, 0, :].float().mean(1)


@register("function", "sparsity", paper=PAPER, module=_MODULE)
def select_tokens(scores: Tensor, keep: int, protect: int = 1) -> tuple[Tensor, Tensor]:
    """Split token positions into kept and pruned ones by score; the first ``protect`` (CLS) are always kept.

    Args:
        scores: ``[batch, N]`` importance scores.
        keep: how many of the ``N - protect`` other tokens to keep (``0 <= keep <= N - protect``).
        protect: leading tokens always kept.

    Returns:
        ``(kept, pruned)``: ``[batch, protect + keep]`` and ``[batch, N - protect - keep]`` long positions, each
        in ascending (original) order, so the protected tokens stay first.

    Raises:
        ValueError: ``scores`` is not 2-D or ``keep``/``protect`` are out of range.

    Example:
        >>> import torch
        >>> kept, pruned = select_tokens(torch.tensor([[0.0, 0.1, 0.9, 0.5, 0.2]]), keep=2)
        >>> kept.tolist(), pruned.tolist()
        ([[0, 2, 3]], [[1, 4]])
    """
    if not isinstance(scores, Tensor) or scores.dim() != 2:
        raise ValueError("select_tokens: scores must be a [batch, N] tensor")
    n = scores.shape[1]
    if not 0 <= protect <= n or not 0 <= keep <= n - protect:
        raise ValueError(f"select_tokens(keep={keep}, protect={protect}): need 0 <= keep <= N - protect (N={n})")
    order = scores[:, protect:].argsort(dim=1, descending=True, stable=True) + protect
    head = torch.arange(protect, device=scores.device).expand(scores.shape[0], protect)
    kept = torch.cat([head, order[:, :keep].sort(dim=1).values], dim=1)
    return kept, order[:, keep:].sort(dim=1).values


def _gather(x: Tensor, idx: Tensor) -> Tensor:
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@register("function", "sparsity", paper=PAPER, module=_MODULE)
def merge_tokens(x: Tensor, keys: Tensor, kept: Tensor, pruned: Tensor, weights: Tensor | None = None) -> Tensor:
    """Keep the ``kept`` tokens and average every pruned token into its most similar kept token.

    Similarity is the cosine of the attention keys (ToMe-style); a pruned token joins its most similar kept
    token other than CLS (position 0 of ``kept``; CLS only when it is the sole kept token). Each kept
    token becomes the ``weights``-weighted mean of itself and the tokens merged into it (uniform weights when
    ``weights`` is None). With no pruned tokens this is a plain gather.

    Args:
        x: ``[batch, N, dim]`` token states.
        keys: ``[batch, N, key_dim]`` attention keys (heads concatenated).
        kept: ``[batch, K]`` kept positions (from :func:`select_tokens`; position 0 is CLS).
        pruned: ``[batch, N - K]`` pruned positions.
        weights: optional ``[batch, N]`` non-negative token weights (importance scores).

    Returns:
        ``[batch, K, dim]`` merged states.

    Raises:
        ValueError: shapes disagree.

    Example:
        >>> import torch
        >>> x = torch.tensor([[[0.0], [1.0], [3.0], [10.0]]])
        >>> keys = torch.tensor([[[0.0, 1], [1, 0], [1, 0.1], [-1, 0]]])
        >>> merge_tokens(x, keys, torch.tensor([[0, 1, 3]]), torch.tensor([[2]])).flatten().tolist()
        [0.0, 2.0, 10.0]
    """
    if x.dim() != 3 or keys.dim() != 3 or x.shape[:2] != keys.shape[:2] or kept.shape[0] != x.shape[0]:
        raise ValueError("merge_tokens: x [B, N, D], keys [B, N, K] and kept [B, K] must agree")
    out = _gather(x, kept)
    if pruned.shape[1] == 0:
        return out
    w = x.new_ones(x.shape[:2]) if weights is None else weights.to(x.dtype).clamp_min(1e-12)
    kn = torch.nn.functional.normalize(keys, dim=-1)
    sim = _gather(kn, pruned) @ _gather(kn, kept).transpose(1, 2)  # [B, P, K]
    if kept.shape[1] > 1:
        sim[:, :, 0] = -float("inf")  # never merge into CLS while another token is kept
    dst = sim.argmax(-1)  # [B, P]
    wk, wp = w.gather(1, kept), w.gather(1, pruned)
    num = out * wk.unsqueeze(-1)
    num = num.scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, x.shape[-1]), _gather(x, pruned) * wp.unsqueeze(-1))
    den = wk.scatter_add(1, dst, wp)
    return num / den.unsqueeze(-1)
