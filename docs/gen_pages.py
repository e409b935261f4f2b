"""MkDocs hook: generates the documentation pages from the litmix registry, so the site cannot drift.

Loaded by ``hooks:`` in ``mkdocs.yml``; nothing here is hand-maintained per method. At build time it

* imports the installed ``litmix`` and calls :func:`litmix.load_all`, then reads :func:`litmix.list_plugins`;
* writes one page per family that has registered items (``families/<family>.md``): the method table
  (name, kind, paper, import line) and, per item, its one-line summary and the ``Example:`` section of its
  docstring as the worked example;
* writes one API-reference page per registered item (``reference/<family>/<Name>.md``, a mkdocstrings
  ``::: <import path>`` block) and one per public core module (``reference/core/<module>.md``);
* turns every ``benchmarks/results/*.md`` file into a page and ``README.md`` into the home page;
* sets the navigation (``nav`` is not written in ``mkdocs.yml``);
* builds ``build/docs-src/litmix``, a symlink tree of the installed package, for mkdocstrings' static
  analysis (griffe): setuptools' ``package-dir`` maps ``litmix.callbacks`` to the folder ``callbacks/``,
  which griffe cannot follow, and the bare folder names must never be importable as top-level packages.

Build with ``mkdocs build --strict`` (or ``mkdocs serve``) from the repository root.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import inspect
import logging
import pkgutil
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.litmix")

#: One-paragraph introductions of the families; a family missing here gets a generic sentence.
FAMILY_INTROS: dict[str, str] = {
    "core": "Infrastructure every method builds on: base classes, loss-term plumbing, validation, test helpers.",
    "distillation": "Train a student from a teacher's outputs or features (knowledge distillation and relatives).",
    "sparsity": "Prune weights during or after training: masks, schedules, sparse training.",
    "quantization": "Train or convert models to low-precision weights and activations.",
    "proxy": "Zero-cost proxies and cheap estimators that score an architecture or a model without training it.",
    "unlearning": "Remove the influence of a forget set from a trained model, and measure how well it worked.",
    "data": "DataModules and data utilities the methods and examples use.",
    "nas": "Neural architecture search: supernets, samplers, predictors and rankers.",
    "graph": "Methods for graph neural networks (PyTorch Geometric).",
    "optimization": "Optimizers, schedules and training-dynamics methods.",
}
#: Section titles of the kinds on a family page.
KIND_TITLES: dict[str, str] = {
    "callback": "Callbacks",
    "plugin": "LightningModules",
    "datamodule": "DataModules",
    "utility": "Utilities",
    "loss": "Losses",
    "metric": "Metrics",
    "function": "Functions",
    "optimizer": "Optimizers",
    "layer": "Layers",
}
#: Titles of the families in the navigation.
FAMILY_TITLES: dict[str, str] = {"nas": "NAS", "proxy": "Proxies", "data": "Data"}

SRC_TREE = Path("build") / "docs-src"  # relative to the directory of mkdocs.yml; `paths:` in mkdocs.yml
PAPER_RE = re.compile(r"(?P<space>\s*)(?P<title>[^;()\s][^;()]*?)\s*\((?P<url>https?://[^\s)]+)\)")
SECTION_RE = re.compile(r"^(Examples?):\s*$")


@dataclass
class Item:
    """A registry entry, flattened to what the pages need."""

    name: str
    kind: str
    family: str
    paper: str
    import_path: str
    summary: str
    example: str | None

    @property
    def public_module(self) -> str:
        """The module users import the item from."""
        return self.import_path.rsplit(".", 1)[0]

    @property
    def ref_page(self) -> str:
        """Source URI of its API-reference page."""
        return f"reference/{self.family}/{self.name}.md"


@functools.cache
def _griffe_extension() -> Any:
    spec = importlib.util.spec_from_file_location("_litmix_docs_griffe", Path(__file__).with_name("griffe_litmix.py"))
    if spec is None or spec.loader is None:
        raise ImportError("docs/griffe_litmix.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rewrite(text: str) -> str:
    """The docstring rewrite mkdocstrings applies (``docs/griffe_litmix.py``), for text this hook copies."""
    return str(_griffe_extension().rewrite(text))


def _docstring_parts(obj: Any) -> tuple[str, str | None]:
    """Return the summary (first paragraph) and the dedented ``Example:`` section of ``obj``'s own docstring."""
    doc = inspect.cleandoc(obj.__doc__) if isinstance(obj.__doc__, str) else ""  # not a base class's docstring
    lines = doc.splitlines()
    summary = " ".join(doc.split("\n\n", 1)[0].split())
    example: list[str] = []
    inside = False
    for line in lines:
        if not inside:
            inside = bool(SECTION_RE.match(line))
            continue
        if line.strip() and not line[0].isspace():  # the next unindented line ends the section
            break
        example.append(line)
    body = textwrap.dedent("\n".join(example)).strip("\n")
    return summary, (body or None)


