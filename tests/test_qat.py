"""QuantizationAwareTraining: hooks, calibration, bits per layer, export, checkpoints, resume, DDP, refusals."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from litmix.callbacks.quantization_aware_training import QuantizationAwareTraining, quantizable_layers
from litmix.data import split_batch
from litmix.functional.quantization import bit_operations, fake_quantize, fake_quantize_per_channel, quant_range
from litmix.testing import (
    AssertRanksAgree,
    StubTrainer,
    TinyClassifier,
    TinyDataModule,
    assert_resume_matches,
    fit_tiny,
    make_trainer,
    run_ddp,
    sharded_strategy,
)


class ThreeLayer(pl.LightningModule):
    """8 -> 16 -> 16 -> 4 MLP: first, inner and last quantizable layers."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = split_batch(batch)
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class TinyCNN(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1d = nn.Conv1d(4, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8, 4)

    def forward(self, x):
        h = torch.relu(self.conv(x.view(-1, 1, 2, 4)))  # (B, 4, 2, 4)
        h = torch.relu(self.conv1d(h.flatten(2)))  # (B, 4, 8)
        return self.head(h.flatten(1))

    def training_step(self, batch, batch_idx):
        x, y, _ = split_batch(batch)
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def _on_grid(values, scale, bits):
    codes = values / scale
    qmin, qmax = quant_range(bits)
    return torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= qmin - 1e-3 and codes.max() <= qmax + 1e-3


def test_bits_per_layer_first_last_and_overrides():
    qat = QuantizationAwareTraining(bits_w=3, bits_a=5, first_last_bits=8)
    fit_tiny([qat], module=ThreeLayer(), max_steps=2)
    assert qat.layer_bits_used() == {"net.0": (8, 8), "net.2": (3, 5), "net.4": (8, 8)}
    qat = QuantizationAwareTraining(bits_w=4, bits_a=None, first_last_bits=None, layer_bits={"net.4": 6})
    fit_tiny([qat], module=ThreeLayer(), max_steps=2)
    assert qat.layer_bits_used() == {"net.0": (4, 32), "net.2": (4, 32), "net.4": (6, 6)}
    qat = QuantizationAwareTraining(layer_names=["net.2"])
    fit_tiny([qat], module=ThreeLayer(), max_steps=2)
    assert qat.layer_bits_used() == {"net.2": (8, 8)}  # the only quantized layer is first and last


def test_forward_uses_quantized_weights_and_inputs_and_gradients_flow():
    torch.manual_seed(0)
    model = ThreeLayer()
    qat = QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=8, calibration_steps=2, momentum=0.5)
    fit_tiny([qat], module=model, max_steps=4)
    bounds = qat.activation_bounds()
    # inputs of net.2 come after a ReLU (unsigned), of net.4 after a Tanh (signed), net.0 the raw Gaussian data
    assert {n: s for n, (_, s) in bounds.items()} == {"net.0": True, "net.2": False, "net.4": True}
    x = torch.randn(5, 8)
    qat.attach(model)
    model.train()
    out = model(x)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    qat.detach()
    # the same forward by hand
    from litmix.functional.quantization import bound_scale

    with torch.no_grad():
        h = x
        for _i, (name, layer) in enumerate((n, m) for n, m in model.net.named_children()):
            key = f"net.{name}"
            if key in bounds:
                bound, signed = bounds[key]
                bits = 8 if key != "net.2" else 4
                h = fake_quantize(h, bound_scale(bound, bits, signed), bits, signed)
                h = nn.functional.linear(h, fake_quantize_per_channel(layer.weight, bits), layer.bias)
            else:
                h = layer(h)
    assert torch.allclose(out.detach(), h, atol=1e-5)
    # detached again: the plain float module
    assert torch.equal(model(x), model.net(x))
    assert "weight" not in model.net[0].__dict__


def test_checkpoint_keys_unchanged_and_strict_load_into_users_class(tmp_path):
    model = ThreeLayer()
    trainer = make_trainer(callbacks=[QuantizationAwareTraining()], max_steps=3, default_root_dir=tmp_path)
    trainer.fit(model, datamodule=TinyDataModule())
    trainer.save_checkpoint(tmp_path / "q.ckpt")
    ckpt = torch.load(tmp_path / "q.ckpt", weights_only=False)
    assert set(ckpt["state_dict"]) == set(ThreeLayer().state_dict())
    ThreeLayer.load_from_checkpoint(tmp_path / "q.ckpt", strict=True)
    state = ckpt["callbacks"]["QuantizationAwareTraining"]
    assert state["observed_steps"] == 3
    assert set(state["layers"]) == {"net.0", "net.2", "net.4"}


