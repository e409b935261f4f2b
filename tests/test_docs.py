"""The documentation site builds strictly and its family pages list every registered item.

`mkdocs build --strict` fails on any broken link, anchor or cross-reference and on griffe docstring warnings,
so this also checks the docstrings of every registered item and core module. Skipped where the `docs` extra
(mkdocs-material, mkdocstrings[python]) is not installed.
"""

from __future__ import annotations

import html
import importlib
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs extra is not installed: pip install -e '.[docs]'")
pytest.importorskip("material", reason="the docs extra is not installed: pip install -e '.[docs]'")

import litmix

REPO = Path(__file__).resolve().parents[1]
BUILD_LIMIT_S = 60.0


def _text(page: Path) -> str:
    """Visible text of an HTML page (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8")))


def _docs_module(name: str) -> Any:
    """Import a module of ``docs/`` (the MkDocs hook, the griffe extension)."""
    sys.path.insert(0, str(REPO / "docs"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "docs"))


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (REPO / "mkdocs.yml").is_file():
        pytest.skip("mkdocs.yml not found: the tests run outside the checkout")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}
    cpu0 = _children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall, cpu = time.perf_counter() - start, _children_cpu_s() - cpu0
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    # CPU time (user + sys of the build process): robust to other jobs sharing the cores, unlike wall time
    assert cpu < BUILD_LIMIT_S, f"mkdocs build took {cpu:.1f} s of CPU ({wall:.1f} s wall), limit {BUILD_LIMIT_S} s"
    return out


def test_every_registered_item_is_on_its_family_page(site: Path) -> None:
    items = litmix.list_plugins()
    assert items, "the registry is empty"
    missing = []
    for info in items:
        page = site / "families" / info.family / "index.html"
        assert page.is_file(), f"no family page for {info.family!r} (item {info.name})"
        text = _text(page)
        # the table row, the worked-example section heading and the import line
        if text.count(info.name) < 3 or f"from {info.import_path.rsplit('.', 1)[0]} import {info.name}" not in text:
            missing.append(f"{info.family}/{info.name}")
    assert not missing, f"registered items missing from their family pages: {missing}"


def test_every_registered_item_has_an_api_page_with_its_docstring(site: Path) -> None:
    for info in litmix.list_plugins():
        page = site / "reference" / info.family / info.name / "index.html"
        assert page.is_file(), f"no API page for {info.import_path}"
        raw = page.read_text(encoding="utf-8")
        assert f'id="{info.import_path}"' in raw, f"{page} does not document {info.import_path}"
        summary = (info.cls.__doc__ or "").strip().splitlines()
        if summary:  # compared without Markdown markup and punctuation
            words = _words(_docs_module("griffe_litmix").rewrite(summary[0]))[:6]
            assert " ".join(words) in " ".join(_words(_text(page))), f"{page} lacks the summary {summary[0]!r}"


def test_every_registered_item_has_a_worked_example() -> None:
    """The family pages show each item's docstring `Example:` section: every registered item must have one."""
    parts = _docs_module("gen_pages")._docstring_parts
    missing = [info.import_path for info in litmix.list_plugins() if parts(info.cls)[1] is None]
    assert not missing, f"registered items whose docstring has no Example: section: {missing}"


def test_benchmark_tables_are_pages(site: Path) -> None:
    results = sorted((REPO / "benchmarks" / "results").glob("*.md"))
    for path in results:
        page = site / "benchmarks" / path.stem / "index.html"
        assert page.is_file(), f"{path.name} has no page"
        assert "<table>" in page.read_text(encoding="utf-8") or "|" not in path.read_text(encoding="utf-8")


def test_gen_pages_example_extraction() -> None:
    """The worked example shown on a family page is the docstring's Example: section, and only that."""
    gen_pages = _docs_module("gen_pages")

    def f() -> None:
        """Summary line.

        Args:
            x: nothing.

        Example:
            >>> 1 + 1
            2

        Raises:
            ValueError: never.
        """

    summary, example = gen_pages._docstring_parts(f)
    assert summary == "Summary line."
    assert example == ">>> 1 + 1\n2"

    def g() -> None:
        """No example here,
        a summary on two lines.

        Body.
        """

    assert gen_pages._docstring_parts(g) == ("No example here, a summary on two lines.", None)

    class Base:
        """Base docstring.

        Example:
            >>> 1
        """

    class Child(Base):
        pass

    assert gen_pages._docstring_parts(Child) == ("", None)  # never the base class's docstring


def test_paper_links() -> None:
    paper_md = _docs_module("gen_pages")._paper_md
    assert paper_md("") == "—"
    assert paper_md("TOFU setting") == "TOFU setting"
    assert paper_md("A (https://x.org/1); B: c (https://x.org/2), protocol") == (
        "[A](https://x.org/1); [B: c](https://x.org/2), protocol"
    )
    assert paper_md("A | B (https://x.org/1)") == "[A \\| B](https://x.org/1)"


def test_docstring_rewrites() -> None:
    rewrite = _docs_module("griffe_litmix").rewrite
    assert rewrite("see :meth:`~a.B.c`, :func:`f` and :class:`litmix.X`") == "see `c`, `f` and `litmix.X`"
    assert rewrite("S.\n\n    Example:\n        >>> 1\n") == "S.\n\n    Examples:\n        >>> 1\n"
    assert rewrite("An Example: inline") == "An Example: inline"