def _registry() -> tuple[list[Item], tuple[str, ...], tuple[str, ...], Any]:
    import litmix
    from litmix import registry

    litmix.load_all()
    items = []
    for info in litmix.list_plugins():
        summary, example = _docstring_parts(info.cls)
        summary = _rewrite(summary)
        items.append(Item(info.name, info.kind, info.family, info.paper, info.import_path, summary, example))
    families = tuple(getattr(registry, "FAMILIES", ()))
    families += tuple(sorted({i.family for i in items} - set(families)))
    kinds = tuple(getattr(registry, "KINDS", ()))
    return items, families, kinds, litmix


def _build_source_tree(root: Path, litmix: Any) -> Path:
    """Symlink tree ``<root>/litmix`` mirroring the installed package, subpackages mapped from other folders included.

    Idempotent: links already right are kept, wrong or stale ones replaced, so repeated builds are cheap.
    """
    pkg_dir = Path(litmix.__path__[0]).resolve()
    wanted: dict[str, Path] = {p.name: p for p in pkg_dir.iterdir() if p.name != "__pycache__"}
    for sub in getattr(litmix, "SUBPACKAGES", ()):
        mod = importlib.import_module(sub)
        parts = sub.split(".")
        if len(parts) == 2:
            wanted[parts[1]] = Path(mod.__path__[0]).resolve()
    tree = root / "litmix"
    tree.mkdir(parents=True, exist_ok=True)
    for entry in tree.iterdir():
        stale = entry.name not in wanted or not entry.is_symlink() or entry.resolve() != wanted[entry.name]
        if stale and (entry.is_symlink() or entry.is_file()):
            entry.unlink()
    for name, target in wanted.items():
        link = tree / name
        if not link.is_symlink():
            with contextlib.suppress(FileExistsError):  # another build created it meanwhile
                link.symlink_to(target, target_is_directory=target.is_dir())
    return root


def _paper_md(paper: str) -> str:
    """Markdown for a registry ``paper`` string: each ``Title (https://...)`` becomes a link; ``|`` escaped."""
    if not paper:
        return "—"

    def link(m: re.Match[str]) -> str:
        title = m["title"].replace("[", "\\[").replace("]", "\\]")
        return f"{m['space']}[{title}]({m['url']})"

    return PAPER_RE.sub(link, paper).replace("|", "\\|")


def _family_title(family: str) -> str:
    return FAMILY_TITLES.get(family, family.capitalize())


def _by_kind(items: list[Item], kinds: tuple[str, ...]) -> list[Item]:
    order = {k: i for i, k in enumerate(kinds)}
    return sorted(items, key=lambda i: (order.get(i.kind, len(order)), i.name.lower()))


