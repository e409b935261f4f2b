"""GraphToMLPDistillModule (GLNN): GCN -> MLP on Cora / CiteSeer, the teacher kept out of checkpoints, resume,
2-rank DDP equal to 1 rank, and bad arguments named before compute."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Data
from torch_geometric.nn.conv.gcn_conv import gcn_norm

from litmix.datamodules import GraphDataModule
from litmix.datamodules.graph import _tiny_graph
from litmix.plugins import GraphToMLPDistillModule
from litmix.plugins.graph_to_mlp import _TinyGCNTeacher
from litmix.testing import assert_resume_matches, make_trainer

EPOCHS, HIDDEN = 60, 64


class _SpMM(torch.autograd.Function):
    """``a @ b`` for a constant sparse CSR ``a`` and a dense ``b``; the backward uses ``aᵀ`` (built once, cached)."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.a = a
        return torch.sparse.mm(a, b)

    @staticmethod
    def backward(ctx, grad):
        a = ctx.a
        if getattr(a, "_transposed", None) is None:
            a._transposed = a.to_dense().t().to_sparse_csr()
        return None, torch.sparse.mm(a._transposed, grad)


class _SparseLinear(nn.Linear):
    """``nn.Linear`` that also takes sparse CSR features (Planetoid's bag-of-words are ~1 % non-zero)."""

    def forward(self, x):
        if x.layout == torch.sparse_csr:
            return _SpMM.apply(x, self.weight.t()) + self.bias
        return super().forward(x)


class _GCN(nn.Module):
    """Kipf & Welling's 2-layer GCN, ``Â relu(Â X W1) W2`` with ``Â = gcn_norm(A + I)`` built once from the edges."""

    def __init__(self, features, hidden, classes):
        super().__init__()
        self.lin1, self.lin2 = _SparseLinear(features, hidden), nn.Linear(hidden, classes)
        self._adj = None

    def forward(self, x, edge_index):
        if self._adj is None:
            ei, w = gcn_norm(edge_index, num_nodes=x.shape[0], add_self_loops=True)
            n = x.shape[0]
            self._adj = torch.sparse_coo_tensor(ei.flip(0), w, (n, n)).coalesce().to_sparse_csr()
        h = F.dropout(F.relu(_SpMM.apply(self._adj, self.lin1(x))), 0.5, self.training)
        return _SpMM.apply(self._adj, self.lin2(h))


def _mlp(features, classes, hidden=HIDDEN, dropout=0.6):
    """GLNN's student: Linear -> ReLU -> Dropout -> Linear (no input dropout)."""
    return nn.Sequential(_SparseLinear(features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))


def _fit_plain(model, forward, y, train, epochs, wd):
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=wd)
    for _ in range(epochs):
        model.train()
        opt.zero_grad()
        F.cross_entropy(forward(model)[train], y[train]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return forward(model)


def _acc(out, y, index):
    return float((out[index].argmax(-1) == y[index]).float().mean())


@pytest.fixture(scope="module")
def planetoid_results(planetoid_root):
    """Test accuracy of a GCN teacher, an MLP alone and the GLNN student, per data set and seed (public split).

    The graph is served by GraphDataModule with the features as a sparse tensor (the same values; the models'
    first layer multiplies sparse x dense), which keeps 18 trainings of 60 full-batch epochs within seconds.
    """
    results = {}
    for name in ("Cora", "CiteSeer"):
        dense = GraphDataModule(planetoid_root, name=name)
        dense.prepare_data()
        dense.setup("fit")
        graph = dense.graph
        data = Data(**{**graph.to_dict(), "x": graph.x.to_sparse_csr()})
        dm = GraphDataModule(None, data=data)
        dm.setup("fit")
        x, edge_index, y = data.x, data.edge_index, data.y
        train, test = dm.train_index, dm.test_index
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            gcn = _GCN(dm.num_features, HIDDEN, dm.num_classes)
            teacher_out = _fit_plain(gcn, lambda m, x=x, ei=edge_index: m(x, ei), y, train, EPOCHS, 5e-4)
            torch.manual_seed(seed)
            mlp = _mlp(dm.num_features, dm.num_classes)
            mlp_out = _fit_plain(mlp, lambda m, x=x: m(x), y, train, EPOCHS, 5e-3)
            torch.manual_seed(seed)
            student = _mlp(dm.num_features, dm.num_classes)
            module = GraphToMLPDistillModule(student, gcn, lam=0.0, seed=seed)
            make_trainer(max_epochs=EPOCHS).fit(module, datamodule=dm)
            assert not any(p.requires_grad for p in gcn.parameters())
            student.eval()
            with torch.no_grad():
                glnn_out = student(x)  # no graph at inference
            results[name, seed] = tuple(_acc(o, y, test) for o in (teacher_out, mlp_out, glnn_out))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("name", ["Cora", "CiteSeer"])
def test_glnn_student_near_its_gcn_teacher_and_well_above_an_mlp_alone(planetoid_results, name):
    """GLNN (lam 0, T 1, KL over all nodes) on the public split, test accuracy after 60 full-batch epochs.

    Measured (seeds 0 / 1 / 2): Cora GCN .806/.803/.800, MLP alone .577/.578/.581, GLNN .811/.814/.809;
    CiteSeer GCN .672/.680/.682, MLP alone .579/.584/.588, GLNN .697/.693/.700. Asserted on every seed: the
    student within 2 points of its teacher (catalogue D9: 8; measured it is 0.5 to 2.5 points above) and at least
    15 (Cora) / 8 (CiteSeer) points above the MLP trained alone (measured gains .234/.236/.228, .118/.109/.112).
    """
    for seed in (0, 1, 2):
        gcn, mlp, glnn = planetoid_results[name, seed]
        print(f"{name} seed {seed}: GCN {gcn:.3f} MLP {mlp:.3f} GLNN {glnn:.3f}")
        assert glnn - mlp >= MARGIN_MLP[name], (name, seed, gcn, mlp, glnn)
        assert glnn >= gcn - MARGIN_GCN[name], (name, seed, gcn, mlp, glnn)


MARGIN_MLP = {"Cora": 0.15, "CiteSeer": 0.08}
MARGIN_GCN = {"Cora": 0.02, "CiteSeer": 0.02}


# ------------------------------------------------------------------------------------------------ small graph
def _example(lam=0.5, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    teacher = _TinyGCNTeacher()
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))
    return GraphToMLPDistillModule(student, teacher, lam=lam), teacher, student


