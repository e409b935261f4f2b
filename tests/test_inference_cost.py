import pickle
import time

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from litmix.callbacks.inference_cost import InferenceCost
from litmix.functional.inference_cost import fit_cost_model, profile_grid
from litmix.testing import (
    StubTrainer,
    TinyDataModule,
    TinyTokenLM,
    assert_state_roundtrip,
    fit_tiny,
    make_trainer,
    run_ddp,
    sharded_strategy,
)


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
        ({"prompt_lengths": [8, 8]}, r"prompt_lengths=\[8, 8\].*distinct"),
        ({"prompt_lengths": [2, 6], "output_lengths": [1, 3], "prompt_knots": [3, 4]}, r"prompt_knots=\[3, 4\]"),
        ({"repeats": 0}, "repeats"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"context_limit": -1}, "context_limit"),
        ({"reference_query": [3]}, "reference_query"),
    ],
)
def test_callback_rejects_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InferenceCost(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prompt_lengths": "8"}, r"InferenceCost\(prompt_lengths='8'\)"),
        ({"output_lengths": [1, 2.5]}, r"InferenceCost\(output_lengths=\[1, 2.5\]\)"),
        ({"repeats": 2.0}, r"InferenceCost\(repeats=2.0\)"),
        ({"vocab_size": True}, r"InferenceCost\(vocab_size=True\)"),
        ({"context_limit": "0"}, r"InferenceCost\(context_limit='0'\)"),
        ({"prompt_knots": [None]}, r"InferenceCost\(prompt_knots=\[None\]\)"),
        ({"reference_query": 3}, r"InferenceCost\(reference_query=3\)"),
        ({"name": 3}, r"InferenceCost\(name=3\)"),
    ],
)
def test_callback_rejects_wrong_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        InferenceCost(**kwargs)


class _RecordingLogger(CSVLogger):
    """A CSV logger that also keeps every ``log_metrics`` call."""

    def __init__(self, save_dir):
        super().__init__(save_dir)
        self.records = []

    def log_metrics(self, metrics, step=None):
        self.records.append(dict(metrics))
        super().log_metrics(metrics, step)


@pytest.mark.parametrize("name", [None, "gen_cost"])
def test_logs_under_prefix_to_every_logger(tmp_path, name):
    module, datamodule, _ = InferenceCost.example()
    cb = InferenceCost(prompt_lengths=[2, 6], output_lengths=[1, 3], repeats=1, vocab_size=8, name=name)
    loggers = [_RecordingLogger(tmp_path / "a"), _RecordingLogger(tmp_path / "b")]
    make_trainer(callbacks=[cb], logger=loggers, max_steps=2).fit(module, datamodule=datamodule)
    prefix = name or "inference_cost"
    expected = {f"{prefix}/{k}" for k in ("per_token_s", "prompt_intercept_s", "prompt_slope_s", "r2")}
    for logger in loggers:  # both loggers, not only trainer.logger
        keys = {k for record in logger.records for k in record}
        assert expected <= keys, (logger.save_dir, keys)
        assert name is None or not any(k.startswith("inference_cost/") for k in keys)


def test_two_named_instances_log_apart(tmp_path):
    module, datamodule, _ = InferenceCost.example()
    kw = {"output_lengths": [1, 3], "repeats": 1, "vocab_size": 8}
    a, b = (
        InferenceCost(prompt_lengths=[2, 3], name="short", **kw),
        InferenceCost(prompt_lengths=[5, 6], name="long", **kw),
    )
    logger = _RecordingLogger(tmp_path)
    make_trainer(callbacks=[a, b], logger=logger, max_steps=2).fit(module, datamodule=datamodule)
    keys = {k for record in logger.records for k in record}
    assert {"short/per_token_s", "long/per_token_s"} <= keys


@pytest.mark.parametrize("strategy_cls", [FSDPStrategy, DeepSpeedStrategy])
def test_sharded_strategy_refused_in_setup(strategy_cls):
    cb = _cb()
    stub = sharded_strategy(strategy_cls)
    with pytest.raises(MisconfigurationException, match=rf"InferenceCost.*strategy={strategy_cls.__name__}.*ddp"):
        cb.setup(StubTrainer(stub, [cb]), TinyTokenLM(), "fit")
    cb.setup(StubTrainer(object(), [cb]), TinyTokenLM(), "fit")  # a non-sharded strategy passes


