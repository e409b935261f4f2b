"""KnowledgeDistillation regressions from issue 6 (§6 what a new user broke, §8 FSDP, the v2 contract)."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn import functional as F

from litmix.callbacks.knowledge_distillation import KnowledgeDistillation, _KDTerm
from litmix.data import split_batch
from litmix.functional.distillation import kd_loss
from litmix.testing import CountingTeacher, TinyClassifier, TinyDataModule, fit_tiny, make_trainer
from litmix.validation import MissingPathError


def make_teacher(seed: int = 1) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def test_infinite_temperature_is_refused_at_construction():
    with pytest.raises(ValueError, match=r"KnowledgeDistillation\(temperature=inf\): temperature must be a finite"):
        KnowledgeDistillation(make_teacher(), temperature=float("inf"))
    with pytest.raises(ValueError, match="finite"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), temperature=float("inf"))


def test_missing_teacher_path_names_the_argument(tmp_path):
    path = tmp_path / "nope" / "teacher.pt"
    with pytest.raises(
        MissingPathError, match=r"KnowledgeDistillation\(teacher='.*teacher.pt'\): teacher: no such"
    ) as err:
        KnowledgeDistillation(str(path))
    assert isinstance(err.value, FileNotFoundError)
    assert isinstance(err.value, ValueError)
    with pytest.raises(MissingPathError, match="teacher"):
        KnowledgeDistillation(path)  # os.PathLike accepted as well


def test_one_class_path_syntax(tmp_path):
    trainer = fit_tiny([], module=TinyClassifier(), max_steps=1)
    trainer.save_checkpoint(tmp_path / "t.ckpt")
    kd = KnowledgeDistillation(tmp_path / "t.ckpt", teacher_class="litmix.testing.TinyClassifier")
    assert isinstance(kd.teacher, TinyClassifier)
    with pytest.raises(ValueError, match=r"teacher_class='litmix.testing:TinyClassifier'\): use 'package.module"):
        KnowledgeDistillation(tmp_path / "t.ckpt", teacher_class="litmix.testing:TinyClassifier")


class InlineKD(TinyClassifier):
    """Reference: (1 - w) CE + w KD with the teacher run on inputs cast to its dtype, logits cast to float32."""

    def __init__(self, teacher: nn.Module, weight: float = 0.5, temperature: float = 2.0) -> None:
        super().__init__()
        self.teacher = [teacher]
        self.w, self.temperature = weight, temperature

    def training_step(self, batch, batch_idx):
        x, y, _ = split_batch(batch)
        s = self(x)
        teacher = self.teacher[0]
        dtype = next(teacher.parameters()).dtype
        with torch.no_grad():
            t = teacher(x.to(dtype)).float()
        return (1 - self.w) * F.cross_entropy(s, y) + self.w * kd_loss(s, t, temperature=self.temperature)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_teacher_in_another_dtype_is_cast(dtype):
    """Issue: 'mat1 and mat2 must have the same dtype' inside the first step. Now inputs are cast to the teacher."""
    teacher = make_teacher().to(dtype)
    pl.seed_everything(0)
    a = TinyClassifier()
    kd = KnowledgeDistillation(copy.deepcopy(teacher), weight=0.5, temperature=2.0)
    trainer = fit_tiny([kd], module=a, max_steps=4)
    assert kd.teacher[0].weight.dtype == dtype  # the teacher keeps its precision
    assert torch.isfinite(trainer.callback_metrics["kd/loss"])
    pl.seed_everything(0)
    b = InlineKD(copy.deepcopy(teacher))
    fit_tiny([], module=b, max_steps=4)
    for wa, wb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(wa, wb)


def test_teacher_on_the_meta_device_is_a_clear_error_at_setup():
    with torch.device("meta"):
        teacher = make_teacher()
    kd = KnowledgeDistillation(teacher)
    with pytest.raises(
        ValueError, match=r"KnowledgeDistillation\(teacher='Sequential'\): the teacher's '0.weight' is on the meta"
    ):
        fit_tiny([kd], max_steps=1)


class NaNTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = make_teacher()

    def forward(self, x):
        return self.inner(x) * float("nan")


def test_non_finite_kd_term_stops_the_run():
    kd = KnowledgeDistillation(NaNTeacher(), name="distil")
    with pytest.raises(
        FloatingPointError, match=r"KnowledgeDistillation\(name='distil'\).*distil/loss is nan at global step 0"
    ):
        fit_tiny([kd], max_steps=3)


class ChangeTemperature(Callback):
    def __init__(self, kd: KnowledgeDistillation) -> None:
        self.kd = kd

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.kd.temperature = 2.0


def test_changing_the_temperature_refills_the_cache():
    """The cache holds log-probabilities at one temperature; a new temperature must not reuse them."""
    results = {}
    for cache in (False, True):
        teacher = CountingTeacher(make_teacher())
        kd = KnowledgeDistillation(teacher, temperature=4.0, cache_teacher_outputs=cache)
        pl.seed_everything(0)
        module = TinyClassifier()
        fit_tiny([ChangeTemperature(kd), kd], module=module, max_epochs=3, max_steps=-1)
        results[cache] = (teacher.calls, [p.detach().clone() for p in module.parameters()])
    assert results[False][0] == 12
    assert results[True][0] == 8  # epoch 0 fills, epoch 1 refills at T=2, epoch 2 reuses
    for a, b in zip(results[False][1], results[True][1], strict=True):
        torch.testing.assert_close(a, b)


def test_agreement_is_the_epochs_exact_top1_agreement():
    student = TinyClassifier(lr=0.0)  # frozen student: the agreement over the epoch can be recomputed
    teacher = make_teacher(seed=3)
    kd = KnowledgeDistillation(teacher)
    dm = TinyDataModule()
    trainer = make_trainer(callbacks=[kd], max_epochs=1)
    trainer.fit(student, datamodule=dm)
    x = torch.stack([dm.dataset[i][0] for i in range(len(dm.dataset))])
    with torch.no_grad():
        expected = (student(x).argmax(-1) == teacher(x).argmax(-1)).float().mean()
    assert 0.0 < float(expected) < 1.0  # a case where the count matters
    assert float(trainer.callback_metrics["kd/agreement"]) == pytest.approx(float(expected))


def test_fused_term_matches_kd_loss_value_and_gradient():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(32, 10, generator=gen, dtype=torch.float64).float().requires_grad_(True)
    t = torch.randn(32, 10, generator=gen)
    for temp in (1.0, 3.0):
        ref = kd_loss(s, t, temperature=temp)
        (g_ref,) = torch.autograd.grad(ref * 0.7, s)
        ours = _KDTerm.apply(s, F.log_softmax(t / temp, dim=-1), temp)
        (g_ours,) = torch.autograd.grad(ours * 0.7, s)
        torch.testing.assert_close(ours, ref)
        torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="The strategy `fsdp` requires a GPU accelerator")
def test_fsdp_keeps_a_whole_teacher_per_device():
    """Allowed under FSDP: the teacher is outside the sharded module, whole on each device."""
    kd = KnowledgeDistillation(make_teacher())
    trainer = make_trainer(accelerator="gpu", devices=1, strategy="fsdp", callbacks=[kd], max_steps=3)
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule())
    assert kd.teacher[0].weight.device.type == "cuda"
    assert torch.isfinite(trainer.callback_metrics["kd/loss"])


class OddIndices(TinyDataModule):
    """Sample indices 1, 3, 5, ... (a Subset of an indexed dataset): the cache never becomes gap-free."""

    def train_dataloader(self):
        from torch.utils.data import DataLoader, Subset

        return DataLoader(Subset(self.dataset, list(range(1, 64, 2))), batch_size=8, shuffle=False)


@pytest.mark.parametrize("datamodule", [TinyDataModule, OddIndices])
def test_cache_with_and_without_gaps_matches_the_live_teacher(datamodule):
    counts, weights = {}, {}
    for cache in (False, True):
        teacher = CountingTeacher(make_teacher())
        pl.seed_everything(0)
        module = TinyClassifier()
        fit_tiny(
            [KnowledgeDistillation(teacher, cache_teacher_outputs=cache)],
            module=module,
            datamodule=datamodule(),
            max_epochs=3,
            max_steps=-1,
        )
        counts[cache], weights[cache] = teacher.calls, [p.detach().clone() for p in module.parameters()]
    assert counts == {False: 12, True: 4}  # 4 batches per epoch; only the first epoch runs the teacher
    for a, b in zip(weights[False], weights[True], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
