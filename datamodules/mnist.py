"""MNIST from the four original IDX ``.gz`` files, without torchvision; optionally downloaded (checksums verified)."""

from __future__ import annotations

import atexit
import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from litmix.base import Example, LitmixDataModule
from litmix.data import EpochShuffleSampler, IndexedDataset, stratified_split
from litmix.registry import register
from litmix.validation import MissingPathError, check_bool, check_int, check_path, check_type

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
#: Where ``download=True`` looks, in order (torchvision's list).
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
#: MD5 of each file as published by torchvision (``torchvision.datasets.MNIST.resources``).
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
#: SHA-256 of the same files (computed from files whose MD5 match the list above).
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MNIST_TRAIN_SIZE, MNIST_TEST_SIZE = 60_000, 10_000
MEAN, STD = 0.1307, 0.3081
MAX_SEED = 2**32 - 1
_CHUNK = 1 << 16


class MNISTDownloadError(RuntimeError):
    """No mirror delivered a file with the expected checksum (offline, blocked, or corrupted)."""


def _candidates(base: Path) -> tuple[Path, ...]:
    return (base, base / "raw", base / "MNIST" / "raw", base / "mnist" / "MNIST" / "raw")


def find_mnist_root(root: str | Path) -> Path:
    """The folder holding the four MNIST files: ``root``, ``root/raw``, ``root/MNIST/raw`` or ``root/mnist/MNIST/raw``.

    Raises:
        FileNotFoundError: naming the path searched and the files expected (a :class:`MissingPathError`, so
            also a ``ValueError``).
    """
    base = Path(root).expanduser()
    for candidate in _candidates(base):
        if all((candidate / f).is_file() for f in MNIST_FILES):
            return candidate
    raise MissingPathError(
        f"MNISTDataModule(root={str(root)!r}): no MNIST files found in {base} (nor raw/, MNIST/raw/ or "
        f"mnist/MNIST/raw/ below it); expected {', '.join(MNIST_FILES)}. Pass download=True to fetch them "
        f"(from {', '.join(MNIST_MIRRORS)}), or place the four files there by hand"
    )


def file_digests(path: str | Path) -> tuple[str, str]:
    """``(md5, sha256)`` hex digests of a file."""
    md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
    return md5.hexdigest(), sha.hexdigest()


def _checksum_problem(filename: str, md5: str, sha: str) -> str | None:
    if sha != MNIST_SHA256[filename] or md5 != MNIST_MD5[filename]:
        return f"checksum mismatch: got sha256 {sha}, expected {MNIST_SHA256[filename]}"
    return None