def test_bit_operations_logged_under_the_prefix():
    model = ThreeLayer()
    qat = QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=8, name="q")
    trainer = fit_tiny([qat], module=model, max_steps=2)
    expected = bit_operations(8 * 16, 8, 8) + bit_operations(16 * 16, 4, 4) + bit_operations(16 * 4, 8, 8)
    assert qat.macs() == {"net.0": 128, "net.2": 256, "net.4": 64}
    assert float(trainer.callback_metrics["q/bit_operations"]) == pytest.approx(expected)
    assert float(trainer.callback_metrics["q/bit_operations_ratio"]) == pytest.approx(expected / (448 * 1024))


def test_conv_layers_and_macs():
    model = TinyCNN()
    qat = QuantizationAwareTraining(bits_w=4, bits_a=4)
    fit_tiny([qat], module=model, max_steps=3)
    assert list(qat.layer_bits_used()) == ["conv", "conv1d", "head"]
    assert qat.macs() == {"conv": 8 * 4 * 9, "conv1d": 8 * 4 * 4 * 3, "head": 32 * 4}
    exported = qat.export(model)
    restored = QuantizationAwareTraining.load_export(exported)
    for name, bits in (("conv", 8), ("conv1d", 4), ("head", 8)):
        layer = getattr(model, name)
        assert torch.allclose(restored[f"{name}.weight"], fake_quantize_per_channel(layer.weight.detach(), bits))


def test_hugging_face_conv1d_uses_the_output_axis():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    class GPTLike(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(Conv1D(16, 8), nn.ReLU(), Conv1D(4, 16))  # weights (in, out)

    model = GPTLike()
    assert quantizable_layers(model) == {"net.0": 1, "net.2": 1}
    qat = QuantizationAwareTraining(bits_w=4, first_last_bits=None)
    fit_tiny([qat], module=model, max_steps=2)
    assert qat.macs() == {"net.0": 128, "net.2": 64}
    w = model.net[0].weight.detach()
    restored = QuantizationAwareTraining.load_export(qat.export(model))["net.0.weight"]
    scale = w.abs().amax(0, keepdim=True) / 7  # one scale per output column
    assert _on_grid(restored, scale, 4)


def test_timm_style_subclass_is_quantized():
    class StdLinear(nn.Linear):  # timm layers subclass nn.Linear / nn.Conv2d
        pass

    class M(ThreeLayer):
        def __init__(self):
            super().__init__()
            self.net[2] = StdLinear(16, 16)

    assert "net.2" in quantizable_layers(M())


def test_export_is_packed_and_reloads_strictly(tmp_path):
    torch.manual_seed(0)
    model = ThreeLayer()
    model.net[2] = nn.Linear(16, 301)  # odd count of weights in the packed layer
    model.net[4] = nn.Linear(301, 4)
    qat = QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=8)
    fit_tiny([qat], module=model, max_steps=2)
    exported = qat.export(model)
    inner = exported["layers"]["net.2"]
    assert inner["packed"]
    assert inner["codes"].dtype == torch.uint8
    assert inner["codes"].numel() == (16 * 301 + 1) // 2
    assert exported["layers"]["net.0"]["codes"].dtype == torch.int8
    size = qat.save_export(model, tmp_path / "q.pt")
    restored = QuantizationAwareTraining.load_export(tmp_path / "q.pt")
    fresh = ThreeLayer()
    fresh.net[2], fresh.net[4] = nn.Linear(16, 301), nn.Linear(301, 4)
    fresh.load_state_dict(restored, strict=True)
    for i, bits in ((0, 8), (2, 4), (4, 8)):
        w = model.net[i].weight.detach()
        assert torch.allclose(fresh.net[i].weight, fake_quantize_per_channel(w, bits), atol=1e-7)
        assert fresh.net[i].weight.unique().numel() <= w.shape[0] * (2**bits - 1)
    torch.save(model.state_dict(), tmp_path / "fp32.pt")
    assert size < (tmp_path / "fp32.pt").stat().st_size


