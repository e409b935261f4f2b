"""Trained link predictors on Cora, cached per test session (shared by test_ncn.py and the TC tests).

Cora's 1433 bag-of-words features are reduced to 128 with PyG's ``SVDFeatureReduction`` so that the six fits
(NCN and GCN + dot product, seeds 0/1/2; 10 epochs, hidden 32, Adam 0.02) stay inside the CI time budget.
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path

import lightning.pytorch as pl
import torch

SEEDS = (0, 1, 2)
EPOCHS, HIDDEN, LR, SVD = 10, 32, 0.02, 128


@cache
def cora(root: Path):
    from torch_geometric.data import Data
    from torch_geometric.datasets import Planetoid
    from torch_geometric.transforms import SVDFeatureReduction

    graph = Planetoid(str(root), "Cora")[0]
    return SVDFeatureReduction(SVD)(Data(x=graph.x, edge_index=graph.edge_index))


@cache
def trained(root: Path, seed: int, predictor: str):
    """``(module, datamodule, test positive scores, test negative scores)`` after training on Cora."""
    from litmix.datamodules.link import LinkDataModule
    from litmix.plugins.ncn_module import NCNModule
    from litmix.testing import make_trainer

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    pl.seed_everything(seed, verbose=False)
    dm = LinkDataModule(None, data=cora(root), seed=seed, batch_size=1024)
    module = NCNModule(in_channels=SVD, hidden_channels=HIDDEN, predictor=predictor, dropout=0.3, lr=LR, k=100)
    make_trainer(max_epochs=EPOCHS).fit(module, datamodule=dm)
    module.eval()
    with torch.no_grad():
        scores = module(dm.test_graph["x"], dm.test_graph["edge_index"], dm.test_candidates)
    positive = dm.test_labels > 0.5
    return module, dm, scores[positive], scores[~positive]
