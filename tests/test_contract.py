"""Contract tests generated over the registry: every plugin must satisfy them."""

import pickle

import lightning.pytorch as pl
import lightning.pytorch.callbacks as pl_callbacks
import pytest
import torch_geometric.data
import torch_geometric.datasets
import torch_geometric.nn
import torch_geometric.transforms

import litmix
from litmix.base import LitmixCallback
from litmix.testing import assert_resume_matches, check_plugin, run_ddp

CALLBACKS = [p.cls for p in litmix.list_plugins(kind="callback")]
PLUGINS = [p.cls for p in litmix.list_plugins(kind="plugin")]
ALL = litmix.list_plugins()
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


def _ids(classes):
    return [c.__name__ for c in classes]


def test_registry_is_not_empty():
    families = {p.family for p in ALL}
    assert {"distillation", "sparsity", "proxy", "unlearning"} <= families


@pytest.mark.parametrize("info", ALL, ids=[p.name for p in ALL])
def test_names_docs_and_exports(info):
    assert info.name not in FOREIGN_NAMES, f"{info.name} clashes with a Lightning or PyG name"
    doc = info.cls.__doc__ or ""
    assert "Example" in doc, f"{info.name} docstring lacks an Example section"
    assert "Raises" in doc, f"{info.name} docstring lacks a Raises section"
    package = __import__(f"litmix.{info.kind}s", fromlist=["__all__"])
    assert info.name in package.__all__, f"{info.name} is not exported from litmix.{info.kind}s"
    assert getattr(package, info.name) is info.cls


@pytest.mark.parametrize("cls", CALLBACKS, ids=_ids(CALLBACKS))
def test_callback_contract(cls, tmp_path):
    """Pickle round trip, a 2-step fit, state round trip and resume equivalence."""
    check_plugin(cls, tmp_path)


@pytest.mark.parametrize("cls", CALLBACKS, ids=_ids(CALLBACKS))
def test_callback_state_key_is_per_instance(cls):
    a, b = cls.example(), cls.example()
    assert issubclass(cls, LitmixCallback)
    a.name, b.name = "one", "two"
    assert a.state_key != b.state_key


def _module_example(cls):
    example = cls.example()
    return example if isinstance(example, tuple) else (example, cls.example_datamodule())


@pytest.mark.parametrize("cls", PLUGINS, ids=_ids(PLUGINS))
def test_module_resume_matches_uninterrupted(cls, tmp_path):
    assert_resume_matches(
        lambda: [], lambda: _module_example(cls)[0], lambda: _module_example(cls)[1], tmp_path, atol=1e-6
    )


@pytest.mark.ddp
@pytest.mark.parametrize("cls", PLUGINS, ids=_ids(PLUGINS))
def test_module_ddp(cls):
    module, datamodule = _module_example(cls)
    strategy = "ddp_fork_find_unused_parameters_true"
    trainer = litmix.testing.make_trainer(devices=2, strategy=strategy, max_steps=2)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.state.finished


@pytest.mark.parametrize("cls", PLUGINS, ids=_ids(PLUGINS))
def test_module_contract(cls):
    module, datamodule = _module_example(cls)
    pickle.loads(pickle.dumps(module))
    trainer = litmix.testing.make_trainer(max_steps=2)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2


@pytest.mark.ddp
@pytest.mark.parametrize("cls", CALLBACKS, ids=_ids(CALLBACKS))
def test_callback_ddp(cls):
    trainer = run_ddp([cls.example()], cls.example_module(), cls.example_datamodule(), max_steps=2)
    assert trainer.state.finished
