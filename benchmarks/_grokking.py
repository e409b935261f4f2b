"""One grokking run on modular addition, shared by ``benchmarks/grokking.py`` (the sweep) and
``tests/test_grokking.py`` (the effect test, which imports this file by path).

See ``benchmarks/grokking.py`` for the setting and the papers.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from litmix.datamodules import ModularArithmeticDataModule
from litmix.functional.lazy_rich import feature_gram, kernel_alignment, label_kernel, weight_movement


def grokking_run(
    p: int, train_fraction: float, init_scale: float, seed: int, max_steps: int, every: int = 25
) -> dict[str, Any]:
    """Full-batch AdamW (lr 1e-2, weight decay 1) on ``(a + b) mod p``, ReLU MLP (width 128) over concatenated
    one-hot inputs whose initial weights are multiplied by ``init_scale``, measured every ``every`` steps.

    Returns the first measured steps with train accuracy >= 0.99 (``fit``) and test accuracy >= 0.9 (``grok``),
    the test accuracy, kernel alignment and relative weight movement at the fit step, the alignment at the grok
    step (None where not reached) and the CPU seconds of the run (``cpu_s``).
    """
    dm = ModularArithmeticDataModule(p=p, train_fraction=train_fraction, batch_size=None, seed=seed)
    dm.setup()
    x = nn.functional.one_hot(dm.tokens, p).flatten(1).float()
    xtr, ytr, xte, yte = x[dm.train_indices], dm.labels[dm.train_indices], x[dm.val_indices], dm.labels[dm.val_indices]
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(2 * p, 128), nn.ReLU(), nn.Linear(128, p))
    with torch.no_grad():
        for param in net.parameters():
            param.mul_(init_scale)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=1.0)
    init = {k: v.detach().clone() for k, v in net.named_parameters()}
    probe = torch.arange(0, len(xtr), max(1, len(xtr) // 256))
    target = label_kernel(ytr[probe], p)
    out: dict[str, Any] = dict.fromkeys(("fit", "grok", "test_at_fit", "align_at_fit", "align_at_grok", "move_at_fit"))
    start = time.process_time()
    for step in range(1, max_steps + 1):
        loss = nn.functional.cross_entropy(net(xtr), ytr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % every:
            continue
        with torch.no_grad():
            train_acc = float((net(xtr).argmax(1) == ytr).float().mean())
            test_acc = float((net(xte).argmax(1) == yte).float().mean())
            align = kernel_alignment(feature_gram(net[1](net[0](xtr[probe]))), target)
        if out["fit"] is None and train_acc >= 0.99:
            move = weight_movement(dict(net.named_parameters()), init)
            out.update(fit=step, test_at_fit=test_acc, align_at_fit=align, move_at_fit=move)
        if test_acc >= 0.9:
            out.update(grok=step, align_at_grok=align)
            break
    out["cpu_s"] = time.process_time() - start
    return out
