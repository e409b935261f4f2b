"""LinkDataModule: seeded RandomLinkSplit, fresh negatives per epoch, DDP shards, state, bad inputs, Cora."""

from types import SimpleNamespace

import pytest
import torch
from torch_geometric.data import Data

from litmix.datamodules import LinkDataModule
from litmix.datamodules.link import _tiny_link_graph


def _keys(ei):
    return {(min(a, b), max(a, b)) for a, b in ei.T.tolist()}


def _dm(**kw):
    kw.setdefault("val_ratio", 0.1)
    kw.setdefault("test_ratio", 0.2)
    dm = LinkDataModule(None, data=_tiny_link_graph(), **kw)
    dm.setup("fit")
    return dm


def test_split_is_seeded_disjoint_and_negatives_are_non_edges():
    dm, again, other = _dm(seed=0), _dm(seed=0), _dm(seed=1)
    assert torch.equal(dm.train_pos, again.train_pos)
    assert torch.equal(dm.test_candidates, again.test_candidates)
    assert not torch.equal(dm.train_pos, other.train_pos)
    edges = _keys(_tiny_link_graph().edge_index)
    train = _keys(dm.train_pos)
    val = _keys(dm.val_candidates[:, dm.val_labels > 0.5])
    test = _keys(dm.test_candidates[:, dm.test_labels > 0.5])
    assert train | val | test == edges
    assert not (train & val)
    assert not (train & test)
    assert not (val & test)
    assert _keys(dm.train_graph["edge_index"]) == train
    assert _keys(dm.test_candidates[:, dm.test_labels < 0.5]).isdisjoint(edges)


def test_training_negatives_are_fresh_per_epoch_and_reproducible():
    dm = _dm(batch_size=8, num_negatives=2)
    loader = dm.train_dataloader()
    epochs = []
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)
        epochs.append(list(loader))
    graph, label, index = epochs[0][0]
    assert graph["edge_label_index"].shape[1] == 3 * len(index)
    assert int(label.sum()) == len(index)
    negatives = graph["edge_label_index"][:, label < 0.5]
    assert _keys(negatives).isdisjoint(_keys(dm.train_pos))
    assert all(
        torch.equal(a[0]["edge_label_index"], b[0]["edge_label_index"])
        for a, b in zip(epochs[0], epochs[2], strict=True)
    )
    assert not torch.equal(epochs[0][0][0]["edge_label_index"], epochs[1][0][0]["edge_label_index"])


def test_two_ranks_get_disjoint_complete_shards_of_the_training_positives():
    seen = []
    for rank in (0, 1):
        dm = _dm(batch_size=5)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        seen.append(torch.cat([index for _, _, index in dm.train_dataloader()]).tolist())
    n = _dm().train_pos.shape[1]
    assert set(seen[0]) | set(seen[1]) == set(range(n))
    assert len(seen[0]) + len(seen[1]) - len(set(seen[0]) | set(seen[1])) <= 1


def test_state_is_versioned_and_refuses_another_split():
    dm = _dm()
    state = dm.state_dict()
    assert state["version"] == 1
    assert state["sizes"]["num_train"] == dm.train_pos.shape[1]
    other = LinkDataModule(None, data=_tiny_link_graph(), val_ratio=0.3, test_ratio=0.2)
    other.load_state_dict(state)
    with pytest.raises(ValueError, match="another split"):
        other.setup("fit")


def test_bad_inputs_name_the_argument(tmp_path):
    data = _tiny_link_graph()
    with pytest.raises(ValueError, match="sum to less than 1"):
        LinkDataModule(None, data=data, val_ratio=0.5, test_ratio=0.5)
    with pytest.raises(ValueError, match="val_ratio"):
        LinkDataModule(None, data=data, val_ratio=0.0)
    with pytest.raises(TypeError, match="batch_size"):
        LinkDataModule(None, data=data, batch_size=2.5)
    with pytest.raises(ValueError, match="name"):
        LinkDataModule(tmp_path, name="Reddit")
    with pytest.raises(ValueError, match="exactly one"):
        LinkDataModule(None)
    with pytest.raises(ValueError, match="features x"):
        LinkDataModule(None, data=Data(edge_index=data.edge_index, num_nodes=40))
    with pytest.raises(ValueError, match="edge_index"):
        LinkDataModule(None, data=Data(x=data.x, edge_index=torch.tensor([[0], [40]])))
    with pytest.raises(FileNotFoundError, match=r"ind\.cora"):
        LinkDataModule(tmp_path, name="Cora").setup("fit")


def test_cora_from_root(planetoid_root):
    dm = LinkDataModule(planetoid_root, name="Cora", val_ratio=0.05, test_ratio=0.1)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.num_nodes == 2708
    assert dm.num_features == 1433
    assert (dm.train_pos.shape[1], int(dm.val_labels.sum()), int(dm.test_labels.sum())) == (4488, 263, 527)
    assert dm.test_labels.numel() == 2 * 527
