"""One-shot pruning with calibration data: Wanda, SparseGPT, magnitude, DSnoT refinement and OWL sparsities.

Pure-tensor algorithms plus :func:`prune_model`, which prunes any ``nn.Module`` (Hugging Face causal LMs included)
layer by layer, each layer calibrated on the outputs of the layers already pruned before it.

* Wanda: Sun et al., "A Simple and Effective Pruning Approach for Large Language Models"
  (https://arxiv.org/abs/2306.11695): score ``|W_ij| * ||X_j||``, compared within each output row.
* SparseGPT: Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
  (https://arxiv.org/abs/2301.00774): OBS column sweep with lazy block updates over the inverse Hessian.
* DSnoT: Zhang et al., "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs"
  (https://arxiv.org/abs/2310.08915): prune-and-grow swaps within each row that cancel the expected output error.
* OWL: Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High
  Sparsity" (https://arxiv.org/abs/2310.05175): layers with more activation outliers get lower sparsity.

Conventions. ``W`` is a weight matrix ``(out_features, in_features)`` (Hugging Face ``Conv1D`` stores the
transpose; :func:`prune_model` handles that). A mask is a bool tensor of ``W``'s shape, ``True`` = kept.
Statistics are accumulated in float64 on the layer's device. N:M follows the hardware convention: structure
``"2:4"`` keeps at most 2 non-zeros in every 4 consecutive input weights of a row (``prune_n = M - N`` pruned).
Everything runs on CPU (no CUDA-only calls).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from litmix.data import split_batch
from litmix.functional.sparsity import default_parameter_selection
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

__all__ = [
    "METHODS",
    "CalibrationStats",
    "PruneResult",
    "check_prune_options",
    "dsnot_refine",
    "magnitude_scores",
    "nm_mask",
    "owl_sparsities",
    "parse_structure",
    "prune_model",
    "reconstruction_error",
    "row_mask",
    "sparsegpt_prune",
    "wanda_scores",
]

_WANDA = "A Simple and Effective Pruning Approach for Large Language Models (https://arxiv.org/abs/2306.11695)"
_SPARSEGPT = (
    "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot (https://arxiv.org/abs/2301.00774)"
)
_DSNOT = "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs (https://arxiv.org/abs/2310.08915)"
_OWL = (
    "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity "
    "(https://arxiv.org/abs/2310.05175)"
)

#: pruning methods of :func:`prune_model` implemented here; ``"mfac_obs"`` is dispatched to
#: ``litmix.functional.mfac.mfac_obs_masks`` when that module exists.
METHODS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")
_OWNER = "prune_model"


# --------------------------------------------------------------------------------------------- statistics
@dataclass
class CalibrationStats:
    """Input statistics of one layer, accumulated over calibration rows ``x`` (one row = one token / sample).

    Attributes:
        n: number of rows seen.
        sum: ``Σ x_j`` per input feature (float64).
        sq: ``Σ x_j²`` per input feature (float64).
        xtx: ``Σ x xᵀ`` (float64, ``in_features²``) when requested, else ``None``.

    Example:
        >>> s = CalibrationStats.empty(3, hessian=True)
        >>> s.update(torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, -2.0]]))
        >>> s.n, s.mean().tolist(), s.wanda_norms().tolist(), s.hessian()[0].tolist()
        (2, [2.0, 0.0, 0.0], [2.23606797749979, 0.0, 2.0], [5.0, 0.0, -2.0])
    """

    n: int
    sum: Tensor
    sq: Tensor
    xtx: Tensor | None = None

    @classmethod
    def empty(
        cls, in_features: int, hessian: bool = False, device: torch.device | str | None = None
    ) -> CalibrationStats:
        """Zero statistics for ``in_features`` inputs (with an ``in_features²`` Hessian when ``hessian``)."""
        z = torch.zeros(in_features, dtype=torch.float64, device=device)
        xtx = torch.zeros(in_features, in_features, dtype=torch.float64, device=device) if hessian else None
        return cls(0, z, z.clone(), xtx)

    def update(self, x: Tensor) -> None:
        """Add the rows of ``x`` (``(..., in_features)``)."""
        x = x.detach().reshape(-1, x.shape[-1]).to(self.sum.device, torch.float64)
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.sq += x.square().sum(0)
        if self.xtx is not None:
            self.xtx.addmm_(x.T, x)

    def mean(self) -> Tensor:
        """``E[x_j]``."""
        return self.sum / max(self.n, 1)

    def second_moment(self) -> Tensor:
        """``E[x_j²]``."""
        return self.sq / max(self.n, 1)

    def variance(self) -> Tensor:
        """``Var[x_j]`` (clamped at 0)."""
        return (self.second_moment() - self.mean().square()).clamp_min(0)

    def wanda_norms(self) -> Tensor:
        """Wanda's ``||X_j||`` up to a common factor: ``sqrt(E[x_j²])`` (the ranking within a row is the same)."""
        return self.second_moment().sqrt()

    def hessian(self) -> Tensor:
        """``E[x xᵀ]``, the layer-wise Hessian up to the factor 2.

        Without ``xtx``: the independent-feature model ``μ μᵀ + diag(Var)``.
        """
        if self.xtx is not None:
            return self.xtx / max(self.n, 1)
        mu = self.mean()
        return torch.outer(mu, mu) + torch.diag(self.variance())


# --------------------------------------------------------------------------------------------- masks
def parse_structure(structure: str, owner: str = _OWNER) -> tuple[int, int] | None:
    """``"unstructured"`` -> ``None``; ``"N:M"`` -> ``(N, M)`` (``N`` kept of every ``M``, ``0 < N < M``).

    Raises:
        ValueError: naming ``structure`` for anything else.

    Example:
        >>> parse_structure("2:4"), parse_structure("unstructured")
        ((2, 4), None)
    """
    if not isinstance(structure, str):
        raise TypeError(f"{owner}(structure={structure!r}): structure must be str, got {type(structure).__name__}")
    if structure == "unstructured":
        return None
    parts = structure.split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 0 < n < m:
            return n, m
    raise ValueError(
        f"{owner}(structure={structure!r}): structure must be 'unstructured' or 'N:M' with 0 < N < M "
        "(N weights kept in every M consecutive inputs, e.g. '2:4')"
    )


