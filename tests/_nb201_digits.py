"""Test helpers shared by the NB201 supernet ranking tests (tests/test_supernet.py, tests/test_gm_nas.py).

The stand-alone "truth" of the effect tests: 12 random NB201 cells of ``random.Random(seed)``, each trained alone
on 400 digits images (catalogue §0.6 recipe, shortened: C=8, N=1, light reductions) and scored on the digits
validation split.
"""

from __future__ import annotations

import random

import torch

from litmix.datamodules.digits import DigitsDataModule
from litmix.nas.nb201 import all_codes
from litmix.nas.supernet import NB201Supernet


def digits_tensors(ds):
    """Stack a digits data set into ``(images, labels)`` tensors."""
    xs, ys = zip(*[(ds[i][0], ds[i][1]) for i in range(len(ds))], strict=True)
    return torch.stack(xs), torch.tensor(ys)


def train_alone(code, xtr, ytr, xva, yva, seed, epochs=5):
    """Stand-alone validation accuracy of one cell (C=8, N=1, light reductions, SGD + one-cycle, batch 64)."""
    torch.manual_seed(seed)
    net = NB201Supernet(C=8, N=1, in_channels=1, reduction="light")
    net.set_active(code)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 0.1, total_steps=epochs * ((len(xtr) + 63) // 64))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(0, len(xtr), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        return float((net(xva).argmax(-1) == yva).float().mean())


def standalone_truth(seed, cells=12):
    """``(dm, codes, truth)``: the 400-image digits data module (set up), ``cells`` random codes and their
    stand-alone accuracies."""
    dm = DigitsDataModule(batch_size=64, flatten=False, train_size=400, seed=0)
    dm.setup("fit")
    xtr, ytr = digits_tensors(dm.train_dataset)
    xva, yva = digits_tensors(dm.val_dataset)
    codes = random.Random(seed).sample(all_codes(), cells)
    truth = [train_alone(c, xtr, ytr, xva, yva, seed) for c in codes]
    return dm, codes, truth
