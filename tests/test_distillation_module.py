"""DistillationModule and the litmix.distill terms: maths, teacher handling, checkpoints, DDP, effects on real data."""

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset, TensorDataset

from litmix.data import IndexedDataset
from litmix.distill import (
    AttentionTransferTerm,
    ContrastiveTerm,
    FeatureProjector,
    FitNetTerm,
    LogitsKDTerm,
    RKDTerm,
    build_term,
    infer_width,
)
from litmix.functional.distill_losses import KDRowsFunction, kd_rows
from litmix.functional.distillation import kd_loss
from litmix.plugins import DistillationModule
from litmix.testing import (
    AssertRanksAgree,
    TinyDataModule,
    assert_resume_matches,
    digits_split,
    digits_teacher,
    make_trainer,
    run_ddp,
)

# --------------------------------------------------------------------------------------------- maths of the terms


def test_kd_rows_matches_kd_loss_value_and_gradient():
    torch.manual_seed(0)
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 5)
    for temp in (1.0, 4.0):
        ref = kd_loss(s, t, temperature=temp)
        (g_ref,) = torch.autograd.grad(ref, s)
        ours = kd_rows(s, F.log_softmax(t / temp, -1), temp)
        (g_ours,) = torch.autograd.grad(ours, s)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(g_ours, g_ref)
    # the callback uses this very function (shared, not copied)
    from litmix.callbacks import knowledge_distillation

    assert knowledge_distillation._KDTerm is KDRowsFunction


def _conv_pair(seed=0):
    torch.manual_seed(seed)
    student = nn.Sequential(nn.Unflatten(1, (2, 2, 2)), nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(16, 4))
    teacher = nn.Sequential(nn.Unflatten(1, (2, 2, 2)), nn.Conv2d(2, 8, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 4))
    return student, teacher


ALL_TERMS = [
    {"kind": "kd", "temperature": 2.0, "weight": 0.5},
    {"kind": "fitnet", "student": "1", "teacher": "1"},  # [B, 4, 2, 2] -> 1x1 conv projector -> [B, 8, 2, 2]
    {"kind": "at", "student": "2", "teacher": "2", "weight": 10.0},
    {"kind": "rkd", "student": "3", "teacher": "3"},
    {"kind": "crd", "student": "3", "teacher": "3", "student_dim": 16, "teacher_dim": 32, "embed_dim": 8},
]


@pytest.mark.parametrize(
    ("term", "shape", "widen"),
    [
        (LogitsKDTerm(temperature=3.0), (5, 4), False),
        (FitNetTerm(projector=False), (5, 6), False),
        (AttentionTransferTerm(), (5, 3, 4, 4), True),  # same attention map with twice the channels
        (RKDTerm(), (5, 6), True),  # same relations in a wider space
    ],
)
def test_terms_are_zero_when_the_teacher_equals_the_student(term, shape, widen):
    torch.manual_seed(0)
    s = torch.randn(*shape)
    t = torch.cat([s, s], 1) if widen else s.clone()
    assert term(s, [t]).abs().item() < 1e-5
    assert term(s + torch.randn_like(s), [t]).item() > 1e-3


def test_gradients_reach_only_student_and_projectors():
    student, teacher = _conv_pair()
    module = DistillationModule(student, teacher, ALL_TERMS)
    x, y = torch.randn(6, 8), torch.arange(6) % 4
    total, values, _, _ = module._losses((x, y))
    total.backward()
    assert set(values) == {"task", "kd", "fitnet", "at", "rkd", "crd"}
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None for p in module.distill_terms.parameters())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    # projector shapes: 1x1-conv FitNets regressor 4 -> 8, CRD heads 16 -> 8 and 32 -> 8
    assert module.distill_terms[1].projector.weight.shape == (8, 4)
    assert module.distill_terms[4].teacher_head.weight.shape == (8, 32)


def test_mean_prob_is_the_ensembles_mean_probability():
    torch.manual_seed(0)
    t1, t2, s = torch.randn(4, 5), torch.randn(4, 5), torch.randn(4, 5)
    term = LogitsKDTerm(temperature=1.0, aggregate="mean_prob")
    target = (F.softmax(t1, -1) + F.softmax(t2, -1)) / 2
    expected = F.kl_div(F.log_softmax(s, -1), target, reduction="batchmean")
    torch.testing.assert_close(term(s, [t1, t2]), expected)


