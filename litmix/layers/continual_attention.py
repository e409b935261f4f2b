"""Sliding-window causal self-attention with a step-wise single-output mode (Continual Transformers)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from litmix.registry import register
from litmix.validation import check_bool, check_int, check_type

__all__ = ["ContinualAttention"]

PAPER = "Efficient Online Processing with Deep Neural Networks (Hedegaard, 2023; https://arxiv.org/abs/2306.13474)"


@register("layer", "optimization", paper=PAPER, module="litmix.layers")
class ContinualAttention(nn.Module):
    """Multi-head self-attention over the last ``window`` tokens, batch or one token at a time.

    Hedegaard, "Efficient Online Processing with Deep Neural Networks" (2023, https://arxiv.org/abs/2306.13474),
    Continual Transformers' *single-output* attention: for online inference only the newest token's output is
    needed, and the keys and values of the previous ``window - 1`` tokens were already computed. :meth:`forward`
    is the offline layer on ``(batch, time, embed_dim)``: token ``t`` attends to tokens ``t - window + 1 .. t``
    (causal, sliding window). :meth:`step` takes one token ``(batch, embed_dim)``, projects only it, keeps the
    last ``window`` keys and values in a buffer and returns the newest output: ``O(window * embed_dim)`` work
    after the projections, instead of ``O(window^2 * embed_dim)`` plus ``window`` projections for recomputing
    the window. Consecutive steps equal :meth:`forward` on the whole stream (test: float64 equality). The
    projections are ``nn.MultiheadAttention``'s (``in_proj_weight``, ``in_proj_bias``, ``out_proj``), so
    :meth:`from_multihead_attention` reuses a trained module's weights; the buffers are not in the state dict.

    Args:
        embed_dim: model width, >= 1.
        num_heads: heads, >= 1, dividing ``embed_dim``.
        window: tokens each token attends to (itself included), >= 1.
        bias: learn projection biases.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for a size below 1 or ``num_heads`` not dividing ``embed_dim``; in :meth:`step`, a token of the
            wrong shape or a batch size that changed without :meth:`reset`.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> attn = ContinualAttention(8, num_heads=2, window=4)
        >>> x = torch.randn(2, 10, 8)
        >>> offline = attn(x)
        >>> online = torch.stack([attn.step(x[:, t]) for t in range(10)], dim=1)
        >>> torch.allclose(online, offline, atol=1e-6)
        True
    """

    def __init__(self, embed_dim: int, num_heads: int = 1, window: int = 16, bias: bool = True) -> None:
        super().__init__()
        owner = type(self).__name__
        self.embed_dim = check_int(owner, "embed_dim", embed_dim, low=1)
        self.num_heads = check_int(owner, "num_heads", num_heads, low=1)
        self.window = check_int(owner, "window", window, low=1)
        check_bool(owner, "bias", bias)
        if embed_dim % num_heads:
            raise ValueError(f"{owner}(num_heads={num_heads}): num_heads must divide embed_dim={embed_dim}")
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim)) if bias else None
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.register_buffer("_keys", torch.zeros(0), persistent=False)
        self.register_buffer("_values", torch.zeros(0), persistent=False)
        self._seen = 0

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention, window: int) -> ContinualAttention:
        """A continual layer with ``mha``'s projections (``batch_first`` layouts are handled by the caller).

        Raises:
            TypeError: if ``mha`` is not an ``nn.MultiheadAttention``.
            ValueError: for separate key/value dimensions, ``add_bias_kv`` or ``add_zero_attn``.
        """
        check_type(cls.__name__, "mha", mha, nn.MultiheadAttention)
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError(
                f"{cls.__name__}.from_multihead_attention(mha=...): kdim/vdim, add_bias_kv and add_zero_attn are "
                "not supported"
            )
        out = cls(mha.embed_dim, mha.num_heads, window, bias=mha.in_proj_bias is not None)
        out.load_state_dict(
            {
                "in_proj_weight": mha.in_proj_weight,
                **({"in_proj_bias": mha.in_proj_bias} if mha.in_proj_bias is not None else {}),
                **{f"out_proj.{k}": v for k, v in mha.out_proj.state_dict().items()},
            }
        )
        return out.to(mha.in_proj_weight.device, mha.in_proj_weight.dtype)

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(q, k, v)``, each ``(..., heads, head_dim)``."""
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        shape = (*x.shape[:-1], self.num_heads, self.head_dim)
        return q.reshape(shape), k.reshape(shape), v.reshape(shape)

    def forward(self, x: Tensor) -> Tensor:
        """Offline: ``(batch, time, embed_dim)`` -> the same shape, each token over its causal window."""
        b, t, _ = x.shape
        q, k, v = (z.transpose(1, 2) for z in self._project(x))  # (B, H, T, d)
        idx = torch.arange(t, device=x.device)
        gap = idx[:, None] - idx[None, :]
        allowed = (gap >= 0) & (gap < self.window)
        out = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, self.embed_dim))  # type: ignore[no-any-return]

    def reset(self) -> None:
        """Forget the past tokens (start a new stream)."""
        self._keys = torch.zeros(0, device=self.in_proj_weight.device)
        self._values = torch.zeros(0, device=self.in_proj_weight.device)
        self._seen = 0

    def step(self, token: Tensor) -> Tensor:
        """Online: the output of the newest token ``(batch, embed_dim)``."""
        if token.dim() != 2 or token.shape[1] != self.embed_dim:
            raise ValueError(
                f"{type(self).__name__}.step(token): expected (batch, {self.embed_dim}), got {tuple(token.shape)}"
            )
        q, k, v = self._project(token)  # (B, H, d)
        if self._keys.numel() == 0:
            shape = (token.shape[0], self.num_heads, self.window, self.head_dim)
            self._keys, self._values = token.new_zeros(shape), token.new_zeros(shape)
            self._seen = 0
        elif self._keys.shape[0] != token.shape[0]:
            raise ValueError(
                f"{type(self).__name__}.step(token): batch size {token.shape[0]} differs from the stream's "
                f"{self._keys.shape[0]}; call reset() to start a new stream"
            )
        slot = self._seen % self.window  # ring buffer: overwrite the oldest entry
        self._keys[:, :, slot] = k
        self._values[:, :, slot] = v
        self._seen += 1
        filled = min(self._seen, self.window)
        keys, values = self._keys[:, :, :filled], self._values[:, :, :filled]
        scores = torch.einsum("bhd,bhwd->bhw", q, keys) / math.sqrt(self.head_dim)
        out = torch.einsum("bhw,bhwd->bhd", scores.softmax(-1), values)
        return self.out_proj(out.reshape(token.shape[0], self.embed_dim))  # type: ignore[no-any-return]
