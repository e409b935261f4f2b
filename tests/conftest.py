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