def test_infer_width_and_projector_layouts():
    net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(20, 7))
    assert [infer_width(net, p) for p in ("0", "1", ".")] == [5, 5, 7]
    proj = FeatureProjector(5, 9)
    conv = torch.randn(2, 5, 4, 4)
    ref = F.conv2d(conv, proj.weight[:, :, None, None], proj.bias)
    torch.testing.assert_close(proj(conv), ref)
    with pytest.raises(ValueError, match="in_features=5"):
        proj(torch.randn(2, 6))


# --------------------------------------------------------------------------------------------- bad arguments


def test_bad_arguments_name_what_is_wrong():
    student, teacher = _conv_pair()
    with pytest.raises(ValueError, match=r"terms\[0\]\.student='layer9'.*candidates: '0', '1', '2', '3', '4'"):
        DistillationModule(student, teacher, [{"kind": "fitnet", "student": "layer9", "teacher": "1"}])
    with pytest.raises(ValueError, match=r"terms\[1\]\.teacher='1.weight'"):
        DistillationModule(student, teacher, [{"kind": "kd"}, {"kind": "at", "student": "1", "teacher": "1.weight"}])
    with pytest.raises(ValueError, match=r"terms\[0\].*unknown kind 'dkd'; known kinds: at, crd, fitnet, kd\b"):
        DistillationModule(student, teacher, [{"kind": "dkd"}])
    with pytest.raises(ValueError, match=r"terms\[0\].*weight must be a finite number >= 0"):
        DistillationModule(student, teacher, [{"kind": "kd", "weight": -0.5}])
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['temprature'\]"):
        DistillationModule(student, teacher, [{"kind": "kd", "temprature": 2.0}])
    with pytest.raises(ValueError, match="teacher_index 1 but only 1 teacher"):
        DistillationModule(student, teacher, [{"kind": "fitnet", "student": "1", "teacher": "1", "teacher_index": 1}])
    with pytest.raises(ValueError, match="pass student_dim="):
        DistillationModule(student, teacher, [{"kind": "crd", "student": "0", "teacher": "0"}])
    with pytest.raises(TypeError, match=r"teachers\[1\]"):
        DistillationModule(student, [teacher, 3])
    with pytest.raises(ValueError, match="teachers"):
        DistillationModule(student, [])
    with pytest.raises(ValueError, match="teacher_dtype"):
        DistillationModule(student, teacher, teacher_dtype="int8")


def test_bad_shapes_fail_at_the_first_step_naming_them():
    student, _ = _conv_pair()
    wide = nn.Sequential(nn.Linear(8, 5))
    with pytest.raises(ValueError, match=r"teacher logits of shape \(16, 5\) do not match student logits of shape"):
        make_trainer(max_steps=1).fit(DistillationModule(student, wide), datamodule=TinyDataModule())
    module = DistillationModule(_conv_pair()[0], _conv_pair()[1], [{"kind": "kd"}])
    with pytest.raises(ValueError, match="task_loss=None"):
        module._losses((torch.randn(4, 8),))


# --------------------------------------------------------------------------------------------- teacher handling


def test_teacher_frozen_eval_bit_identical_and_out_of_the_checkpoint(tmp_path):
    student, teacher = _conv_pair()
    teacher.append(nn.Dropout(0.5))  # a train-mode teacher would be random: it must stay in eval
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = DistillationModule(student, teacher, ALL_TERMS, lr=0.05)
    module.train()  # a user's train() must not reach the teacher
    assert not teacher.training
    trainer = make_trainer(max_steps=4, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=TinyDataModule())
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert "distill/agreement" in trainer.callback_metrics
    assert {f"distill/{n}" for n in ("kd", "fitnet", "at", "rkd", "crd", "task", "total")} <= set(
        trainer.callback_metrics
    )
    # the projectors are trained with the student, in their own parameter group
    groups = {g["name"]: g["params"] for g in trainer.optimizers[0].param_groups}
    assert {id(p) for p in groups["distill_terms"]} == {id(p) for p in module.distill_terms.parameters()}
    assert not {id(p) for p in teacher.parameters()} & {id(p) for g in groups.values() for p in g}
    trainer.save_checkpoint(tmp_path / "d.ckpt")
    ckpt = torch.load(tmp_path / "d.ckpt", map_location="cpu", weights_only=False)
    assert all(k.startswith(("student.", "distill_terms.")) for k in ckpt["state_dict"])
    assert ckpt["litmix"]["terms"][1]["kind"] == "fitnet"
    bare = _conv_pair(seed=5)[0]
    bare.load_state_dict(DistillationModule.student_state_dict(ckpt), strict=True)
    assert torch.equal(bare[4].weight, student[4].weight)
    fresh = DistillationModule(_conv_pair(seed=5)[0], _conv_pair()[1], ALL_TERMS)
    fresh.load_state_dict(ckpt["state_dict"], strict=True)


