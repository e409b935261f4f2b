"""KD³ (https://arxiv.org/abs/2307.11469): the functional core, the web corruptions, KD3Module's contract details and
bad inputs, and the effect on a corrupted-MNIST "web" pool against plain KD."""

from __future__ import annotations

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
