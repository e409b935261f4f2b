"""Effect tests of quantization on digits: QAT vs fp32 and post-training rounding, the Pareto sweep, and a
quantized, distilled, pruned student (QuantizationAwareTraining + KnowledgeDistillation + GradualPruning)."""

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from litmix.callbacks import GradualPruning, KnowledgeDistillation, QuantizationAwareTraining
from litmix.data import split_batch
from litmix.functional.quantization import per_channel_scale
from litmix.functional.sparsity import sparsity_report
from litmix.testing import TinyClassifier, TinyDataModule, assert_resume_matches, make_trainer


class DigitsMLP(pl.LightningModule):
    """``64 -> width -> width -> 10`` ReLU MLP (three quantizable layers: first, one inner, last)."""

    def __init__(self, width: int = 64, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
        )
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = split_batch(batch)
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def digits_tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train and validation tensors of the stratified 70/30 digits split."""
    from litmix.datamodules import DigitsDataModule

    dm = DigitsDataModule(seed=seed)
    dm.setup("fit")
    full = dm.full_dataset.dataset.tensors  # type: ignore[attr-defined]
    tr, va = dm.train_dataset.indices, dm.val_dataset.indices  # type: ignore[attr-defined]
    return full[0][tr], full[1][tr], full[0][va], full[1][va]


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def fit_digits(width: int, seed: int, epochs: int, callbacks: list | None = None) -> DigitsMLP:
    from litmix.datamodules import DigitsDataModule

    pl.seed_everything(seed, verbose=False)
    model = DigitsMLP(width)
    make_trainer(max_epochs=epochs, callbacks=callbacks or []).fit(model, datamodule=DigitsDataModule(seed=seed))
    return model


EPOCHS = 10


@pytest.fixture(scope="module")
def sweep():
    """widths {16, 64} x bits {2, 4, 32 (fp32)} on digits, seed 0, 10 epochs (first/last layers 8-bit)."""
    from litmix.datamodules import DigitsDataModule
    from litmix.quantization_pareto import ParetoSweep

    sweep = ParetoSweep(
        lambda width: DigitsMLP(width),
        lambda seed: DigitsDataModule(seed=seed),
        widths=[16, 64],
        bits=[2, 4, 32],
        seeds=[0],
        max_epochs=EPOCHS,
        keep_models=True,
    )
    sweep.run()
    return sweep


def _point(sweep, width, bits):
    return next(p for p in sweep.points if (p.width, p.bits) == (width, bits))


@pytest.mark.slow
def test_a_4bit_model_pareto_dominates_an_fp32_model(sweep):
    """Catalogue S15: some 4-bit model has lower-or-equal bit-operations and higher accuracy than some fp32 model.

    Measured (seeds 0/1/2, 10 epochs): 4-bit width 64 (3.69e5 bit-ops) 0.9499/0.9573/0.9685 vs fp32 width 16
    (1.47e6 bit-ops) 0.8942/0.8868/0.9314, i.e. +5.6/+7.0/+3.7 points at 1/4 of the cost.
    """
    quantized = [p for p in sweep.points if p.bits == 4]
    floats = [p for p in sweep.points if p.bits == 32]
    pairs = [(q, f) for q in quantized for f in floats if q.bit_operations <= f.bit_operations]
    best = max(q.accuracy - f.accuracy for q, f in pairs)
    assert best >= 0.02, [(p.width, p.bits, p.bit_operations, p.accuracy) for p in sweep.points]
    front = [(p.width, p.bits) for p in sweep.points if p.pareto]
    assert (64, 4) in front


@pytest.mark.slow
def test_qat_4bit_is_within_two_points_of_fp32_and_beats_post_training_rounding_at_2bit(sweep):
    """QAT 4-bit (8-bit first/last), width 64, vs fp32: measured +0.18/+0.55/-0.18 points (seeds 0/1/2).

    Post-training rounding of the fp32 model (bounds calibrated on the training set) vs QAT, width 64:
    2-bit 0.9202/0.9239/0.9314 vs QAT 0.9388/0.9462/0.9536 (QAT +1.9/+2.2/+2.2 points); at 4 bits the gap does
    not reproduce on digits (PTQ 0.9462/0.9536/0.9685 vs QAT 0.9499/0.9573/0.9685: 0 to 0.4 points), so only the
    2-bit gap is asserted.
    """
    fp32, qat4, qat2 = _point(sweep, 64, 32), _point(sweep, 64, 4), _point(sweep, 64, 2)
    assert qat4.accuracy >= fp32.accuracy - 0.02
    x_train, _, x_val, y_val = digits_tensors(0)
    model = sweep.models[(64, 32, 0)]
    ptq = QuantizationAwareTraining(bits_w=2, bits_a=2, first_last_bits=8)
    ptq.calibrate(model, [x_train[i : i + 64] for i in range(0, len(x_train), 64)])
    ptq_acc = accuracy(model, x_val, y_val)
    ptq.detach()
    assert accuracy(model, x_val, y_val) == pytest.approx(fp32.accuracy)  # detached: the fp32 model again
    assert qat2.accuracy >= ptq_acc + 0.01


@pytest.mark.slow
def test_quantized_distilled_pruned_student_on_digits(sweep):
    _, _, x_val, y_val = digits_tensors(0)
    teacher = sweep.models[(64, 32, 0)]
    qat = QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=8)
    prune = GradualPruning(target_sparsity=0.5, end_fraction=0.5, every_n_steps=5)
    kd = KnowledgeDistillation(teacher.net, temperature=2.0, weight=0.5)
    student = fit_digits(32, seed=0, epochs=10, callbacks=[qat, kd, prune])
    # pruned weights stay exactly zero, at the target sparsity
    assert abs(sparsity_report(student)["global"] - 0.5) < 0.01
    masks = {n: (p != 0) for n, p in student.named_parameters() if n.endswith("weight")}
    # quantized weights lie on the per-channel grid, zeros stay zero codes
    exported = qat.export(student)
    restored = QuantizationAwareTraining.load_export(exported)
    for name, (bits_w, _) in qat.layer_bits_used().items():
        w = student.get_submodule(name).weight.detach()
        q = restored[f"{name}.weight"]
        scale = per_channel_scale(w, bits_w)
        codes = q / scale
        assert torch.allclose(codes, codes.round(), atol=1e-4)
        assert codes.abs().max() <= 2 ** (bits_w - 1) - 1 + 1e-4
        assert (q[~masks[f"{name}.weight"]] == 0).all()
    # the quantized (4-bit inner, 8-bit first/last), distilled, 50 %-pruned 64-32-32-10 student still classifies
    # digits: measured 0.9109/0.8998/0.9332 (seeds 0/1/2; teacher fp32 width 64 0.9481/0.9518/0.9703, plain fp32
    # width-32 student 0.9425/0.9369/0.9388)
    qat.attach(student)
    acc = accuracy(student, x_val, y_val)
    qat.detach()
    assert acc > 0.85


def test_resume_with_quantization_distillation_and_pruning(tmp_path):
    torch.manual_seed(1)
    teacher = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))

    def callbacks():
        return [
            QuantizationAwareTraining(bits_w=4, bits_a=4, first_last_bits=None, calibration_steps=2),
            KnowledgeDistillation(teacher, temperature=2.0, weight=0.5),
            GradualPruning(target_sparsity=0.5, end_fraction=0.5, every_n_steps=1),
        ]

    full, _ = assert_resume_matches(callbacks, TinyClassifier, TinyDataModule, tmp_path, atol=1e-6)
    assert abs(sparsity_report(full.lightning_module)["global"] - 0.5) < 0.01
