"""Score many architectures with zero-cost proxies on a fixed batch, optionally sharded over DDP ranks."""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from tqdm.auto import tqdm

from litmix.functional.proxies import list_proxies, zero_cost_proxies
from litmix.nas.nb201 import build_nb201_network, code_to_arch, parse_code
from litmix.nas.rank_metrics import PROTOCOL, rank_report
from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int, check_type

__all__ = ["ProxyRanker"]

ArchSpec = str | Sequence[int] | Callable[[], nn.Module]


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


@register("utility", "proxy", paper=PROTOCOL, module="litmix.nas")
class ProxyRanker:
    """Score a list of architectures with named zero-cost proxies and compare the ranking to ground truth.

    Every architecture is built under ``torch.manual_seed(seed)`` and scored by
    :func:`litmix.functional.proxies.zero_cost_proxies` with ``seed=seed`` on one cached batch, so a score
    depends only on the architecture, never on the order, the process or the number of processes. When
    ``torch.distributed`` is initialised (e.g. inside any hook of a Lightning ``ddp``/``ddp_fork`` run, or
    under ``torchrun``) and ``distributed=True``, rank ``r`` scores architectures ``r, r + W, r + 2W, ...``
    and the rows are exchanged with ``all_gather_object``: every rank returns the same full table. This
    follows the evaluation protocol of the zero-cost proxy literature (Abdelfattah et al., "Zero-Cost Proxies
    for Lightweight NAS", https://arxiv.org/abs/2101.08134): Kendall τ, Spearman ρ, precision@K and best-rank@K
    against the ground truth (:mod:`litmix.nas.rank_metrics`).

    Args:
        archs: NAS-Bench-201 arch strings or codes (built with :func:`~litmix.nas.nb201.build_nb201_network`
            at ``C``, ``N``, ``num_classes``, ``in_channels``), or zero-argument callables returning a module.
        names: proxy names (see :func:`litmix.functional.proxies.list_proxies`).
        inputs: the scoring batch; default a Gaussian batch of ``batch_size`` x ``input_shape`` drawn from
            ``seed`` (enough for the data-free proxies, which only use its shape).
        targets: labels for label-based proxies; default uniform random labels in ``range(num_classes)``.
        seed: seed of the network initialisation and of every proxy.
        C: NB201 first-stage channels.
        N: NB201 cells per stage.
        num_classes: classifier outputs (NB201) and range of the default labels.
        in_channels: NB201 input channels.
        input_shape: ``(C, H, W)`` of the default batch.
        batch_size: size of the default batch.
        per_layer: return per-layer dicts (see ``zero_cost_proxies(per_layer=True)``) instead of floats.
        nan_policy: passed to ``zero_cost_proxies``.
        proxy_options: per-proxy options passed to ``zero_cost_proxies``.
        distributed: shard across ranks when ``torch.distributed`` is initialised.
        log_every: report progress with ``rank_zero_info`` every this many architectures (0 = never).
        progress: show a progress bar on rank 0 (architectures done, architectures/s, ETA) on standard error.
        resume_file: a JSON Lines file that receives every row as soon as it is scored (one file per rank under
            DDP: ``<resume_file>.rank<r>``). A later ``score_all`` with the same file skips the rows already
            there, so an interrupted run of thousands of cells continues where it stopped, with any number of
            ranks. The file's header records the configuration (proxies, seed, sizes, options and a
            fingerprint of the scoring batch); a file written with another configuration is refused.

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for an empty ``archs``, no or unknown ``names``, a non-positive ``C``/``N``/``batch_size``,
            a negative ``seed``/``log_every``, an unknown ``nan_policy``, or an architecture that is neither an
            NB201 string/code nor a callable; from :meth:`score_all`, a ``resume_file`` written with another
            configuration or other architectures.

    Example:
        >>> ranker = ProxyRanker([(2,) * 6, (1,) * 6, (3,) * 6], names=["params", "synflow"], C=4, N=1)
        >>> table = ranker.score_all()
        >>> [row["params"] for row in table]
        [23374.0, 4894.0, 7246.0]
        >>> report = ranker.evaluate(table, truth=[3.0, 1.0, 2.0], ks=[1])
        >>> report["params"]["kendall"], report["params"]["p@1"]
        (1.0, 1.0)
    """

    def __init__(
        self,
        archs: Sequence[ArchSpec],
        names: Sequence[str] = ("synflow", "params", "flops"),
        inputs: Any = None,
        targets: Tensor | None = None,
        *,
        seed: int = 0,
        C: int = 16,
        N: int = 5,
        num_classes: int = 10,
        in_channels: int = 3,
        input_shape: Sequence[int] = (3, 32, 32),
        batch_size: int = 16,
        per_layer: bool = False,
        nan_policy: str | float = "nan",
        proxy_options: Mapping[str, Mapping[str, Any]] | None = None,
        distributed: bool = True,
        log_every: int = 0,
        progress: bool = False,
        resume_file: str | None = None,
    ) -> None:
        owner = "ProxyRanker"
        if isinstance(archs, str) or not isinstance(archs, Sequence):
            raise TypeError(f"{owner}(archs={archs!r}): archs must be a list of NB201 arch strings/codes or callables")
        if len(archs) == 0:
            raise ValueError("ProxyRanker(archs=[]): archs must hold at least one architecture")
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(
                f"{owner}(names={names!r}): names must be a list of proxy names, got {type(names).__name__}"
            )
        known = list_proxies()
        if len(names) == 0 or any(n not in known for n in names):
            raise ValueError(f"{owner}(names={names!r}): names must be a non-empty list of proxy names from {known}")
        check_int(owner, "seed", seed, low=0)
        for arg, value in (("C", C), ("N", N), ("batch_size", batch_size), ("num_classes", num_classes)):
            check_int(owner, arg, value, low=1)
        check_int(owner, "in_channels", in_channels, low=1)
        if isinstance(input_shape, str) or not isinstance(input_shape, Sequence):
            raise TypeError(f"{owner}(input_shape={input_shape!r}): input_shape must be a (C, H, W) sequence of ints")
        for dim in input_shape:
            check_int(owner, "input_shape", dim, low=1)
        check_bool(owner, "per_layer", per_layer)
        if isinstance(nan_policy, str):
            if nan_policy not in ("nan", "raise", "naslib"):
                raise ValueError(
                    f"{owner}(nan_policy={nan_policy!r}): nan_policy must be 'nan', 'raise', 'naslib' or a number"
                )
        else:
            check_float(owner, "nan_policy", nan_policy, finite=False)
        check_type(owner, "proxy_options", proxy_options, Mapping, allow_none=True)
        check_type(owner, "targets", targets, Tensor, allow_none=True)
        check_bool(owner, "distributed", distributed)
        check_int(owner, "log_every", log_every, low=0)
        check_bool(owner, "progress", progress)
        check_type(owner, "resume_file", resume_file, str, allow_none=True)
        if resume_file is not None:
            try:
                expanded = Path(resume_file).expanduser()
            except RuntimeError as err:  # "~user" of an unknown user
                raise ValueError(f"{owner}(resume_file={resume_file!r}): cannot expand the home directory") from err
            if not resume_file.strip() or expanded.is_dir():
                raise ValueError(
                    f"{owner}(resume_file={resume_file!r}): resume_file must be a file path, not a directory"
                )
            resume_file = str(expanded)
        self.archs: list[ArchSpec] = list(archs)
        self.keys: list[str] = [self._key(i, a) for i, a in enumerate(self.archs)]
        self.names: list[str] = list(names)
        self.seed = int(seed)
        self.C, self.N, self.num_classes, self.in_channels = C, N, num_classes, in_channels
        self.per_layer = bool(per_layer)
        self.nan_policy = nan_policy
        self.proxy_options = {k: dict(v) for k, v in (proxy_options or {}).items()}
        self.distributed = bool(distributed)
        self.log_every = int(log_every)
        self.progress = bool(progress)
        self.resume_file = resume_file
        gen = torch.Generator().manual_seed(self.seed)
        if inputs is None:
            inputs = torch.randn((batch_size, *input_shape), generator=gen)
        if targets is None:
            first = inputs if isinstance(inputs, Tensor) else None
            n = first.shape[0] if first is not None else batch_size
            targets = torch.randint(0, num_classes, (n,), generator=gen)
        self.inputs = inputs
        self.targets = targets

    @classmethod
    def example(cls) -> ProxyRanker:
        """Three tiny NB201 cells scored by ``params`` and ``synflow`` (the class example).

        Example:
            >>> len(ProxyRanker.example().score_all())
            3
        """
        return cls([(2,) * 6, (1,) * 6, (3,) * 6], names=["params", "synflow"], C=4, N=1)

    @staticmethod
    def _key(i: int, arch: ArchSpec) -> str:
        if callable(arch):
            name = getattr(arch, "__name__", "")
            return name if name and name != "<lambda>" else f"arch_{i}"
        try:
            return code_to_arch(parse_code(arch))
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"ProxyRanker(archs[{i}]={arch!r}): an architecture must be an NB201 arch string or code, or a "
                "zero-argument callable returning an nn.Module"
            ) from err

    def build(self, i: int) -> nn.Module:
        """Build architecture ``i`` under ``torch.manual_seed(seed)`` (the global RNG state is restored)."""
        arch = self.archs[i]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if callable(arch):
                return arch()
            return build_nb201_network(arch, self.C, self.N, self.num_classes, self.in_channels)

    def score_one(self, i: int) -> dict[str, Any]:
        """Row of architecture ``i``: ``{"arch": key, <proxy>: value, ...}``."""
        scores = zero_cost_proxies(
            self.build(i),
            self.inputs,
            self.targets,
            names=self.names,
            per_layer=self.per_layer,
            seed=self.seed,
            nan_policy=self.nan_policy,  # type: ignore[arg-type]
            options=self.proxy_options,
        )
        return {"arch": self.keys[i], **scores}

    def _fingerprint(self) -> dict[str, Any]:
        """The configuration a resume file must match (JSON-friendly)."""
        digest = hashlib.sha256()
        for t in (self.inputs, self.targets):
            if isinstance(t, Tensor):
                digest.update(str((tuple(t.shape), str(t.dtype))).encode())
                digest.update(t.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
            else:
                digest.update(repr(type(t)).encode())
        return {
            "names": self.names,
            "seed": self.seed,
            "C": self.C,
            "N": self.N,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "per_layer": self.per_layer,
            "nan_policy": self.nan_policy,
            "proxy_options": json.loads(json.dumps(self.proxy_options, default=repr)),
            "batch": digest.hexdigest()[:16],
        }

    def _read_resume(self) -> dict[int, dict[str, Any]]:
        """Rows already scored in ``resume_file`` and its per-rank siblings, by architecture index."""
        assert self.resume_file is not None
        want = self._fingerprint()
        done: dict[int, dict[str, Any]] = {}
        for name in sorted({self.resume_file, *glob.glob(glob.escape(self.resume_file) + ".rank*")}):
            if not os.path.isfile(name):
                continue
            with open(name, encoding="utf-8") as fh:
                lines = fh.read().splitlines()
            if not lines:
                continue
            header = json.loads(lines[0])
            if header.get("config") != want:
                raise ValueError(
                    f"ProxyRanker(resume_file={self.resume_file!r}): {name} was written with another configuration "
                    f"({header.get('config')}) than this ranker's ({want}); use a new resume_file"
                )
            for line in lines[1:]:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a row cut short by the interruption
                    continue
                i = int(record["i"])
                if i >= len(self.keys) or record["row"].get("arch") != self.keys[i]:
                    raise ValueError(
                        f"ProxyRanker(resume_file={self.resume_file!r}): {name} holds row {i} for architecture "
                        f"{record['row'].get('arch')!r}, not this ranker's architectures; use a new resume_file"
                    )
                done[i] = record["row"]
        return done

    def score_all(self) -> list[dict[str, Any]]:
        """Score every architecture (this rank's shard when distributed) and return the full, ordered table.

        With ``resume_file``, rows found there are reused and every new row is appended as soon as it is
        scored; with ``progress``, rank 0 shows a progress bar over its shard.

        Returns:
            One row per architecture in input order: ``{"arch": key, <proxy>: float | per-layer dict}``;
            identical on all ranks.

        Raises:
            ValueError: for a ``resume_file`` written with another configuration or other architectures.

        Example:
            >>> import tempfile, os
            >>> path = os.path.join(tempfile.mkdtemp(), "scores.jsonl")
            >>> first = ProxyRanker.example()
            >>> first.resume_file = path
            >>> table = first.score_all()
            >>> again = ProxyRanker.example()
            >>> again.resume_file = path
            >>> again.score_one = None  # nothing left to score: every row comes from the file
            >>> again.score_all() == table
            True
        """
        rank, world = _dist_info() if self.distributed else (0, 1)
        done = self._read_resume() if self.resume_file is not None else {}
        if world > 1:  # every rank must skip the same rows: rank 0's reading wins
            box: list[Any] = [done]
            torch.distributed.broadcast_object_list(box, src=0)
            done = box[0]
        todo = [i for i in range(len(self.archs)) if i not in done]
        mine = todo[rank::world]
        out = None
        if self.resume_file is not None and mine:
            path = self.resume_file if world == 1 else f"{self.resume_file}.rank{rank}"
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fresh = not os.path.isfile(path) or os.path.getsize(path) == 0
            out = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in the finally below)
            if fresh:
                out.write(json.dumps({"litmix_proxy_ranker": 1, "config": self._fingerprint()}) + "\n")
                out.flush()
        local: list[tuple[int, dict[str, Any]]] = []
        bar = tqdm(total=len(mine), desc="ProxyRanker", unit="arch", disable=not (self.progress and rank == 0))
        try:
            for count, i in enumerate(mine, start=1):
                row = self.score_one(i)
                local.append((i, row))
                if out is not None:
                    out.write(json.dumps({"i": i, "row": row}) + "\n")
                    out.flush()
                bar.update(1)
                if self.log_every and count % self.log_every == 0:
                    rank_zero_info(f"ProxyRanker: rank 0 scored {count}/{len(mine)} architectures")
        finally:
            bar.close()
            if out is not None:
                out.close()
        if world > 1:
            gathered: list[Any] = [None] * world
            torch.distributed.all_gather_object(gathered, local)
            local = [item for part in gathered for item in part]
        rows = {**done, **dict(local)}
        return [rows[i] for i in range(len(self.archs))]

    def truth_vector(self, truth: Mapping[str, Any] | Sequence[float]) -> list[float]:
        """Ground truth aligned with the architectures: a sequence in input order, or a mapping by arch key.

        Mapping values may be numbers or records with a ``val_accuracy`` field (:func:`~litmix.nas.nb201.load_nb201`).

        Raises:
            ValueError: for a sequence of the wrong length or an architecture missing from the mapping.
        """
        if isinstance(truth, Mapping):
            out = []
            for key in self.keys:
                if key not in truth:
                    raise ValueError(f"ProxyRanker.evaluate: architecture {key!r} is missing from truth")
                value = truth[key]
                out.append(float(getattr(value, "val_accuracy", value)))
            return out
        if len(truth) != len(self.archs):
            raise ValueError(f"ProxyRanker.evaluate: truth has {len(truth)} values for {len(self.archs)} architectures")
        return [float(v) for v in truth]

    def evaluate(
        self,
        table: Sequence[Mapping[str, Any]],
        truth: Mapping[str, Any] | Sequence[float],
        ks: Sequence[int] = (10, 50),
    ) -> dict[str, dict[str, float]]:
        """Per proxy: Kendall τ, Spearman ρ, Pearson r, precision@K, best-rank@K and the number of finite pairs.

        Raises:
            ValueError: see :meth:`truth_vector`.
        """
        y = self.truth_vector(truth)
        out = {}
        for name in self.names:
            scores = [self._total(row[name]) for row in table]
            out[name] = rank_report(scores, y, ks)
        return out

    @staticmethod
    def _total(value: Any) -> float:
        if isinstance(value, Mapping):
            return float(value["total"])
        return float(value) if value is not None else math.nan

    @staticmethod
    def to_markdown(report: Mapping[str, Mapping[str, float]], digits: int = 3) -> str:
        """Render :meth:`evaluate`'s output as a Markdown table (one row per proxy).

        Example:
            >>> print(ProxyRanker.to_markdown({"params": {"kendall": 0.5, "n": 3.0}}))
            | proxy | kendall | n |
            |---|---|---|
            | params | 0.500 | 3 |
        """
        cols = list(next(iter(report.values())).keys())
        lines = ["| proxy | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
        for name, row in report.items():
            cells = []
            for c in cols:
                v = row[c]
                cells.append(str(int(v)) if c == "n" or c.startswith("br@") else f"{v:.{digits}f}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
