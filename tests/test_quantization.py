"""Unit tests of the pure-tensor quantizers (litmix.functional.quantization), catalogue S15."""

import pytest
import torch

from litmix.functional.quantization import (
    activation_bound,
    bit_operations,
    bound_scale,
    dequantize,
    fake_quantize,
    fake_quantize_per_channel,
    pack_int4,
    per_channel_scale,
    quant_range,
    quantize,
    unpack_int4,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_fake_quantize_is_idempotent_on_a_grid_with_at_most_2_pow_b_levels(bits, signed):
    torch.manual_seed(bits)
    x = torch.randn(64, 33) * 3
    scale = bound_scale(activation_bound(x, signed=signed), bits, signed)
    q = fake_quantize(x, scale, bits, signed)
    assert torch.equal(fake_quantize(q, scale, bits, signed), q)
    assert q.unique().numel() <= 2**bits
    qmin, qmax = quant_range(bits, signed)
    codes = q / scale
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= qmin - 1e-4
    assert codes.max() <= qmax + 1e-4
    if not signed:
        assert (q >= 0).all()


def test_rounding_error_is_at_most_half_a_step_inside_the_range():
    x = torch.linspace(-1, 1, 1001)
    q = fake_quantize(x, 1 / 7, 4)
    assert (q - x).abs().max() <= 0.5 / 7 + 1e-6


def test_ste_gradient_is_one_inside_the_clip_range_and_zero_outside():
    x = torch.linspace(-2, 2, 81, requires_grad=True)
    fake_quantize(x, 0.25, bits=3).mul(torch.arange(81.0)).sum().backward()
    inside = (x.detach() >= -0.75) & (x.detach() <= 0.75)
    assert torch.equal(x.grad[inside], torch.arange(81.0)[inside])
    assert (x.grad[~inside] == 0).all()


def test_per_channel_weights_never_clip_and_the_max_maps_to_qmax():
    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3)
    for bits in (2, 4, 8):
        s = per_channel_scale(w, bits)
        assert s.shape == (16, 1, 1, 1)
        codes = quantize(w, s, bits)
        assert codes.dtype == torch.int8
        assert codes.abs().flatten(1).amax(1).eq(2 ** (bits - 1) - 1).all()
    w.requires_grad_(True)
    fake_quantize(w, per_channel_scale(w, 4), 4).sum().backward()
    assert (w.grad == 1).all()


def test_hf_conv1d_axis_and_zero_channel():
    w = torch.zeros(5, 3)
    w[:, 1] = torch.arange(5.0)
    s = per_channel_scale(w, 8, axis=1)
    assert s.shape == (1, 3)
    q = fake_quantize(w, s, 8)
    assert torch.equal(q[:, 0], torch.zeros(5))
    assert torch.allclose(q[:, 1], w[:, 1], atol=4 / 127 / 2 + 1e-6)


def test_quantize_dequantize_equals_fake_quantize_and_dtypes():
    torch.manual_seed(1)
    x = torch.randn(10, 7)
    for bits, signed, dtype in ((4, True, torch.int8), (8, False, torch.uint8), (12, True, torch.int16)):
        s = bound_scale(activation_bound(x, signed), bits, signed)
        codes = quantize(x, s, bits, signed)
        assert codes.dtype == dtype
        assert torch.allclose(dequantize(codes, s), fake_quantize(x, s, bits, signed))


@pytest.mark.parametrize("numel", [0, 1, 2, 7, 64])
def test_pack_int4_round_trip_and_size(numel):
    gen = torch.Generator().manual_seed(numel)
    signed = torch.randint(-8, 8, (numel,), generator=gen, dtype=torch.int8)
    unsigned = torch.randint(0, 16, (numel,), generator=gen).to(torch.uint8)
    for codes, is_signed in ((signed, True), (unsigned, False)):
        packed = pack_int4(codes)
        assert packed.dtype == torch.uint8
        assert packed.numel() == (numel + 1) // 2
        assert torch.equal(unpack_int4(packed, codes.shape, signed=is_signed), codes)


