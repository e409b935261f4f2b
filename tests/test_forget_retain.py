import math

import pytest
import torch
from torch.utils.data import TensorDataset

from litmix.data import IndexedDataset
from litmix.datamodules.digits import DigitsDataModule
from litmix.datamodules.forget_retain import (
    ForgetAnchoredSampler,
    ForgetRetainDataModule,
    dataset_targets,
)


def blobs(n=40, classes=4):
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0)) + y[:, None].float()
    return IndexedDataset(TensorDataset(x, y))


def make(**kwargs):
    kwargs.setdefault("batch_size", 4)
    return ForgetRetainDataModule.from_dataset(blobs(), test_dataset=blobs(20), **kwargs)


# ----------------------------------------------------------------------------- splits
def test_class_split_on_digits():
    dm = ForgetRetainDataModule("digits", forget_classes=[3, 7], batch_size=16)
    dm.setup("fit")
    targets = dataset_targets(dm.train_base)
    assert set(targets[dm.forget_idx].tolist()) == {3, 7}
    assert not set(targets[dm.retain_idx].tolist()) & {3, 7}
    assert sorted(dm.forget_idx + dm.retain_idx) == list(range(len(targets)))
    assert len(dm.forget_idx) == int(((targets == 3) | (targets == 7)).sum())
    assert dm.val_loader_names == ["forget", "retain", "test", "holdout"]
    test_y = torch.cat([b[1] for b in dm.eval_dataloader("test")])
    holdout_y = torch.cat([b[1] for b in dm.eval_dataloader("holdout")])
    assert not set(test_y.tolist()) & {3, 7}
    assert set(holdout_y.tolist()) == {3, 7}
    assert len(test_y) + len(holdout_y) == len(dm._base_datasets()[1])


def test_index_and_fraction_splits():
    dm = make(forget_indices=[5, 1, 5, 9])
    dm.setup("fit")
    assert dm.forget_idx == [1, 5, 9]
    assert len(dm.retain_idx) == 37
    assert dm.val_loader_names == ["forget", "retain", "test"]
    a, b, c = make(forget_fraction=0.25, seed=1), make(forget_fraction=0.25, seed=1), make(forget_fraction=0.25, seed=2)
    for dm in (a, b, c):
        dm.setup("fit")
    assert len(a.forget_idx) == 10
    assert a.forget_idx == b.forget_idx
    assert a.forget_idx != c.forget_idx


def test_from_datamodule_and_holdout():
    base = DigitsDataModule(train_size=200)
    dm = ForgetRetainDataModule.from_datamodule(base, forget_fraction=0.1, holdout_dataset=blobs(12))
    dm.setup("fit")
    assert len(dm.forget_idx) + len(dm.retain_idx) == len(dm.train_base) == len(base.train_dataset)
    assert len(dm.forget_idx) == round(0.1 * len(dm.train_base))
    assert dm.val_loader_names == ["forget", "retain", "test", "holdout"]
    assert len(dm.eval_datasets["holdout"]) == 12


def test_eval_items_carry_split_positions():
    dm = make(forget_indices=[3, 8, 13], eval_retain_size=10)
    dm.setup("fit")
    loaders = dm.val_dataloader()
    assert len(loaders) == 3
    x, _y, idx = next(iter(loaders[0]))
    assert idx.tolist() == [0, 1, 2]
    base = blobs()
    assert torch.equal(x[1], base[8][0])
    assert len(dm.eval_datasets["retain"]) == 10
    assert [len(dl.dataset) for dl in dm.test_dataloader()] == [3, 10, 20]


def test_mnist_by_name(mnist_root):
    dm = ForgetRetainDataModule(
        "mnist", root=str(mnist_root), forget_classes=[3], base_kwargs={"train_size": 500, "val_size": 100}
    )
    dm.setup("fit")
    x, y, _ = dm.forget_dataset[0]
    assert x.shape == (784,)
    assert y == 3
    assert len(dm.forget_idx) + len(dm.retain_idx) == 500


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"forget_classes": [1], "forget_indices": [0]}, r"forget_classes=\[1\], forget_indices=\[0\].*at most one"),
        ({"forget_fraction": 0.2, "forget_indices": [0]}, "at most one"),
        ({"forget_classes": []}, r"forget_classes=\[\]"),
        ({"forget_indices": []}, r"forget_indices=\[\]"),
        ({"forget_fraction": 1.0}, "forget_fraction=1.0"),
        ({"forget_fraction": 0.1, "batch_size": 0}, "batch_size=0"),
        ({"forget_indices": [-1]}, r"forget_indices=\[-1\]"),  # never valid: refused before setup
        ({"forget_fraction": float("nan")}, "forget_fraction=nan"),
        ({"forget_fraction": 0.1, "eval_retain_size": 0}, "eval_retain_size=0"),
        ({"forget_fraction": 0.1, "num_workers": -1}, "num_workers=-1"),
        ({"forget_fraction": 0.1, "seed": -1}, "seed=-1"),
    ],
)
def test_spec_errors_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ForgetRetainDataModule.from_dataset(blobs(), **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"forget_fraction": 0.1, "batch_size": 2.5}, r"ForgetRetainDataModule\(batch_size=2.5\)"),
        ({"forget_fraction": 0.1, "eval_batch_size": "8"}, r"eval_batch_size='8'"),
        ({"forget_classes": [True]}, r"forget_classes=\[True\]"),
        ({"forget_classes": 3}, r"forget_classes=3"),
        ({"forget_indices": [0.5]}, r"forget_indices=\[0.5\]"),
        ({"forget_fraction": "0.1"}, r"forget_fraction='0.1'"),
        ({"forget_fraction": True}, r"forget_fraction=True"),
        ({"forget_fraction": 0.1, "seed": 1.0}, r"seed=1.0"),
        ({"forget_fraction": 0.1, "root": 3}, r"root=3"),
        ({"forget_fraction": 0.1, "base_kwargs": [1]}, r"base_kwargs=\[1\]"),
        ({"forget_fraction": 0.1, "test_dataset": 3}, r"test_dataset=3"),
    ],
)
def test_type_errors_at_construction(kwargs, match):
    with pytest.raises(TypeError, match=match):
        ForgetRetainDataModule.from_dataset(blobs(), **kwargs)


