"""The term kinds of :class:`~litmix.plugins.DistillationModule` and :func:`build_term` (spec dict -> term)."""

from __future__ import annotations

import inspect
from typing import Any

from litmix.distill.attention_transfer import AttentionTransferTerm
from litmix.distill.base import DistillTerm
from litmix.distill.contrastive import ContrastiveTerm
from litmix.distill.fitnet import FitNetTerm
from litmix.distill.logits_kd import LogitsKDTerm
from litmix.distill.rkd import RKDTerm
from litmix.registry import register

__all__ = ["TERM_KINDS", "build_term"]

#: ``kind`` of a spec -> term class.
TERM_KINDS: dict[str, type[DistillTerm]] = {
    cls.kind: cls for cls in (LogitsKDTerm, FitNetTerm, AttentionTransferTerm, RKDTerm, ContrastiveTerm)
}


@register("function", "distillation", module="litmix.distill")
def build_term(spec: dict[str, Any] | DistillTerm, *, owner: str = "build_term", where: str = "spec") -> DistillTerm:
    """A :class:`~litmix.distill.base.DistillTerm` from a JSON-friendly spec (or the term itself).

    ``spec["kind"]`` is one of :data:`TERM_KINDS` (``"kd"``, ``"fitnet"``, ``"at"``, ``"rkd"``, ``"crd"``); the
    other keys are the term class's constructor arguments.

    Raises:
        TypeError: for a spec that is neither a dict nor a term, naming ``where``.
        ValueError: for an unknown kind (listing the kinds), an unknown key (listing the accepted ones) or a bad
            value, naming ``where``.

    Example:
        >>> term = build_term({"kind": "fitnet", "student": "layers.1", "teacher": "layers.3", "weight": 0.5})
        >>> type(term).__name__, term.student_path, term.weight
        ('FitNetTerm', 'layers.1', 0.5)
        >>> try:
        ...     build_term({"kind": "fitnets"})
        ... except ValueError as err:
        ...     print("unknown kind 'fitnets'; known kinds: at, crd, fitnet, kd," in str(err))
        True
    """
    if isinstance(spec, DistillTerm):
        return spec
    if not isinstance(spec, dict):
        raise TypeError(
            f"{owner}({where}={spec!r}): a term is a dict such as {{'kind': 'kd'}} or a DistillTerm, "
            f"got {type(spec).__name__}"
        )
    kind = spec.get("kind")
    if kind not in TERM_KINDS:
        raise ValueError(
            f"{owner}({where}={spec!r}): unknown kind {kind!r}; known kinds: {', '.join(sorted(TERM_KINDS))}"
        )
    cls = TERM_KINDS[kind]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(spec) - {"kind", *accepted})
    if unknown:
        raise ValueError(
            f"{owner}({where}={spec!r}): unknown key(s) {unknown} for kind {kind!r}; accepted: {', '.join(accepted)}"
        )
    try:
        return cls(**{k: v for k, v in spec.items() if k != "kind"})
    except (TypeError, ValueError) as err:
        raise type(err)(f"{owner}({where}={spec!r}): {err}") from None