def test_teacher_frozen_unchanged_and_absent_from_the_checkpoint(tmp_path):
    module, teacher, student = _example()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer = make_trainer(max_epochs=5, default_root_dir=tmp_path)
    module.train()
    assert not teacher.training, "train() must leave the teacher in eval mode"
    trainer.fit(module, datamodule=GraphDataModule(None, data=_tiny_graph()))
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    trainer.save_checkpoint(tmp_path / "g2m.ckpt")
    ckpt = torch.load(tmp_path / "g2m.ckpt", map_location="cpu", weights_only=False)
    assert all(k.startswith("student.") for k in ckpt["state_dict"])
    params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert params == {id(p) for p in student.parameters()}
    bare = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 3))
    bare.load_state_dict(GraphToMLPDistillModule.student_state_dict(ckpt), strict=True)
    x = _tiny_graph().x
    assert torch.equal(bare(x), student.eval()(x))
    soft = ckpt["litmix"]["teacher_logprobs"]
    with torch.no_grad():
        expected = torch.log_softmax(teacher(x, _tiny_graph().edge_index), -1)
    assert torch.allclose(soft, expected, atol=1e-6)
    # the checkpoint's soft labels alone (no teacher) resume the distillation
    fresh = GraphToMLPDistillModule(
        nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 3)), None, teacher_logits=soft
    )
    fresh.on_load_checkpoint(ckpt)
    assert torch.equal(fresh.teacher_logprobs, soft)


def test_precomputed_teacher_logits_train_the_same_student():
    """teacher= and teacher_logits=teacher(x, edge_index) give the same student (the soft labels are the same)."""
    data = _tiny_graph()
    module_a, teacher, _ = _example(lam=0.3)
    with torch.no_grad():
        logits = teacher(data.x, data.edge_index)
    torch.manual_seed(0)
    _TinyGCNTeacher()
    student_b = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.0), nn.Linear(16, 3))
    module_b = GraphToMLPDistillModule(student_b, None, teacher_logits=logits, lam=0.3)
    for module in (module_a, module_b):
        make_trainer(max_epochs=5).fit(module, datamodule=GraphDataModule(None, data=_tiny_graph()))
    for (k, a), b in zip(module_a.state_dict().items(), module_b.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), k


def test_kl_pulls_the_student_to_the_teacher():
    """lam = 0 (KL only, no labels used) raises the student-teacher agreement over all nodes far above chance."""
    module, _, _ = _example(lam=0.0)
    trainer = make_trainer(max_epochs=60)
    trainer.fit(module, datamodule=GraphDataModule(None, data=_tiny_graph()))
    assert float(trainer.callback_metrics["distill/agreement"]) >= 0.9
    assert "distill/ce" in trainer.callback_metrics


def test_resume_matches_an_uninterrupted_run(tmp_path):
    assert_resume_matches(
        lambda: [],
        lambda: _example(dropout=0.5)[0],
        lambda: GraphDataModule(None, data=_tiny_graph()),
        tmp_path,
        max_epochs=4,
        atol=1e-6,
    )


