"""The package list setup.py computes matches the folders on disk; __all__ matches the registry."""

import importlib
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import litmix

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("callbacks", "plugins", "datamodules")


def _packages_on_disk() -> set[str]:
    found = set()
    for init in (REPO / "litmix").rglob("__init__.py"):
        rel = init.parent.relative_to(REPO)
        found.add(".".join(rel.parts))
    for folder in FOLDERS:
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO)
            found.add("litmix." + ".".join(rel.parts))
    return {p for p in found if "__pycache__" not in p}


def test_setup_lists_every_package(monkeypatch):
    captured = {}
    import setuptools

    monkeypatch.setattr(setuptools, "setup", lambda **kw: captured.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"))
    assert set(captured["packages"]) == _packages_on_disk()


@pytest.mark.parametrize("kind", ["callback", "plugin", "datamodule"])
def test_all_matches_registry(kind):
    package = importlib.import_module(f"litmix.{kind}s")
    registered = {p.name for p in litmix.list_plugins(kind=kind)}
    assert set(package.__all__) == registered


def test_no_second_copy_from_folder_names(tmp_path):
    code = (
        "import sys, litmix; litmix.load_all(); "
        "print(sorted({'callbacks', 'plugins', 'datamodules'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.strip() == "[]"


def test_registry_holds_the_canonical_classes():
    for info in litmix.list_plugins():
        assert info.cls.__module__.startswith("litmix."), info


def test_cli_lists_plugins():
    out = subprocess.run(
        [sys.executable, "-m", "litmix.cli", "list", "--family", "sparsity"], capture_output=True, text=True, check=True
    ).stdout
    assert "GradualPruning" in out
    assert "KnowledgeDistillation" not in out


def test_cli_rejects_unknown_family():
    proc = subprocess.run(
        [sys.executable, "-m", "litmix.cli", "list", "--family", "nope"], capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "nope" in proc.stderr


def test_cli_fits_a_yaml_config_mixing_callbacks(tmp_path):
    config = REPO / "examples" / "configs" / "digits_prune_score.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "litmix.cli",
            "fit",
            "--config",
            str(config),
            "--trainer.max_epochs=2",
            "--trainer.enable_progress_bar=false",
            f"--trainer.default_root_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "global magnitude pruning 0.000 -> 0.800" in proc.stdout + proc.stderr


def _litmix(*args, cwd):
    return subprocess.run([sys.executable, "-m", "litmix.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_cli_fit_does_not_warn_about_args_and_argv(tmp_path):
    config = REPO / "examples" / "configs" / "digits_prune_score.yaml"
    proc = _litmix(
        "fit",
        "--config",
        str(config),
        "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={tmp_path}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sys.argv" not in proc.stderr


def test_cli_help_does_not_offer_the_base_classes(tmp_path):
    proc = _litmix("fit", "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "GradualPruning" in proc.stdout
    for base in ("LitmixCallback", "LossTermCallback", "LitmixModule", "LitmixDataModule"):
        assert base not in proc.stdout, f"{base} is offered as a selectable class"


def test_cli_out_of_range_value_is_a_usage_error(tmp_path):
    config = REPO / "examples" / "configs" / "digits_prune_score.yaml"
    proc = _litmix(
        "fit",
        "--config",
        str(config),
        "--trainer.callbacks+=GradualPruning",
        "--trainer.callbacks.target_sparsity=1.5",
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert "target_sparsity" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.splitlines()) < 15
