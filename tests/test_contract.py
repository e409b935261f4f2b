"""Contract tests generated over the registry: every registered item must satisfy them.

Lightning kinds (callbacks, LightningModules, DataModules): one ``example()`` shape, base classes, pickling,
a 2-step fit, the *fitted* state round trip, resume equality, equal states on 2 DDP ranks, state keys and
state versions. DataModules also: loaders, length, determinism per seed and epoch, and DDP shards that are
disjoint and complete. Every kind: names that clash with nothing in Lightning or PyG, docstrings with
``Example`` and ``Raises``, exported where the registry says.
"""

import importlib
import inspect
import pickle

import lightning.pytorch as pl
import lightning.pytorch.callbacks as pl_callbacks
import pytest
import torch
import torch.distributed as dist
import torch_geometric.data
import torch_geometric.datasets
import torch_geometric.nn
import torch_geometric.transforms
from lightning.pytorch.callbacks import Callback

import litmix
from litmix.base import Example, LitmixCallback, LitmixDataModule, LitmixModule
from litmix.data import split_batch
from litmix.registry import FAMILIES, KINDS, LIGHTNING_KINDS
from litmix.testing import check_plugin, check_plugin_ddp, make_trainer

ALL = litmix.list_plugins()
LIGHTNING = [p for p in ALL if p.kind in LIGHTNING_KINDS]
CALLBACKS = [p for p in ALL if p.kind == "callback"]
MODULES = [p for p in ALL if p.kind == "plugin"]
DATAMODULES = [p for p in ALL if p.kind == "datamodule"]
BASES = {"callback": LitmixCallback, "plugin": LitmixModule, "datamodule": LitmixDataModule}
FOREIGN_NAMES = {
    name
    for mod in (
        pl,
        pl_callbacks,
        torch_geometric.nn,
        torch_geometric.data,
        torch_geometric.datasets,
        torch_geometric.transforms,
    )
    for name in dir(mod)
}


def _ids(infos):
    return [p.name for p in infos]


_EXTRA_MISSING: dict[type, str] = {}


@pytest.fixture(autouse=True)
def _skip_items_whose_optional_extra_is_missing(request):
    """An item whose ``example()`` needs an optional extra that is not installed is skipped, naming the extra.

    The wheel check of ``.ci/run`` installs no extras; the ImportError must name the extra (the library's rule).
    """
    callspec = getattr(request.node, "callspec", None)
    info = callspec.params.get("info") if callspec is not None else None
    if info is None or not hasattr(info.cls, "example"):
        return
    if info.cls not in _EXTRA_MISSING:
        try:
            info.cls.example()
            _EXTRA_MISSING[info.cls] = ""
        except ImportError as error:
            _EXTRA_MISSING[info.cls] = str(error)
    if _EXTRA_MISSING[info.cls]:
        pytest.skip(f"optional extra not installed: {_EXTRA_MISSING[info.cls]}")


def test_registry_is_not_empty_and_uses_known_kinds():
    assert {"distillation", "sparsity", "proxy", "unlearning"} <= {p.family for p in ALL}
    assert all(p.kind in KINDS and p.family in FAMILIES for p in ALL)
    assert {"callback", "plugin", "datamodule"} <= {p.kind for p in ALL}


@pytest.mark.parametrize("info", ALL, ids=_ids(ALL))
def test_names_docs_and_exports(info):
    assert info.name not in FOREIGN_NAMES, f"{info.name} clashes with a Lightning or PyG name"
    doc = inspect.getdoc(info.cls) or ""
    assert "Example" in doc, f"{info.name} docstring lacks an Example section"
    assert "Raises" in doc, f"{info.name} docstring lacks a Raises section"
    module_name, _, name = info.import_path.rpartition(".")
    module = importlib.import_module(module_name)
    assert getattr(module, name) is info.cls, f"{info.import_path} is not {info.cls!r}"
    if info.kind in LIGHTNING_KINDS:
        assert info.name in module.__all__, f"{info.name} is not in {module_name}.__all__"