def test_percentile_calibration_and_post_training_calibrate():
    torch.manual_seed(0)
    model = ThreeLayer()
    qat = QuantizationAwareTraining(calibration="percentile", percentile=50.0, momentum=0.0)
    batches = [torch.randn(64, 8) for _ in range(3)]
    qat.calibrate(model, batches)
    bound, signed = qat.activation_bounds()["net.0"]
    assert signed is True
    assert 0.5 < bound < 0.9
    x = torch.randn(4, 8)
    quantized = model(x)
    qat.detach()
    assert not torch.equal(quantized, model(x))


def test_resume_is_exact(tmp_path):
    def callbacks():
        return [QuantizationAwareTraining(bits_w=3, bits_a=4, calibration_steps=3)]

    full, _ = assert_resume_matches(callbacks, ThreeLayer, TinyDataModule, tmp_path, max_epochs=2)
    qat = next(cb for cb in full.callbacks if isinstance(cb, QuantizationAwareTraining))
    assert qat.observed_steps == 8
    assert all(s is not None for _, s in qat.activation_bounds().values())


def test_state_loaded_before_setup_is_applied():
    qat = QuantizationAwareTraining()
    fit_tiny([qat], module=ThreeLayer(), max_steps=3)
    state = qat.state_dict()
    fresh = QuantizationAwareTraining()
    fresh.load_state_dict(state)
    assert fresh.state_dict()["layers"].keys() == state["layers"].keys()
    fresh.attach(ThreeLayer())
    assert fresh.activation_bounds() == qat.activation_bounds()


@pytest.mark.ddp
def test_ddp_ranks_hold_equal_bounds():
    class Record(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            qat = next(cb for cb in trainer.callbacks if isinstance(cb, QuantizationAwareTraining))
            assert all(b > 0 for b, _ in qat.activation_bounds().values())

    trainer = run_ddp(
        [QuantizationAwareTraining(bits_w=4, bits_a=4, calibration_steps=1), Record(), AssertRanksAgree()],
        ThreeLayer(),
        TinyDataModule(),
        max_steps=3,
        strategy="ddp_fork_find_unused_parameters_true",
    )
    assert trainer.state.finished


@pytest.mark.parametrize("strategy", [FSDPStrategy, DeepSpeedStrategy])
def test_sharded_strategies_are_refused(strategy):
    qat = QuantizationAwareTraining()
    with pytest.raises(MisconfigurationException, match="QuantizationAwareTraining does not support"):
        qat.setup(StubTrainer(sharded_strategy(strategy), [qat]), ThreeLayer(), "fit")


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"bits_w": 1}, ValueError, r"bits_w=1"),
        ({"bits_w": 17}, ValueError, r"bits_w=17"),
        ({"bits_w": 4.0}, TypeError, r"bits_w=4.0"),
        ({"bits_w": True}, TypeError, r"bits_w=True"),
        ({"bits_a": 0}, ValueError, r"bits_a=0"),
        ({"first_last_bits": 32}, ValueError, r"first_last_bits=32"),
        ({"layer_bits": {"net.2": 1}}, ValueError, r"layer_bits=1"),
        ({"layer_bits": ["net.2"]}, TypeError, r"layer_bits="),
        ({"layer_names": []}, ValueError, r"layer_names=\[\]"),
        ({"layer_names": "net.0"}, TypeError, r"layer_names="),
        ({"calibration": "mse"}, ValueError, r"calibration='mse'"),
        ({"percentile": 0.0}, ValueError, r"percentile=0.0"),
        ({"momentum": 1.0}, ValueError, r"momentum=1.0"),
        ({"momentum": float("nan")}, ValueError, r"momentum=nan"),
        ({"calibration_steps": 0}, ValueError, r"calibration_steps=0"),
    ],
)
def test_bad_arguments_fail_in_init(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        QuantizationAwareTraining(**kwargs)


def test_bad_layers_fail_at_setup_before_training():
    with pytest.raises(ValueError, match=r"layer_names=\['net.9'\].*quantizable layers: \['net.0', 'net.2'\]"):
        fit_tiny([QuantizationAwareTraining(layer_names=["net.9"])])
    with pytest.raises(ValueError, match=r"layer_bits=\{'head': 4\}"):
        fit_tiny([QuantizationAwareTraining(layer_bits={"head": 4})])

    class NoLayers(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Identity())
            self.scale = nn.Parameter(torch.ones(4, 8))

        def forward(self, x):
            return self.net(x) @ self.scale.T

    with pytest.raises(ValueError, match=r"layer_names=None.*no quantizable layer"):
        fit_tiny([QuantizationAwareTraining()], module=NoLayers())


def test_tiny_hugging_face_gpt2_trains_quantized_and_loads_strictly(tmp_path):
    transformers = pytest.importorskip("transformers")

    class GPT2Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=8, n_positions=8)
            self.model = transformers.GPT2LMHeadModel(config)

        def training_step(self, batch, batch_idx):
            x, _, _ = split_batch(batch)
            tokens = (x.clamp(-3.99, 3.99) + 4).long()
            return self.model(input_ids=tokens, labels=tokens).loss

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    torch.manual_seed(0)
    module = GPT2Module()
    qat = QuantizationAwareTraining(bits_w=4, bits_a=8)
    trainer = make_trainer(callbacks=[qat], max_steps=2, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=TinyDataModule())
    names = list(qat.layer_bits_used())
    assert names[0] == "model.transformer.h.0.attn.c_attn"
    assert names[-1] == "model.lm_head"  # tied to the input embedding, which stays in float
    assert {"model.transformer.h.0.mlp.c_fc", "model.transformer.h.0.mlp.c_proj"} <= set(names)
    assert qat.bit_operations() is not None
    trainer.save_checkpoint(tmp_path / "gpt2.ckpt")
    state = torch.load(tmp_path / "gpt2.ckpt", weights_only=False)["state_dict"]
    GPT2Module().load_state_dict(state, strict=True)
    assert module.model.lm_head.weight is module.model.transformer.wte.weight


