"""AdaNPC (arXiv 2304.12566): the kNN head against a brute-force reference, test-time adaptation on a digits
stream of increasing shift severity, the memory in checkpoints, ranks agreeing under DDP, argument checks."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litmix.callbacks.adanpc import AdaNPC
from litmix.layers.nonparametric_head import NonParametricHead
from litmix.testing import TinyClassifier, TinyDataModule, make_trainer


def _reference_votes(memory, labels, queries, k, tau, classes):
    mem = nn.functional.normalize(memory, dim=1)
    out = torch.zeros(len(queries), classes)
    for i, q in enumerate(nn.functional.normalize(queries, dim=1)):
        sims = mem @ q
        order = sorted(range(len(sims)), key=lambda j: -float(sims[j]))[:k]
        w = torch.softmax(sims[order] / tau, dim=0)
        for j, wj in zip(order, w, strict=True):
            out[i, labels[j]] += wj
    return out


def test_head_matches_a_brute_force_vote_and_bounds_its_memory():
    gen = torch.Generator().manual_seed(0)
    memory, labels = torch.randn(30, 5, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    queries = torch.randn(7, 5, generator=gen)
    head = NonParametricHead(5, 3, k=4, temperature=0.2)
    assert head.add(memory, labels) == 30
    votes = head(queries)
    assert torch.allclose(votes, _reference_votes(memory, labels, queries, 4, 0.2, 3), atol=1e-6)
    assert torch.allclose(votes.sum(1), torch.ones(7))
    # k above the memory size uses every entry; max_memory keeps the newest entries
    small = NonParametricHead(5, 3, k=100, max_memory=10)
    small.add(memory, labels)
    assert len(small) == 10
    assert torch.equal(small.labels, labels[-10:])
    assert torch.allclose(small(queries), _reference_votes(memory[-10:], labels[-10:], queries, 10, 0.1, 3), atol=1e-6)
    # a checkpointed memory of another size loads into a fresh head
    fresh = NonParametricHead(5, 3, k=4, temperature=0.2)
    fresh.load_state_dict(head.state_dict())
    assert torch.equal(fresh(queries), votes)


def test_bad_arguments_are_named_before_compute():
    with pytest.raises(ValueError, match="k"):
        NonParametricHead(4, 3, k=0)
    with pytest.raises(ValueError, match="temperature"):
        NonParametricHead(4, 3, temperature=0.0)
    with pytest.raises(ValueError, match="k"):
        AdaNPC(num_classes=3, k=0)
    with pytest.raises(ValueError, match="threshold"):
        AdaNPC(num_classes=3, threshold=1.5)
    with pytest.raises(TypeError, match="feature_module"):
        AdaNPC(num_classes=3, feature_module=3)
    head = NonParametricHead(4, 3)
    with pytest.raises(ValueError, match="empty"):
        head(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="in_features=4"):
        head.add(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be in"):
        head.add(torch.zeros(2, 4), torch.tensor([0, 3]))
    head.add(torch.ones(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="in_features=4"):
        head(torch.zeros(2, 5))
    module = _Tested()
    with pytest.raises(ValueError, match="feature_module='encoder'"):
        make_trainer(callbacks=[AdaNPC(num_classes=4, feature_module="encoder")]).test(
            module, dataloaders=_loader(*_blobs()), verbose=False
        )
    with pytest.raises(ValueError, match="build_memory"):
        make_trainer(callbacks=[AdaNPC(num_classes=4, feature_module="net.1")]).test(
            module, dataloaders=_loader(*_blobs()), verbose=False
        )


class _Tested(TinyClassifier):
    def test_step(self, batch, batch_idx):
        x, y, *_ = batch
        self.log("test/acc", (self(x).argmax(-1) == y).float().mean())


class _TestedData(TinyDataModule):
    def test_dataloader(self):
        return self.val_dataloader()


def _blobs():
    dm = TinyDataModule()
    x, y = dm.dataset.dataset.tensors
    return x, y


def _loader(x, y, batch_size=16):
    return DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=batch_size, shuffle=False)


def test_memory_grows_in_test_and_is_checkpointed(tmp_path):
    torch.manual_seed(0)
    module, dm = _Tested(), _TestedData()
    cb = AdaNPC(num_classes=4, feature_module="net.1", k=5, threshold=0.5)
    trainer = make_trainer(callbacks=[cb], max_steps=8)
    trainer.fit(module, datamodule=dm)
    assert cb.head is None  # nothing happens in fit
    metrics = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert len(cb.head) == 64 + round(metrics["adanpc/accepted"] * 64)  # 64 source entries + accepted test samples
    assert len(cb.head) > 64
    assert cb._hook is None
    trainer.save_checkpoint(tmp_path / "tta.ckpt")
    state = torch.load(tmp_path / "tta.ckpt", weights_only=False)["callbacks"][cb.state_key]
    fresh = AdaNPC(num_classes=4, feature_module="net.1", k=5, threshold=0.5)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.head.memory, cb.head.memory)
    assert torch.equal(fresh.head.labels, cb.head.labels)
    # a second test run continues from the restored memory (continual adaptation), without rebuilding it
    before = len(fresh.head)
    make_trainer(callbacks=[fresh]).test(module, dataloaders=_loader(*_blobs()), verbose=False)
    assert len(fresh.head) >= before


class _RanksAgree(Callback):
    def __init__(self, cb):
        self.cb = cb

    def on_test_epoch_end(self, trainer, pl_module):
        mine = (self.cb.head.memory.clone(), self.cb.head.labels.clone())
        gathered = [None, None]
        dist.all_gather_object(gathered, mine)
        assert torch.equal(gathered[0][0], gathered[1][0])
        assert torch.equal(gathered[0][1], gathered[1][1])
        pl_module.log("agree/memory", float(len(self.cb.head)))


@pytest.mark.ddp
def test_two_ranks_hold_one_memory():
    torch.manual_seed(0)
    module = _Tested()
    cb = AdaNPC(num_classes=4, feature_module="net.1", k=5, threshold=0.0)  # every test sample joins
    trainer = make_trainer(callbacks=[cb, _RanksAgree(cb)], devices=2, strategy="ddp_fork")
    out = trainer.test(module, datamodule=_TestedData(), verbose=False)[0]
    # 64 source entries on every rank + the 64 test samples of both ranks' shards (32 each)
    assert out["adanpc/memory"] == out["agree/memory"] == 128
    assert out["adanpc/accepted"] == 1.0


# ------------------------------------------------------------------------------------------------------------
# effect: MNIST, source MLP trained on clean images, test streams with corruption severity rising from 0 to 1


class _Source(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.features(x))

    def test_step(self, batch, batch_idx):
        x, y, *_ = batch
        self.log("test/acc", (self(x).argmax(-1) == y).float().mean())


@pytest.fixture(scope="module")
def mnist(shared_data):
    from litmix.datamodules.mnist import read_idx

    raw = shared_data / "mnist" / "MNIST" / "raw"
    if not (raw / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"MNIST not found in {raw}")
    # only the 10k-image file is read (decompressing the 60k training file costs seconds): images 1,000-5,999
    # train the source model, images 0-999 make the test stream
    x = read_idx(raw / "t10k-images-idx3-ubyte.gz")[:6000].float().flatten(1) / 255
    y = read_idx(raw / "t10k-labels-idx1-ubyte.gz")[:6000].long()
    return x[1000:], y[1000:], x[:1000], y[:1000]


def _stream(xte, kind, gen):
    sev = torch.linspace(0, 1, len(xte)).unsqueeze(1)  # severity rises linearly along the stream
    if kind == "noise":
        return (xte + 0.6 * sev * torch.randn(xte.shape, generator=gen)).clamp(0, 1)
    return xte * (1 - 0.8 * sev) + 0.4 * sev  # contrast falls to 20 % around grey


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adanpc_beats_the_source_head_on_corruption_streams(mnist, seed):
    """MNIST t10k file: 5,000 source images (MLP 784-256-128 + linear head, 2 Adam epochs) and a stream of 1,000
    other images with Gaussian noise (sigma up to 0.6) or contrast (down to 20 %) rising from 0 to full severity,
    batches of 32; k = 10, tau = 0.1, vote share >= 0.9. Measured (seeds 0/1/2):
    noise: linear head 0.649 / 0.739 / 0.673, static kNN 0.700 / 0.737 / 0.713, AdaNPC 0.752 / 0.786 / 0.747;
    contrast: linear 0.513 / 0.568 / 0.477, static 0.521 / 0.566 / 0.531, AdaNPC 0.584 / 0.583 / 0.552."""
    xtr, ytr, xte, yte = mnist
    torch.manual_seed(seed)
    model = _Source()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        perm = torch.randperm(len(ytr))
        for s in range(0, len(ytr), 128):
            b = perm[s : s + 128]
            loss = nn.functional.cross_entropy(model(xtr[b]), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    for kind in ("noise", "contrast"):
        xs = _stream(xte, kind, gen)
        with torch.no_grad():
            static = NonParametricHead(128, 10, k=10)
            static.add(model.features(xtr), ytr)
            static_acc = float((static(model.features(xs)).argmax(-1) == yte).float().mean())
        cb = AdaNPC(num_classes=10, feature_module="features", k=10, threshold=0.9)
        cb.build_memory(model, DataLoader(TensorDataset(xtr, ytr), batch_size=1000))
        out = make_trainer(callbacks=[cb]).test(model, dataloaders=_loader(xs, yte, batch_size=32), verbose=False)[0]
        linear, adanpc = out["test/acc"], out["adanpc/acc"]
        print(f"seed {seed} {kind}: linear {linear:.4f} static {static_acc:.4f} adanpc {adanpc:.4f} mem {len(cb.head)}")
        assert len(cb.head) > len(ytr)  # confident test samples joined the memory
        assert adanpc - linear >= 0.01  # measured noise +0.103 / +0.047 / +0.074, contrast +0.071 / +0.015 / +0.075
        assert adanpc - static_acc >= 0.01  # measured noise +0.052 / +0.049 / +0.034, contrast +0.063 / +0.017 / +0.021