def _cb():
    return InferenceCost.example().callbacks[0]


def test_example_fit_logs_and_roundtrips(tmp_path):
    module, datamodule, (cb,) = InferenceCost.example()
    assert isinstance(module, TinyTokenLM)
    pickle.loads(pickle.dumps(cb))
    fit_tiny([cb], module=module, datamodule=datamodule, max_steps=2)
    assert cb.cost_model is not None
    assert set(cb.metrics()) >= {"inference_cost/per_token_s", "inference_cost/reference_runtime_s"}
    assert_state_roundtrip(cb)
    fresh = _cb()
    fresh.load_state_dict(cb.state_dict())
    assert fresh.cost_model == cb.cost_model


def _fit_two_epochs(ckpt_dir, ckpt_path=None):
    pl.seed_everything(0, verbose=False)
    cb, module = _cb(), TinyTokenLM()
    saver = ModelCheckpoint(dirpath=ckpt_dir, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    trainer = make_trainer(callbacks=[cb, saver], max_epochs=2, enable_checkpointing=True)
    trainer.fit(module, datamodule=_TokenDataModule(), ckpt_path=ckpt_path)
    return module, cb


def test_resume_matches(tmp_path):
    """Weights and the prompt pool resume exactly. The cost model is a wall-clock measurement: each run fits
    its own, so only its presence and its grid can be compared (litmix.testing.assert_resume_matches compares
    whole callback states and cannot pass for a measuring callback)."""
    full_module, full = _fit_two_epochs(tmp_path / "full")
    ckpt = sorted((tmp_path / "full").glob("epoch=0-*.ckpt"))[0]
    resumed_module, resumed = _fit_two_epochs(tmp_path / "resumed", ckpt_path=str(ckpt))
    for (k, v), w in zip(full_module.state_dict().items(), resumed_module.state_dict().values(), strict=True):
        assert torch.equal(v, w), k
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    assert torch.equal(a["prompt_pool"], b["prompt_pool"])
    assert a["cost_model"] is not None
    assert b["cost_model"] is not None
    assert a["cost_model"]["knots"] == b["cost_model"]["knots"]


class _TokenDataModule(pl.LightningDataModule):
    """Integer token sequences ``(x, y, index)`` so that prompts come from the training batches."""

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(0, 8, (32, 8), generator=gen)
        return torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, torch.zeros(32, dtype=torch.long), torch.arange(32)), batch_size=8
        )


class _SeesRestoredState(Callback):
    """Records the callback's cost model and prompt pool when training (re)starts, before any profiling."""

    def __init__(self, cb):
        self.cb = cb
        self.at_start = None

    def on_train_start(self, trainer, pl_module):
        pool = self.cb._prompt_pool
        self.at_start = (self.cb.cost_model, None if pool is None else pool.clone())


class _Forgetful(InferenceCost):
    """Negative control: ignores its checkpoint state."""

    def load_state_dict(self, state_dict):
        pass


@pytest.mark.parametrize(("cls", "restores"), [(InferenceCost, True), (_Forgetful, False)])
def test_resume_after_fit_restores_cost_model_and_prompts(tmp_path, cls, restores):
    cb = _cb()
    trainer = make_trainer(callbacks=[cb], max_steps=2)
    trainer.fit(TinyTokenLM(), datamodule=_TokenDataModule())
    ckpt = tmp_path / "after_fit.ckpt"
    trainer.save_checkpoint(ckpt)
    assert cb.cost_model is not None
    assert cb._prompt_pool is not None

    fresh = cls(prompt_lengths=[2, 6], output_lengths=[1, 3], repeats=1, vocab_size=8)
    probe = _SeesRestoredState(fresh)
    resumed = make_trainer(callbacks=[fresh, probe], max_steps=4)
    resumed.fit(TinyTokenLM(), datamodule=_TokenDataModule(), ckpt_path=str(ckpt))
    model, pool = probe.at_start
    assert (model == cb.cost_model) == restores
    assert (pool is not None and torch.equal(pool, cb._prompt_pool)) == restores
    if restores:  # the re-profiling at the end of the resumed run used the original prompts
        assert torch.equal(fresh._prompt_pool, cb._prompt_pool)