def test_activation_bound_percentile_clips_outliers():
    x = torch.cat([torch.rand(999), torch.tensor([100.0])])
    assert activation_bound(x) == 100.0
    assert activation_bound(x, percentile=99.0) < 1.0
    assert activation_bound(-x, signed=False) == 0.0


def test_bit_operations():
    assert bit_operations(784 * 256, 4, 8) == 784 * 256 * 32
    assert bit_operations(10, 32, 32) / bit_operations(10, 4, 4) == 64


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: fake_quantize(torch.ones(2), 1.0, 0), ValueError, "bits=0"),
        (lambda: fake_quantize(torch.ones(2), 1.0, 17), ValueError, "bits=17"),
        (lambda: fake_quantize(torch.ones(2), 1.0, 1), ValueError, "bits=1"),
        (lambda: fake_quantize(torch.ones(2), 1.0, 4.0), TypeError, "bits=4.0"),
        (lambda: fake_quantize(torch.ones(2), 0.0, 4), ValueError, "scale=0.0"),
        (lambda: fake_quantize(torch.ones(2), float("nan"), 4), ValueError, "scale=nan"),
        (lambda: quantize(torch.ones(2), 1.0, True), TypeError, "bits=True"),
        (lambda: per_channel_scale(torch.ones(2, 2), 4, axis=2), ValueError, "axis=2"),
        (lambda: per_channel_scale(torch.tensor(1.0), 4), ValueError, "weight"),
        (lambda: activation_bound(torch.ones(3), percentile=0.0), ValueError, "percentile=0.0"),
        (lambda: activation_bound(torch.ones(0)), ValueError, "x=<empty"),
        (lambda: bound_scale(-1.0, 4), ValueError, "bound=-1.0"),
        (lambda: pack_int4(torch.tensor([9], dtype=torch.int8)), ValueError, "4-bit codes"),
        (lambda: pack_int4(torch.ones(2)), TypeError, "codes="),
        (lambda: unpack_int4(torch.zeros(2, dtype=torch.uint8), (5,)), ValueError, "shape=\\(5,\\)"),
        (lambda: unpack_int4(torch.zeros(2, dtype=torch.int8), (4,)), TypeError, "packed="),
        (lambda: dequantize(torch.ones(2), 1.0), TypeError, "codes="),
        (lambda: bit_operations(-1, 4, 4), ValueError, "macs=-1"),
        (lambda: bit_operations(1, 0, 4), ValueError, "bits_w=0"),
        (lambda: bit_operations(1, 4, float("inf")), ValueError, "bits_a=inf"),
    ],
)
def test_bad_inputs_name_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.parametrize("bits", [8, 4])
def test_matches_torchao_symmetric_per_channel_weight_quantizer(bits):
    """litmix's codes, scales and fake-quantized weights equal torchao's affine quantizer on the symmetric range."""
    ao = pytest.importorskip("torchao.quantization.quant_primitives")
    torch.manual_seed(0)
    w = torch.randn(64, 300)
    qmax, block = 2 ** (bits - 1) - 1, (1, w.shape[1])
    kwargs = {"quant_min": -qmax, "quant_max": qmax}
    scale, zero = ao.choose_qparams_affine(w, ao.MappingType.SYMMETRIC, block, torch.int8, **kwargs)
    codes = ao.quantize_affine(w, block, scale, zero, torch.int8, **kwargs)
    deq = ao.dequantize_affine(codes, block, scale, zero, torch.int8, **kwargs)
    ours = per_channel_scale(w, bits)
    assert torch.equal(scale.flatten(), ours.flatten())
    assert torch.equal(codes, quantize(w, ours, bits))
    assert torch.equal(deq, fake_quantize_per_channel(w, bits))