def test_teacher_dtype_bfloat16_halves_the_teacher_and_trains():
    student, teacher = _conv_pair()
    bytes_fp32 = sum(p.numel() * p.element_size() for p in teacher.parameters())
    module = DistillationModule(student, teacher, ALL_TERMS[:3], teacher_dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in teacher.parameters())
    assert sum(p.numel() * p.element_size() for p in teacher.parameters()) * 2 == bytes_fp32
    module.to(torch.device("cpu"))  # moves keep the teacher's dtype
    assert teacher[1].weight.dtype == torch.bfloat16
    total, values, _, _ = module._losses((torch.randn(6, 8), torch.arange(6) % 4))
    assert total.dtype == torch.float32
    assert all(math.isfinite(v.item()) for v in values.values())


def test_resume_matches_with_every_term_and_two_teachers(tmp_path):
    def make():
        student, teacher = _conv_pair()
        second = _conv_pair(seed=1)[1]
        return DistillationModule(student, [teacher, second], ALL_TERMS, lr=0.05)

    assert_resume_matches(lambda: [], make, TinyDataModule, tmp_path, max_epochs=2, atol=1e-6)


@pytest.mark.ddp
def test_two_ddp_ranks_hold_equal_weights_and_projectors():
    student, teacher = _conv_pair()
    module = DistillationModule(student, [teacher, _conv_pair(seed=1)[1]], ALL_TERMS, lr=0.05)
    trainer = run_ddp([AssertRanksAgree()], module, TinyDataModule(), strategy="ddp_fork", max_steps=3)
    assert trainer.state.finished


# --------------------------------------------------------------------------------------------- effects on real data


@pytest.fixture(scope="module")
def digits_teachers():
    return digits_teacher(0), digits_teacher(1)


def _accuracy(model):
    x, y, _, val_idx = digits_split()
    model.eval()
    with torch.no_grad():
        return (model(x[val_idx]).argmax(-1) == y[val_idx]).float().mean().item()


def _fit_student(seed, teachers, terms, datamodule, epochs, task_loss="cross_entropy"):
    pl.seed_everything(seed, verbose=False)
    student = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    module = DistillationModule(student, teachers, terms, task_loss=task_loss, lr=0.01)
    make_trainer(max_epochs=epochs).fit(module, datamodule=datamodule)
    return _accuracy(student)


def _few_labels(n_labels=100):
    """All training inputs, but only ``n_labels`` of them (stratified) keep their label; the rest get -100."""
    from litmix.datamodules.digits import DigitsDataModule

    x, y, train_idx, _ = digits_split()
    few = DigitsDataModule(train_size=n_labels, seed=0)
    few.setup("fit")
    keep = torch.tensor(few.train_dataset.indices)
    masked = torch.full_like(y, -100)
    masked[keep] = y[keep]
    dm = DigitsDataModule(batch_size=128, seed=0)
    dm.setup("fit")
    dm.train_dataset = Subset(IndexedDataset(TensorDataset(x, masked)), train_idx.tolist())
    return dm


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_effect_few_labels_kd_plus_fitnet_beats_the_student_alone(digits_teachers, seed):
    """100 labels: logits KD + a FitNets hint (32 -> 256 projector) on all inputs beats the student alone.

    The student alone trains on the 100 labelled images (100 epochs of one batch); the distilled student sees
    all 1,258 training inputs, of which the same 100 keep their label (others -100), 10 epochs of batch 128
    (100 steps each). Teacher (seed 0) 96.85 %. Measured digits validation accuracy (seeds 0 / 1 / 2): alone
    89.42 / 87.94 / 89.05 %, KD + FitNets 93.32 / 93.69 / 92.58 % (gain +3.9 / +5.8 / +3.5 points); KD alone
    93.51 / 93.69 / 92.76 %, KD + RKD 93.32 / 93.69 / 93.14 %; the FitNets hint alone (no KD) 89.42 / 88.50 /
    88.13 %: no gain (not asserted). Asserted: gain >= 0.025 on every seed.
    """
    from litmix.datamodules.digits import DigitsDataModule

    teacher, _ = digits_teachers
    alone = _fit_student(seed, teacher, [], DigitsDataModule(batch_size=100, train_size=100, seed=0), epochs=100)
    terms = [
        {"kind": "kd", "temperature": 4.0, "weight": 1.0},
        {"kind": "fitnet", "student": "1", "teacher": "4", "weight": 1.0},
    ]
    distilled = _fit_student(seed, teacher, terms, _few_labels(), epochs=10)
    assert distilled - alone >= 0.025, (alone, distilled)


