import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    return


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The offline data sets (``../shared/data``, or ``$LITMIX_DATA``); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"offline data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def mnist_root(shared_data, tmp_path_factory) -> Path:
    """A writable copy of the MNIST folder (the four .gz files)."""
    dst = tmp_path_factory.mktemp("mnist") / "MNIST"
    shutil.copytree(shared_data / "mnist" / "MNIST", dst)
    return dst / "raw"


@pytest.fixture(scope="session")
def planetoid_root(shared_data, tmp_path_factory) -> Path:
    """A writable session copy of ``planetoid/`` (Cora, CiteSeer; PyG writes processed/ beside raw/).

    Skips when Cora's raw files are absent.
    """
    src = shared_data / "planetoid"
    if not (src / "Cora" / "raw").is_dir():
        pytest.skip(f"Cora raw files not found in {src}")
    root = tmp_path_factory.mktemp("planetoid")
    for folder in sorted(p for p in src.iterdir() if p.is_dir()):
        shutil.copytree(folder, root / folder.name)
    return root


@pytest.fixture(scope="session")
def cora(planetoid_root):
    """Cora (public split) as a PyG ``Data``, loaded once per session: ``.clone()`` it before changing it."""
    from torch_geometric.datasets import Planetoid

    return Planetoid(str(planetoid_root), "Cora")[0]


@pytest.fixture(scope="session")
def cora128(cora):
    """Cora with its 1433 bag-of-words features mapped to 128 by a fixed random projection (cheaper GCN fits)."""
    data = cora.clone()
    proj = torch.randn(data.num_features, 128, generator=torch.Generator().manual_seed(0))
    data.x = data.x @ proj * (10 / data.num_features**0.5)
    return data
