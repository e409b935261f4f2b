"""DenseShift (arXiv 2208.09708): functional core, ShiftLinear / ShiftConv2d, to_denseshift, storage, digits effect."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litmix.functional.denseshift import (
    denseshift_codes,
    denseshift_exponent_max,
    denseshift_from_codes,
    denseshift_weight,
    low_variance_init,
    pack_codes,
    unpack_codes,
)
from litmix.layers import ShiftConv2d, ShiftLinear, to_denseshift


def _is_pow2(w):
    """Exact check: every entry is +-2**p (mantissa +-0.5 in frexp) and none is zero."""
    mantissa, _ = torch.frexp(w)
    return bool((w != 0).all()) and bool((mantissa.abs() == 0.5).all())


# ----------------------------------------------------------------------------- functional core


def test_effective_weights_are_signed_powers_of_two_and_never_zero():
    gen = torch.Generator().manual_seed(0)
    sign = torch.randn(50, 40, generator=gen)
    sign[0, :5] = 0.0  # sign(0) = +1, not 0
    scale = torch.randn(50, 40, generator=gen).abs() * 0.3
    scale[1, :5] = 0.0  # log2(0) = -inf clamps to the smallest level
    for bits in (2, 3, 4):
        w = denseshift_weight(sign, scale, bits, exponent_max=-1)
        assert _is_pow2(w)
        exps = torch.log2(w.abs()).round()
        assert exps.max() <= -1
        assert exps.min() >= -1 - 2 ** (bits - 1) + 1
        assert len(exps.unique()) <= 2 ** (bits - 1)
    assert (denseshift_weight(sign, scale, 3, -1)[0, :5] > 0).all()


def test_straight_through_gradients():
    sign = torch.tensor([0.5, -0.5, 0.2], requires_grad=True)
    scale = torch.tensor([0.3, 0.7, -0.1], requires_grad=True)
    w = denseshift_weight(sign, scale, 3, 0)
    g = torch.tensor([1.0, 2.0, 3.0])
    (w * g).sum().backward()
    assert torch.equal(sign.grad, g * w.detach().abs())  # dL/dS = g * 2**p
    assert torch.equal(scale.grad, g * w.detach().sign() * scale.detach().sign())  # dL/dP = g * s * sign(P)


def test_codes_roundtrip_and_three_bit_packing():
    gen = torch.Generator().manual_seed(1)
    sign, scale = torch.randn(33, 17, generator=gen), torch.rand(33, 17, generator=gen)
    e_max = denseshift_exponent_max(sign)
    codes = denseshift_codes(sign, scale, 3, e_max)
    assert codes.dtype == torch.uint8
    assert int(codes.max()) < 8
    assert torch.equal(denseshift_from_codes(codes, 3, e_max), denseshift_weight(sign, scale, 3, e_max))
    packed = pack_codes(codes, 3)
    assert packed.numel() == math.ceil(codes.numel() * 3 / 8)
    assert torch.equal(unpack_codes(packed, 3, codes.numel()).view_as(codes), codes)


def test_low_variance_init_has_the_smallest_magnitude_and_random_signs():
    sign, scale = low_variance_init((64, 64), 3, -2, generator=torch.Generator().manual_seed(0))
    w = denseshift_weight(sign, scale, 3, -2)
    assert torch.equal(w.abs().unique(), torch.tensor([2.0**-5]))
    assert 0.4 < (w > 0).float().mean() < 0.6


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda: denseshift_weight(torch.ones(2), torch.ones(2), 1, 0), "bits"),
        (lambda: denseshift_weight(torch.ones(2), torch.ones(3), 3, 0), "scale_latent"),
        (lambda: denseshift_weight(torch.ones(2, dtype=torch.long), torch.ones(2), 3, 0), "sign_latent"),
        (lambda: denseshift_from_codes(torch.tensor([8]), 3, 0), "codes"),
        (lambda: pack_codes(torch.tensor([4]), 2), "codes"),
        (lambda: unpack_codes(torch.zeros(1, dtype=torch.uint8), 3, 3), "packed"),
        (lambda: ShiftLinear(8, 4, bits=1), "bits"),
        (lambda: ShiftConv2d(2, 4, 3, bits=0), "bits"),
        (lambda: ShiftConv2d(3, 4, 3, groups=2), "in_channels"),
        (lambda: ShiftLinear.from_float(nn.ReLU()), "layer"),
        (lambda: ShiftConv2d.from_float(nn.Linear(2, 2)), "layer"),
        (lambda: ShiftLinear(8, 4)(torch.randn(2, 5)), "in_features"),
        (lambda: ShiftConv2d(2, 4, 3)(torch.randn(1, 3, 5, 5)), "in_channels"),
        (lambda: to_denseshift(nn.Sequential(nn.ReLU())), "model"),
        (lambda: to_denseshift(nn.Sequential(nn.Linear(2, 2)), skip=["nope"]), "skip"),
        (lambda: to_denseshift(nn.Sequential(nn.Linear(2, 2)), bits=1), "bits"),
    ],
)
def test_bad_inputs_fail_naming_the_argument(call, arg):
    with pytest.raises((TypeError, ValueError), match=arg):
        call()


# ----------------------------------------------------------------------------- layers


def test_layers_compute_with_the_effective_weight():
    torch.manual_seed(0)
    lin = ShiftLinear(6, 5, bits=3)
    x = torch.randn(4, 6)
    assert torch.equal(lin(x), F.linear(x, lin.weight, lin.bias))
    assert _is_pow2(lin.weight.detach())
    conv = ShiftConv2d(2, 3, 3, padding=1, stride=2, bits=4)
    xc = torch.randn(2, 2, 7, 7)
    assert torch.equal(conv(xc), F.conv2d(xc, conv.weight, conv.bias, 2, 1))
    lin(x).sum().backward()
    assert lin.sign_latent.grad is not None
    assert lin.scale_latent.grad is not None


def test_to_denseshift_converts_a_cnn_from_its_float_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    float_weight = net[0].weight.detach().clone()
    x = torch.randn(2, 1, 6, 6)
    to_denseshift(net, bits=4)
    assert isinstance(net[0], ShiftConv2d)
    assert isinstance(net[3], ShiftLinear)
    assert net(x).shape == (2, 3)
    # starts from the float weights: same signs, magnitudes within a factor 2 where not clamped at the bottom
    w = net[0].weight.detach()
    assert torch.equal(w.sign(), float_weight.sign())
    big = float_weight.abs() > 2.0 ** (int(net[0].exponent_max) - 6)
    ratio = (w.abs() / float_weight.abs())[big]
    assert (ratio > 0.7).all()
    assert (ratio < 1.42).all()
    mha = nn.MultiheadAttention(4, 1)
    to_denseshift(nn.ModuleList([mha, nn.Linear(2, 2)]))
    assert type(mha.out_proj) is not ShiftLinear  # attention reads out_proj.weight directly: left alone


def test_export_is_three_bits_per_weight_on_disk(tmp_path):
    torch.manual_seed(0)
    lin = ShiftLinear(256, 256, bias=False, bits=3)
    exported = lin.export()
    assert exported["codes"].numel() == 256 * 256 * 3 // 8
    codes = unpack_codes(exported["codes"], 3, 256 * 256).view(256, 256)
    assert torch.equal(denseshift_from_codes(codes, 3, exported["exponent_max"]), lin.weight.detach())
    torch.save(exported["codes"].clone(), tmp_path / "codes.pt")
    torch.save(lin.weight.detach().clone(), tmp_path / "fp32.pt")
    ratio = os.path.getsize(tmp_path / "codes.pt") / os.path.getsize(tmp_path / "fp32.pt")
    assert ratio < 3 / 32 + 0.01  # 24 KiB of codes vs 256 KiB of float32, plus the file header


# ----------------------------------------------------------------------------- effect on digits


def _digits(seed):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16.0, y, test_size=0.3, stratify=y, random_state=seed)
    f = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    return f(xtr), torch.tensor(ytr), f(xte), torch.tensor(yte)


def _train(seed, bits, epochs=20):
    """Digits MLP 64-256-256-10, Adam 1e-3, batch 64; returns (model, test accuracy, code flips per epoch)."""
    xtr, ytr, xte, yte = _digits(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    if bits:
        to_denseshift(net, bits=bits)
    layers = [m for m in net if isinstance(m, ShiftLinear)]
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    flips = []
    for _ in range(epochs):
        before = [m.codes() for m in layers]
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        flips.append(sum(int((m.codes() != b).sum()) for m, b in zip(layers, before, strict=True)))
    with torch.no_grad():
        acc = (net(xte).argmax(1) == yte).float().mean().item()
    return net, acc, flips


@pytest.fixture(scope="module")
def digits_runs():
    return {"fp32": _train(0, 0), "ds3": _train(0, 3)}


@pytest.mark.slow
def test_three_bit_denseshift_mlp_is_within_three_points_of_fp32(digits_runs):
    """Measured (20 epochs, seeds 0/1/2): fp32 0.9630/0.9648/0.9537, 3-bit DenseShift 0.9574/0.9630/0.9556."""
    _, acc32, _ = digits_runs["fp32"]
    _, acc3, _ = digits_runs["ds3"]
    assert acc32 > 0.94
    assert acc3 >= acc32 - 0.03


@pytest.mark.slow
def test_every_trained_weight_is_a_nonzero_power_of_two(digits_runs):
    net, _, _ = digits_runs["ds3"]
    layers = [m for m in net if isinstance(m, ShiftLinear)]
    assert len(layers) == 3
    for m in layers:
        w = m.weight.detach()
        assert _is_pow2(w)
        assert torch.equal(denseshift_from_codes(m.codes(), 3, int(m.exponent_max)), w)


@pytest.mark.slow
def test_latent_weights_keep_changing_code_late_in_training(digits_runs):
    """No weight freezing: codes still change in each of the last 5 epochs (measured ~1900-2100 per epoch)."""
    _, _, flips = digits_runs["ds3"]
    total = sum(m.numel() for m in digits_runs["ds3"][0].parameters() if m.dim() == 2) // 2
    assert all(f > 0.005 * total for f in flips[-5:]), flips


def test_converted_lightning_module_resumes_exactly(tmp_path):
    """Latents and the exponent buffer live in the module's state_dict: a ckpt_path resume matches."""
    from litmix.testing import TinyClassifier, TinyDataModule, assert_resume_matches

    def make():
        torch.manual_seed(0)
        return to_denseshift(TinyClassifier(), bits=3)

    full, _ = assert_resume_matches(list, make, TinyDataModule, tmp_path, max_epochs=2)
    layer = full.lightning_module.net[0]
    assert isinstance(layer, ShiftLinear)
    assert _is_pow2(layer.weight.detach())
