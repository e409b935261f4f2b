"""examples/quickstart.py: runs with nothing but pip (digits bundled with scikit-learn), and on MNIST from a root."""

import functools
import http.server
import importlib.util
import json
import shutil
import sys
import threading
from pathlib import Path

import pytest

QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
PROXIES = {"synflow", "snip", "grad_norm", "naswot", "params", "flops"}


@pytest.fixture(scope="module")
def quickstart():
    spec = importlib.util.spec_from_file_location("litmix_quickstart", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    sys.modules["litmix_quickstart"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("litmix_quickstart", None)


def _check_summary(summary, out, sparsity=0.8):
    rows = summary["models"]
    assert list(rows) == [
        "teacher (dense)",
        "student alone (dense)",
        "student pruned only",
        "student distilled + pruned",
    ]
    for row in ("student pruned only", "student distilled + pruned"):
        assert abs(rows[row]["sparsity"] - sparsity) < 0.01, rows[row]
    # the two pruned students have the same size: same non-zero weight count
    assert rows["student pruned only"]["weights"] == rows["student distilled + pruned"]["weights"]
    assert rows["student alone (dense)"]["sparsity"] == 0.0
    assert summary["distillation_gain"] == pytest.approx(
        rows["student distilled + pruned"]["test accuracy"] - rows["student pruned only"]["test accuracy"]
    )
    assert set(summary["proxies"]) == PROXIES
    assert abs(summary["unlearning"]["sparsity_after"] - sparsity) < 0.01  # unlearning kept the sparsity
    table = (out / "summary.md").read_text()
    assert "student pruned only" in table
    assert "distillation bought" in table
    assert json.loads((out / "summary.json").read_text())["models"] == rows
    for phase in ("teacher", "student-alone", "student-pruned", "student-distilled-pruned", "unlearn"):
        assert list((out / phase).glob("version_*/metrics.csv")), f"no CSV log for {phase}"


def test_quickstart_needs_no_data_folder(quickstart, tmp_path, monkeypatch):
    """The README's first command: no --data, scikit-learn's digits; CSV and offline W&B logs per phase."""
    monkeypatch.chdir(tmp_path)  # nothing beside the checkout: no ../shared/data
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "runs"
    summary = quickstart.main(["--out", str(out), "--epochs", "2", "--teacher-epochs", "2", "--unlearn-epochs", "1"])
    assert summary["data"] == "digits"
    _check_summary(summary, out)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 5, runs  # one W&B run per phase


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quickstart_default_run_shows_what_distillation_buys(quickstart, tmp_path, seed):
    """The numbers the README quotes, on the seeds it names: the default digits run.

    Measured (seeds 0 / 1 / 2): teacher 97.40 / 97.59 / 97.03 %, pruned only 88.50 / 86.83 / 88.31 %, distilled +
    pruned 91.09 / 89.24 / 91.28 % (gain +2.60 / +2.41 / +2.97 points); forgotten-class test accuracy 94.5 -> 12.7,
    92.7 -> 50.9, 98.2 -> 0.0 %; other classes 90.7 -> 87.8, 88.8 -> 87.0, 90.5 -> 83.7 %.
    """
    out = tmp_path / "runs"
    summary = quickstart.main(["--out", str(out), "--no-wandb", "--seed", str(seed)])
    _check_summary(summary, out)
    assert (summary["teacher_images"], summary["student_images"]) == (1258, 100)
    rows = summary["models"]
    assert rows["teacher (dense)"]["test accuracy"] > 0.96
    assert summary["distillation_gain"] >= 0.015, rows
    unlearn = summary["unlearning"]
    forget_set_before, forget_set_after = unlearn["forget_set_accuracy"]
    forget_before, forget_after = unlearn["forget_class_test_accuracy"]
    other_before, other_after = unlearn["other_classes_test_accuracy"]
    assert forget_set_after <= 0.6 < forget_set_before
    assert forget_after <= forget_before - 0.3
    assert other_after >= other_before - 0.1


@pytest.mark.slow
def test_quickstart_on_mnist_from_a_root(quickstart, tmp_path, mnist_root):
    """The README's second example, shortened: MNIST read from a data root."""
    out = tmp_path / "runs"
    args = ["--data", str(mnist_root.parent.parent), "--out", str(out), "--no-wandb", "--train-size", "3000"]
    summary = quickstart.main([*args, "--epochs", "1", "--teacher-epochs", "1", "--unlearn-epochs", "1"])
    assert summary["data"] == "mnist"
    _check_summary(summary, out)
    assert summary["models"]["teacher (dense)"]["test accuracy"] > 0.7


@pytest.mark.slow
def test_quickstart_downloads_mnist(quickstart, tmp_path, mnist_root):
    """The README's second example, shortened, without the internet: --download from a local mirror."""
    site = tmp_path / "site" / "mnist"
    site.mkdir(parents=True)
    for path in mnist_root.glob("*.gz"):
        shutil.copy(path, site / path.name)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}/mnist/"
        args = ["--download", "--data", str(tmp_path / "data"), "--mirror", mirror, "--no-wandb"]
        summary = quickstart.main(
            [*args, "--out", str(tmp_path / "runs"), "--train-size", "2000", "--epochs", "1", "--teacher-epochs", "1"]
        )
    finally:
        server.shutdown()
        server.server_close()
    assert summary["data"] == "mnist"
    assert sorted(p.name for p in (tmp_path / "data" / "MNIST" / "raw").iterdir()) == sorted(
        p.name for p in mnist_root.glob("*.gz")
    )