def check_prune_options(
    owner: str, method: str, structure: str, nm: tuple[int, int] | None, refine: str | None, sparsity_profile: str
) -> None:
    """The option combinations :func:`prune_model` refuses: OWL with N:M; M-FAC OBS beyond unstructured, uniform.

    Raises:
        ValueError: naming the argument (``sparsity_profile``, ``structure`` or ``refine``).

    Example:
        >>> check_prune_options("prune_model", "wanda", "2:4", (2, 4), None, "uniform")  # fine: no error
    """
    if nm is not None and sparsity_profile == "owl":
        raise ValueError(
            f"{owner}(sparsity_profile='owl', structure={structure!r}): N:M fixes every layer's sparsity; use "
            "sparsity_profile='uniform' or structure='unstructured'"
        )
    if method != "mfac_obs":
        return
    for arg, value, ok in (
        ("structure", structure, nm is None),
        ("refine", refine, refine is None),
        ("sparsity_profile", sparsity_profile, sparsity_profile == "uniform"),
    ):
        if not ok:
            raise ValueError(
                f"{owner}(method='mfac_obs', {arg}={value!r}): M-FAC OBS supports unstructured, uniform sparsity "
                "without refinement"
            )


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask pruning the ``round(cols * sparsity)`` lowest scores of every row (Wanda's comparison group).

    Ties are broken by position (stable sort), so the mask is deterministic.

    Example:
        >>> row_mask(torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 5.0, 6.0, 7.0]]), 0.5).tolist()
        [[True, False, True, False], [False, False, True, True]]
    """
    cols = scores.shape[1]
    k = round(cols * sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(scores, dim=1, stable=True).indices[:, :k]
        mask.scatter_(1, idx, False)
    return mask


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Keep-mask with the ``n`` highest scores of every ``m`` consecutive inputs of a row (N:M sparsity).

    Raises:
        ValueError: if ``m`` does not divide the number of columns.

    Example:
        >>> nm_mask(torch.tensor([[1.0, 4.0, 3.0, 2.0, 8.0, 5.0, 6.0, 7.0]]), 2, 4).int().tolist()
        [[0, 1, 1, 0, 1, 0, 0, 1]]
    """
    rows, cols = scores.shape
    if cols % m:
        raise ValueError(f"nm_mask: M={m} does not divide the {cols} input columns")
    groups = scores.reshape(rows, cols // m, m)
    idx = torch.sort(groups, dim=2, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, idx, True)
    return mask.reshape(rows, cols)


def _select(scores: Tensor, sparsity: float, nm: tuple[int, int] | None) -> Tensor:
    return row_mask(scores, sparsity) if nm is None else nm_mask(scores, *nm)


@register("function", "sparsity", paper=_WANDA, module="litmix.functional.oneshot_pruning")
def wanda_scores(weight: Tensor, input_norms: Tensor) -> Tensor:
    """Wanda's importance ``|W_ij| * ||X_j||`` (compare within each output row; see :func:`row_mask`).

    From "A Simple and Effective Pruning Approach for Large Language Models" (https://arxiv.org/abs/2306.11695).

    Args:
        weight: ``(out_features, in_features)``.
        input_norms: ``(in_features,)`` activation norms, e.g. :meth:`CalibrationStats.wanda_norms`.

    Raises:
        ValueError: if the shapes do not match.

    Example:
        >>> w = torch.tensor([[1.0, -2.0], [0.5, 0.5]])
        >>> wanda_scores(w, torch.tensor([10.0, 1.0])).tolist()
        [[10.0, 2.0], [5.0, 0.5]]
        >>> row_mask(wanda_scores(w, torch.tensor([10.0, 1.0])), 0.5).tolist()  # magnitude would keep -2.0
        [[True, False], [True, False]]
    """
    if input_norms.shape != (weight.shape[-1],):
        raise ValueError(
            f"wanda_scores: input_norms has shape {tuple(input_norms.shape)}, expected ({weight.shape[-1]},)"
        )
    return weight.detach().abs() * input_norms.to(weight.device, weight.dtype if weight.is_floating_point() else None)


def magnitude_scores(weight: Tensor) -> Tensor:
    """``|W|`` (the magnitude baseline, compared within rows like Wanda unless ranked per layer).

    Example:
        >>> magnitude_scores(torch.tensor([[-3.0, 1.0]])).tolist()
        [[3.0, 1.0]]
    """
    return weight.detach().abs()


# --------------------------------------------------------------------------------------------- SparseGPT
@register("function", "sparsity", paper=_SPARSEGPT, module="litmix.functional.oneshot_pruning")
def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float = 0.5,
    prune_n: int = 0,
    prune_m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """SparseGPT: prune and reconstruct ``weight`` column by column with the inverse Hessian (OBS updates).

    Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
    (https://arxiv.org/abs/2301.00774), following the reference implementation (IST-DASLab/sparsegpt): dead inputs
    (``H_jj = 0``) get ``H_jj = 1`` and zero weights; damping ``percdamp * mean(diag H)``; ``Hinv`` is the upper
    Cholesky factor of ``H⁻¹``; in each block of ``blocksize`` columns the mask prunes the lowest
    ``w² / Hinv_jj²`` (exactly ``round(sparsity * numel)`` of the block, or ``prune_n`` of every ``prune_m`` columns
    chosen as the sweep reaches them); every pruned column's error is spread over the later columns of the block
    (``W[:, i:] -= err ⊗ Hinv[i, i:]``) and, lazily, over the columns after the block. Float64 throughout, no
    CUDA-only calls.

    Args:
        weight: ``(rows, cols)``; not modified.
        hessian: ``(cols, cols)`` ``E[x xᵀ]`` (any positive factor; only relative damping matters).
        sparsity: fraction pruned (unstructured), in [0, 1).
        prune_n: with ``prune_m``: zeros in every ``prune_m`` consecutive columns (N:M with ``N = prune_m - prune_n``).
        prune_m: group size for N:M (0: unstructured).
        blocksize: columns per lazy block.
        percdamp: relative damping.

    Returns:
        ``(new_weight, mask)``: the pruned, reconstructed weight (``weight``'s dtype) and the keep-mask.

    Raises:
        ValueError: for mismatched shapes or out-of-range arguments.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(256, 8, generator=g) @ torch.randn(8, 8, generator=g)  # correlated inputs
        >>> w = torch.randn(4, 8, generator=g)
        >>> new, mask = sparsegpt_prune(w, x.T @ x / 256, sparsity=0.5)
        >>> int(mask.sum()), bool((new[~mask] == 0).all())
        (16, True)
        >>> err = lambda v: float(((w - v) @ x.T).norm())
        >>> err(new) < err(w * mask)  # the OBS updates lower the error of the chosen mask
        True
    """
    rows, cols = weight.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"sparsegpt_prune: hessian has shape {tuple(hessian.shape)}, expected ({cols}, {cols})")
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsegpt_prune: sparsity must be in [0, 1), got {sparsity}")
    if prune_m < 0 or prune_n < 0 or (prune_m and not 0 < prune_n < prune_m) or (prune_m and cols % prune_m):
        raise ValueError(
            f"sparsegpt_prune: prune_n={prune_n}, prune_m={prune_m}: need 0 < prune_n < prune_m with prune_m dividing "
            f"the {cols} columns (or prune_m=0 for unstructured)"
        )
    if blocksize < 1 or (prune_m and blocksize % prune_m):
        raise ValueError(f"sparsegpt_prune: blocksize={blocksize} must be >= 1 and a multiple of prune_m={prune_m}")
    if percdamp < 0 or not math.isfinite(percdamp):
        raise ValueError(f"sparsegpt_prune: percdamp must be a finite number >= 0, got {percdamp}")
    W = weight.detach().to(torch.float64, copy=True)
    H = hessian.detach().to(W.device, torch.float64, copy=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    damp = percdamp * torch.mean(torch.diag(H))
    H.diagonal().add_(damp)
    Hinv = _upper_inverse_cholesky(H)
    mask = torch.zeros(rows, cols, dtype=torch.bool, device=W.device)  # True = pruned while sweeping
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].contiguous().clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)
        mask1 = torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)
        if prune_m == 0:
            k = round(W1.numel() * sparsity)
            if k > 0:
                tmp = (W1.square() / d1.square().unsqueeze(0)).reshape(-1)
                idx = torch.sort(tmp, stable=True).indices[:k]
                mask1 = mask1.reshape(-1).index_fill_(0, idx, True).reshape(W1.shape)
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prune_m and i % prune_m == 0:
                tmp = W1[:, i : i + prune_m].square() / d1[i : i + prune_m].square().unsqueeze(0)
                idx = torch.sort(tmp, dim=1, stable=True).indices[:, :prune_n]
                mask1.scatter_(1, i + idx, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    keep = ~mask
    W.masked_fill_(mask, 0.0)
    return W.to(weight.dtype), keep


def _upper_inverse_cholesky(H: Tensor) -> Tensor:
    """Upper Cholesky factor of ``H⁻¹``; adds damping until ``H`` is positive definite."""
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    extra = 0.0
    scale = float(torch.diag(H).mean()) or 1.0
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(H + extra * eye)
        if int(info) == 0:
            Hi = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hi, upper=True)
            if int(info2) == 0:
                return U
        extra = scale * 1e-6 if extra == 0.0 else extra * 10
    raise ValueError("sparsegpt_prune: the Hessian is not positive definite even with damping; raise percdamp")