def test_example_and_versioned_state():
    from litmix.base import Example, LitmixDataModule
    from litmix.plugins.unlearning_module import UnlearningModule

    example = ForgetRetainDataModule.example()
    assert isinstance(example, Example)
    assert isinstance(example.datamodule, ForgetRetainDataModule)
    assert isinstance(example.datamodule, LitmixDataModule)
    assert isinstance(example.module, UnlearningModule)
    assert example.callbacks == []
    assert not hasattr(ForgetRetainDataModule, "family")
    state = example.datamodule.state_dict()
    assert state["version"] == 1
    with pytest.raises(ValueError, match="version 99"):
        example.datamodule.load_state_dict({"version": 99})


def test_no_forget_spec_means_a_seeded_random_tenth():
    dm = ForgetRetainDataModule.from_dataset(blobs(), seed=1)
    assert dm.forget_fraction == 0.1
    dm.setup("fit")
    assert len(dm.forget_idx) == 4  # 10 % of 40
    other = ForgetRetainDataModule.from_dataset(blobs(), forget_fraction=0.1, seed=1)
    other.setup("fit")
    assert other.forget_idx == dm.forget_idx


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"forget_indices": [0, 40]}, r"forget_indices.*\[40\] are out of range"),
        ({"forget_classes": [9]}, r"forget_classes=\[9\].*\[9\] are not in the training set"),
        ({"forget_classes": [0, 1, 2, 3]}, r"forget_classes=\[0, 1, 2, 3\].*covers all 40"),
        ({"forget_indices": list(range(40))}, "covers all 40"),
    ],
)
def test_data_errors_in_setup(kwargs, match):
    dm = make(**kwargs)
    with pytest.raises(ValueError, match=match):
        dm.setup("fit")


def test_base_errors():
    with pytest.raises(ValueError, match="base='cifar'"):
        ForgetRetainDataModule("cifar", forget_classes=[1])
    with pytest.raises(ValueError, match="needs root"):
        ForgetRetainDataModule("mnist", forget_classes=[1])
    with pytest.raises(TypeError, match="base"):
        ForgetRetainDataModule(3, forget_classes=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dataset=None"):
        ForgetRetainDataModule(None, forget_classes=[1])


# ----------------------------------------------------------------------------- batches
def test_batch_structure_and_epoch():
    dm = make(forget_classes=[1], batch_size=4)
    dm.setup("fit")
    base, forget_set, retain_set = blobs(), set(dm.forget_idx), set(dm.retain_idx)
    batches = list(dm.train_dataloader())
    assert len(batches) == math.ceil(10 / 4)  # one epoch = one pass over the 10 forget items
    seen = []
    for batch in batches:
        assert sorted(batch) == ["forget", "index", "retain"]
        (fx, fy), (rx, ry) = batch["forget"], batch["retain"]
        assert fx.shape[1:] == (3,)
        assert (fy == 1).all()
        assert (ry != 1).all()
        for k, i in enumerate(batch["index"].tolist()):
            assert torch.equal(fx[k], base[dm.forget_idx[i]][0])
            assert any(torch.equal(rx[k], base[j][0]) for j in retain_set)
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(10))
    assert {dm.forget_idx[i] for i in seen} == forget_set


def test_pairing_depends_on_seed_and_epoch_not_on_ranks():
    dm = make(forget_fraction=0.5, seed=3)
    dm.setup("fit")
    pairs = dm.train_pairs
    e0 = [pairs.retain_partner(i, 0) for i in range(len(pairs))]
    e1 = [pairs.retain_partner(i, 1) for i in range(len(pairs))]
    assert e0 != e1
    other = make(forget_fraction=0.5, seed=3)
    other.setup("fit")
    assert e0 == [other.train_pairs.retain_partner(i, 0) for i in range(len(pairs))]
    # two ranks: disjoint shards covering the forget set, same partner as on one rank
    keys = []
    for rank in (0, 1):
        sampler = ForgetAnchoredSampler(pairs, num_replicas=2, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(1)
        keys.append(list(sampler))
    assert all(epoch == 1 for _, epoch in keys[0] + keys[1])
    assert sorted(i for i, _ in keys[0] + keys[1]) == list(range(20))
    item = pairs[keys[1][0]]
    i = keys[1][0][0]
    assert torch.equal(item["retain"][0], blobs()[dm.retain_idx[e1[i]]][0])


def test_dict_items_pass_through():
    items = [{"input_ids": torch.tensor([i, i + 1]), "labels": torch.tensor([-100, i + 1])} for i in range(6)]
    dm = ForgetRetainDataModule.from_dataset(items, forget_indices=[0, 1], batch_size=2)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["forget"]) == {"input_ids", "labels"}
    assert batch["forget"]["input_ids"].shape == (2, 2)
    val = next(iter(dm.val_dataloader()[0]))
    assert val["index"].tolist() == [0, 1]