def _family_page(family: str, items: list[Item], kinds: tuple[str, ...]) -> str:
    items = _by_kind(items, kinds)
    out = [f"# {_family_title(family)}", "", FAMILY_INTROS.get(family, f"Methods of the `{family}` family."), ""]
    out += [
        "This page is generated from the registry (`litmix.list_plugins(family=...)`); "
        f"`litmix list --family {family}` prints the same table. Each entry below shows the worked example of "
        "its docstring (run as a doctest by the test suite); the API link leads to the full reference.",
        "",
        "| method | kind | paper | import |",
        "|---|---|---|---|",
    ]
    for it in items:
        out.append(
            f"| [`{it.name}`](#{it.name}) | {it.kind} | {_paper_md(it.paper)} | "
            f"`from {it.public_module} import {it.name}` |"
        )
    kind = None
    for it in items:
        if it.kind != kind:
            kind = it.kind
            out += ["", f"## {KIND_TITLES.get(kind, kind.capitalize())}"]
        out += ["", f"### {it.name} {{ #{it.name} }}", ""]
        if it.summary:
            out += [it.summary, ""]
        out += [
            f"**Kind:** {it.kind} · **Paper:** {_paper_md(it.paper)} · **API:** [`{it.import_path}`][{it.import_path}]",
            "",
        ]
        if it.example:
            lang = "pycon" if it.example.lstrip().startswith(">>>") else "python"
            out += [f"```{lang}", it.example, "```"]
        else:
            out += ['!!! warning "No worked example"', "    The docstring has no `Example:` section."]
    return "\n".join(out) + "\n"


def _reference_page(it: Item) -> str:
    return f"# {it.name}\n\n::: {it.import_path}\n"


def _core_modules(litmix: Any) -> list[str]:
    """Public modules and subpackages under ``litmix`` (``litmix.base``, ``litmix.functional``, ...).

    The Lightning subpackages (``litmix.callbacks``, ...) are left out: their items have pages of their own.
    """
    lightning = set(getattr(litmix, "SUBPACKAGES", ()))
    names = (f"litmix.{m.name}" for m in pkgutil.iter_modules(litmix.__path__) if not m.name.startswith("_"))
    return sorted(n for n in names if n not in lightning)


def _module_page(mod: str, items: list[Item]) -> str:
    """API page of a core module or subpackage, without the registered items it exports (they have their own)."""
    own = sorted(re.escape(it.name) for it in items if it.public_module == mod)
    lines = [f"# {mod}", "", f"::: {mod}"]
    if own:
        lines += ["    options:", f'      filters: ["!^_", "!^({"|".join(own)})$"]', ""]
        lines.append("Registered here, each on its own page: " + ", ".join(f"[`{n}`][{mod}.{n}]" for n in own) + ".")
    return "\n".join(lines) + "\n"


def _reference_index(items: list[Item], families: tuple[str, ...], core: list[str]) -> str:
    out = [
        "# API reference",
        "",
        "Generated from the docstrings (Google style) by mkdocstrings, one page per registered item.",
        "",
        "| item | kind | family |",
        "|---|---|---|",
    ]
    order = {f: i for i, f in enumerate(families)}
    for it in sorted(items, key=lambda i: (order.get(i.family, 99), i.name)):
        out.append(
            f"| [`{it.import_path}`][{it.import_path}] | {it.kind} | [{it.family}](../families/{it.family}.md) |"
        )
    out += ["", "Core modules, for extension authors:", ""]
    out += [f"- [`{mod}`][{mod}]" for mod in core]
    return "\n".join(out) + "\n"


def _benchmark_pages(repo: Path) -> list[tuple[str, str, str]]:
    """``(src_uri, title, content)`` of every ``benchmarks/results/*.md``."""
    pages = []
    for path in sorted((repo / "benchmarks" / "results").glob("*.md")):
        content = path.read_text(encoding="utf-8")
        m = re.search(r"^#\s+(.+)$", content, flags=re.M)
        title = m.group(1).strip() if m else path.stem.replace("_", " ")
        note = f"\n\n---\n\n*Generated from `benchmarks/results/{path.name}`.*\n"
        pages.append((f"benchmarks/{path.name}", title, content.rstrip("\n") + note))
    return pages


