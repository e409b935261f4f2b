import gzip
import math
import shutil
import time

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DistributedSampler

from litmix.base import Example, LitmixDataModule
from litmix.data import EpochShuffleSampler
from litmix.datamodules import CharLMDataModule, DigitsDataModule, MNISTDataModule
from litmix.datamodules.mnist import MNIST_FILES, read_idx, write_idx
from litmix.testing import make_trainer, run_ddp

DATAMODULES = [DigitsDataModule, MNISTDataModule, CharLMDataModule]


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
    with pytest.raises(FileNotFoundError, match=r"CharLMDataModule\(path=.*no such file"):
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


# --- argument validation (issue 6, section 6) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "arg"),
    [
        ({"train_size": -1}, ValueError, "train_size"),  # was accepted: the fit ran 0 steps
        ({"train_size": 0}, ValueError, "train_size"),
        ({"train_size": 5000}, ValueError, "train_size"),
        ({"train_size": 64.0}, TypeError, "train_size"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"batch_size": True}, TypeError, "batch_size"),
        ({"val_fraction": float("nan")}, ValueError, "val_fraction"),
        ({"val_fraction": "0.3"}, TypeError, "val_fraction"),
        ({"flatten": 1}, TypeError, "flatten"),
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**40}, ValueError, "seed"),
        ({"seed": 0.5}, TypeError, "seed"),
    ],
)
def test_digits_rejects_bad_arguments(kwargs, exc, arg):
    with pytest.raises(exc, match=rf"DigitsDataModule\({arg}=.*{arg} must"):
        DigitsDataModule(**kwargs)


def test_digits_train_size_larger_than_the_split_fails_at_setup():
    dm = DigitsDataModule(train_size=1500)  # > 1258 training images with val_fraction=0.3
    with pytest.raises(ValueError, match=r"train_size=1500.*<= 1258"):
        dm.setup("fit")


def test_digits_negative_train_size_no_longer_fits_zero_steps():
    with pytest.raises(ValueError, match="train_size"):
        make_trainer(max_steps=2).fit(*DigitsDataModule.example()[:1], datamodule=DigitsDataModule(train_size=-1))


@pytest.mark.parametrize(
    ("kwargs", "exc", "arg"),
    [
        ({"batch_size": 2.5}, TypeError, "batch_size"),  # was caught only by torch's DataLoader
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"val_size": -1}, ValueError, "val_size"),
        ({"val_size": 60_000}, ValueError, "val_size"),
        ({"train_size": 0}, ValueError, "train_size"),
        ({"train_size": "all"}, TypeError, "train_size"),
        ({"test_size": 10_001}, ValueError, "test_size"),
        ({"flatten": "yes"}, TypeError, "flatten"),
        ({"seed": -3}, ValueError, "seed"),
        ({"download": 1}, TypeError, "download"),
        ({"root": 3}, TypeError, "root"),
    ],
)
def test_mnist_rejects_bad_arguments_before_touching_the_disk(tmp_path, kwargs, exc, arg):
    kwargs = {"root": str(tmp_path / "nothing-here"), **kwargs}
    with pytest.raises(exc, match=rf"MNISTDataModule\({arg}=.*{arg}"):
        MNISTDataModule(**kwargs)
    assert not (tmp_path / "nothing-here").exists()


def test_mnist_val_size_larger_than_a_small_file_fails_at_setup(tmp_path):
    for prefix, n in (("train", 30), ("t10k", 10)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", torch.zeros(n, 28, 28, dtype=torch.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", (torch.arange(n) % 10).to(torch.uint8))
    with pytest.raises(ValueError, match=r"val_size=100.*< 30"):
        MNISTDataModule(str(tmp_path), val_size=100).setup("fit")


@pytest.mark.parametrize(
    ("kwargs", "exc", "arg"),
    [
        ({"block_size": 2.0}, TypeError, "block_size"),
        ({"batch_size": -1}, ValueError, "batch_size"),
        ({"val_fraction": 1.5}, ValueError, "val_fraction"),
        ({"max_chars": 0}, ValueError, "max_chars"),
        ({"seed": None}, TypeError, "seed"),
        ({"path": 3}, TypeError, "path"),
    ],
)
def test_char_lm_rejects_bad_arguments(tmp_path, kwargs, exc, arg):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 50)
    with pytest.raises(exc, match=rf"CharLMDataModule\({arg}=.*{arg}"):
        CharLMDataModule(**{"path": str(text), **kwargs})