# ----------------------------------------------------------------------------- DDP


class _SlowerOnRank1(TinyTokenLM):
    """Every forward costs 2 ms more on rank 1, so that locally fitted cost models surely differ."""

    def forward(self, idx):
        if self._trainer is not None and self.trainer.global_rank == 1:
            time.sleep(0.002)
        return super().forward(idx)


class _ProfileOnEveryRank(InferenceCost):
    """Negative control: every rank profiles itself (no broadcast)."""

    def on_train_end(self, trainer, pl_module):
        self.profile(pl_module)


class _CostChecksum(Callback):
    """After the profiling: all-gather the fitted model and report the largest difference between ranks.

    ``self.log`` is refused in ``on_train_end``, so the (already all-gathered, hence rank-independent) value is
    written into ``trainer.callback_metrics``, which ``ddp_fork`` sends back to the parent.
    """

    def __init__(self, cb):
        self.cb = cb

    def on_train_end(self, trainer, pl_module):
        m = self.cb.cost_model
        values = torch.tensor([m.intercept, m.prompt_slope, m.per_token, m.r2, *m.hinge_slopes], dtype=torch.float64)
        gathered = trainer.strategy.all_gather(values)
        assert gathered.shape[0] == 2
        trainer.callback_metrics["test/cost_diff"] = (gathered - gathered[0]).abs().max()
        trainer.callback_metrics["test/per_token"] = gathered[0, 2]


@pytest.mark.ddp
@pytest.mark.parametrize(("cls", "identical"), [(InferenceCost, True), (_ProfileOnEveryRank, False)])
def test_ddp_cost_model_identical_on_both_ranks(cls, identical):
    cb = cls(prompt_lengths=[2, 6], output_lengths=[1, 3], repeats=2, vocab_size=8)
    trainer = run_ddp([cb, _CostChecksum(cb)], _SlowerOnRank1(), TinyDataModule(), max_steps=2)
    diff = float(trainer.callback_metrics["test/cost_diff"])
    if identical:
        assert diff == 0.0
        assert float(trainer.callback_metrics["test/per_token"]) < 1e-3  # rank 0's fit, not slow rank 1's (> 2 ms)
    else:
        assert diff > 1e-4  # the check can fail: rank 1's own profile is ~2 ms per token slower


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
    cb = InferenceCost(prompt_lengths=[8, 32, 64, 128], output_lengths=[1, 4, 8, 16], repeats=3)
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
            vocab_size=vocab_size, n_positions=1024, n_embd=64, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0
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
    cb = InferenceCost(
        prompt_lengths=[16, 256, 512, 896], output_lengths=[1, 8, 32], repeats=3, reference_query=[64, 32]
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


class _LocalPool(InferenceCost):
    """Negative control: keeps its own rank's first batch as the prompt pool (no broadcast)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._prompt_pool is None:
            self._prompt_pool = batch[0].flatten().clone()


class _PoolChecksum(Callback):
    def __init__(self, cb):
        self.cb = cb

    def on_train_end(self, trainer, pl_module):
        pool = self.cb._prompt_pool.double()
        value = torch.stack([pool.sum(), (pool * torch.arange(1, len(pool) + 1)).sum()])
        gathered = trainer.strategy.all_gather(value)
        trainer.callback_metrics["test/pool_diff"] = (gathered - gathered[0]).abs().max()


@pytest.mark.ddp
@pytest.mark.parametrize(("cls", "identical"), [(InferenceCost, True), (_LocalPool, False)])
def test_ddp_prompt_pool_identical_on_both_ranks(cls, identical):
    cb = cls(prompt_lengths=[2, 6], output_lengths=[1, 3], repeats=1, vocab_size=8)
    trainer = run_ddp([cb, _PoolChecksum(cb)], TinyTokenLM(), _TokenDataModule(), max_steps=2)
    diff = float(trainer.callback_metrics["test/pool_diff"])
    assert (diff == 0.0) == identical  # the ranks' first batches differ, so the check can fail