@pytest.mark.slow
def test_effect_two_teacher_ensemble_without_labels(digits_teachers):
    """MEAL V2 style: two teachers, aggregate="mean_prob", T=1, task_loss=None (no labels at all).

    Teachers 96.85 % and 97.22 %. Student (64-32-10, 100 steps of batch 128 over the 1,258 training inputs)
    measured 94.43 / 95.18 / 94.62 % on seeds 0 / 1 / 2. Asserted (seed 0): >= 0.93 and within 0.04 of the weaker
    teacher. The catalogue found no ensemble gain over one teacher (D3): not asserted.
    """
    from litmix.datamodules.digits import DigitsDataModule

    t0, t1 = digits_teachers
    acc = _fit_student(
        0, [t0, t1], [{"kind": "kd", "temperature": 1.0}], DigitsDataModule(batch_size=128, seed=0), 10, None
    )
    assert acc >= 0.93
    assert acc >= min(_accuracy(t0), _accuracy(t1)) - 0.04


@pytest.mark.parametrize("cls", [LogitsKDTerm, FitNetTerm, AttentionTransferTerm, RKDTerm, ContrastiveTerm])
def test_specs_are_json_and_rebuild_the_same_term(cls):
    import json

    term = cls(student="a.b", teacher="c", weight=0.25)
    spec = json.loads(json.dumps(term.spec()))
    again = build_term(spec)
    assert type(again) is cls
    assert again.spec() == term.spec()


def test_lightning_cli_yaml_builds_the_module():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(DistillationModule, "model")
    config = parser.parse_string(
        """
model:
  student: {class_path: torch.nn.Linear, init_args: {in_features: 8, out_features: 4}}
  teachers:
    - {class_path: torch.nn.Linear, init_args: {in_features: 8, out_features: 4}}
    - {class_path: torch.nn.Linear, init_args: {in_features: 8, out_features: 4}}
  terms:
    - {kind: kd, temperature: 2.0, weight: 0.5}
    - {kind: fitnet, student: ".", teacher: ".", weight: 1.0, projector: true}
  task_loss: null
  aggregate: mean_logit
  teacher_dtype: bfloat16
"""
    )
    build = getattr(parser, "instantiate", None) or parser.instantiate_classes
    module = build(config).model
    assert [type(t).__name__ for t in module.distill_terms] == ["LogitsKDTerm", "FitNetTerm"]
    assert module.distill_terms[0].aggregate == "mean_logit"
    assert module.task_loss is None
    assert len(module.teachers) == 2
    assert module.teachers[1].weight.dtype == torch.bfloat16


def _tiny_gpt2(vocab, width, layers, seed, block):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab, n_positions=block, n_embd=width, n_layer=layers, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def _val_loss(model, dm, batches=20):
    model.eval()
    losses = []
    with torch.no_grad():
        for i, (x, y, _) in enumerate(dm.val_dataloader()):
            if i == batches:
                break
            logits = model(x).logits
            losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item())
    return sum(losses) / len(losses)