@pytest.mark.parametrize("info", ALL, ids=_ids(ALL))
def test_metadata_lives_in_the_registry_only(info):
    for attr in ("family", "modifies_loss", "modifies_structure", "requires_teacher"):
        assert not hasattr(info.cls, attr), f"{info.name}.{attr}: metadata belongs in the registry"


@pytest.mark.parametrize("info", LIGHTNING, ids=_ids(LIGHTNING))
def test_base_class_and_example_shape(info):
    assert issubclass(info.cls, BASES[info.kind]), f"{info.name} must subclass {BASES[info.kind].__name__}"
    example = info.cls.example()
    assert isinstance(example, Example)
    assert isinstance(example.module, pl.LightningModule)
    assert isinstance(example.datamodule, pl.LightningDataModule)
    assert all(isinstance(cb, Callback) for cb in example.callbacks)
    holders = {"callback": example.callbacks, "plugin": [example.module], "datamodule": [example.datamodule]}
    assert sum(isinstance(obj, info.cls) for obj in holders[info.kind]) == 1


@pytest.mark.parametrize("info", LIGHTNING, ids=_ids(LIGHTNING))
def test_contract(info, tmp_path):
    """Pickle, 2-step fit, fitted state round trip, resume equality."""
    check_plugin(info.cls, tmp_path)


@pytest.mark.ddp
@pytest.mark.parametrize("info", LIGHTNING, ids=_ids(LIGHTNING))
def test_ddp_ranks_hold_equal_states(info):
    """Module weights and every litmix state are equal on both ranks after a 2-rank fit."""
    trainer = check_plugin_ddp(info.cls)
    assert trainer.state.finished


def _versioned_state(info):
    example = info.cls.example()
    if info.kind == "callback":
        subject = next(cb for cb in example.callbacks if isinstance(cb, info.cls))
        return subject, subject.load_state_dict, subject.state_dict()
    if info.kind == "datamodule":
        return example.datamodule, example.datamodule.load_state_dict, example.datamodule.state_dict()
    checkpoint = {}
    example.module.on_save_checkpoint(checkpoint)
    return example.module, example.module.on_load_checkpoint, checkpoint["litmix"]


@pytest.mark.parametrize("info", LIGHTNING, ids=_ids(LIGHTNING))
def test_newer_state_version_is_an_error(info):
    subject, load, state = _versioned_state(info)
    assert state["version"] == subject.state_version
    newer = {**state, "version": subject.state_version + 1}
    if info.kind == "plugin":
        newer = {"litmix": newer}
    with pytest.raises(
        ValueError, match=rf"version {subject.state_version + 1} is newer than this code's \({subject.state_version}\)"
    ):
        load(newer)


@pytest.mark.parametrize("info", CALLBACKS, ids=_ids(CALLBACKS))
def test_callback_state_key_is_per_instance(info):
    a, b = (next(cb for cb in info.cls.example().callbacks if isinstance(cb, info.cls)) for _ in range(2))
    a.name, b.name = "one", "two"
    assert a.state_key != b.state_key
    assert "one" in a.state_key


@pytest.mark.parametrize("info", CALLBACKS, ids=_ids(CALLBACKS))
def test_two_callbacks_with_one_state_key_fail_at_setup(info):
    example = info.cls.example()
    first = next(cb for cb in example.callbacks if isinstance(cb, info.cls))
    second = next(cb for cb in info.cls.example().callbacks if isinstance(cb, info.cls))
    assert first.state_key == second.state_key
    trainer = make_trainer(callbacks=list(example.callbacks), max_steps=1)
    trainer.callbacks.append(second)
    with pytest.raises(ValueError, match="name="):
        trainer.fit(example.module, datamodule=example.datamodule)


# ---------------------------------------------------------------------------------------------------------
# DataModules


def _loader_items(datamodule, epoch=0):
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    for s in (sampler, getattr(batch_sampler, "sampler", None)):
        if hasattr(s, "set_epoch"):
            s.set_epoch(epoch)
    return loader, [batch for _, batch in zip(range(3), loader, strict=False)]


