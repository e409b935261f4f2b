"""DynamicSparseEmbedding (DSL): it finds the embedding tables itself, keeps the budget on each table, grows entries
at 0, names bad arguments, and its effect against a static random mask on ML-100K u1."""

from __future__ import annotations

import logging

import pytest
import torch

from litmix.callbacks import DynamicSparseEmbedding
from litmix.datamodules import InteractionDataModule
from litmix.datamodules.interaction import _tiny_interactions
from litmix.plugins import UltraGCNModule
from litmix.testing import TinyClassifier, fit_tiny, make_trainer

logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def test_masks_every_embedding_table_at_the_budget_and_moves_entries():
    train, test = _tiny_interactions()
    torch.manual_seed(0)
    module = UltraGCNModule(
        num_users=24, num_items=16, embedding_dim=8, lr=1e-2, negative_num=4, ii_neighbor_num=3, init_std=0.1, k=5
    )
    cb = DynamicSparseEmbedding(sparsity=0.75, update_every=1, end_fraction=1.0)
    masks = []
    trainer = make_trainer(max_steps=6, callbacks=[cb])
    trainer.fit(module, datamodule=InteractionDataModule(train=train, test=test, batch_size=32))
    report = cb.engine.sparsity_report()
    assert set(report) == {"user_embedding.weight", "item_embedding.weight", "global"}
    assert report["user_embedding.weight"] == pytest.approx(0.75)
    assert report["item_embedding.weight"] == pytest.approx(0.75)
    assert cb.n_updates == 5
    assert cb.last_churn > 0  # entries were dropped and grown
    for name, param, mask in cb.engine.parameters():
        assert int((param.detach()[~mask] != 0).sum()) == 0, name
        masks.append(mask)
    # a module without nn.Embedding is refused, naming the argument
    with pytest.raises(ValueError, match="parameter_names"):
        fit_tiny([DynamicSparseEmbedding(sparsity=0.5)], module=TinyClassifier(), max_steps=1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="sparsity"):
        DynamicSparseEmbedding(sparsity=1.0)
    with pytest.raises(ValueError, match="method"):
        DynamicSparseEmbedding(method="dense")
    with pytest.raises(TypeError, match="update_every"):
        DynamicSparseEmbedding(update_every=1.5)
    with pytest.raises(ValueError, match="zeta"):
        DynamicSparseEmbedding(zeta=0.0)
    with pytest.raises(ValueError, match="parameter_names"):
        DynamicSparseEmbedding(parameter_names=[])
