"""G-ACIL (arXiv 2403.15706): the analytic head equals joint ridge regression whatever the phase split and the
number of DDP ranks; class-incremental digits in 5 phases of 2 classes without forgetting; argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litmix.functional.analytic_cil import AnalyticClassifier, ridge_solve, ridge_statistics, woodbury_update
from litmix.plugins.analytic_cil import AnalyticCILModule
from litmix.testing import make_trainer

PHASES = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def _blobs(n=120, d=6, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(classes, d, generator=gen, dtype=torch.float64)[y] + torch.randn(n, d, generator=gen).double()
    return x, y


def _rel(a, b):
    """Largest absolute difference relative to the largest entry of ``b``."""
    return float((a - b).abs().max() / b.abs().max())


def _joint(x, y, classes, gamma):
    xtx, xty = ridge_statistics(x, y, classes)
    return ridge_solve(xtx, xty, gamma)


def test_recursive_update_equals_joint_ridge_for_any_split_in_float64():
    x, y = _blobs()
    joint = _joint(x, y, 5, 0.1)
    one = AnalyticClassifier(6, gamma=0.1).update(x, y)
    five = AnalyticClassifier(6, gamma=0.1)
    for c in range(5):  # one class per phase: the head widens every phase
        five.update(x[y == c], y[y == c])
    assert five.num_classes == one.num_classes == 5
    # float64 rounding only (one 120-sample batch inverts a rank-6 120 x 120 Woodbury matrix: ~1e-9)
    assert _rel(one.weight, joint) < 1e-8
    assert _rel(five.weight, joint) < 1e-10
    assert _rel(five.R, torch.linalg.inv(x.T @ x + 0.1 * torch.eye(6, dtype=torch.float64))) < 1e-10
    # a recurring class in a later phase with new samples (generalised CIL) is absorbed as well
    r, w = torch.eye(6, dtype=torch.float64) / 0.1, torch.zeros(6, 5, dtype=torch.float64)
    onehot = nn.functional.one_hot(y, 5).double()
    for part in (slice(0, 50), slice(50, 51), slice(51, 120)):
        r, w = woodbury_update(r, w, x[part], onehot[part])
    assert _rel(w, joint) < 1e-8
    # negative check: feeding a phase twice is a different (duplicated) multiset
    twice = AnalyticClassifier(6, gamma=0.1).update(x, y).update(x[:30], y[:30])
    assert _rel(twice.weight, joint) > 1e-3


def _loader(x, y, batch_size=16):
    return DataLoader(TensorDataset(x.float(), y, torch.arange(len(y))), batch_size=batch_size, shuffle=False)


def _module(d=6, classes=5, buffer_size=0, seed=0):
    return AnalyticCILModule(nn.Identity(), in_features=d, num_classes=classes, buffer_size=buffer_size, seed=seed)


def _fit_phases(module, x, y, phases):
    for classes in phases:
        keep = torch.isin(y, torch.tensor(classes))
        make_trainer(max_epochs=1).fit(module, train_dataloaders=_loader(x[keep], y[keep]))
    return module


def test_module_equals_joint_ridge_and_one_phase_equals_five():
    x, y = _blobs()
    one = _fit_phases(_module(buffer_size=12), x, y, [tuple(range(5))])
    five = _fit_phases(_module(buffer_size=12), x, y, [(c,) for c in range(5)])
    feats = one.features(x.float())  # the module reads float32 batches
    joint = _joint(feats, y, 5, 0.1)
    assert torch.allclose(one.weight, joint, atol=1e-10, rtol=0)
    assert torch.allclose(five.weight, one.weight, atol=1e-10, rtol=0)
    assert torch.allclose(five.xtx, one.xtx, atol=1e-10)
    assert torch.equal(five.seen, one.seen)
    assert int(five.samples) == int(one.samples) == 120
    # float32 statistics and solve: the same head up to float32 rounding (measured 1.1e-6 relative)
    single = AnalyticCILModule(nn.Identity(), in_features=6, num_classes=5, buffer_size=12, dtype="float32")
    _fit_phases(single, x, y, [(0, 1), (2, 3, 4)])
    assert single.weight.dtype == torch.float32
    assert _rel(single.weight.double(), one.weight) < 1e-4
    assert torch.equal(single(x.float()).argmax(-1), one(x.float()).argmax(-1))
    # classes not seen yet are masked out of the logits
    first = _fit_phases(_module(), x, y, [(0, 1)])
    assert set(first(x.float()).argmax(-1).tolist()) <= {0, 1}


@pytest.mark.ddp
def test_two_ranks_give_the_one_process_head():
    x, y = _blobs(n=120)
    single = _fit_phases(_module(buffer_size=12), x, y, [(0, 1, 2), (3, 4)])
    double = _module(buffer_size=12)
    for classes in [(0, 1, 2), (3, 4)]:  # 72 and 48 samples: divisible by 2, no DistributedSampler padding
        keep = torch.isin(y, torch.tensor(classes))
        trainer = make_trainer(max_epochs=1, devices=2, strategy="ddp_fork")
        trainer.fit(double, train_dataloaders=_loader(x[keep], y[keep]))
    assert int(double.samples) == 120
    assert torch.allclose(double.xtx, single.xtx, atol=1e-10)
    assert torch.allclose(double.weight, single.weight, atol=1e-10, rtol=0)


def test_recurring_classes_with_new_samples_generalised_cil():
    """G-ACIL's generalised setting: a class may come back in a later phase with new (disjoint) samples."""
    x, y = _blobs()
    phases = [(0, 1, 2), (3,), (1, 4), (0, 2)]
    owner = torch.zeros(len(y), dtype=torch.long)  # which phase gets each sample: its class's k-th appearance
    for c in range(5):
        where = [p for p, classes in enumerate(phases) if c in classes]
        idx = (y == c).nonzero().flatten()
        owner[idx] = torch.tensor(where)[torch.arange(len(idx)) % len(where)]
    module = _module(buffer_size=12)
    for p in range(len(phases)):
        make_trainer(max_epochs=1).fit(module, train_dataloaders=_loader(x[owner == p], y[owner == p]))
    joint = _fit_phases(_module(buffer_size=12), x, y, [tuple(range(5))])
    assert int(module.samples) == 120
    assert torch.allclose(module.weight, joint.weight, atol=1e-10, rtol=0)


