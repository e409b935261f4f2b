import pickle
import time

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from litmix.callbacks.inference_cost import InferenceCostCallback
from litmix.functional.inference_cost import fit_cost_model, profile_grid
from litmix.testing import TinyDataModule, assert_resume_matches, assert_state_roundtrip, fit_tiny, make_trainer


def test_fit_recovers_piecewise_linear_prompt_cost():
    p = torch.tensor([4.0, 16, 32, 64, 128, 256]).repeat_interleave(3)
    o = torch.tensor([1.0, 5, 17]).repeat(6)
    true_f = 0.02 + 0.001 * p + 0.002 * (p - 64).clamp_min(0)
    t = true_f + 0.004 * (o - 1)
    m = fit_cost_model(p, o, t, knots=[64])
    assert m.per_token == pytest.approx(0.004, rel=1e-6)
    assert m.prompt_slope == pytest.approx(0.001, rel=1e-6)
    assert m.hinge_slopes[0] == pytest.approx(0.002, rel=1e-6)
    assert m.runtime(200, 10) == pytest.approx(0.02 + 0.2 + 0.002 * 136 + 0.036, rel=1e-6)
    assert m.r2 == pytest.approx(1.0)


def test_fit_uses_lower_envelope():
    p = torch.tensor([8.0, 8, 64, 64, 8, 64, 8, 64])
    o = torch.tensor([1.0, 9, 1, 9, 1, 9, 9, 1])
    t = 0.01 + 0.001 * p + 0.005 * (o - 1)
    noisy = t.clone()
    noisy[[5, 6]] += 0.5  # contended long-output repeats: must be ignored by the envelope
    m = fit_cost_model(p, o, noisy)
    assert m.per_token == pytest.approx(0.005, rel=1e-6)
    m_mean = fit_cost_model(p, o, noisy, envelope=False)
    assert abs(m_mean.per_token - 0.005) > 1e-3


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="output_lengths must be >= 1"):
        fit_cost_model(torch.tensor([1.0, 2]), torch.tensor([0.0, 1]), torch.tensor([1.0, 2]))
    with pytest.raises(ValueError, match="distinct"):
        fit_cost_model(torch.tensor([1.0, 1]), torch.tensor([1.0, 2]), torch.tensor([1.0, 2]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt_lengths": []}, "prompt_lengths"),
        ({"output_lengths": [0, 2]}, "output_lengths"),
        ({"output_lengths": [4, 4]}, "distinct"),
        ({"repeats": 0}, "repeats"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"context_limit": -1}, "context_limit"),
        ({"reference_query": [3]}, "reference_query"),
    ],
)
def test_callback_rejects_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InferenceCostCallback(**kwargs)


def test_example_fit_logs_and_roundtrips(tmp_path):
    cb = InferenceCostCallback.example()
    pickle.loads(pickle.dumps(cb))
    fit_tiny([cb], module=InferenceCostCallback.example_module(), max_steps=2)
    assert cb.cost_model is not None
    assert set(cb.metrics()) >= {"inference_cost/per_token_s", "inference_cost/reference_runtime_s"}
    assert_state_roundtrip(cb)
    fresh = InferenceCostCallback.example()
    fresh.load_state_dict(cb.state_dict())
    assert fresh.cost_model == cb.cost_model


def test_resume_matches(tmp_path):
    assert_resume_matches(
        lambda: [InferenceCostCallback.example()],
        InferenceCostCallback.example_module,
        TinyDataModule,
        tmp_path,
    )


class _SleepLM(pl.LightningModule):
    """Generation costs exactly a + b * p + g * (o - 1) seconds (plus timer overhead)."""

    def __init__(self, a: float, b: float, g: float) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 4)
        self.a, self.b, self.g = a, b, g

    def generate(self, idx: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        time.sleep(self.a + self.b * idx.shape[1])
        for _ in range(max_new_tokens - 1):
            time.sleep(self.g)
        return idx

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return nn.functional.cross_entropy(self.lin(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("run", [0, 1, 2])
def test_recovers_known_per_token_cost(run):
    a, b, g = 0.004, 0.0002, 0.004
    cb = InferenceCostCallback(prompt_lengths=[8, 32, 64, 128], output_lengths=[1, 4, 8, 16], repeats=3)
    fit_tiny([cb], module=_SleepLM(a, b, g), max_steps=1)
    m = cb.cost_model
    assert m is not None
    print(f"run {run}: g={m.per_token:.6f} (true {g}), slope={m.prompt_slope:.7f} (true {b}), r2={m.r2:.4f}")
    assert m.per_token == pytest.approx(g, rel=0.10)
    assert m.prompt_slope == pytest.approx(b, rel=0.10)
    assert m.r2 > 0.99


class _HFCharLM(pl.LightningModule):
    """A 2-layer GPT-2 (built locally, random init) trained briefly on characters."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        cfg = GPT2Config(
            vocab_size=vocab_size, n_positions=256, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
        )
        self.gpt = GPT2LMHeadModel(cfg)

    def forward(self, idx):
        return self.gpt(input_ids=idx).logits

    def generate(self, idx, max_new_tokens):
        return self.gpt.generate(
            idx,
            attention_mask=torch.ones_like(idx),
            max_new_tokens=max_new_tokens,
            min_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        return nn.functional.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=3e-3)


@pytest.mark.slow
def test_char_lm_plumbing_on_tiny_shakespeare(shared_data):
    from litmix.datamodules.char_lm import CharLMDataModule

    dm = CharLMDataModule(str(shared_data / "tinyshakespeare" / "input.txt"), block_size=64, batch_size=16)
    pl.seed_everything(0)
    module = _HFCharLM(dm.vocab_size)
    cb = InferenceCostCallback(
        prompt_lengths=[16, 64, 128, 192], output_lengths=[1, 8, 32], repeats=3, reference_query=[64, 32]
    )
    trainer = make_trainer(callbacks=[cb], max_steps=20)
    trainer.fit(module, datamodule=dm)
    m = cb.cost_model
    assert m is not None
    assert cb._prompt_pool is not None  # prompts came from Shakespeare batches
    print(
        f"GPT-2 char-LM: g={m.per_token * 1e3:.3f} ms/token, f(p)={m.intercept * 1e3:.3f} ms"
        f" + {m.prompt_slope * 1e6:.3f} us/prompt token, r2={m.r2:.3f}, ref={cb.metrics()}"
    )
    assert m.per_token > 0
    assert m.prompt_slope > 0
    assert m.r2 > 0.9
    # the fitted model predicts held-out queries measured directly within 35 %
    gen = lambda p, o: module.generate(cb._prompt(p, torch.device("cpu")), o)  # noqa: E731
    with torch.no_grad():
        _, _, t = profile_grid(gen, [96], [16], repeats=3)
    assert m.runtime(96, 16) == pytest.approx(float(t.min()), rel=0.35)