def _ddp_graph():
    """An odd number of nodes (49, KL shards 25 / 24) and of training nodes (19): padding must not bias the loss."""
    g = _tiny_graph(n=49)
    g.train_mask = torch.arange(49) < 19
    return g


def _train_ranks(devices, lam):
    pl.seed_everything(0, verbose=False)
    module, _, _ = _example(lam=lam, dropout=0.5)
    ddp = {"devices": 2, "strategy": "ddp_fork"} if devices == 2 else {}
    make_trainer(max_epochs=10, **ddp).fit(module, datamodule=GraphDataModule(None, data=_ddp_graph()))
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.ddp
def test_two_rank_ddp_trains_the_one_rank_model():
    """KL over all nodes sharded as sum / (N / W), dropout from (seed, step): 2 ranks = 1 rank (float rounding).

    Measured after 10 epochs: max |diff| 3.0e-8; with a plain batchmean per rank instead (25 and 24 nodes, the
    negative control) 1.7e-2.
    """
    one, two = _train_ranks(1, 0.0), _train_ranks(2, 0.0)
    diff = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert diff < 1e-5, diff


# ------------------------------------------------------------------------------------------------ bad inputs
def _student(classes=3, features=8):
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


@pytest.mark.parametrize("lam", [-0.1, 1.5, float("nan"), float("inf")])
def test_lam_outside_unit_interval_is_refused(lam):
    with pytest.raises(ValueError, match=r"lam="):
        GraphToMLPDistillModule(_student(), _TinyGCNTeacher(), lam=lam)


def test_teacher_and_student_classes_must_match():
    with pytest.raises(ValueError, match=r"teacher=.*3 classes.*outputs 4"):
        GraphToMLPDistillModule(_student(classes=4), _TinyGCNTeacher())
    with pytest.raises(ValueError, match=r"teacher_logits=.*5 classes"):
        GraphToMLPDistillModule(_student(), None, teacher_logits=torch.randn(48, 5))


def test_teacher_xor_teacher_logits_and_logits_shape():
    with pytest.raises(ValueError, match=r"exactly one of teacher"):
        GraphToMLPDistillModule(_student(), None)
    with pytest.raises(ValueError, match=r"exactly one of teacher"):
        GraphToMLPDistillModule(_student(), _TinyGCNTeacher(), teacher_logits=torch.randn(48, 3))
    with pytest.raises(ValueError, match=r"teacher_logits="):
        GraphToMLPDistillModule(_student(), None, teacher_logits=torch.randn(48))
    with pytest.raises(ValueError, match=r"NaN"):
        GraphToMLPDistillModule(_student(), None, teacher_logits=torch.full((48, 3), float("nan")))
    with pytest.raises(TypeError, match=r"student"):
        GraphToMLPDistillModule("mlp", _TinyGCNTeacher())


class _CountForward(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, *args):
        self.calls += 1
        return self.inner(*args)


def test_graph_without_features_is_named_before_compute():
    """A graph without x (here: a DataModule serving only edges) fails at fit start; no model ran."""

    class _NoFeatures(GraphDataModule):
        def setup(self, stage=None):
            super().setup(stage)
            self.inputs = {"edge_index": self.inputs["edge_index"]}

    teacher, student = _CountForward(_TinyGCNTeacher()), _CountForward(_student())
    module = GraphToMLPDistillModule(student, teacher)
    with pytest.raises(ValueError, match=r"no node features 'x'"):
        make_trainer(max_epochs=1).fit(module, datamodule=_NoFeatures(None, data=_tiny_graph()))
    assert teacher.calls == student.calls == 0


def test_soft_labels_for_another_graph_are_refused_before_compute():
    student = _CountForward(_student())
    module = GraphToMLPDistillModule(student, None, teacher_logits=torch.randn(30, 3))
    with pytest.raises(ValueError, match=r"shape \(30, 3\) but the graph has 48 nodes"):
        make_trainer(max_epochs=1).fit(module, datamodule=GraphDataModule(None, data=_tiny_graph()))
    assert student.calls == 0


def test_feature_width_mismatch_is_refused_before_compute():
    data = _tiny_graph()
    wide = Data(**{**data.to_dict(), "x": torch.randn(48, 5)})
    teacher = _CountForward(_TinyGCNTeacher())
    module = GraphToMLPDistillModule(_student(), teacher)
    with pytest.raises(ValueError, match=r"5 node features but the student takes 8"):
        make_trainer(max_epochs=1).fit(module, datamodule=GraphDataModule(None, data=wide))
    assert teacher.calls == 0
