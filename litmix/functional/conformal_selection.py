"""Conformal selection with FDR control, plain (Jin & Candès, 2023) and after model optimization (Bai & Jin, 2024).

Pure tensors. The task: from ``m`` unlabeled test points select those whose unobserved outcome ``Y`` exceeds a
threshold ``c`` while the false discovery rate (the expected share of selected points with ``Y <= c``) stays at most
``q``. Every score is a prediction ``mu(x)`` (larger: more likely ``Y > c``), used through the clipped monotone
conformity score ``V(x, y) = inf * 1{y > c} + c - mu(x)`` of Jin & Candès: calibration points with ``Y > c``
never count against a test point, so a conformal p-value ranks ``mu(X_test)`` among the predictions of the
calibration points with ``Y <= c``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_type

__all__ = ["OptimizedSelection", "conformal_pvalues", "conformal_select", "optimized_conformal_select"]

_PAPER_CS = "Selection by Prediction with Conformal p-values (https://arxiv.org/abs/2210.01408)"
_PAPER_OPT = (
    "Optimized Conformal Selection: Powerful Selective Inference After Conformity Score Optimization "
    "(https://arxiv.org/abs/2411.17983)"
)
_MODULE = "litmix.functional.conformal_selection"


class OptimizedSelection(NamedTuple):
    """Result of :func:`optimized_conformal_select`.

    Attributes:
        selected: ``(m,)`` bool, the selected test points.
        model: ``(m,)`` long, the candidate model chosen for each test point.
        pvalues: ``(m,)`` conformal p-values, each computed with its test point's chosen model.
        first_step: ``(m,)`` bool, the selection before pruning (``p_j <= q |R_j| / m``).
    """

    selected: Tensor
    model: Tensor
    pvalues: Tensor
    first_step: Tensor


def _check_vector(owner: str, name: str, value: object, *, ndim: int = 1) -> Tensor:
    check_type(owner, name, value, Tensor)
    assert isinstance(value, Tensor)
    if value.is_complex() or value.dtype == torch.bool:
        raise TypeError(f"{owner}({name}=...): {name} must be a real tensor, got {value.dtype}")
    if value.dim() != ndim:
        shape = "(n,)" if ndim == 1 else "(K, n)"
        raise ValueError(f"{owner}({name}=...): {name} must have shape {shape}, got {tuple(value.shape)}")
    if value.shape[-1] < 1:
        raise ValueError(f"{owner}({name}=...): {name} must not be empty")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{owner}({name}=...): {name} must be finite")
    return value.to(torch.float64)


def _check_generator(owner: str, generator: object) -> None:
    check_type(owner, "generator", generator, torch.Generator, allow_none=True)


def _bh_count(pvalues: Tensor, q: float) -> Tensor:
    """Number of Benjamini–Hochberg rejections at level ``q`` along the last dimension."""
    m = pvalues.shape[-1]
    ranks = torch.arange(1, m + 1, dtype=pvalues.dtype, device=pvalues.device)
    ok = pvalues.sort(dim=-1).values <= q * ranks / m
    return (ok * ranks).amax(dim=-1).to(torch.long)


def _pvalues(cal: Tensor, null: Tensor, test: Tensor, randomized: bool, generator: torch.Generator | None) -> Tensor:
    n = cal.shape[-1]
    cal_null = cal[null]
    above = (cal_null[None, :] > test[:, None]).sum(1).to(test.dtype)
    if not randomized:
        ties = (cal_null[None, :] == test[:, None]).sum(1).to(test.dtype)
        return (1.0 + above + ties) / (n + 1)
    ties = (cal_null[None, :] == test[:, None]).sum(1).to(test.dtype)
    u = torch.rand(test.shape[0], generator=generator, dtype=test.dtype)
    return (above + u * (1.0 + ties)) / (n + 1)


def _check_common(
    owner: str, calib_scores: object, calib_labels: object, test_scores: object, threshold: object, ndim: int
) -> tuple[Tensor, Tensor, Tensor, float]:
    cal = _check_vector(owner, "calib_scores", calib_scores, ndim=ndim)
    lab = _check_vector(owner, "calib_labels", calib_labels)
    test = _check_vector(owner, "test_scores", test_scores, ndim=ndim)
    if cal.shape[-1] != lab.shape[0]:
        raise ValueError(
            f"{owner}(calib_labels=...): calib_labels has {lab.shape[0]} entries but calib_scores has "
            f"{cal.shape[-1]} calibration points"
        )
    if ndim == 2 and cal.shape[0] != test.shape[0]:
        raise ValueError(
            f"{owner}(test_scores=...): test_scores has {test.shape[0]} models but calib_scores has {cal.shape[0]}"
        )
    c = check_float(owner, "threshold", threshold)
    return cal, lab, test, c


@register("function", "optimization", paper=_PAPER_CS, module=_MODULE)
def conformal_pvalues(
    calib_scores: Tensor,
    calib_labels: Tensor,
    test_scores: Tensor,
    threshold: float,
    *,
    randomized: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Conformal p-values for the nulls ``H_j: Y_j <= threshold`` with the clipped score (Jin & Candès, 2023).

    "Selection by Prediction with Conformal p-values", Jin & Candès, JMLR 2023 (https://arxiv.org/abs/2210.01408).
    With predictions ``mu`` (larger: more likely above the threshold ``c``) the clipped score
    ``V(x, y) = inf * 1{y > c} + c - mu(x)`` gives

    ``p_j = (1 + #{i <= n: Y_i <= c, mu(X_i) >= mu(X_j)}) / (n + 1)``

    (``randomized=True``: ties broken by an independent uniform, exactly uniform under exchangeability). Under
    ``H_j`` and exchangeability of calibration and test point, ``P(p_j <= t) <= t``.

    Args:
        calib_scores: ``(n,)`` predictions for the calibration points (finite, ``n >= 1``).
        calib_labels: ``(n,)`` observed outcomes of the calibration points.
        test_scores: ``(m,)`` predictions for the test points.
        threshold: ``c``; the selection target is ``Y > c``.
        randomized: break ties with a uniform draw (uses ``generator``).
        generator: optional ``torch.Generator`` for the randomized p-values.

    Returns:
        ``(m,)`` float64 p-values in ``(0, 1]``.

    Raises:
        TypeError: for a non-tensor or boolean/complex score or label, a wrongly typed option.
        ValueError: for an empty calibration or test set, mismatched lengths, non-finite values or threshold.

    Example:
        >>> cal = torch.tensor([0.1, 0.4, 0.3, 0.9])
        >>> y = torch.tensor([0.0, 0.0, 1.0, 1.0])  # the last two are above the threshold 0.5
        >>> conformal_pvalues(cal, y, torch.tensor([0.95, 0.35, 0.0]), 0.5)
        tensor([0.2000, 0.4000, 0.6000], dtype=torch.float64)
    """
    owner = "conformal_pvalues"
    cal, lab, test, c = _check_common(owner, calib_scores, calib_labels, test_scores, threshold, 1)
    randomized = check_bool(owner, "randomized", randomized)
    _check_generator(owner, generator)
    return _pvalues(cal, lab <= c, test, randomized, generator)


