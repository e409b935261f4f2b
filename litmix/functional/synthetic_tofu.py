"""The synthetic TOFU-shaped unlearning task, written in TOFU's JSON Lines schema.

TOFU (Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", https://arxiv.org/abs/2401.06121) asks a
model fine-tuned on 200 fictitious authors to forget 1 / 5 / 10 % of them. Its files cannot be learned to
token accuracy 1.0 by a tiny model on a CPU, so effect tests use a task of the same shape: ``n_entities``
entities, one question each (the entity's token, e.g. ``"e017"``), whose answer is ``answer_length`` random
tokens out of ``answer_vocab`` answer tokens (``"a03 a12 a07"``), with ``n_perturbed`` different random
answers as the perturbed (wrong) answers. There are no paraphrases: ``paraphrased_answer`` is the answer
itself (the truth ratio then compares the true answer with the wrong ones).

Files (the names and keys of the real TOFU release, so :class:`litmix.datamodules.TOFUDataModule` reads
them unchanged): ``full`` (all entities), ``forget01/05/10`` (the last 1 / 5 / 10 % of ``full``),
``retain99/95/90`` (the rest, in order), ``*_perturbed`` (the forget rows plus ``paraphrased_answer``,
``paraphrased_question``, ``perturbed_answer``), ``retain_perturbed`` (the first rows of ``retain90``, as
many as ``forget10``), ``holdout01/05/10`` (never-trained entities ``h...``), ``real_authors`` /
``world_facts`` (``n_facts`` questions ``r...`` / ``w...`` with one-token answers, ``option1``-``option4``)
and their ``_perturbed`` files (3 wrong answers each).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from litmix.registry import register
from litmix.validation import check_int, check_type

__all__ = ["SYNTHETIC_TOFU_FILES", "make_synthetic_tofu", "synthetic_tofu_root"]

#: Every file :func:`make_synthetic_tofu` writes (``<name>.json``).
SYNTHETIC_TOFU_FILES = (
    "full",
    "forget01",
    "forget05",
    "forget10",
    "forget01_perturbed",
    "forget05_perturbed",
    "forget10_perturbed",
    "retain90",
    "retain95",
    "retain99",
    "retain_perturbed",
    "holdout01",
    "holdout05",
    "holdout10",
    "real_authors",
    "real_authors_perturbed",
    "world_facts",
    "world_facts_perturbed",
)
_PERCENTS = (1, 5, 10)


def _share(n: int, percent: int) -> int:
    return max(1, round(n * percent / 100))


def _dump(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSON Lines as Hugging Face / pandas write them: compact separators, ASCII, ``/`` escaped."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":"), ensure_ascii=True).replace("/", "\\/") + "\n")


@register(
    "function",
    "unlearning",
    paper="TOFU: A Task of Fictitious Unlearning for LLMs (https://arxiv.org/abs/2401.06121)",
)
def make_synthetic_tofu(
    root: str | os.PathLike[str],
    n_entities: int = 200,
    seed: int = 0,
    answer_vocab: int = 20,
    answer_length: int = 3,
    n_perturbed: int = 5,
    n_holdout: int | None = None,
    n_facts: int = 10,
) -> str:
    """Write the synthetic TOFU-shaped task into ``root`` in TOFU's JSON Lines schema; returns ``root``.

    The catalogue's setting (200 entities, answers of 3 tokens out of 20, 5 perturbed answers, forget10 = 20
    entities) is the default. Deterministic per ``seed`` (byte-identical files).

    Args:
        root: folder to write into (created if absent; existing TOFU file names are overwritten).
        n_entities: number of trained entities (>= 20, so that every forget split leaves a retain set).
        seed: seed of the answers (>= 0).
        answer_vocab: number of answer tokens ``a00``, ``a01``, ... (>= 2).
        answer_length: tokens per answer (>= 1).
        n_perturbed: wrong answers per forget / retain row (>= 1; TOFU has 5).
        n_holdout: never-trained entities of ``holdout10`` (None: 10 % of ``n_entities``).
        n_facts: rows of ``real_authors`` and of ``world_facts`` (>= 1).

    Returns:
        ``str(root)``.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: a value out of range, or fewer distinct answers (``answer_vocab ** answer_length``) than
            ``n_perturbed + 1``.

    Example:
        >>> import json, tempfile
        >>> root = make_synthetic_tofu(tempfile.mkdtemp(), n_entities=100, seed=0)
        >>> rows = [json.loads(line) for line in open(f"{root}/forget10_perturbed.json")]
        >>> len(rows), sorted(rows[0]), len(rows[0]["perturbed_answer"])
        (10, ['answer', 'paraphrased_answer', 'paraphrased_question', 'perturbed_answer', 'question'], 5)
        >>> rows[0]["question"], len(rows[0]["answer"].split())
        ('e90', 3)
    """
    owner = "make_synthetic_tofu"
    check_type(owner, "root", root, (str, os.PathLike))
    if not str(root).strip():
        raise ValueError(f"{owner}(root={root!r}): root must be a non-empty path")
    check_int(owner, "n_entities", n_entities, low=20, high=100_000)
    check_int(owner, "seed", seed, low=0, high=2**32 - 1)
    check_int(owner, "answer_vocab", answer_vocab, low=2, high=10_000)
    check_int(owner, "answer_length", answer_length, low=1, high=64)
    check_int(owner, "n_perturbed", n_perturbed, low=1, high=64)
    check_int(owner, "n_holdout", n_holdout, low=1, high=100_000, allow_none=True)
    check_int(owner, "n_facts", n_facts, low=1, high=100_000)
    if answer_vocab**answer_length < n_perturbed + 1:
        raise ValueError(
            f"{owner}(answer_vocab={answer_vocab}, answer_length={answer_length}, n_perturbed={n_perturbed}): "
            "fewer distinct answers than n_perturbed + 1"
        )
    rng = random.Random(seed)
    n_hold = n_holdout if n_holdout is not None else _share(n_entities, 10)
    width = len(str(max(n_entities, n_hold, n_facts) - 1))
    atok = [f"a{t:0{len(str(answer_vocab - 1))}d}" for t in range(answer_vocab)]

    def answer() -> str:
        return " ".join(rng.choice(atok) for _ in range(answer_length))

    def wrong(true: str, k: int) -> list[str]:
        out: list[str] = []
        while len(out) < k:
            cand = answer()
            if cand != true and cand not in out:
                out.append(cand)
        return out

    def qa(prefix: str, n: int) -> list[dict[str, Any]]:
        return [{"question": f"{prefix}{i:0{width}d}", "answer": answer()} for i in range(n)]

    def perturbed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "question": r["question"],
                "answer": r["answer"],
                "paraphrased_answer": r["answer"],
                "perturbed_answer": wrong(r["answer"], n_perturbed),
                "paraphrased_question": r["question"],
            }
            for r in rows
        ]

    def facts(prefix: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        plain, pert = [], []
        for i in range(n_facts):
            true = rng.choice(atok)
            others = rng.sample([t for t in atok if t != true], min(3, answer_vocab - 1))
            options = [true, *others]
            rng.shuffle(options)
            q = f"{prefix}{i:0{width}d}"
            plain.append({"question": q, **{f"option{j + 1}": o for j, o in enumerate(options)}, "answer": true})
            pert.append({"question": q, "answer": true, "perturbed_answer": others})
        return plain, pert

    full = qa("e", n_entities)
    holdout = qa("h", n_hold)
    real, real_p = facts("r")
    world, world_p = facts("w")
    full_p = perturbed(full)
    files: dict[str, list[dict[str, Any]]] = {"full": full}
    for p in _PERCENTS:
        k = _share(n_entities, p)
        files[f"forget{p:02d}"] = full[n_entities - k :]
        files[f"forget{p:02d}_perturbed"] = full_p[n_entities - k :]
        files[f"retain{100 - p}"] = full[: n_entities - k]
        files[f"holdout{p:02d}"] = holdout[: min(n_hold, _share(n_hold, p * 10))] if p < 10 else holdout
    files["retain_perturbed"] = full_p[: min(_share(n_entities, 10), n_entities - _share(n_entities, 10))]
    files.update(real_authors=real, real_authors_perturbed=real_p, world_facts=world, world_facts_perturbed=world_p)
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    for name in SYNTHETIC_TOFU_FILES:
        _dump(path / f"{name}.json", files[name])
    return str(root)


_CACHED: dict[tuple[int, int], str] = {}


def synthetic_tofu_root(n_entities: int = 100, seed: int = 0) -> str:
    """A per-process folder holding :func:`make_synthetic_tofu`'s files (written once, removed at exit).

    Used by :meth:`litmix.datamodules.TOFUDataModule.example` and the tests, so they need no shared data.

    Example:
        >>> import os
        >>> os.path.isfile(os.path.join(synthetic_tofu_root(), "forget10.json"))
        True
    """
    key = (n_entities, seed)
    folder = _CACHED.get(key)
    if folder is not None and all(os.path.isfile(os.path.join(folder, f"{n}.json")) for n in SYNTHETIC_TOFU_FILES):
        return folder
    folder = tempfile.mkdtemp(prefix=f"litmix-synthetic-tofu-n{n_entities}-s{seed}-")
    pid = os.getpid()

    def cleanup() -> None:
        if os.getpid() == pid:  # not in forked DDP workers
            shutil.rmtree(folder, ignore_errors=True)

    atexit.register(cleanup)
    make_synthetic_tofu(folder, n_entities=n_entities, seed=seed)
    _CACHED[key] = folder
    return folder
