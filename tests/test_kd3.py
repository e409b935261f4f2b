"""KD³ (https://arxiv.org/abs/2307.11469): the functional core, the web corruptions, KD3Module's contract details and
bad inputs, and the effect on a corrupted-MNIST "web" pool against plain KD."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litmix.functional.corruptions import web_corrupt
from litmix.functional.distillation import kd_loss
from litmix.functional.kd3 import (
    classifier_alignment_loss,
    mix_distribution,
    select_instances,
    selected_kd_loss,
    teacher_weight_at,
    weighted_feature_loss,
)
from litmix.plugins.distillation_module import DistillationModule
from litmix.plugins.kd3_module import KD3Module
from litmix.testing import TinyDataModule, make_trainer


def _mlp(width, hidden=16, classes=4):
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, classes))


# ------------------------------------------------------------------------------------------------------------
# functional core


def test_selection_uses_the_combined_prediction_and_its_schedule():
    teacher = torch.tensor([[4.0, 0.0], [4.0, 0.0]])
    student = torch.tensor([[4.0, 0.0], [0.0, 4.0]])  # agrees on row 0, contradicts on row 1
    mask, conf = select_instances(student, teacher, threshold=0.9, teacher_weight=0.5)
    assert mask.tolist() == [True, False]
    assert conf[1] == pytest.approx(0.5)
    assert select_instances(student, teacher, threshold=0.9, teacher_weight=1.0)[0].tolist() == [True, True]
    assert [teacher_weight_at(p, 0.9, 0.3) for p in (0.0, 1.0)] == pytest.approx([0.9, 0.3])
    with pytest.raises(ValueError, match="threshold"):
        select_instances(student, teacher, threshold=1.5)


def test_selected_kd_is_kd_over_the_kept_rows_and_weights_are_confidences():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=gen), torch.randn(6, 5, generator=gen)
    mask = torch.tensor([True, False, True, True, False, False])
    assert selected_kd_loss(s, t, mask, 2.0) == pytest.approx(kd_loss(s[mask], t[mask], temperature=2.0).item())
    assert selected_kd_loss(s, t, torch.ones(6, dtype=torch.bool), 2.0) == pytest.approx(kd_loss(s, t, 2.0).item())
    none = selected_kd_loss(s.requires_grad_(), t, torch.zeros(6, dtype=torch.bool), 2.0)
    none.backward()  # a batch with nothing selected still has a graph (DDP needs every parameter used)
    assert none.item() == 0.0
    f_s, f_t = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    w = torch.tensor([0.5, 0.0, 1.0, 0.0, 0.0, 0.0])
    expected = (0.5 * F.mse_loss(f_s[0], f_t[0]) + F.mse_loss(f_s[2], f_t[2])) / 1.5
    assert weighted_feature_loss(f_s, f_t, w) == pytest.approx(expected.item())


def test_classifier_alignment_is_zero_exactly_at_the_teacher_classifier_seen_through_the_projector():
    gen = torch.Generator().manual_seed(1)
    w_t, b_t = torch.randn(4, 6, generator=gen), torch.randn(4, generator=gen)
    a, c = torch.randn(6, 3, generator=gen), torch.randn(6, generator=gen)
    w_s, b_s = (w_t @ a).requires_grad_(), (w_t @ c + b_t).requires_grad_()
    assert classifier_alignment_loss(w_s, b_s, w_t, b_t, a, c).item() == pytest.approx(0.0, abs=1e-10)
    f = torch.randn(5, 3, generator=gen)  # then the student's logits equal the teacher classifier on P(f)
    assert torch.allclose(f @ w_s.T + b_s, (f @ a.T + c) @ w_t.T + b_t, atol=1e-5)
    moved = classifier_alignment_loss(w_s + 0.1, b_s, w_t, b_t, a, c)
    assert moved.item() > 0
    with pytest.raises(ValueError, match="do not chain"):
        classifier_alignment_loss(w_s, b_s, w_t, b_t, a.T)


def test_mix_distribution_moves_statistics_and_keeps_content():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, 5, 5, generator=gen) * torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None, None]
    perm = torch.tensor([1, 0, 3, 2])
    assert torch.allclose(mix_distribution(x, perm, torch.ones(4)), x, atol=1e-4)
    y = mix_distribution(x, perm, torch.zeros(4))
    assert torch.allclose(y.std((2, 3), unbiased=False), x[perm].std((2, 3), unbiased=False), atol=1e-3)
    normalise = lambda v: (v - v.mean((2, 3), keepdim=True)) / v.std((2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(normalise(y), normalise(x), atol=1e-3)  # per-channel content unchanged


def test_web_corruption_is_deterministic_per_index_in_range_and_heavy():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(64, 1, 28, 28, generator=gen)
    idx = torch.arange(100, 164)
    before = x.clone()
    a = web_corrupt(x, idx, seed=7)
    assert torch.equal(x, before)  # the input is not modified
    b = torch.cat([web_corrupt(x[i : i + 10], idx[i : i + 10], seed=7) for i in range(0, 64, 10)])
    assert torch.equal(a, b)  # independent of the batching
    assert torch.equal(web_corrupt(x.flatten(1), idx, seed=7), a.flatten(1))
    assert not torch.equal(a, web_corrupt(x, idx, seed=8))
    assert a.min() >= 0
    assert a.max() <= 1
    assert (a - x).abs().mean() > 0.15
    assert torch.equal(web_corrupt(x, idx, severity=0.0), x)
    with pytest.raises(ValueError, match="square single-channel"):
        web_corrupt(torch.rand(4, 10), torch.arange(4))
    with pytest.raises(ValueError, match="severity"):
        web_corrupt(x, idx, severity=2.0)


# ------------------------------------------------------------------------------------------------------------
# KD3Module


def test_with_selection_and_alignment_off_the_loss_is_plain_kd():
    torch.manual_seed(0)
    teacher, student = _mlp(8, 32), _mlp(8)
    module = KD3Module(student, teacher, threshold=0.0, feature_weight=0.0, classifier_weight=0.0, mix_weight=0.0)
    x = torch.randn(16, 8)
    total, logged = module._losses(x)
    assert total.item() == pytest.approx(kd_loss(student(x), teacher(x), temperature=4.0).item(), rel=1e-5)
    assert logged[5].item() == 1.0  # every sample selected
    assert module.projector is None  # no unused parameters under DDP


def test_teacher_stays_frozen_in_eval_and_out_of_the_state():
    module, dm, _ = KD3Module.example()
    module.teacher.train()
    trainer = make_trainer(max_steps=3)
    trainer.fit(module, datamodule=dm)
    assert not module.teacher.training
    assert not any(p.requires_grad for p in module.teacher.parameters())
    assert all(k.startswith(("student.", "projector.")) for k in module.state_dict())
    assert 0.0 <= trainer.callback_metrics["kd3/selected"].item() <= 1.0
    assert trainer.callback_metrics["kd3/teacher_weight"].item() < 1.0  # moved towards the end weight


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"student": "net"}, TypeError, "student"),
        ({"teacher": 3}, TypeError, "teacher"),
        ({"student_classifier": "9"}, ValueError, "student_classifier"),
        ({"student_classifier": "1"}, ValueError, "student_classifier"),  # a ReLU, not a Linear
        ({"teacher_classifier": 2}, TypeError, "teacher_classifier"),
        ({"teacher": nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))}, ValueError, "cannot be matched"),
        ({"teacher": nn.Sequential(nn.ReLU())}, ValueError, "teacher_classifier"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"threshold": 1.2}, ValueError, "threshold"),
        ({"teacher_weight_end": float("nan")}, ValueError, "teacher_weight_end"),
        ({"min_keep": -0.1}, ValueError, "min_keep"),
        ({"feature_weight": -1.0}, ValueError, "feature_weight"),
        ({"mix_alpha": 0.0}, ValueError, "mix_alpha"),
        ({"mix_at": "nope"}, ValueError, "mix_at"),
        ({"optimizer": "rmsprop"}, ValueError, "optimizer"),
        ({"kd_weight": 0.0, "feature_weight": 0.0, "classifier_weight": 0.0, "mix_weight": 0.0}, ValueError, "nothing"),
    ],
)
def test_bad_arguments_are_named_before_compute(kwargs, error, named):
    args = {"student": _mlp(8), "teacher": _mlp(8, 32), **kwargs}
    with pytest.raises(error, match=named):
        KD3Module(**args)


def test_mix_at_a_hidden_layer_perturbs_that_layer():
    torch.manual_seed(0)
    module = KD3Module(_mlp(8), _mlp(8, 32), mix_at="0", mix_weight=1.0)
    make_trainer(max_steps=2).fit(module, datamodule=TinyDataModule())
    assert module.trainer.callback_metrics["kd3/contrast"].item() > 0


# ------------------------------------------------------------------------------------------------------------
# effect: a teacher trained on clean MNIST, students distilled on a heavily corrupted "web" pool


@pytest.fixture(scope="module")
def web_pool(shared_data):
    from litmix.datamodules.mnist import MNISTDataModule
    from litmix.datamodules.unlabeled_pool import UnlabeledPoolDataModule
    from litmix.functional.corruptions import corruption_params

    if not (shared_data / "mnist" / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("MNIST not found in the offline data")
    base = MNISTDataModule(str(shared_data / "mnist"), flatten=True, train_size=20_000, val_size=0, batch_size=256)
    # 10,000 clean labelled images train the teacher; the other 10,000 (labels hidden) are the web pool
    dm = UnlabeledPoolDataModule(base, num_labeled=10_000, include_labeled=False, pool_corruption=1.0, batch_size=256)
    dm.setup("fit")
    view = dm.labeled_dataset
    lx, ly = torch.stack([view[i][0] for i in range(len(view))]), view.labels
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(teacher.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        order = torch.randperm(len(ly), generator=gen)
        for i in range(0, len(ly), 128):
            b = order[i : i + 128]
            opt.zero_grad()
            F.cross_entropy(teacher(lx[b]), ly[b]).backward()
            opt.step()
    pool = dm.pool_dataset
    truth = base.full_train.dataset.tensors[1][pool.names]  # never shown to the students
    junk = corruption_params(pool.names, 0, 1.0, 28)[0][:, 4] > 0  # block-shuffled: no digit left
    tx, ty = base.test_dataset.dataset.tensors
    return dm, teacher.eval(), pool.inputs, truth, junk, tx[:2000], ty[:2000]


def _acc(model, x, y):
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_effect_kd3_on_a_corrupted_web_pool_against_plain_kd(web_pool, seed):
    """MNIST: teacher 784-256-256-10 trained on 10,000 clean labelled images (89.75 % on the first 2,000 test
    images); web pool = 10,000 other training images, labels hidden, corrupted at severity 1 (rotations up to
    ±120°, blur, inversions, noise, 25 % block-shuffled junk): the teacher is right on 18.4 % of it. Students
    784-32-10, 3 epochs of batch 256 on the pool: plain KD (DistillationModule, T = 4) vs KD3Module (defaults:
    threshold 0.4, teacher vote 1 -> 0.5, feature 0.1, classifier 0.1, MixDistribution 0.02).

    Measured clean test accuracy (seeds 0 / 1 / 2): plain KD 73.45 / 76.10 / 82.00 %, KD³ 71.85 / 77.50 /
    80.55 % (-1.6 / +1.4 / -1.45 points), KD³ selection only 74.15 / 79.45 / 81.15 % (+0.7 / +3.35 / -0.85).
    **KD³ does not beat plain KD here** (nor with a 16-wide student: -0.1 / -3.4 / -8.25; selection only -0.1 /
    -2.3 / +1.6); raw-torch runs of the same recipe with other shuffles gave +3.9 / +3.85 / +0.7 at width 16:
    within the seed-to-seed spread. Why: the teacher is confidently wrong on rotated and inverted digits, so
    confidence is a poor proxy for correctness under this shift. At the end of training KD³ keeps 48.2 / 48.0 /
    48.8 % of the pool; the teacher is right on 22.0 / 21.8 / 22.6 % of the kept samples (18.4 % of the pool)
    and 15.0 / 15.0 / 14.2 % of them are block-shuffled junk (25.2 % of the pool). Asserted (held on every seed):
    KD³ within 3 points of plain KD; the kept samples' teacher accuracy >= 1.1x the pool's; their junk share
    <= 0.65x the pool's."""
    from litmix.functional.kd3 import select_instances

    dm, teacher, web_x, web_y, junk, tx, ty = web_pool
    pl.seed_everything(seed, verbose=False)
    plain = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    kd = DistillationModule(plain, teacher, [{"kind": "kd", "temperature": 4.0}], task_loss=None)
    make_trainer(max_epochs=3).fit(kd, datamodule=dm)
    pl.seed_everything(seed, verbose=False)
    student = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
    make_trainer(max_epochs=3).fit(KD3Module(student, teacher), datamodule=dm)
    acc_kd, acc_kd3 = _acc(plain, tx, ty), _acc(student, tx, ty)
    with torch.no_grad():
        t_logits, s_logits = teacher(web_x), student(web_x)
    kept, _ = select_instances(s_logits, t_logits, threshold=0.4, teacher_weight=0.5)
    right = t_logits.argmax(-1) == web_y
    precision, base_rate = right[kept].float().mean().item(), right.float().mean().item()
    junk_kept, junk_all = junk[kept].float().mean().item(), junk.float().mean().item()
    print(
        f"seed {seed}: plain KD {acc_kd:.4f} KD3 {acc_kd3:.4f}; kept {kept.float().mean():.3f} of the pool, teacher "
        f"right on {precision:.3f} of them ({base_rate:.3f} overall), junk {junk_kept:.3f} ({junk_all:.3f} overall)"
    )
    assert acc_kd3 >= acc_kd - 0.03
    assert precision >= 1.1 * base_rate
    assert junk_kept <= 0.65 * junk_all