@register("function", "optimization", paper=_PAPER_CS, module=_MODULE)
def conformal_select(
    calib_scores: Tensor,
    calib_labels: Tensor,
    test_scores: Tensor,
    threshold: float,
    q: float,
    *,
    randomized: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Conformal selection: Benjamini–Hochberg at level ``q`` on the conformal p-values (Jin & Candès, 2023).

    "Selection by Prediction with Conformal p-values", Jin & Candès, JMLR 2023 (https://arxiv.org/abs/2210.01408).
    The p-values of :func:`conformal_pvalues` (clipped, monotone score) are positively dependent in the way BH
    needs, so the FDR of the selection ``{j: Y_j > c}`` is at most ``q`` in finite samples when calibration and
    test data are exchangeable and the model producing the scores was fitted on independent data.

    Args:
        calib_scores: ``(n,)`` calibration predictions.
        calib_labels: ``(n,)`` calibration outcomes.
        test_scores: ``(m,)`` test predictions.
        threshold: ``c``; select points believed to have ``Y > c``.
        q: the target FDR, in ``(0, 1)``.
        randomized: use randomized (tie-breaking) p-values.
        generator: optional ``torch.Generator`` for ``randomized``.

    Returns:
        ``(m,)`` bool mask of the selected test points.

    Raises:
        TypeError: for a non-tensor input or wrongly typed option.
        ValueError: for ``q`` outside ``(0, 1)``, an empty calibration or test set, mismatched lengths,
            non-finite values.

    Example:
        >>> cal = torch.arange(20.0)  # predictions equal outcomes: a perfect model
        >>> conformal_select(cal, cal, torch.tensor([19.5, 15.0, 2.0]), threshold=9.5, q=0.2)
        tensor([ True,  True, False])
    """
    owner = "conformal_select"
    cal, lab, test, c = _check_common(owner, calib_scores, calib_labels, test_scores, threshold, 1)
    q = check_float(owner, "q", q, low=0.0, high=1.0, low_open=True, high_open=True)
    randomized = check_bool(owner, "randomized", randomized)
    _check_generator(owner, generator)
    p = _pvalues(cal, lab <= c, test, randomized, generator)
    k = int(_bh_count(p, q))
    m = p.shape[0]
    return p <= q * k / m if k > 0 else torch.zeros(m, dtype=torch.bool)


@register("function", "optimization", paper=_PAPER_OPT, module=_MODULE)
def optimized_conformal_select(
    calib_scores: Tensor,
    calib_labels: Tensor,
    test_scores: Tensor,
    threshold: float,
    q: float,
    *,
    pruning: str = "homogeneous",
    generator: torch.Generator | None = None,
) -> OptimizedSelection:
    """Conformal selection after choosing, per test point, the most powerful of ``K`` candidate models (OptCS).

    Bai & Jin, "Optimized Conformal Selection: Powerful Selective Inference After Conformity Score
    Optimization", 2024 (https://arxiv.org/abs/2411.17983), the instance that selects among pre-trained candidate
    models without sample splitting, on top of Jin & Candès (https://arxiv.org/abs/2210.01408).

    Choosing the model with the labeled calibration data breaks plain conformal selection (the p-values are no
    longer valid and BH loses FDR control). OptCS makes the choice for test point ``j`` a symmetric function of
    the ``n + 1`` points "calibration plus test ``j`` with the null label" (under ``H_j: Y_j <= c`` the clipped
    score of the test point is then its true score), so the conformal p-value ``p_j`` of the chosen model stays
    valid conditional on that unordered set:

    1. For every model ``k`` and test point ``j`` compute the auxiliary p-values
       ``p_l^(j,k) = (#{i: Y_i <= c, mu_k(X_i) >= mu_k(X_l)} + 1{mu_k(X_j) >= mu_k(X_l)}) / (n + 1)`` for
       ``l != j`` (test ``j`` plays a null calibration point), ``p_j^(j,k) = 0``, and the BH rejection count
       ``|R_j^k|`` at level ``q``: the power the model would have, computed from the augmented set only.
    2. ``k_j = argmax_k |R_j^k|`` (ties: the lowest index), ``p_j`` the conformal p-value of model ``k_j``,
       ``R_j = R_j^(k_j)``.
    3. First step ``R^(1) = {j: p_j <= q |R_j| / m}``, then pruning as in conformal selection with dependent
       p-values: with ``xi_j`` (``"homogeneous"``: one shared uniform; ``"heterogeneous"``: independent
       uniforms; ``"deterministic"``: 1, which is the e-BH procedure on the e-values
       ``e_j = m 1{j in R^(1)} / (q |R_j|)``) and ``r* = max{r: #{j in R^(1): xi_j |R_j| <= r} >= r}`` the selection is
       ``{j in R^(1): xi_j |R_j| <= r*}``.

    Because ``p_j`` is super-uniform given the augmented set and ``|R_j|`` is a function of it, the selection
    has FDR at most ``q`` in finite samples (exchangeable data, candidate models fitted on independent data).

    Args:
        calib_scores: ``(K, n)`` predictions of the ``K`` candidate models on the calibration points.
        calib_labels: ``(n,)`` calibration outcomes.
        test_scores: ``(K, m)`` predictions of the candidates on the test points.
        threshold: ``c``; select points believed to have ``Y > c``.
        q: the target FDR, in ``(0, 1)``.
        pruning: ``"homogeneous"`` (default; the most powerful on the diabetes effect test), ``"heterogeneous"``
            or ``"deterministic"``.
        generator: optional ``torch.Generator`` for the pruning draws.

    Returns:
        :class:`OptimizedSelection` ``(selected, model, pvalues, first_step)``.

    Raises:
        TypeError: for a non-tensor input or wrongly typed option.
        ValueError: for ``q`` outside ``(0, 1)``, an unknown ``pruning``, an empty calibration or test set,
            mismatched shapes (scores ``(K, n)`` / ``(K, m)``, labels ``(n,)``), non-finite values.

    Example:
        >>> y = torch.arange(30.0)
        >>> good, noise = y, torch.randn(30, generator=torch.Generator().manual_seed(0))
        >>> test_y = torch.tensor([29.5, 28.0, 26.0, 3.0])
        >>> out = optimized_conformal_select(
        ...     torch.stack([noise, good]), y, torch.stack([torch.zeros(4), test_y]), 14.5, 0.2,
        ...     pruning="deterministic")
        >>> out.selected, out.model
        (tensor([ True,  True,  True, False]), tensor([1, 1, 1, 1]))
    """
    owner = "optimized_conformal_select"
    cal, lab, test, c = _check_common(owner, calib_scores, calib_labels, test_scores, threshold, 2)
    q = check_float(owner, "q", q, low=0.0, high=1.0, low_open=True, high_open=True)
    pruning = check_choice(owner, "pruning", pruning, ("heterogeneous", "homogeneous", "deterministic"))
    _check_generator(owner, generator)
    n, m = cal.shape[1], test.shape[1]
    null = lab <= c
    cal_null = cal[:, null]  # (K, n0)
    # N[k, l] = #{null calibration i: mu_k(X_i) >= mu_k(X_l)}
    counts = (cal_null[:, None, :] >= test[:, :, None]).sum(-1).to(torch.float64)  # (K, m)
    # aux[k, j, l] = (N[k, l] + 1{mu_k(X_j) >= mu_k(X_l)}) / (n + 1), with the diagonal set to 0
    aux = (counts[:, None, :] + (test[:, :, None] >= test[:, None, :]).to(torch.float64)) / (n + 1)
    aux.diagonal(dim1=1, dim2=2).zero_()
    sizes = _bh_count(aux, q)  # (K, m): |R_j^k|
    model = sizes.argmax(dim=0)  # first maximum
    r_j = sizes.gather(0, model[None]).squeeze(0)
    pvalues = (1.0 + counts.gather(0, model[None]).squeeze(0)) / (n + 1)
    first = pvalues <= q * r_j.to(torch.float64) / m
    if pruning == "heterogeneous":
        xi = torch.rand(m, generator=generator, dtype=torch.float64)
    elif pruning == "homogeneous":
        xi = torch.rand(1, generator=generator, dtype=torch.float64).expand(m)
    else:
        xi = torch.ones(m, dtype=torch.float64)
    level = xi * r_j.to(torch.float64)
    cand = level[first].sort().values  # r* = max{r: #{j in R1: level_j <= r} >= r}
    ranks = torch.arange(1, cand.numel() + 1, dtype=torch.float64)
    ok = cand <= ranks
    r_star = float((ok * ranks).amax()) if cand.numel() else 0.0
    selected = first & (level <= r_star)
    return OptimizedSelection(selected, model, pvalues, first)