def _fetch(url: str, filename: str, folder: Path, timeout: float) -> str | None:
    """Download ``url`` to ``folder/filename`` atomically; returns ``None`` on success, else why it failed.

    The bytes go to a temporary file in ``folder`` that replaces the target only once complete and verified;
    whatever happens (error, bad checksum, KeyboardInterrupt), the temporary file is removed.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=folder)
    try:
        md5, sha = hashlib.md5(usedforsecurity=False), hashlib.sha256()
        request = urllib.request.Request(url, headers={"User-Agent": "litmix (MNISTDataModule)"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                md5.update(chunk)
                sha.update(chunk)
        problem = _checksum_problem(filename, md5.hexdigest(), sha.hexdigest())
        if problem is None:
            os.replace(tmp, folder / filename)
        return problem
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, HTTPError, timeouts are OSErrors
        return f"{type(err).__name__}: {getattr(err, 'reason', None) or err}"
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def download_mnist(
    folder: str | Path, mirrors: tuple[str, ...] | list[str] = MNIST_MIRRORS, timeout: float = 60.0
) -> Path:
    """Download the four MNIST files into ``folder`` (created if needed), verifying MD5 and SHA-256.

    Files already present with the right checksums are kept; each missing file is tried on every mirror in
    order, written to a temporary file in ``folder`` and moved into place only when complete and verified, so
    an interrupted download leaves no partial file behind.

    Raises:
        ValueError: if a file already in ``folder`` has the wrong checksum (it is left for you to inspect).
        MNISTDownloadError: if no mirror delivered a verified file; the message names every URL tried, why it
            failed, and how to place the files by hand.
    """
    folder = Path(folder).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    for filename in MNIST_FILES:
        target = folder / filename
        if target.is_file():
            problem = _checksum_problem(filename, *file_digests(target))
            if problem is not None:
                raise ValueError(f"MNISTDataModule: {target} exists but fails verification ({problem}); delete it")
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + filename
            problem = _fetch(url, filename, folder, timeout)
            if problem is None:
                break
            failures.append(f"  {url}: {problem}")
        else:
            raise MNISTDownloadError(
                f"MNISTDataModule(download=True): could not download {filename} from any mirror:\n"
                + "\n".join(failures)
                + f"\nIf this machine is offline, download the four files ({', '.join(MNIST_FILES)}) elsewhere "
                f"from one of these mirrors and place them in {folder} (or pass root= a folder holding them)."
            )
    return folder


def read_idx(path: Path) -> Tensor:
    """Read one gzipped IDX file into a uint8 tensor.

    Raises:
        ValueError: if the magic number is not that of an IDX uint8 file.
    """
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an IDX uint8 file (magic number {magic})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)
    return torch.from_numpy(data.copy())


def write_idx(path: str | Path, data: Tensor) -> None:
    """Write a uint8 tensor as one gzipped IDX file (the inverse of :func:`read_idx`).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "x-idx1-ubyte.gz")
        >>> write_idx(path, torch.tensor([3, 1, 4], dtype=torch.uint8))
        >>> read_idx(path).tolist()
        [3, 1, 4]
    """
    header = (0x0800 | data.dim()).to_bytes(4, "big") + b"".join(int(s).to_bytes(4, "big") for s in data.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + data.to(torch.uint8).contiguous().numpy().tobytes())


_EXAMPLE_DIR: list[Path] = []


def _example_root() -> Path:
    """A per-process folder with a tiny MNIST-format set (random 28x28 images, NOT MNIST), removed at exit."""
    if _EXAMPLE_DIR and all((_EXAMPLE_DIR[0] / f).is_file() for f in MNIST_FILES):
        return _EXAMPLE_DIR[0]
    folder = Path(tempfile.mkdtemp(prefix="litmix-mnist-example-"))
    owner = os.getpid()

    def cleanup() -> None:
        if os.getpid() == owner:  # not in forked DDP workers
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(cleanup)
    gen = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 120), ("t10k", 40)):
        labels = torch.arange(n) % 10
        images = torch.randint(0, 64, (n, 28, 28), generator=gen)
        images[torch.arange(n), labels * 2 + 4, 4:24] = 255  # a class-dependent bright row: learnable
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images.to(torch.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    _EXAMPLE_DIR[:] = [folder]
    return folder


@register("datamodule", "data")
class MNISTDataModule(LitmixDataModule):
    """MNIST read from the original IDX ``.gz`` files (no torchvision), downloaded on request.

    Items are ``(x, y, index)``; ``x`` is normalised with the usual mean/std, as ``1 x 28 x 28`` images
    or flat 784-vectors. Validation = a stratified part of the training files; test = the t10k files.
    The training order depends only on ``(seed, epoch)``; under DDP the ranks get disjoint shards.

    With ``download=True``, :meth:`prepare_data` (run by Lightning on one process per node) fetches missing
    files into ``root/MNIST/raw`` from ``mirrors`` (default: torchvision's, :data:`MNIST_MIRRORS`), verifies
    each file's MD5 (torchvision's published values) and SHA-256, and moves it into place only when complete
    and verified. Offline, it raises :class:`MNISTDownloadError` naming every URL tried and how to place
    the files by hand.

    Args:
        root: folder with the four ``.gz`` files (``root``, ``root/raw``, ``root/MNIST/raw`` or
            ``root/mnist/MNIST/raw``), or where ``download=True`` puts them (``root/MNIST/raw``).
        batch_size: training batch size (>= 1).
        val_size: training images held out for validation, in [0, 59999].
        train_size: keep about this many training images (stratified, rounded per class), all when ``None``.
        test_size: keep the first this many test images (1 to 10000), all when ``None``.
        flatten: flat 784-vectors instead of images.
        seed: seed of the split and the shuffling, in [0, 2**32 - 1].
        download: fetch missing files in :meth:`prepare_data` (checksums verified).
        mirrors: base URLs to download from, tried in order (default: :data:`MNIST_MIRRORS`).

    Raises:
        TypeError: for an argument of the wrong type (e.g. ``batch_size=2.5``), naming it.
        ValueError: for an out-of-range size or seed, or an empty or malformed mirror list.
        FileNotFoundError: when ``root`` lacks the files and ``download=False`` (at construction, before any
            compute; a :class:`~litmix.validation.MissingPathError`, so also a ``ValueError``).
        MNISTDownloadError: from :meth:`prepare_data` when no mirror delivers a verified file.

    Example:
        >>> dm = MNISTDataModule.example().datamodule  # a tiny MNIST-format set; real use: MNISTDataModule("data")
        >>> dm.setup("fit")
        >>> x, y, idx = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), len(dm.train_dataset), len(dm.test_dataset)
        ((16, 784), 100, 40)
    """

    num_classes = 10

    def __init__(
        self,
        root: str,
        batch_size: int = 128,
        val_size: int = 5000,
        train_size: int | None = None,
        test_size: int | None = None,
        flatten: bool = False,
        seed: int = 0,
        download: bool = False,
        mirrors: list[str] | None = None,
    ) -> None:
        name = type(self).__name__
        check_path(name, "root", root, must_exist=False)
        batch_size = check_int(name, "batch_size", batch_size, low=1)
        val_size = check_int(name, "val_size", val_size, low=0, high=MNIST_TRAIN_SIZE - 1)
        train_size = check_int(name, "train_size", train_size, low=1, high=MNIST_TRAIN_SIZE, allow_none=True)
        test_size = check_int(name, "test_size", test_size, low=1, high=MNIST_TEST_SIZE, allow_none=True)
        flatten = check_bool(name, "flatten", flatten)
        seed = check_int(name, "seed", seed, low=0, high=MAX_SEED)
        download = check_bool(name, "download", download)
        check_type(name, "mirrors", mirrors, (list, tuple), allow_none=True)
        if mirrors is not None:
            if not mirrors:
                raise ValueError(f"{name}(mirrors={mirrors!r}): mirrors must be a non-empty list of URLs or None")
            for url in mirrors:
                check_type(name, "mirrors", url, str)
                if "://" not in url:
                    raise ValueError(f"{name}(mirrors={mirrors!r}): every mirror must be a URL, got {url!r}")
        super().__init__()
        self.root_arg = str(root)
        self.mirrors = tuple(mirrors) if mirrors is not None else MNIST_MIRRORS
        self.download = download
        try:
            self.root = find_mnist_root(root)
        except FileNotFoundError:
            if not download:
                raise
            self.root = Path(root).expanduser() / "MNIST" / "raw"
        self.batch_size, self.val_size, self.train_size = batch_size, val_size, train_size
        self.test_size, self.flatten, self.seed = test_size, flatten, seed
        self.train_dataset: Dataset
        self.val_dataset: Dataset
        self.test_dataset: Dataset

    @classmethod
    def example(cls) -> Example:
        """A :class:`~litmix.testing.TinyClassifier` on a tiny MNIST-format set (120 + 40 random images).

        The files are synthetic (random noise with a class-dependent bright row), written once per process to
        a temporary folder that is removed at exit: the example exercises the real reading, splitting and
        loading code without any data folder or network.
        """
        from litmix.testing import TinyClassifier

        datamodule = cls(str(_example_root()), batch_size=16, val_size=20, flatten=True)
        return Example(TinyClassifier(in_features=784, num_classes=10), datamodule, [])

    def _missing(self) -> list[str]:
        return [f for f in MNIST_FILES if not (self.root / f).is_file()]

    def prepare_data(self) -> None:
        """With ``download=True``, fetch the missing files (Lightning calls this on one process per node).

        Raises:
            MNISTDownloadError: if no mirror delivers a verified file.
            ValueError: if a file already there fails verification.
        """
        if self.download:
            download_mnist(self.root, self.mirrors)

    def _tensors(self, prefix: str) -> tuple[Tensor, Tensor]:
        images = read_idx(self.root / f"{prefix}-images-idx3-ubyte.gz").float().div_(255.0)
        images = images.sub_(MEAN).div_(STD).unsqueeze(1)
        if self.flatten:
            images = images.flatten(1)
        return images, read_idx(self.root / f"{prefix}-labels-idx1-ubyte.gz").long()

    def setup(self, stage: str | None = None) -> None:
        """Read the files and split (idempotent); downloads first when ``download=True`` and files are missing.

        Raises:
            FileNotFoundError: if files are missing and ``download=False``.
            ValueError: if ``val_size`` or ``train_size`` do not fit the training file.
        """
        if hasattr(self, "full_train"):
            return
        name = type(self).__name__
        if self._missing():
            if not self.download:
                find_mnist_root(self.root_arg)  # raises, naming the files
            self.prepare_data()
        x, y = self._tensors("train")
        if self.val_size >= len(y):
            raise ValueError(f"{name}(val_size={self.val_size}): val_size must be < {len(y)}, the training images")
        rest, val_idx = stratified_split(y, 1.0 - self.val_size / len(y), seed=self.seed)
        if self.train_size is not None and self.train_size < len(rest):
            keep, _ = stratified_split(y[rest], self.train_size / len(rest), seed=self.seed)
            rest = rest[keep]
        if len(rest) == 0:
            raise ValueError(
                f"{name}(train_size={self.train_size}, val_size={self.val_size}): no training image is left; "
                "raise train_size or lower val_size"
            )
        self.full_train = IndexedDataset(TensorDataset(x, y))
        self.train_targets = y
        self.train_dataset = Subset(self.full_train, rest.tolist())
        self.val_dataset = Subset(self.full_train, val_idx.tolist())
        tx, ty = self._tensors("t10k")
        if self.test_size is not None:
            tx, ty = tx[: self.test_size], ty[: self.test_size]
        self.test_dataset = IndexedDataset(TensorDataset(tx, ty))

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches; the order depends only on (seed, epoch), so resumed runs match."""
        sampler = EpochShuffleSampler(len(self.train_dataset), seed=self.seed)  # type: ignore[arg-type]
        return DataLoader(self.train_dataset, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return DataLoader(self.val_dataset, batch_size=512)

    def test_dataloader(self) -> DataLoader:
        """The t10k test set."""
        return DataLoader(self.test_dataset, batch_size=512)