def _same(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return isinstance(b, list | tuple) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("info", DATAMODULES, ids=_ids(DATAMODULES))
def test_datamodule_loaders_and_determinism(info):
    loader, batches = _loader_items(info.cls.example().datamodule)
    assert len(loader) > 0, f"{info.name}: empty train loader"
    assert batches, f"{info.name}: empty train loader"
    _, again = _loader_items(info.cls.example().datamodule)
    assert _same(batches, again), f"{info.name}: two instances with one seed give different batches"
    dm = info.cls.example().datamodule
    dm.setup("validate")
    assert len(dm.val_dataloader()) > 0, f"{info.name}: empty validation loader"


class _RecordIndices(Callback):
    """Collects the sample indices each rank sees in epoch 0 and checks the shards on every rank."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        _, _, index = split_batch(batch)
        assert index is not None, "DataModule batches must carry sample indices (x, y, index)"
        self.seen += index.flatten().tolist()

    def on_train_epoch_end(self, trainer, pl_module):
        shards = [None] * dist.get_world_size()
        dist.all_gather_object(shards, self.seen)
        union = set().union(*map(set, shards))
        overlap = len(shards[0]) + len(shards[1]) - len(union)
        # DistributedSampler pads to a multiple of the world size: at most world_size - 1 repeats.
        assert overlap <= dist.get_world_size() - 1, f"shards overlap in {overlap} samples"
        size = len(trainer.train_dataloader.dataset)
        # indices name samples of the underlying data set (a split keeps its parent's indices)
        assert len(union) == size, f"shards cover {len(union)} of {size} samples"


@pytest.mark.ddp
@pytest.mark.parametrize("info", DATAMODULES, ids=_ids(DATAMODULES))
def test_datamodule_ddp_shards_are_disjoint_and_complete(info):
    example = info.cls.example()
    trainer = make_trainer(
        devices=2,
        strategy="ddp_fork_find_unused_parameters_true",
        callbacks=[*example.callbacks, _RecordIndices()],
        max_epochs=1,
    )
    trainer.fit(example.module, datamodule=example.datamodule)
    assert trainer.state.finished


@pytest.mark.parametrize("info", LIGHTNING, ids=_ids(LIGHTNING))
def test_plugin_pickles(info):
    example = info.cls.example()
    for obj in (*example.callbacks, example.module, example.datamodule):
        if isinstance(obj, info.cls):
            assert type(pickle.loads(pickle.dumps(obj))) is info.cls


OTHER = [p for p in ALL if p.kind not in LIGHTNING_KINDS]


@pytest.mark.parametrize("info", OTHER, ids=_ids(OTHER))
def test_non_lightning_items_have_a_runnable_example(info):
    """Utilities, losses, metrics and functions: the docstring's Example is a doctest that pytest runs."""
    doc = inspect.getdoc(info.cls) or ""
    example = doc.split("Example", 1)[-1]
    assert ">>>" in example, f"{info.name}: the Example section has no doctest"
    assert info.cls.__module__.startswith("litmix."), f"{info.name} is defined outside the litmix package"


@pytest.mark.parametrize("info", CALLBACKS, ids=_ids(CALLBACKS))
def test_checkpoint_loads_strictly_into_the_users_module(info, tmp_path):
    """A checkpoint written with the callback holds only the module's own keys (strict load of a fresh module)."""
    example = info.cls.example()
    trainer = make_trainer(callbacks=list(example.callbacks), max_steps=2, default_root_dir=tmp_path)
    trainer.fit(example.module, datamodule=example.datamodule)
    trainer.save_checkpoint(tmp_path / "plugin.ckpt")
    checkpoint = torch.load(tmp_path / "plugin.ckpt", map_location="cpu", weights_only=False)
    fresh = info.cls.example().module
    fresh.load_state_dict(checkpoint["state_dict"], strict=True)
