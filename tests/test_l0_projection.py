"""L0Projection (TEDDY's weight part, https://arxiv.org/abs/2402.01261): projection after every step, resume,
bad inputs, and the effect on Cora with TeddyEdgeSparsify.

TEDDY's distillation regulariser ``CE + lambda * KL(softmax(teacher) || log_softmax(student))`` is not a new class:
:class:`~litmix.callbacks.KnowledgeDistillation` with ``temperature=1`` adds ``weight * KL`` and scales the task loss
by ``1 - weight``, i.e. ``(CE + lambda * KL) / (1 + lambda)`` for ``weight = lambda / (1 + lambda)`` (the same
minimiser; the constant factor is a learning-rate rescale). Compose ``KnowledgeDistillation(teacher, temperature=1,
weight=lambda / (1 + lambda))`` with ``L0Projection`` in one Trainer.
"""

from __future__ import annotations

import copy
import itertools

import lightning.pytorch as pl
import pytest
import torch
from torch_geometric.data import Data

from litmix.callbacks import L0Projection
from litmix.graph_transforms import TeddyEdgeSparsify
from litmix.testing import TinyClassifier, fit_tiny, make_trainer


def test_every_step_projects_to_the_l0_ball_and_weights_may_regrow():
    torch.manual_seed(0)
    module = TinyClassifier()
    cb = L0Projection(sparsity=0.6)
    supports = []

    class Probe(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            w = torch.cat([p.detach().flatten() for n, p in pl_module.named_parameters() if n.endswith("weight")])
            supports.append(w != 0)

    fit_tiny([cb, Probe()], module=module, max_steps=6)
    assert cb.projections == 6
    total = supports[0].numel()
    for s in supports:  # exactly round(0.6 * P) zeros after every step
        assert int((~s).sum()) == round(0.6 * total)
    # projected GD: gradients are not masked, so the support changes between steps
    assert any(not torch.equal(a, b) for a, b in itertools.pairwise(supports))


def test_state_roundtrip_and_layer_scope():
    cb = L0Projection(sparsity=0.5, scope="layer")
    fit_tiny([cb], max_steps=2)
    for _, p, _m in cb.engine.parameters():
        assert int((p == 0).sum()) == round(0.5 * p.numel())
    state = cb.state_dict()
    other = L0Projection(sparsity=0.5, scope="layer")
    other.load_state_dict(state)
    assert other.projections == 2


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"sparsity": 1.0}, ValueError, "sparsity"),
        ({"sparsity": float("nan")}, ValueError, "sparsity"),
        ({"sparsity": "0.5"}, TypeError, "sparsity"),
        ({"scope": "row"}, ValueError, "scope"),
        ({"parameter_names": []}, ValueError, "parameter_names"),
        ({"parameter_names": "net.0.weight"}, TypeError, "parameter_names"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        L0Projection(**kwargs)


def test_unknown_parameter_fails_at_setup():
    with pytest.raises(ValueError, match="unknown parameters"):
        fit_tiny([L0Projection(0.5, parameter_names=["net.9.weight"])])


# ----------------------------------------------------------------------------- effect on Cora


class _GCN(pl.LightningModule):
    """2-layer GCN (64 hidden, dropout 0.5) trained full batch on one graph (one step per epoch)."""

    def __init__(self, data: Data, hidden: int = 64) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.data = data
        self.c1, self.c2 = GCNConv(data.num_features, hidden), GCNConv(hidden, 7)

    def forward(self, x, ei):
        x = torch.nn.functional.dropout(x, 0.5, self.training)
        x = self.c1(x, ei).relu()
        x = torch.nn.functional.dropout(x, 0.5, self.training)
        return self.c2(x, ei)

    def training_step(self, batch, batch_idx):
        d = self.data
        out = self(d.x, d.edge_index)
        return torch.nn.functional.cross_entropy(out[d.train_mask], d.y[d.train_mask])

    def train_dataloader(self):
        return torch.utils.data.DataLoader([0], batch_size=1)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01, weight_decay=5e-4)

    def test_accuracy(self) -> float:
        self.eval()
        d = self.data
        with torch.no_grad():
            pred = self(d.x, d.edge_index).argmax(-1)
        return float((pred[d.test_mask] == d.y[d.test_mask]).float().mean())


def _accuracy(data: Data, seed: int, weight_sparsity: float | None, epochs: int = 100) -> float:
    torch.manual_seed(seed)
    module = _GCN(data)
    callbacks = [L0Projection(weight_sparsity)] if weight_sparsity is not None else []
    make_trainer(max_epochs=epochs, callbacks=callbacks).fit(module)
    if weight_sparsity is not None:
        w = torch.cat([module.c1.lin.weight.flatten(), module.c2.lin.weight.flatten()])
        assert int((w == 0).sum()) == round(weight_sparsity * w.numel())
    return module.test_accuracy()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0])  # seeds 1 and 2 measured too (below); one seed keeps CI within budget
def test_teddy_edges_with_l0_weights_on_cora(cora128, seed):
    """Half of the undirected edges removed by TEDDY and 80 % of the GCN weights zeroed by L0Projection.

    2-layer GCN (64 hidden, 100 epochs, Adam 0.01, wd 5e-4, public split, 128-d projected features). Measured test
    accuracy on seeds 0 / 1 / 2: dense (full graph, no projection) 0.746 / 0.726 / 0.735; TEDDY edges + L0
    weights 0.634 / 0.629 / 0.632; reversed ordering + L0 weights 0.586 / 0.562 / 0.566 (TEDDY - reversed
    >= 0.048, dense - TEDDY <= 0.112; TEDDY edges alone, tests/test_teddy.py: 0.625 / 0.630 / 0.625, so the 80 %
    weight projection costs nothing here: the gap to dense is the halved graph). Asserted with about half the
    measured margins: TEDDY >= reversed + 0.025 and TEDDY >= dense - 0.15.
    """
    dense = _accuracy(cora128, seed, None)
    teddy = _accuracy(TeddyEdgeSparsify(0.5)(copy.copy(cora128)), seed, 0.8)
    reverse = _accuracy(TeddyEdgeSparsify(0.5, reverse=True)(copy.copy(cora128)), seed, 0.8)
    assert teddy >= reverse + 0.025, (seed, teddy, reverse)
    assert teddy >= dense - 0.15, (seed, teddy, dense)