# --------------------------------------------------------------------------------------------- DSnoT
def reconstruction_error(weight: Tensor, mask: Tensor, hessian: Tensor) -> Tensor:
    """Per-row mean squared output error ``e_i H e_iᵀ`` of pruning, with ``e = W ⊙ ¬mask`` and ``H = E[x xᵀ]``.

    Example:
        >>> w, m = torch.tensor([[1.0, 2.0]]), torch.tensor([[True, False]])
        >>> reconstruction_error(w, m, torch.eye(2)).tolist()
        [4.0]
    """
    e = weight.detach().to(torch.float64) * (~mask).to(torch.float64)
    return ((e @ hessian.to(e.device, torch.float64)) * e).sum(1)


@register("function", "sparsity", paper=_DSNOT, module="litmix.functional.oneshot_pruning")
def dsnot_refine(
    weight: Tensor,
    mask: Tensor,
    stats: CalibrationStats,
    max_cycles: int = 50,
    update_threshold: float = 0.1,
    pow_of_var: float = 1.0,
    nm: tuple[int, int] | None = None,
) -> tuple[Tensor, int]:
    """DSnoT: training-free prune-and-grow swaps within each row that cancel the expected output error.

    Zhang et al., "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse LLMs"
    (https://arxiv.org/abs/2310.08915), after zyxxmu/DSnoT ``prune_DSnoT``. Per row ``i`` the expected error of
    the sparse row is ``err_i = Σ_{j pruned} W_ij μ_j``. Each cycle every active row proposes one swap: *grow* the
    pruned weight whose contribution ``W_ij μ_j / Var_j^pow`` pushes ``err_i`` towards 0 the most, and *prune* the
    kept weight with the lowest Wanda score ``|W_ij| ||X_j||`` among those whose contribution has the opposite sign
    of ``err_i`` (any kept weight when there is none; with ``nm`` it must lie in the grown weight's M-group, so the
    N:M pattern holds). Unlike the reference, a swap is applied only if it lowers the row's mean squared output
    error ``e_i H e_iᵀ`` (:func:`reconstruction_error`, with ``H = E[x xᵀ]`` from ``stats``: exact when ``stats``
    holds ``xtx``, else the independent-feature model), so the refined mask is never worse than the input mask
    by that measure; a row stops when ``|err_i| <= update_threshold``, when its swap would not help, or after
    ``max_cycles`` cycles. The number of pruned weights of every row (and every N:M group) is preserved.

    Args:
        weight: ``(rows, cols)``; the weights are not changed (no training, no reconstruction).
        mask: keep-mask of ``weight``'s shape.
        stats: the layer's :class:`CalibrationStats`.
        max_cycles: maximum swaps per row (>= 0).
        update_threshold: rows with ``|err_i|`` at or below it are left alone.
        pow_of_var: exponent of the variance in the grow criterion.
        nm: ``(N, M)`` when ``mask`` is N:M.

    Returns:
        ``(refined_mask, swaps)``.

    Raises:
        ValueError: for mismatched shapes or negative ``max_cycles``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.randn(512, 16, generator=g) + torch.linspace(-2, 2, 16)  # inputs with non-zero means
        >>> w = torch.randn(8, 16, generator=g)
        >>> stats = CalibrationStats.empty(16, hessian=True); stats.update(x)
        >>> base = row_mask(wanda_scores(w, stats.wanda_norms()), 0.5)
        >>> new, swaps = dsnot_refine(w, base, stats)
        >>> bool((new.sum(1) == base.sum(1)).all()), swaps > 0
        (True, True)
        >>> H = stats.hessian()
        >>> bool(reconstruction_error(w, new, H).sum() < reconstruction_error(w, base, H).sum())
        True
    """
    if mask.shape != weight.shape:
        raise ValueError(f"dsnot_refine: mask has shape {tuple(mask.shape)}, weight {tuple(weight.shape)}")
    if stats.sum.shape != (weight.shape[1],):
        raise ValueError(f"dsnot_refine: stats are for {stats.sum.shape[0]} inputs, weight has {weight.shape[1]}")
    if max_cycles < 0:
        raise ValueError(f"dsnot_refine: max_cycles must be >= 0, got {max_cycles}")
    dev = stats.sum.device
    W = weight.detach().to(dev, torch.float64)
    keep = mask.detach().to(dev, torch.bool).clone()
    rows, cols = W.shape
    H = stats.hessian()
    mu = stats.mean()
    var = stats.variance().clamp_min(1e-12)
    wanda = W.abs() * stats.wanda_norms().unsqueeze(0)
    contrib = W * mu.unsqueeze(0)  # W_ij μ_j
    grow_metric = contrib / var.pow(pow_of_var).unsqueeze(0)
    e = W * (~keep)
    g = e @ H  # g_i = H e_i, kept up to date
    active = torch.ones(rows, dtype=torch.bool, device=dev)
    ar = torch.arange(rows, device=dev)
    swaps = 0
    group = None if nm is None else torch.arange(cols, device=dev) // nm[1]
    inf = torch.tensor(float("inf"), dtype=torch.float64, device=dev)
    for _ in range(max_cycles):
        err = (contrib * (~keep)).sum(1)
        active &= err.abs() > update_threshold
        if not bool(active.any()):
            break
        sign = torch.sign(err).unsqueeze(1)  # err > 0: grow positive contributions, prune negative ones
        # grow: pruned j with the largest sign-aligned metric
        gscore = torch.where(~keep, grow_metric * sign, -inf)
        j = gscore.argmax(1)
        ok = torch.isfinite(gscore[ar, j]) & active
        # prune: kept k with the lowest Wanda score, opposite-sign contributions first
        opposite = (contrib * sign) < 0
        cand = keep.clone()
        if group is not None:
            cand &= group.unsqueeze(0) == group[j].unsqueeze(1)
        pscore = torch.where(cand, wanda + torch.where(opposite, 0.0, wanda.max() + 1.0), inf)
        k = pscore.argmin(1)
        ok &= torch.isfinite(pscore[ar, k]) & (j != k)
        # exact change of e_i H e_iᵀ for e' = e - W_ij δ_j + W_ik δ_k
        wj, wk = W[ar, j], W[ar, k]
        delta = (
            2 * (-wj * g[ar, j] + wk * g[ar, k]) + wj.square() * H[j, j] + wk.square() * H[k, k] - 2 * wj * wk * H[j, k]
        )
        ok &= delta < -1e-12 * (1.0 + (e * g).sum(1).abs())
        active &= ok
        if not bool(ok.any()):
            break
        r = ar[ok]
        jj, kk = j[ok], k[ok]
        keep[r, jj] = True
        keep[r, kk] = False
        e[r, jj] = 0.0
        e[r, kk] = W[r, kk]
        g[r] += -W[r, jj].unsqueeze(1) * H[jj] + W[r, kk].unsqueeze(1) * H[kk]
        swaps += int(r.numel())
    return keep.to(mask.device), swaps