def _gpt2_losses(shared_data, seed, kd_only=False):
    from litmix.datamodules.char_lm import CharLMDataModule

    def data():
        path = str(shared_data / "tinyshakespeare" / "input.txt")
        dm = CharLMDataModule(path, block_size=32, batch_size=16, max_chars=300_000, val_fraction=0.1, seed=0)
        dm.setup("fit")
        return dm

    vocab = data().vocab_size
    teacher = _tiny_gpt2(vocab, 64, 2, 100 + seed, 32)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    pl.seed_everything(seed, verbose=False)
    loader = iter(data().train_dataloader())
    for _ in range(200):
        x, y, _ = next(loader)
        opt.zero_grad()
        logits = teacher(x).logits
        F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1)).backward()
        opt.step()
    teacher.eval()
    kd = {"kind": "kd", "temperature": 1.0, "weight": 0.5}
    hidden = {"kind": "fitnet", "student": "transformer.ln_f", "teacher": "transformer.ln_f", "weight": 1.0}
    losses = {"teacher": _val_loss(teacher, data())}
    runs = [("alone", [], 1.0), ("distilled", [kd, hidden], 0.5)] + ([("kd only", [kd], 0.5)] if kd_only else [])
    for name, terms, task_weight in runs:
        pl.seed_everything(seed, verbose=False)
        student = _tiny_gpt2(vocab, 32, 1, seed, 32)
        module = DistillationModule(student, teacher, terms, task_weight=task_weight, lr=3e-3)
        if len(terms) == 2:
            assert module.distill_terms[1].projector.weight.shape == (64, 32)
        make_trainer(max_steps=100).fit(module, datamodule=data())
        losses[name] = _val_loss(student, data())
    return losses


@pytest.mark.slow
def test_effect_gpt2_student_from_a_bigger_gpt2_teacher(shared_data):
    """Hugging Face GPT-2 (built from a GPT2Config, no download) on Tiny Shakespeare, character level.

    Teacher 2 layers x 64 wide, trained 200 steps (batch 16 x 32 characters); student 1 layer x 32 wide, 100 steps,
    lr 3e-3. Distilled: 0.5 task + 0.5 KD (T=1) + 1.0 FitNets on the final layer norm's hidden states
    (``transformer.ln_f``, 32 -> 64 projector). Measured validation loss (seeds 0 / 1 / 2; teacher seed 100 +
    seed): teacher 2.517 / 2.509 / 2.511; student alone 2.784 / 2.727 / 2.716; KD only (0.5 task + 0.5 KD)
    2.691 / 2.681 / 2.658; KD + hidden-state term 2.648 / 2.644 / 2.638: gain over alone 0.136 / 0.084 / 0.078
    nats, over KD only 0.043 / 0.038 / 0.020. In a separate sweep the hidden-state term on the last block's raw
    output (``transformer.h.*``) was worse than KD only at weight 0.1 and equal to it at weight 0.01.
    Asserted (seed 0): distilled below alone by >= 0.06 and below KD only by >= 0.01.
    """
    pytest.importorskip("transformers")
    losses = _gpt2_losses(shared_data, 0, kd_only=True)
    assert losses["alone"] - losses["distilled"] >= 0.06, losses
    assert losses["kd only"] - losses["distilled"] >= 0.01, losses


def test_cached_teacher_logits_in_the_batch_replace_the_teacher_forward():
    student, teacher = _conv_pair()
    calls = []
    teacher.register_forward_hook(lambda *_: calls.append(1))
    x, y = torch.randn(6, 8), torch.arange(6) % 4
    with torch.no_grad():
        logits = teacher(x)
    calls.clear()
    kd_only = DistillationModule(student, teacher, [{"kind": "kd", "temperature": 2.0}])
    live, _, _, _ = kd_only._losses({"x": x, "y": y})
    assert len(calls) == 1
    cached, _, _, _ = kd_only._losses({"x": x, "y": y, "teacher_logits": logits})
    assert len(calls) == 1  # not run again
    torch.testing.assert_close(cached, live)
    # log-probabilities at T=1 give the same tempered target as the logits
    logp, _, _, _ = kd_only._losses({"x": x, "y": y, "teacher_logits": F.log_softmax(logits, -1)})
    torch.testing.assert_close(logp, live)
    # other terms still run the teacher (for their hooked features only)
    both = DistillationModule(student, teacher, ALL_TERMS[:2])
    both._losses({"x": x, "y": y, "teacher_logits": logits})
    assert len(calls) == 2
    with pytest.raises(ValueError, match="cache_key"):
        DistillationModule(student, teacher, cache_key="")


class _Twice(nn.Module):
    """Runs its hidden layer twice (weight sharing): a hooked feature is then ambiguous."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(8, 8)
        self.out = nn.Linear(8, 4)

    def forward(self, x):
        return self.out(self.hidden(self.hidden(x)))


def test_a_hooked_module_that_runs_twice_warns():
    _, teacher = _conv_pair()
    module = DistillationModule(_Twice(), teacher, [{"kind": "rkd", "student": "hidden", "teacher": "2"}])
    with pytest.warns(UserWarning, match="'hidden' ran more than once"):
        module._losses((torch.randn(4, 8), torch.arange(4)))