def test_checkpoint_in_the_middle_of_a_phase_carries_the_unsolved_statistics(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    x, y = _blobs()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    trainer = make_trainer(max_steps=3, callbacks=[ckpt], enable_checkpointing=True)
    trainer.fit(_module(buffer_size=12), train_dataloaders=_loader(x, y))  # 3 of 8 batches, then stopped
    checkpoint = torch.load(next(tmp_path.glob("*.ckpt")), weights_only=False)
    assert int(checkpoint["state_dict"]["samples"]) == 0
    assert int(checkpoint["litmix"]["pending"]["samples"]) == 48
    restored = _module(buffer_size=12)
    restored.on_load_checkpoint(checkpoint)
    expected, _ = ridge_statistics(restored.features(x[:48].float()), y[:48], 5)
    assert torch.allclose(restored._pending["xtx"], expected, atol=1e-10)


def test_bad_arguments_are_named_before_compute():
    with pytest.raises(ValueError, match="gamma"):
        AnalyticClassifier(4, gamma=0.0)
    with pytest.raises(ValueError, match="gamma"):
        AnalyticCILModule(nn.Identity(), in_features=4, num_classes=3, gamma=-1.0)
    with pytest.raises(ValueError, match="num_classes"):
        AnalyticCILModule(nn.Identity(), in_features=4, num_classes=1)
    with pytest.raises(TypeError, match="backbone"):
        AnalyticCILModule("resnet", in_features=4, num_classes=3)
    with pytest.raises(ValueError, match="in_features=4"):
        AnalyticClassifier(4).update(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="do not match"):
        AnalyticClassifier(4).update(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))
    module = _module(d=4, classes=3)
    x = torch.zeros(8, 5)
    with pytest.raises(ValueError, match="in_features=4"):
        make_trainer(max_epochs=1).fit(module, train_dataloaders=_loader(x, torch.zeros(8, dtype=torch.long)))
    with pytest.raises(ValueError, match="labels must be in"):
        make_trainer(max_epochs=1).fit(module, train_dataloaders=_loader(torch.zeros(8, 4), torch.full((8,), 3)))
    assert int(module.samples) == 0
    assert not module._pending


