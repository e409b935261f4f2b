"""Griffe extension: read litmix's Google-style docstrings the way Sphinx' napoleon and the authors do.

Two rewrites, applied to every docstring mkdocstrings loads (``extensions:`` in ``mkdocs.yml``):

* ``Example:`` (singular, the project's spelling) becomes ``Examples:``; griffe parses only the plural as an
  examples section (doctest blocks rendered as code) and would otherwise render the doctests as Markdown, where
  ``x[-1][1]`` reads as a reference link.
* Sphinx roles (``:func:`name```, ``:meth:`~a.B.c```) become inline code (```name```, ```c```): Markdown would
  print them verbatim. A leading ``~`` keeps the last component only, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE_RE = re.compile(r":(?:py:)?(?:func|meth|class|data|mod|attr|obj|exc|const|ref|term):`(?P<target>[^`]+)`")
EXAMPLE_RE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.M)


def _role(m: re.Match[str]) -> str:
    target = m["target"].strip()
    if target.startswith("~"):
        target = target[1:].rsplit(".", 1)[-1]
    return f"`{target}`"


def rewrite(text: str) -> str:
    r"""Return ``text`` with ``Example:`` headers pluralised and Sphinx roles turned into inline code.

    Examples:
        >>> rewrite("see :meth:`~litmix.callbacks.GradualPruning.make_permanent` and :data:`KINDS`")
        'see `make_permanent` and `KINDS`'
        >>> rewrite("Summary.\n\nExample:\n    >>> 1\n    1")
        'Summary.\n\nExamples:\n    >>> 1\n    1'
    """
    return EXAMPLE_RE.sub(r"\g<indent>Examples:", ROLE_RE.sub(_role, text))


class LitmixDocstrings(griffe.Extension):
    """Apply :func:`rewrite` to the docstring of every object griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring in place (before it is parsed)."""
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