def test_char_lm_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="text file"):
        CharLMDataModule(str(tmp_path))


def test_epoch_shuffle_sampler_validates_and_takes_any_seed():
    with pytest.raises(ValueError, match="seed"):
        EpochShuffleSampler(4, seed=-1)
    with pytest.raises(TypeError, match="num_samples"):
        EpochShuffleSampler(4.0)
    assert sorted(EpochShuffleSampler(5, seed=2**62)) == [0, 1, 2, 3, 4]  # no generator overflow


# --- the DataModule contract (issue 6, section 1) --------------------------------------------------------


@pytest.mark.parametrize("cls", DATAMODULES)
def test_example_is_an_example_that_fits_two_steps_fast(cls):
    assert issubclass(cls, LitmixDataModule)
    assert "family" not in vars(cls)
    example = cls.example()
    assert isinstance(example, Example)
    assert isinstance(example.datamodule, cls)
    assert example.callbacks == []
    start = time.perf_counter()
    trainer = make_trainer(max_steps=2)
    trainer.fit(example.module, datamodule=example.datamodule)
    assert trainer.global_step == 2
    assert time.perf_counter() - start < 2.0
    state = example.datamodule.state_dict()
    assert state["version"] == cls.state_version
    cls.example().datamodule.load_state_dict(state)


def _order(datamodule, epoch):
    loader = datamodule.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return torch.cat([batch[2] for batch in loader]).tolist()


@pytest.mark.parametrize("cls", DATAMODULES)
def test_training_order_depends_only_on_seed_and_epoch(cls):
    a, b = cls.example().datamodule, cls.example().datamodule
    a.setup("fit")
    b.setup("fit")
    assert _order(a, 0) == _order(b, 0)
    assert _order(a, 1) == _order(b, 1)
    assert _order(a, 0) != _order(a, 1)
    assert sorted(_order(a, 0)) == sorted(_order(a, 1))
    assert len(_order(a, 0)) == len(a.train_dataset)
    assert _order(a, 0) == _order(a, 0)  # set_epoch back: the same order again (a resume)


class _RecordShards(Callback):
    """Each rank records the sample indices it trains on; at every epoch end the ranks compare."""

    def __init__(self, expected):
        self.expected = expected  # {epoch: the full permutation of sample indices}
        self.seen = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen += batch[2].tolist()

    def on_train_epoch_end(self, trainer, pl_module):
        import torch.distributed as dist

        world = dist.get_world_size()
        shards = [None] * world
        dist.all_gather_object(shards, self.seen)
        epoch = trainer.current_epoch
        perm = self.expected[epoch]
        padding = math.ceil(len(perm) / world) * world - len(perm)
        for rank, shard in enumerate(shards):
            # Lightning's DistributedSamplerWrapper (shuffle=True for training, seeded by PL_GLOBAL_SEED + epoch)
            # picks positions of our (seed, epoch) permutation, the same on every rank
            positions = DistributedSampler(range(len(perm)), num_replicas=world, rank=rank, shuffle=True, seed=0)
            positions.set_epoch(epoch)
            assert shard == [perm[p] for p in positions], f"rank {rank} epoch {epoch}: unexpected shard"
        union = [i for shard in shards for i in shard]
        assert sorted(set(union)) == sorted(perm), "the shards do not cover the training set"
        assert len(union) - len(set(union)) == padding, "shards overlap beyond the padding"
        pl_module.log("shards_checked", float(trainer.current_epoch + 1), rank_zero_only=True)


@pytest.mark.ddp
@pytest.mark.parametrize("cls", DATAMODULES)
def test_ddp_shards_are_disjoint_complete_and_seeded(cls, monkeypatch):
    example = cls.example()
    dm = example.datamodule
    dm.setup("fit")
    expected = {epoch: _order(dm, epoch) for epoch in (0, 1)}
    assert expected[0] != expected[1]
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)  # the wrapper's own shuffle then uses seed 0
    trainer = run_ddp([_RecordShards(expected)], example.module, dm, max_steps=-1, max_epochs=2)
    assert trainer.callback_metrics["shards_checked"].item() == 2.0
