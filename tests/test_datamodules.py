import gzip
import shutil

import pytest
import torch

from litmix.datamodules import CharLMDataModule, DigitsDataModule, MNISTDataModule
from litmix.datamodules.mnist import MNIST_FILES, read_idx


def test_mnist_reads_the_original_files(mnist_root):
    dm = MNISTDataModule(mnist_root, train_size=2000, val_size=500, test_size=1000, batch_size=64)
    dm.setup("fit")
    assert len(dm.train_dataset) == 2000
    assert len(dm.val_dataset) == 500
    assert len(dm.test_dataset) == 1000
    x, y, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28)
    assert y.min() >= 0
    assert y.max() <= 9
    # the full training file has the published statistics
    images = read_idx(mnist_root / "train-images-idx3-ubyte.gz")
    assert images.shape == (60000, 28, 28)
    assert abs(images.float().mean().item() - 33.318) < 0.01
    # stratified: every class is present in the subset, in roughly its share
    counts = torch.bincount(dm.train_targets[torch.tensor(dm.train_dataset.indices)], minlength=10)
    assert counts.min() > 150


def test_mnist_finds_parent_folders(mnist_root):
    assert MNISTDataModule(mnist_root.parent).root == mnist_root
    assert MNISTDataModule(mnist_root.parent.parent).root == mnist_root


def test_mnist_missing_files_name_path_and_files(tmp_path, mnist_root):
    shutil.copy(mnist_root / MNIST_FILES[0], tmp_path / MNIST_FILES[0])
    with pytest.raises(FileNotFoundError) as err:
        MNISTDataModule(str(tmp_path))
    assert str(tmp_path) in str(err.value)
    assert all(f in str(err.value) for f in MNIST_FILES)


def test_mnist_rejects_a_non_idx_file(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x0c\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX uint8 file"):
        read_idx(path)


@pytest.mark.parametrize(("kwargs", "match"), [({"batch_size": 0}, "batch_size"), ({"val_size": -1}, "val_size")])
def test_mnist_bad_sizes(mnist_root, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MNISTDataModule(mnist_root, **kwargs)


def test_digits_split_is_stratified_and_seeded():
    a, b = DigitsDataModule(seed=1), DigitsDataModule(seed=1)
    a.setup()
    b.setup()
    assert a.train_dataset.indices == b.train_dataset.indices
    assert not set(a.train_dataset.indices) & set(a.val_dataset.indices)
    small = DigitsDataModule(train_size=100, flatten=False)
    small.setup()
    assert len(small.train_dataset) == 100
    assert small.train_dataset[0][0].shape == (1, 8, 8)


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"batch_size": 0}, "batch_size"), ({"val_fraction": 1.0}, "val_fraction")]
)
def test_digits_bad_args(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DigitsDataModule(**kwargs)


def test_char_lm_on_tiny_shakespeare(shared_data):
    dm = CharLMDataModule(str(shared_data / "tinyshakespeare" / "input.txt"), block_size=64, batch_size=8)
    dm.setup("fit")
    assert dm.vocab_size == 65
    x, y, _ = next(iter(dm.train_dataloader()))
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    assert dm.decode(dm.encode("ROMEO:")) == "ROMEO:"


def test_char_lm_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such text file"):
        CharLMDataModule(str(tmp_path / "missing.txt"))
    short = tmp_path / "short.txt"
    short.write_text("abc")
    with pytest.raises(ValueError, match="too short"):
        CharLMDataModule(str(short), block_size=8)
    with pytest.raises(ValueError, match="block_size"):
        CharLMDataModule(str(short), block_size=0)


def test_shuffled_digits_resume_matches_uninterrupted(tmp_path):
    from litmix.testing import TinyClassifier, assert_resume_matches

    assert_resume_matches(
        lambda: [], lambda: TinyClassifier(64, 16, 10), lambda: DigitsDataModule(batch_size=256), tmp_path
    )