# --------------------------------------------------------------------------------------------- OWL
@register("function", "sparsity", paper=_OWL, module="litmix.functional.oneshot_pruning")
def owl_sparsities(outlier_ratios: Iterable[float], target: float, lamda: float = 0.08) -> list[float]:
    """OWL's layer sparsities: more activation outliers -> lower sparsity, averaging to ``target``.

    Yin et al., "Outlier Weighed Layerwise Sparsity (OWL)" (https://arxiv.org/abs/2310.05175), as in the
    reference: min-max normalise the ratios into ``[0, 2·lamda]``, density ``= ratio - mean(ratio) + (1 - target)``,
    sparsity ``= 1 - density``. Equal ratios give the uniform profile. Values are clipped to [0, 1) (only with
    extreme ``lamda``; then the mean can drift from ``target``).

    Args:
        outlier_ratios: per layer, the fraction of Wanda scores above ``M`` times their mean.
        target: mean sparsity in [0, 1).
        lamda: half-width of the sparsity range (the paper's λ, e.g. 0.08).

    Raises:
        ValueError: for an empty list, a target outside [0, 1) or a negative ``lamda``.

    Example:
        >>> [round(s, 3) for s in owl_sparsities([0.01, 0.03, 0.02], target=0.7, lamda=0.08)]
        [0.78, 0.62, 0.7]
    """
    ratios = torch.tensor([float(r) for r in outlier_ratios], dtype=torch.float64)
    if ratios.numel() == 0:
        raise ValueError("owl_sparsities: outlier_ratios is empty")
    if not 0.0 <= target < 1.0:
        raise ValueError(f"owl_sparsities: target must be in [0, 1), got {target}")
    if lamda < 0 or not math.isfinite(lamda):
        raise ValueError(f"owl_sparsities: lamda must be a finite number >= 0, got {lamda}")
    span = float(ratios.max() - ratios.min())
    norm = (ratios - ratios.min()) / span * 2 * lamda if span > 0 else torch.zeros_like(ratios)
    density = norm - norm.mean() + (1.0 - target)
    return [min(max(1.0 - float(d), 0.0), 1.0 - 1e-6) for d in density]