# ------------------------------------------------------------------------------------------------------------
# effect: digits, 5 phases of 2 classes, backbone trained on phase 1 only


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x / 16, y, test_size=0.3, stratify=y, random_state=0)
    f = torch.float32
    return torch.tensor(xtr, dtype=f), torch.tensor(ytr), torch.tensor(xte, dtype=f), torch.tensor(yte)


def _backbone(xtr, ytr, seed):
    torch.manual_seed(seed)
    keep = torch.isin(ytr, torch.tensor(PHASES[0]))
    xs, ys = xtr[keep], ytr[keep]
    backbone = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
    head = nn.Linear(128, 10)
    opt = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(100):
        idx = torch.randint(0, len(ys), (64,))
        loss = nn.functional.cross_entropy(head(backbone(xs[idx])), ys[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return backbone.requires_grad_(False).eval()


def _naive_head(ftr, ytr, seed, epochs=10):
    """A linear head fine-tuned with SGD phase by phase on the same frozen features (no exemplars)."""
    torch.manual_seed(seed)
    head = nn.Linear(ftr.shape[1], 10)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    for classes in PHASES:
        keep = torch.isin(ytr, torch.tensor(classes))
        fi, yi = ftr[keep], ytr[keep]
        for _ in range(epochs):
            perm = torch.randperm(len(yi))
            for s in range(0, len(yi), 64):
                b = perm[s : s + 64]
                loss = nn.functional.cross_entropy(head(fi[b]), yi[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return head


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_five_phases_of_two_digits_forget_nothing(digits, seed):
    """Measured (backbone 64-128-128 on digits 0/1 only, expansion 1024, gamma 0.1): 5-phase head accuracy on
    all 10 classes 0.9407 / 0.9407 / 0.9481 (seeds 0/1/2) = the joint head's; naive SGD head 0.104 / 0.113 / 0.100."""
    xtr, ytr, xte, yte = digits
    backbone = _backbone(xtr, ytr, seed)
    module = AnalyticCILModule(backbone, in_features=128, num_classes=10, buffer_size=1024, seed=seed)
    accs = []
    for classes in PHASES:
        keep = torch.isin(ytr, torch.tensor(classes))
        trainer = make_trainer(max_epochs=1)
        trainer.fit(module, train_dataloaders=_loader(xtr[keep], ytr[keep], batch_size=64))
        accs.append(float((module(xte).argmax(-1) == yte).float().mean()))
    joint = AnalyticCILModule(backbone, in_features=128, num_classes=10, buffer_size=1024, seed=seed)
    make_trainer(max_epochs=1).fit(joint, train_dataloaders=_loader(xtr, ytr, batch_size=64))
    assert torch.allclose(module.weight, joint.weight, atol=1e-8 * float(joint.weight.abs().max()), rtol=0)
    final = accs[-1]
    joint_acc = float((joint(xte).argmax(-1) == yte).float().mean())
    assert final == joint_acc
    with torch.no_grad():
        ftr, fte = backbone(xtr), backbone(xte)
    naive = _naive_head(ftr, ytr, seed)
    naive_acc = float((naive(fte).argmax(-1) == yte).float().mean())
    print(f"seed {seed}: phases {[round(a, 4) for a in accs]} joint {joint_acc:.4f} naive {naive_acc:.4f}")
    assert final > 0.92
    assert naive_acc < 0.2
    assert final - naive_acc > 0.7
