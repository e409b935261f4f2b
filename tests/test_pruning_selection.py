"""GradualPruning's default parameter selection on models litmix did not write: tied weights, HF GPT-2, PyG, timm."""

import logging

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from litmix.callbacks.gradual_pruning import GradualPruning
from litmix.functional.sparsity import canonical_parameter_names, default_parameter_selection, sparsity_report
from litmix.testing import make_trainer


def _fit(module, callbacks, data, max_steps=4):
    trainer = make_trainer(callbacks=callbacks, max_steps=max_steps)
    trainer.fit(module, train_dataloaders=DataLoader(data, batch_size=4))
    return trainer


class TiedLM(pl.LightningModule):
    """An Embedding tied to the output Linear: the new user's 10-line model."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def training_step(self, batch, batch_idx):
        x = batch[0]
        return nn.functional.cross_entropy(self.head(torch.relu(self.mid(self.emb(x)))), x)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


TOKENS = TensorDataset(torch.randint(0, 20, (16,), generator=torch.Generator().manual_seed(0)))


def test_tied_embedding_and_head_default_leaves_them_dense_and_says_so(caplog):
    model = TiedLM()
    cb = GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1)
    # Lightning's logger may not propagate to the root logger (it depends on import order): listen on it directly
    lightning_logger = logging.getLogger("lightning.pytorch")
    lightning_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            _fit(model, [cb], TOKENS)  # was: KeyError 'head.weight' in setup
    finally:
        lightning_logger.removeHandler(caplog.handler)
    assert cb._names == ["mid.weight"]
    assert sparsity_report(model, ["mid.weight"])["global"] == 0.5
    assert (model.emb.weight != 0).all()
    text = caplog.text
    assert "pruning 1 parameters (default selection): mid.weight" in text
    assert "not pruned: head.weight (tied to emb.weight, which is not a prunable layer (Embedding))" in text


@pytest.mark.parametrize("names", [["head.weight"], ["emb.weight", "head.weight"]])
def test_tied_weight_named_explicitly_is_pruned_once(names):
    model = TiedLM()
    cb = GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1, parameter_names=names)
    _fit(model, [cb], TOKENS)
    assert cb._names == ["emb.weight"]
    assert model.head.weight is model.emb.weight
    assert sparsity_report(model, ["emb.weight"])["global"] == 0.5


def test_weight_shared_by_two_linears_is_pruned_once():
    a, b = nn.Linear(4, 4), nn.Linear(4, 4)
    b.weight = a.weight
    net = nn.Sequential(a, nn.ReLU(), b)
    assert canonical_parameter_names(net)["2.weight"] == "0.weight"
    assert default_parameter_selection(net) == (["0.weight"], {})


class TinyGPT2(pl.LightningModule):
    def __init__(self, tie: bool):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=20, n_positions=8, n_embd=16, n_layer=2, n_head=2, tie_word_embeddings=tie)
        self.model = GPT2LMHeadModel(config)

    def training_step(self, batch, batch_idx):
        ids = batch[0]
        return self.model(input_ids=ids, labels=ids).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


GPT2_BLOCK_WEIGHTS = [
    f"model.transformer.h.{i}.{m}.weight"
    for i in range(2)
    for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]


@pytest.mark.parametrize("tie", [True, False])
def test_gpt2_default_prunes_every_conv1d_block(tie):
    pytest.importorskip("transformers")
    module = TinyGPT2(tie)
    ids = TensorDataset(torch.randint(0, 20, (16, 8), generator=torch.Generator().manual_seed(0)))
    cb = GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1)
    _fit(module, [cb], ids)
    expected = GPT2_BLOCK_WEIGHTS + ([] if tie else ["model.lm_head.weight"])
    assert sorted(cb._names) == sorted(expected)
    report = sparsity_report(module, cb._names)
    assert report["global"] == pytest.approx(0.5, abs=1e-6)
    assert all(report[n] > 0 for n in GPT2_BLOCK_WEIGHTS)  # the blocks are pruned, not only lm_head
    assert (module.model.transformer.wte.weight != 0).all()  # embeddings stay dense
    # the checkpointable state and the module's state_dict stay clean
    assert not any(k.endswith("_mask") for k in module.state_dict())


class GCN(pl.LightningModule):
    def __init__(self):
        super().__init__()
        from torch_geometric.nn import GCNConv

        gen = torch.Generator().manual_seed(0)
        self.conv1, self.conv2 = GCNConv(8, 16), GCNConv(16, 3)
        self.x = torch.randn(10, 8, generator=gen)
        self.edge_index = torch.randint(0, 10, (2, 30), generator=gen)
        self.y = torch.randint(0, 3, (10,), generator=gen)

    def training_step(self, batch, batch_idx):
        h = torch.relu(self.conv1(self.x, self.edge_index))
        return nn.functional.cross_entropy(self.conv2(h, self.edge_index), self.y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_pyg_gcn_default_finds_the_linear_inside_gcnconv():
    pytest.importorskip("torch_geometric")
    module = GCN()
    cb = GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1)
    _fit(module, [cb], TensorDataset(torch.zeros(16)))
    assert cb._names == ["conv1.lin.weight", "conv2.lin.weight"]
    assert sparsity_report(module, cb._names)["global"] == pytest.approx(0.5, abs=1e-6)


def test_timm_layers_are_recognised():
    timm_layers = pytest.importorskip("timm.layers")
    net = nn.Sequential(
        timm_layers.StdConv2d(3, 4, 3),
        timm_layers.Mlp(4, 8, 4),
        timm_layers.CondConv2d(4, 4, 3, num_experts=2),
        nn.LayerNorm(4),
    )
    names, excluded = default_parameter_selection(net)
    assert names == ["0.weight", "1.fc1.weight", "1.fc2.weight", "2.weight"]
    assert excluded == {}


class NoLayers(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.proj = nn.Parameter(torch.randn(8, 20))
        self.norm = nn.LayerNorm(8)

    def training_step(self, batch, batch_idx):
        x = batch[0]
        return nn.functional.cross_entropy(self.norm(self.emb(x)) @ self.proj, x)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def test_nothing_found_error_lists_candidates():
    with pytest.raises(ValueError, match=r"parameter_names=None.*no prunable layer.*\['proj', 'emb\.weight'\]"):
        _fit(NoLayers(), [GradualPruning()], TOKENS)
    cb = GradualPruning(0.5, start_step=0, end_step=2, every_n_steps=1, parameter_names=["proj"])
    model = NoLayers()
    _fit(model, [cb], TOKENS)
    assert sparsity_report(model, ["proj"])["global"] == 0.5