LINK_RE = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<target>[^)\s]+)\)")
IMAGE_RE = re.compile(r"!\[(?P<alt>[^\]]*)\]\(benchmarks/results/(?P<name>[^)\s/]+\.png)\)")


def _home_page(repo: Path, families: list[tuple[str, list[Item]]], bench: list[tuple[str, str, str]]) -> str:
    """README.md, relative links rewritten for the site, and a generated map of the documentation."""
    readme = (repo / "README.md").read_text(encoding="utf-8")
    bench_uris = {f"benchmarks/results/{Path(uri).name}": uri for uri, _, _ in bench}

    def relink(m: re.Match[str]) -> str:
        target = m["target"]
        if re.match(r"^[a-z]+:|^#", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        path = path.removeprefix("./")
        if path in bench_uris:
            return f"[{m['text']}]({bench_uris[path]}{'#' + anchor if anchor else ''})"
        return m["text"] if m["text"] != path else f"`{path}`"  # files outside the site: plain text

    readme = IMAGE_RE.sub(lambda m: f"![{m['alt']}](benchmarks/{m['name']})", readme)  # images ship with the site
    out = [LINK_RE.sub(relink, readme).rstrip("\n"), "", "## Documentation map", ""]
    out += ["| family | methods |", "|---|---|"]
    for family, items in families:
        names = ", ".join(f"[`{it.name}`](families/{family}.md#{it.name})" for it in items)
        out.append(f"| [{_family_title(family)}](families/{family}.md) | {names} |")
    out += ["", "Benchmarks: " + ", ".join(f"[{title}]({uri})" for uri, title, _ in bench) + "."]
    out += ["", "API: [reference](reference/index.md), generated from the docstrings."]
    return "\n".join(out) + "\n"


class _State:
    pages: ClassVar[dict[str, str]] = {}  # src_uri -> markdown


@event_priority(100)  # before mkdocstrings creates its handler, which reads `paths`
def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Read the registry, write the pages into memory, build the source tree, set the navigation."""
    repo = Path(config.config_file_path).parent
    items, family_order, kinds, litmix = _registry()
    _build_source_tree(repo / SRC_TREE, litmix)
    by_family = [(f, [i for i in items if i.family == f]) for f in family_order]
    by_family = [(f, its) for f, its in by_family if its]
    core = _core_modules(litmix)
    bench = _benchmark_pages(repo)

    pages: dict[str, str] = {"index.md": _home_page(repo, by_family, bench)}
    for family, its in by_family:
        pages[f"families/{family}.md"] = _family_page(family, its, kinds)
    pages["reference/index.md"] = _reference_index(items, family_order, core)
    for it in items:
        pages[it.ref_page] = _reference_page(it)
    for mod in core:
        pages[f"reference/core/{mod.split('.', 1)[1]}.md"] = _module_page(mod, items)
    for uri, _, content in bench:
        pages[uri] = content
    _State.pages = pages

    config.nav = [
        {"Home": "index.md"},
        {"Families": [{_family_title(f): f"families/{f}.md"} for f, _ in by_family]},
        {"Benchmarks": [{title: uri} for uri, title, _ in bench]},
        {
            "API reference": [
                {"Overview": "reference/index.md"},
                *({_family_title(f): [{it.name: it.ref_page} for it in its]} for f, its in by_family),
                {"Core modules": [{mod: f"reference/core/{mod.split('.', 1)[1]}.md"} for mod in core]},
            ]
        },
    ]
    missing = [i.name for i in items if i.example is None]
    if missing:
        log.info("litmix: registered items without an Example: section: %s", ", ".join(missing))
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated pages (they exist only in memory) and the benchmark plots they show."""
    repo = Path(config.config_file_path).parent
    images = {f"benchmarks/{png.name}": png.read_bytes() for png in (repo / "benchmarks" / "results").glob("*.png")}
    generated: dict[str, str | bytes] = {**_State.pages, **images}
    for uri, content in generated.items():
        old = files.get_file_from_path(uri)
        if old is not None:
            files.remove(old)
        files.append(File.generated(config, uri, content=content))
    return files
