import pickle
import shutil

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from litmix.callbacks.save_init import SaveInit
from litmix.functional.graph_proxies import lebed_score, structure_metric
from litmix.testing import (
    TinyClassifier,
    TinyDataModule,
    assert_resume_matches,
    assert_state_roundtrip,
    fit_tiny,
    make_trainer,
)


def test_save_init_keeps_theta0_and_writes_file(tmp_path):
    module = TinyClassifier()
    theta0 = {k: v.clone() for k, v in module.state_dict().items()}
    cb = SaveInit(path=str(tmp_path / "init.pt"))
    pickle.loads(pickle.dumps(cb))
    fit_tiny([cb], module=module, max_steps=3)
    assert all(torch.equal(theta0[k], cb.init_state[k]) for k in theta0)
    assert not all(torch.equal(theta0[k], v) for k, v in module.state_dict().items())  # training moved on
    on_disk = torch.load(tmp_path / "init.pt")
    assert all(torch.equal(theta0[k], on_disk[k]) for k in theta0)
    assert_state_roundtrip(cb)


def test_save_init_resume_keeps_original_theta0(tmp_path):
    assert_resume_matches(lambda: [SaveInit()], TinyClassifier, TinyDataModule, tmp_path)
    ckpt = sorted((tmp_path / "ckpt").glob("epoch=0-*.ckpt"))[0]
    pl.seed_everything(123)  # a different fresh init: the restored theta_0 must win
    cb = SaveInit()
    trainer = make_trainer(callbacks=[cb], max_epochs=2)
    trainer.fit(TinyClassifier(), datamodule=TinyDataModule(), ckpt_path=str(ckpt))
    saved = torch.load(ckpt, weights_only=False)["callbacks"][cb.state_key]["init_state"]
    assert all(torch.equal(saved[k], cb.init_state[k]) for k in saved)


def test_save_init_rejects_bad_path():
    with pytest.raises(TypeError, match="path"):
        SaveInit(path=3)  # type: ignore[arg-type]


def test_structure_metric_prefers_aligned_embeddings():
    pos, neg = torch.tensor([[0, 2], [1, 3]]), torch.tensor([[0, 1], [2, 3]])
    good = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]])
    bad = torch.tensor([[1.0, 0], [0, 1], [1, 0], [0, 1]])
    assert structure_metric(good, pos, neg) < structure_metric(bad, pos, neg)


def test_lebed_argument_checks():
    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="min_epochs"):
        lebed_score(
            net, net.state_dict(), torch.zeros(2, 2), torch.zeros(2, 0, dtype=torch.long), min_epochs=5, max_epochs=2
        )
    with pytest.raises(ValueError, match="margin"):
        lebed_score(net, net.state_dict(), torch.zeros(2, 2), torch.zeros(2, 0, dtype=torch.long), margin=-1.0)


class _CoraGCN(pl.LightningModule):
    """GCN encoder (32-d embedding) + linear head, full-batch on the non-test nodes (a labelled source graph)."""

    def __init__(self, data):
        super().__init__()
        from torch_geometric.nn import GCN

        self.data = data
        self.encoder = GCN(data.num_features, 32, 2, out_channels=32)
        self.head = nn.Linear(32, int(data.y.max()) + 1)

    def forward(self, x, edge_index):
        return self.head(self.encoder(x, edge_index))

    def training_step(self, batch, batch_idx):
        m = ~batch.test_mask
        return nn.functional.cross_entropy(self(batch.x, batch.edge_index)[m], batch.y[m])

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3, weight_decay=5e-4)

    def train_dataloader(self):
        return torch.utils.data.DataLoader([self.data], batch_size=None)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lebed_tracks_test_error_under_feature_noise(shared_data, tmp_path, seed):
    from scipy.stats import spearmanr
    from torch_geometric.datasets import Planetoid

    shutil.copytree(shared_data / "planetoid" / "Cora", tmp_path / "Cora")
    data = Planetoid(str(tmp_path), "Cora")[0]
    pl.seed_everything(seed, verbose=False)
    net, cb = _CoraGCN(data), SaveInit()
    make_trainer(callbacks=[cb], max_steps=200).fit(net)
    net.eval()
    errors, scores = [], []
    for sigma in (0.0, 0.3, 1.0, 2.0):
        x = data.x + sigma * torch.randn(data.x.shape, generator=torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            errors.append(float((net(x, data.edge_index).argmax(-1) != data.y)[data.test_mask].float().mean()))
        res = lebed_score(net, cb.init_state, x, data.edge_index, embed_module="encoder", seed=seed)
        scores.append(res.score)
    rho = spearmanr(errors, scores).statistic
    print(f"seed {seed}: errors {[round(e, 3) for e in errors]} scores {[round(s, 2) for s in scores]} rho {rho:.2f}")
    # measured: rho 1.0 / 0.8 / 0.8 (seeds 0-2); clean-graph score 8.5-10.1 vs >= 15.6 on every noisy graph
    assert errors == sorted(errors)
    assert rho > 0
    assert scores[0] < min(scores[1:])


def test_lebed_registered_and_arguments_validated():
    from torch_geometric.nn import GCN

    from litmix.registry import get_plugin

    info = get_plugin("lebed_score")
    assert (info.kind, info.family) == ("function", "proxy")
    assert "2403.09953" in info.paper
    net = GCN(4, 8, 2, out_channels=3)
    theta0 = {k: v.clone() for k, v in net.state_dict().items()}
    ei = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    for kwargs, error, match in [
        ({"max_epochs": 2.5}, TypeError, r"lebed_score\(max_epochs=2.5\)"),
        ({"lr": float("inf")}, ValueError, r"lr=inf"),
        ({"margin": float("nan")}, ValueError, r"margin=nan"),
        ({"min_epochs": 5, "max_epochs": 3}, ValueError, r"min_epochs=5, max_epochs=3"),
        ({"embed_module": "no_such"}, ValueError, r"embed_module='no_such'"),
        ({"weight_decay": "0"}, TypeError, r"weight_decay='0'"),
    ]:
        with pytest.raises(error, match=match):
            lebed_score(net, theta0, torch.randn(3, 4), ei, **kwargs)