def test_validate_after_fit_runs_the_quantized_model_and_teardown_detaches():
    torch.manual_seed(0)
    model = TinyClassifier()
    qat = QuantizationAwareTraining(bits_w=2, bits_a=2, first_last_bits=None)
    trainer = make_trainer(callbacks=[qat], max_steps=4, limit_val_batches=1.0)
    trainer.fit(model, datamodule=TinyDataModule())
    assert not any(m._forward_pre_hooks for m in model.modules())  # teardown removed the hooks
    quantized = trainer.validate(model, datamodule=TinyDataModule(), verbose=False)[0]["val/acc"]
    x, y = TinyDataModule().dataset.dataset.tensors
    qat.attach(model)
    expected = float((model(x).argmax(-1) == y).float().mean())
    qat.detach()
    assert quantized == pytest.approx(expected)


def test_torchao_deployment_runs_the_fake_quantized_weights():
    """``to_torchao``: torchao integer weights (our scales) whose dequantization equals the QAT weights exactly."""
    ao = pytest.importorskip("torchao.quantization")
    torch.manual_seed(0)
    model = ThreeLayer()
    qat = QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=8)
    fit_tiny([qat], module=model, max_steps=3)
    expected = {
        i: fake_quantize_per_channel(model.net[i].weight.detach(), bits) for i, bits in ((0, 8), (2, 4), (4, 8))
    }
    x = torch.randn(5, 8)
    reference = ThreeLayer()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for i, w in expected.items():
            reference.net[i].weight.copy_(w)
        want = reference(x)
    deployed = qat.to_torchao(model)
    for i, w in expected.items():
        assert isinstance(deployed.net[i].weight, ao.IntxUnpackedToInt8Tensor)
        assert torch.equal(deployed.net[i].weight.dequantize(), w)
    with torch.no_grad():
        assert torch.allclose(deployed(x), want, atol=1e-5)
    cnn = TinyCNN()
    qat_cnn = QuantizationAwareTraining(bits_w=4, bits_a=None, first_last_bits=8)
    fit_tiny([qat_cnn], module=cnn, max_steps=2)
    conv_w = fake_quantize_per_channel(cnn.conv.weight.detach(), 8)
    qat_cnn.to_torchao(cnn)
    assert torch.equal(cnn.conv.weight.detach(), conv_w)  # convolutions: fake-quantized float weights
    with pytest.raises(ValueError, match="nothing to deploy"):
        QuantizationAwareTraining().to_torchao(ThreeLayer())