def outlier_ratio(scores: Iterable[Tensor], m: float = 5.0) -> float:
    """Fraction of the (Wanda) scores of one layer group above ``m`` times their mean (OWL's outlier ratio).

    Example:
        >>> outlier_ratio([torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 50.0])], m=5.0)
        0.1
    """
    flat = torch.cat([s.detach().reshape(-1).to(torch.float64) for s in scores])
    return float((flat > m * flat.mean()).double().mean())


# --------------------------------------------------------------------------------------------- model driver
@dataclass
class PruneResult:
    """What :func:`prune_model` did.

    Attributes:
        masks: parameter name -> keep-mask (the parameter's own shape and device).
        sparsity: parameter name -> fraction pruned, plus ``"global"``.
        target: parameter name -> sparsity asked of that layer (OWL profile or uniform).
        groups: the calibration groups, in execution order (lists of parameter names).
        outlier_ratios: group -> OWL outlier ratio (empty for the uniform profile).
        swaps: parameter name -> DSnoT swaps (empty without refinement).
        seconds: wall time of the whole call.
    """

    masks: dict[str, Tensor]
    sparsity: dict[str, float]
    target: dict[str, float]
    groups: list[list[str]]
    outlier_ratios: dict[str, float] = field(default_factory=dict)
    swaps: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class _Stop(Exception):
    """Raised by a forward hook to end a calibration forward once the hooked layers have run."""


@dataclass
class _Layer:
    name: str  # canonical parameter name ("transformer.h.0.attn.c_attn.weight")
    module: nn.Module
    transposed: bool  # HF Conv1D: weight is (in, out)

    @property
    def weight(self) -> Tensor:
        w = self.module.weight
        assert isinstance(w, Tensor)
        return w

    def matrix(self) -> Tensor:
        w = self.weight.detach()
        return w.T if self.transposed else w.reshape(w.shape[0], -1)

    def write(self, W: Tensor) -> None:
        w = self.weight
        with torch.no_grad():
            w.copy_((W.T if self.transposed else W.reshape(w.shape)).to(w.dtype))

    def to_param_shape(self, mask: Tensor) -> Tensor:
        return mask.T.contiguous() if self.transposed else mask.reshape(self.weight.shape)

    @property
    def in_features(self) -> int:
        return int(self.matrix().shape[1])


def _is_conv1d_hf(module: nn.Module) -> bool:
    return any(f"{c.__module__}.{c.__qualname__}" == "transformers.pytorch_utils.Conv1D" for c in type(module).__mro__)


def _layers(model: nn.Module, parameter_names: list[str] | None) -> list[_Layer]:
    by_param: dict[str, tuple[str, nn.Module]] = {}
    for path, sub in model.named_modules():
        w = sub._parameters.get("weight")
        if isinstance(w, nn.Parameter):
            by_param.setdefault(f"{path}.weight" if path else "weight", (path, sub))
    names = default_parameter_selection(model).names if parameter_names is None else list(parameter_names)
    out = []
    for name in names:
        if name not in by_param:
            raise ValueError(
                f"{_OWNER}(parameter_names=[..., {name!r}, ...]): not the weight of a layer of "
                f"{type(model).__name__}; available: {sorted(by_param)}"
            )
        _, sub = by_param[name]
        if not (isinstance(sub, nn.Linear) or _is_conv1d_hf(sub)):
            raise ValueError(
                f"{_OWNER}(parameter_names=[..., {name!r}, ...]): calibration-based one-shot pruning supports "
                f"nn.Linear and Hugging Face Conv1D layers, not {type(sub).__name__}; leave it out"
            )
        out.append(_Layer(name, sub, _is_conv1d_hf(sub)))
    return out


def _block_of(model: nn.Module, layer_path: str) -> str:
    """The outermost ancestor of ``layer_path`` that is an element of an ``nn.ModuleList`` (a transformer block)."""
    parts = layer_path.split(".")
    for i in range(len(parts) - 1):
        parent = model.get_submodule(".".join(parts[:i])) if i else model
        if isinstance(parent, nn.ModuleList):
            return ".".join(parts[: i + 1])
    return layer_path


def _default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping) and not any(k in batch for k in ("x", "input", "inputs")):
        return model(**batch)
    x, _, _ = split_batch(batch)
    return model(x)


