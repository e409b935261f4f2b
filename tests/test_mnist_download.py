"""MNISTDataModule(download=True) without the internet: a local HTTP server serves copies of the offline files."""

import functools
import hashlib
import http.server
import shutil
import socket
import threading
import urllib.request

import pytest

from litmix.datamodules import MNISTDataModule
from litmix.datamodules.mnist import (
    MNIST_FILES,
    MNIST_MD5,
    MNIST_MIRRORS,
    MNIST_SHA256,
    MNISTDownloadError,
    download_mnist,
    file_digests,
)

# Published by torchvision (torchvision/datasets/mnist.py, MNIST.resources), copied here independently of the
# module so that a typo in either place fails this test.
TORCHVISION_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        return


@pytest.fixture
def serve(tmp_path):
    """``serve(folder) -> base URL`` of a thread-run HTTP server on 127.0.0.1 (a free port) for ``folder``."""
    servers = []

    def start(folder):
        handler = functools.partial(_Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/mnist/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def mirror(mnist_root, tmp_path):
    """A folder laid out like a mirror: ``<site>/mnist/<the four files>``."""
    site = tmp_path / "site"
    (site / "mnist").mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(mnist_root / name, site / "mnist" / name)
    return site


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hardcoded_checksums_match_torchvision_and_the_real_files(mnist_root):
    assert MNIST_MD5 == TORCHVISION_MD5
    for name in MNIST_FILES:
        md5, sha = file_digests(mnist_root / name)
        assert md5 == TORCHVISION_MD5[name]
        assert sha == MNIST_SHA256[name]
        assert sha == hashlib.sha256((mnist_root / name).read_bytes()).hexdigest()
    assert MNIST_MIRRORS[0].startswith("https://ossci-datasets.s3.amazonaws.com/mnist")


def test_download_from_a_local_mirror(mirror, serve, tmp_path, mnist_root):
    root = tmp_path / "data"
    dm = MNISTDataModule(str(root), download=True, mirrors=[serve(mirror)], val_size=100, test_size=50)
    assert not root.exists()  # construction touches neither disk nor network
    dm.prepare_data()
    raw = root / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES)  # no temporary files left
    for name in MNIST_FILES:
        assert (raw / name).read_bytes() == (mnist_root / name).read_bytes()
    dm.setup("fit")
    assert len(dm.train_dataset) == 59_900
    assert len(dm.test_dataset) == 50
    # a second data module finds the files without downloading (the mirror is gone)
    again = MNISTDataModule(str(root), download=True, mirrors=[f"http://127.0.0.1:{_free_port()}/"])
    assert again.root == raw
    again.prepare_data()  # verifies the present files, fetches nothing


def test_setup_downloads_when_prepare_data_was_not_called(mirror, serve, tmp_path):
    dm = MNISTDataModule(str(tmp_path / "d"), download=True, mirrors=[serve(mirror)], val_size=0, test_size=10)
    dm.setup("fit")
    assert len(dm.train_dataset) == 60_000


def test_falls_back_to_the_next_mirror(mirror, serve, tmp_path):
    dead = f"http://127.0.0.1:{_free_port()}/mnist/"
    download_mnist(tmp_path / "raw", [dead, serve(mirror)])
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == sorted(MNIST_FILES)


def test_checksum_mismatch_is_an_error_and_leaves_no_file(mirror, serve, tmp_path):
    bad = mirror / "mnist" / "train-labels-idx1-ubyte.gz"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    url = serve(mirror)
    folder = tmp_path / "raw"
    with pytest.raises(MNISTDownloadError) as err:
        download_mnist(folder, [url])
    message = str(err.value)
    assert "train-labels-idx1-ubyte.gz" in message
    assert "checksum mismatch" in message
    assert MNIST_SHA256["train-labels-idx1-ubyte.gz"] in message
    assert url + "train-labels-idx1-ubyte.gz" in message
    # the file before it arrived intact; the corrupted one and every temporary file are gone
    assert sorted(p.name for p in folder.iterdir()) == ["train-images-idx3-ubyte.gz"]


def test_offline_error_names_the_mirrors_and_the_manual_fix(tmp_path):
    mirrors = [f"http://127.0.0.1:{_free_port()}/a/", f"http://127.0.0.1:{_free_port()}/b/"]
    dm = MNISTDataModule(str(tmp_path / "data"), download=True, mirrors=mirrors)
    with pytest.raises(MNISTDownloadError) as err:
        dm.prepare_data()
    message = str(err.value)
    for url in mirrors:
        assert url + "train-images-idx3-ubyte.gz" in message
    assert "refused" in message.lower()
    assert "place them in" in message
    assert str(tmp_path / "data" / "MNIST" / "raw") in message
    assert all(name in message for name in MNIST_FILES)
    assert list((tmp_path / "data" / "MNIST" / "raw").iterdir()) == []


def test_interrupted_download_leaves_no_partial_file(mirror, serve, tmp_path, monkeypatch):
    class Interrupting:
        def __init__(self, response):
            self.response, self.reads = response, 0

        def read(self, n):
            self.reads += 1
            if self.reads == 3:
                raise KeyboardInterrupt
            return self.response.read(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.response.close()

    real_urlopen = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Interrupting(real_urlopen(*a, **k)))
    folder = tmp_path / "raw"
    with pytest.raises(KeyboardInterrupt):
        download_mnist(folder, [serve(mirror)])
    assert list(folder.iterdir()) == []


def test_a_corrupted_local_file_is_reported_not_replaced(mirror, serve, tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / MNIST_FILES[0]).write_bytes(b"not mnist")
    with pytest.raises(ValueError, match="fails verification"):
        download_mnist(folder, [serve(mirror)])
    assert (folder / MNIST_FILES[0]).read_bytes() == b"not mnist"


def test_without_download_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="download=True") as err:
        MNISTDataModule(str(tmp_path))
    assert isinstance(err.value, ValueError)  # MissingPathError: the constructor fuzz test accepts it


@pytest.mark.parametrize(
    ("mirrors", "exc"),
    [([], ValueError), ("http://x/", TypeError), ([3], TypeError), (["not a url"], ValueError)],
)
def test_bad_mirrors(tmp_path, mirrors, exc):
    with pytest.raises(exc, match="mirrors"):
        MNISTDataModule(str(tmp_path), download=True, mirrors=mirrors)
