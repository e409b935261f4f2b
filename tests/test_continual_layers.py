"""Continual Inference layers (Hedegaard 2023): step-wise outputs equal the batch layers on streams (float64),
weights reused from nn.Conv1d / nn.MultiheadAttention, stream resets and input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from litmix.layers import ContinualAttention, ContinualConv1d


def _stream(module, x: torch.Tensor, time_dim: int) -> torch.Tensor:
    module.reset()
    with torch.no_grad():
        steps = [module.step(x.select(time_dim, t)) for t in range(x.shape[time_dim])]
    return torch.stack(steps, dim=time_dim)


@pytest.mark.parametrize(("kernel", "dilation"), [(1, 1), (3, 1), (3, 2), (5, 3)])
def test_conv_steps_equal_the_causal_convolution(kernel, dilation):
    torch.manual_seed(kernel * 10 + dilation)
    conv = ContinualConv1d(3, 4, kernel, dilation=dilation).double()
    x = torch.randn(2, 3, 17, dtype=torch.float64)
    assert torch.allclose(_stream(conv, x, 2), conv(x), atol=1e-12)
    # causal: output t does not depend on inputs after t
    y = x.clone()
    y[:, :, 9:] = 0
    assert torch.allclose(conv(x)[:, :, :9], conv(y)[:, :, :9])


def test_conv_reuses_a_trained_conv1d_and_its_state_dict():
    torch.manual_seed(0)
    plain = nn.Conv1d(3, 5, 3, dilation=2, padding=0).double()
    cont = ContinualConv1d.from_conv1d(plain)
    x = torch.randn(1, 3, 12, dtype=torch.float64)
    assert torch.allclose(cont(x)[:, :, 4:], plain(x), atol=1e-12)  # valid region: the same convolution
    fresh = ContinualConv1d(3, 5, 3, dilation=2).double()
    fresh.load_state_dict(plain.state_dict(), strict=True)
    assert set(cont.state_dict()) == set(plain.state_dict())  # no buffer in the checkpoint
    with pytest.raises(ValueError, match="stride"):
        ContinualConv1d.from_conv1d(nn.Conv1d(3, 5, 3, stride=2))


@pytest.mark.parametrize(("window", "heads"), [(1, 1), (4, 2), (7, 4), (40, 2)])
def test_attention_steps_equal_the_sliding_window_attention(window, heads):
    torch.manual_seed(window)
    attn = ContinualAttention(8, num_heads=heads, window=window).double()
    x = torch.randn(3, 20, 8, dtype=torch.float64)
    assert torch.allclose(_stream(attn, x, 1), attn(x), atol=1e-12)


def test_attention_reuses_multihead_attention_weights():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).double()
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    causal = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
    want, _ = mha(x, x, x, attn_mask=causal, need_weights=False)
    cont = ContinualAttention.from_multihead_attention(mha, window=9)
    assert torch.allclose(cont(x), want, atol=1e-12)
    assert torch.allclose(_stream(cont, x, 1), want, atol=1e-12)


def test_a_stacked_temporal_model_runs_online_like_offline():
    torch.manual_seed(1)
    conv = ContinualConv1d(4, 8, 3).double()
    attn = ContinualAttention(8, 2, window=5).double()
    x = torch.randn(2, 4, 15, dtype=torch.float64)
    offline = attn(conv(x).transpose(1, 2))
    conv.reset()
    attn.reset()
    online = torch.stack([attn.step(conv.step(x[:, :, t])) for t in range(15)], dim=1)
    assert torch.allclose(online, offline, atol=1e-12)


def test_streams_reset_and_inputs_are_checked():
    conv = ContinualConv1d(2, 2, 3)
    conv.step(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="batch size 3 differs from the stream's 4; call reset"):
        conv.step(torch.zeros(3, 2))
    conv.reset()
    conv.step(torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"expected \(batch, 2\)"):
        conv.step(torch.zeros(3, 5))
    attn = ContinualAttention(4, 2, window=3)
    attn.step(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="call reset"):
        attn.step(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"ContinualAttention\(num_heads=3\): num_heads must divide embed_dim=4"):
        ContinualAttention(4, 3)
    with pytest.raises(ValueError, match=r"ContinualConv1d\(kernel_size=0\)"):
        ContinualConv1d(2, 2, 0)
    with pytest.raises(ValueError, match=r"ContinualAttention\(window=0\)"):
        ContinualAttention(4, 2, window=0)