def _move(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _move(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_move(v, device) for v in batch)
    return batch


def _no_cache(value: Any) -> Any:
    """``None`` for a Hugging Face ``Cache`` object (a replayed block must not append to it), else ``value``."""
    return None if type(value).__name__.endswith("Cache") and hasattr(value, "update") else value


def _capture_block_inputs(
    model: nn.Module,
    block: nn.Module,
    batches: list[Any],
    forward: Callable[[nn.Module, Any], Any],
    device: torch.device,
) -> list[tuple[tuple[Any, ...], dict[str, Any]]] | None:
    """The positional and keyword inputs of ``block`` for every batch (one partial forward each), or ``None``."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        kw = {k: _no_cache(v) for k, v in kwargs.items()}
        if "use_cache" in kw:
            kw["use_cache"] = False
        calls.append((tuple(_no_cache(a) for a in args), kw))
        raise _Stop

    handle = block.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_Stop):
                forward(model, _move(batch, device))
    finally:
        handle.remove()
    return calls if len(calls) == len(batches) else None


def _run(
    model: nn.Module,
    batches: list[Any],
    layers: list[_Layer],
    hessian: bool,
    forward: Callable[[nn.Module, Any], Any],
    device: torch.device,
    block: tuple[nn.Module, list[tuple[tuple[Any, ...], dict[str, Any]]]] | None = None,
) -> dict[str, CalibrationStats]:
    """One partial forward per batch with hooks on ``layers``; stops once they all ran.

    With ``block = (module, inputs)`` the forwards replay that block on its captured inputs instead of running the
    model from the start (the layers lie inside the block); a replay that fails falls back to the model forward.
    """
    if block is not None:
        module, calls = block
        replays = [lambda a=args, k=kwargs: module(*a, **k) for args, kwargs in calls]
        with contextlib.suppress(Exception):  # an unusual block: the full forward below is always correct
            return _collect(layers, hessian, device, replays, must_reach=True)
    runs = [lambda b=batch: forward(model, _move(b, device)) for batch in batches]
    return _collect(layers, hessian, device, runs, must_reach=False)


def _collect(
    layers: list[_Layer],
    hessian: bool,
    device: torch.device,
    runs: list[Callable[..., Any]],
    must_reach: bool,
) -> dict[str, CalibrationStats]:
    """Input statistics of ``layers`` over ``runs`` (each stops once every layer ran; ``must_reach``: or raise)."""
    stats = {ly.name: CalibrationStats.empty(ly.in_features, hessian, device) for ly in layers}
    pending: set[str] = set()

    def make_hook(ly: _Layer) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            stats[ly.name].update(args[0])
            pending.discard(ly.name)
            if not pending:
                raise _Stop

        return hook

    handles = [ly.module.register_forward_hook(make_hook(ly)) for ly in layers]
    try:
        for run in runs:
            pending.clear()
            pending.update(ly.name for ly in layers)
            with contextlib.suppress(_Stop):
                run()
            if must_reach and pending:
                raise RuntimeError("the replayed block did not reach every layer")
    finally:
        for h in handles:
            h.remove()
    return stats


def _mfac_dispatch() -> Callable[..., Any] | None:
    try:
        mod = importlib.import_module("litmix.functional.mfac")
    except ImportError:
        return None
    fn = getattr(mod, "mfac_obs_masks", None)
    return fn if callable(fn) else None


def available_methods() -> tuple[str, ...]:
    """The methods :func:`prune_model` accepts here (``"mfac_obs"`` once ``litmix.functional.mfac`` exists).

    Example:
        >>> {"magnitude", "wanda", "sparsegpt"} <= set(available_methods())
        True
    """
    return (*METHODS, "mfac_obs") if _mfac_dispatch() is not None else METHODS


@register("function", "sparsity", paper=_SPARSEGPT, module="litmix.functional.oneshot_pruning")
def prune_model(
    model: nn.Module,
    calibration_batches: Iterable[Any],
    method: Literal["magnitude", "wanda", "sparsegpt", "mfac_obs"] = "sparsegpt",
    sparsity: float = 0.5,
    structure: str = "unstructured",
    refine: Literal["dsnot"] | None = None,
    sparsity_profile: Literal["uniform", "owl"] = "uniform",
    sequential: Literal["auto", "layer", "block"] = "auto",
    parameter_names: list[str] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    owl_m: float = 5.0,
    owl_lamda: float = 0.08,
    dsnot_cycles: int = 50,
    dsnot_threshold: float = 0.1,
    mfac_grads: int = 64,
    forward: Callable[[nn.Module, Any], Any] | None = None,
) -> PruneResult:
    """Prune ``model`` in place, one-shot, with calibration data: magnitude, Wanda or SparseGPT (+ DSnoT, OWL).

    Layers are pruned in the order the forward pass reaches them. For each layer (``sequential="layer"``) or each
    transformer block (``"block"``: the layers under one element of an ``nn.ModuleList``, e.g. GPT-2's
    ``transformer.h.3``), the calibration batches run through the model *as pruned so far* until that layer (block)
    has run: hooks collect its input statistics (Σx², and ``E[x xᵀ]`` for SparseGPT/DSnoT, float64), the forward
    stops there, and the layer is pruned before the next one is calibrated. ``"auto"`` (default): ``"layer"`` when
    a Hessian is needed (SparseGPT, DSnoT), else ``"block"``, so memory stays one layer's Hessian. Layer by layer
    inside a transformer block, the block's inputs are captured once per block (one partial forward per batch,
    through the pruned prefix) and only the block is replayed for each of its layers (Hugging Face ``Cache``
    arguments dropped; any replay failure falls back to the full forward); memory then adds the calibration
    activations at one block, as in the SparseGPT and Wanda code. Measured on the char-GPT
    (``benchmarks/results/oneshot.md``): SparseGPT is better layer by layer (its reconstruction sees the pruned
    inputs), Wanda better block by block (as in the Wanda and llm-compressor code).

    * ``"magnitude"``: ``|W|``; ``"wanda"``: ``|W|·||X_j||``; both compared within each output row (or N:M group).
    * ``"sparsegpt"``: :func:`sparsegpt_prune` (mask and reconstructed weights).
    * ``"mfac_obs"``: ``litmix.functional.mfac.mfac_obs_masks`` (M-FAC OBS from ``mfac_grads`` loss gradients,
      each layer to ``sparsity``; whole-model, not sequential; unstructured, uniform, no refinement). The loss is
      cross-entropy against the batch targets, or next-token cross-entropy for token batches without targets.
    * ``refine="dsnot"``: :func:`dsnot_refine` on each layer's mask (no weight update). On SparseGPT it changes
      nothing: the reconstructed weights are 0 where pruned, so no swap lowers the error.
    * ``sparsity_profile="owl"``: one dense pre-pass computes each group's outlier ratio (Wanda scores above
      ``owl_m`` × their mean) and :func:`owl_sparsities` sets the per-group sparsity (mean = ``sparsity``); the
      groups are the transformer blocks when the model has them, else the layers.

    Supported layers: ``nn.Linear`` and Hugging Face ``Conv1D`` (weight stored transposed). Default selection:
    :func:`~litmix.functional.sparsity.default_parameter_selection` (a tied ``lm_head`` stays dense).

    Args:
        model: any ``nn.Module``; calibrated in eval mode (no dropout), its training flag restored afterwards.
        calibration_batches: batches the model's forward accepts (see ``forward``); consumed once into a list.
        method: ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` or ``"mfac_obs"``.
        sparsity: fraction of each layer's weights pruned, in [0, 1) (unstructured).
        structure: ``"unstructured"`` or ``"N:M"`` (``"2:4"``: 2 kept in every 4 consecutive inputs).
        refine: ``None`` or ``"dsnot"``.
        sparsity_profile: ``"uniform"`` or ``"owl"`` (unstructured only).
        sequential: calibration granularity, ``"auto"``, ``"layer"`` or ``"block"``.
        parameter_names: weights to prune (default: every Linear / Conv1D weight of the default selection).
        blocksize: SparseGPT lazy block size.
        percdamp: SparseGPT relative damping.
        owl_m: OWL outlier threshold ``M``.
        owl_lamda: OWL ``λ`` (sparsities range over ``sparsity ± λ``).
        dsnot_cycles: DSnoT maximum cycles.
        dsnot_threshold: DSnoT stops rows with ``|expected error|`` at or below this.
        mfac_grads: M-FAC gradients per recomputation (``"mfac_obs"`` only).
        forward: ``forward(model, batch)``; default: ``model(**batch)`` for dicts (Hugging Face), else
            ``model(inputs)`` with the inputs of :func:`~litmix.data.split_batch`.

    Returns:
        A :class:`PruneResult` (masks, achieved sparsities, groups, OWL ratios, DSnoT swaps, seconds).

    Raises:
        ValueError: naming the argument: sparsity outside [0, 1), unknown method/structure/refine/profile, OWL with
            N:M, N:M whose M does not divide a layer's inputs, no calibration batches, nothing prunable.
        TypeError: for arguments of the wrong type.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        >>> batches = [torch.randn(32, 8) for _ in range(4)]
        >>> res = prune_model(net, batches, method="sparsegpt", sparsity=0.5)  # calibrated layer by layer
        >>> res.groups, res.sparsity["global"]
        ([['0.weight'], ['2.weight']], 0.5)
        >>> res = prune_model(net, batches, method="wanda", structure="2:4")
        >>> bool((res.masks["2.weight"].reshape(4, 4, 4).sum(-1) == 2).all())
        True
    """
    start = time.perf_counter()
    check_type(_OWNER, "model", model, nn.Module)
    methods = available_methods()
    if method not in methods:
        raise ValueError(
            f"{_OWNER}(method={method!r}): method must be one of {list(methods)}"
            + ("" if "mfac_obs" in methods else " ('mfac_obs' needs litmix.functional.mfac.mfac_obs_masks)")
        )
    sparsity = check_float(_OWNER, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
    nm = parse_structure(structure)
    check_choice(_OWNER, "refine", refine, (None, "dsnot"))
    check_choice(_OWNER, "sparsity_profile", sparsity_profile, ("uniform", "owl"))
    check_choice(_OWNER, "sequential", sequential, ("auto", "layer", "block"))
    blocksize = check_int(_OWNER, "blocksize", blocksize, low=1)
    percdamp = check_float(_OWNER, "percdamp", percdamp, low=0.0)
    owl_m = check_float(_OWNER, "owl_m", owl_m, low=0.0, low_open=True)
    owl_lamda = check_float(_OWNER, "owl_lamda", owl_lamda, low=0.0, high=0.5)
    dsnot_cycles = check_int(_OWNER, "dsnot_cycles", dsnot_cycles, low=0)
    dsnot_threshold = check_float(_OWNER, "dsnot_threshold", dsnot_threshold, low=0.0)
    mfac_grads = check_int(_OWNER, "mfac_grads", mfac_grads, low=1)
    check_prune_options(_OWNER, method, structure, nm, refine, sparsity_profile)
    if parameter_names is not None:
        check_type(_OWNER, "parameter_names", parameter_names, (list, tuple))
        if not parameter_names:
            raise ValueError(f"{_OWNER}(parameter_names=[]): name at least one weight, or pass None")
    layers = _layers(model, None if parameter_names is None else list(parameter_names))
    if not layers:
        raise ValueError(
            f"{_OWNER}(model={type(model).__name__}): nothing prunable (no nn.Linear or Hugging Face Conv1D weight "
            "in the default selection); pass parameter_names"
        )
    if nm is not None:
        for ly in layers:
            if ly.in_features % nm[1]:
                raise ValueError(
                    f"{_OWNER}(structure={structure!r}): M={nm[1]} does not divide the {ly.in_features} inputs of "
                    f"{ly.name}; leave that layer out (parameter_names) or pick another M"
                )
        if method == "sparsegpt" and blocksize % nm[1]:
            raise ValueError(f"{_OWNER}(blocksize={blocksize}): must be a multiple of M={nm[1]} for N:M SparseGPT")
    batches = list(calibration_batches)
    needs_data = method != "magnitude" or refine is not None or sparsity_profile == "owl"
    if needs_data and not batches:
        raise ValueError(f"{_OWNER}(calibration_batches=[]): method={method!r} needs calibration data; got none")
    forward = forward or _default_forward
    device = next(iter(model.parameters())).device
    if method == "mfac_obs":
        return _prune_mfac(model, batches, layers, sparsity, mfac_grads, forward, start)
    was_training = model.training
    model.eval()
    try:
        result = _prune(
            model,
            batches,
            layers,
            method,
            sparsity,
            nm,
            refine,
            sparsity_profile,
            sequential,
            blocksize,
            percdamp,
            owl_m,
            owl_lamda,
            dsnot_cycles,
            dsnot_threshold,
            forward,
            device,
            needs_data,
        )
    finally:
        model.train(was_training)
    result.seconds = time.perf_counter() - start
    return result


def _lm_loss(forward: Callable[[nn.Module, Any], Any]) -> Callable[[nn.Module, Any], Tensor]:
    from litmix.models import output_logits

    def loss(model: nn.Module, batch: Any) -> Tensor:
        x, y, _ = split_batch(batch)
        logits = output_logits(forward(model, batch), owner=_OWNER)
        if y is None:  # token batch without targets: next-token prediction
            if not (isinstance(x, Tensor) and logits.dim() == 3 and x.dim() == 2):
                raise ValueError(f"{_OWNER}(method='mfac_obs'): batches need targets (or token ids for an LM)")
            return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    return loss


def _prune_mfac(
    model: nn.Module,
    batches: list[Any],
    layers: list[_Layer],
    sparsity: float,
    mfac_grads: int,
    forward: Callable[[nn.Module, Any], Any],
    start: float,
) -> PruneResult:
    mfac = _mfac_dispatch()
    assert mfac is not None
    device = next(iter(model.parameters())).device
    moved = [_move(b, device) for b in batches]
    masks = mfac(
        model,
        _lm_loss(forward),
        moved,
        sparsity,
        parameter_names=[ly.name for ly in layers],
        num_grads=mfac_grads,
        scope="layer",
    )
    report: dict[str, float] = {n: float((~m).sum()) / m.numel() for n, m in masks.items()}
    total = sum(m.numel() for m in masks.values())
    report["global"] = sum(float((~m).sum()) for m in masks.values()) / max(total, 1)
    return PruneResult(
        masks=dict(masks),
        sparsity=report,
        target=dict.fromkeys(masks, sparsity),
        groups=[[ly.name for ly in layers]],
        seconds=time.perf_counter() - start,
    )


def _prune(
    model: nn.Module,
    batches: list[Any],
    layers: list[_Layer],
    method: str,
    sparsity: float,
    nm: tuple[int, int] | None,
    refine: str | None,
    sparsity_profile: str,
    sequential: str,
    blocksize: int,
    percdamp: float,
    owl_m: float,
    owl_lamda: float,
    dsnot_cycles: int,
    dsnot_threshold: float,
    forward: Callable[[nn.Module, Any], Any],
    device: torch.device,
    needs_data: bool,
) -> PruneResult:

    # execution order of the layers (one forward of the first batch), then the calibration groups
    if batches:
        order: list[str] = []
        handles = [
            ly.module.register_forward_hook(lambda m, a, o, n=ly.name: order.append(n) if n not in order else None)
            for ly in layers
        ]
        try:
            with torch.no_grad():
                forward(model, _move(batches[0], device))
        finally:
            for h in handles:
                h.remove()
        rank = {n: i for i, n in enumerate(order)}
        unreached = [ly.name for ly in layers if ly.name not in rank]
        if unreached and needs_data:
            raise ValueError(
                f"{_OWNER}(parameter_names=...): the forward pass never reaches {unreached}; leave them out"
            )
        layers.sort(key=lambda ly: rank.get(ly.name, len(rank)))
    block_of = {ly.name: _block_of(model, ly.name.rpartition(".")[0]) for ly in layers}
    owl_groups: dict[str, list[_Layer]] = {}
    for ly in layers:
        owl_groups.setdefault(block_of[ly.name], []).append(ly)
    if sequential == "auto":
        sequential = "layer" if method == "sparsegpt" or refine == "dsnot" else "block"
    groups = list(owl_groups.values()) if sequential == "block" else [[ly] for ly in layers]

    # OWL: outlier ratios on the dense model (one pass, Σx² only), then per-layer targets
    targets = {ly.name: sparsity for ly in layers}
    ratios: dict[str, float] = {}
    if sparsity_profile == "owl":
        with torch.no_grad():
            dense = _run(model, batches, layers, False, forward, device)
        for gname, members in owl_groups.items():
            scores = [wanda_scores(ly.matrix().to(torch.float64), dense[ly.name].wanda_norms()) for ly in members]
            ratios[gname] = outlier_ratio(scores, owl_m)
        for gname, s in zip(ratios, owl_sparsities(list(ratios.values()), sparsity, owl_lamda), strict=True):
            for ly in owl_groups[gname]:
                targets[ly.name] = s
        del dense

    hessian = method == "sparsegpt" or refine == "dsnot"
    masks: dict[str, Tensor] = {}
    swaps: dict[str, int] = {}
    cached: tuple[str, tuple[nn.Module, list[Any]] | None] = ("", None)
    for group in groups:
        if needs_data:
            replay = None
            bname = block_of[group[0].name]
            if sequential == "layer" and bname != group[0].name.rpartition(".")[0]:
                # layer by layer inside a transformer block: capture the block's inputs once (through the pruned
                # prefix) and replay only the block for each of its layers
                if cached[0] != bname:
                    blk = model.get_submodule(bname)
                    with torch.no_grad():
                        calls = _capture_block_inputs(model, blk, batches, forward, device)
                    cached = (bname, None if calls is None else (blk, calls))
                replay = cached[1]
            with torch.no_grad():
                stats = _run(model, batches, group, hessian, forward, device, replay)
        else:
            stats = {}
        for ly in group:
            W = ly.matrix()
            s = targets[ly.name]
            st = stats.get(ly.name)
            if method == "sparsegpt":
                assert st is not None
                prune_n, prune_m = (0, 0) if nm is None else (nm[1] - nm[0], nm[1])
                newW, keep = sparsegpt_prune(W, st.hessian(), s, prune_n, prune_m, blocksize, percdamp)
            else:
                if method == "magnitude":
                    score = magnitude_scores(W)
                else:
                    assert st is not None
                    score = wanda_scores(W, st.wanda_norms())
                keep = _select(score.to(torch.float64), s, nm)
                newW = W
            if refine == "dsnot":
                assert st is not None
                keep, swaps[ly.name] = dsnot_refine(
                    newW, keep, st, max_cycles=dsnot_cycles, update_threshold=dsnot_threshold, nm=nm
                )
            keep = keep.to(W.device)
            ly.write(newW.to(W.dtype) * keep)
            masks[ly.name] = ly.to_param_shape(keep)
        del stats
    report: dict[str, float] = {}
    pruned = total = 0
    for ly in layers:
        m = masks[ly.name]
        k = int((~m).sum())
        report[ly.name] = k / m.numel()
        pruned, total = pruned + k, total + m.numel()
    report["global"] = pruned / max(total, 1)
    return PruneResult(
        masks=masks,
        sparsity=report,
        target=targets,
        groups=[[ly.name for ly in g] for g in groups],
        outlier_ratios=ratios,
        swaps=swaps,
    )
