"""Unlearning evaluation on plain tensors: exact KS forget quality, truth ratio, MIA scores, privleak and more.

The torchmetrics classes in :mod:`litmix.metrics` (``ForgetQuality``, ``TruthRatio``, ``MIAScoreAUC``, ...) keep
per-sample values with their index and call these functions on the de-duplicated values. Definitions follow
TOFU (https://arxiv.org/abs/2401.06121), MUSE (https://arxiv.org/abs/2407.06460) and open-unlearning:

- **truth ratio** ``tr = exp(avgNLL(paraphrased) - mean_k avgNLL(perturbed_k))`` (per-token mean NLLs), i.e.
  the length-normalised probability of the wrong answers over that of the right one; forget aggregate
  ``mean(min(tr, 1/tr))``, retain aggregate ``mean(max(0, 1 - tr))``;
- **forget quality** = the exact two-sample Kolmogorov-Smirnov p-value between the truth ratios of the
  unlearned and of the retain-only model (:func:`ks_2samp_exact`, equal to
  ``scipy.stats.ks_2samp(method="exact")``);
- **MIA scores** (higher = looks *unseen*): ``loss`` (per-token mean NLL), ``zlib`` (that / zlib length),
  ``min_k`` (minus the mean of the lowest ``k`` share of token log-probabilities), ``min_k_plus_plus``
  (the same on token log-probabilities standardised by the model's own distribution), ``reference`` (target
  minus reference NLL); AUROC with holdout = positive: **1 = memorised, 0.5 = indistinguishable**;
- **privleak** (MUSE) ``((1 - AUC) - (1 - AUC_RT)) / (1 - AUC_RT) * 100``: about 0 good, -100 memorised,
  > 0 over-unlearned;
- **MIA efficacy** (https://arxiv.org/abs/2304.04934): an attacker fit on retain (members) vs test
  (non-members) scores; the share of forget samples it calls non-members;
- **extraction strength** (open-unlearning, after https://arxiv.org/abs/2202.07646): ``1 - k/|y|`` for the
  smallest answer prefix ``k`` after which greedy teacher-forced predictions reproduce the rest;
- **prediction Wasserstein**: 1-D W1 distance between two samples of predictions.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "extraction_strength",
    "harmonic_mean",
    "ks_2samp_exact",
    "ks_pvalue_lattice",
    "ks_statistic",
    "mia_efficacy",
    "min_k_plus_plus_score",
    "min_k_score",
    "privleak",
    "rank_auroc",
    "token_logprobs",
    "truth_ratio",
    "truth_ratio_aggregate",
    "wasserstein_1d",
    "zlib_score",
]


# ---------------------------------------------------------------------------------------------------------
# Exact two-sample Kolmogorov-Smirnov test


def _as_float64(x: Tensor | Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"ks_2samp_exact: {name} is empty; the KS test needs at least one value per sample")
    if not np.isfinite(arr).all():
        raise ValueError(f"ks_2samp_exact: {name} holds NaN or infinite values")
    return arr


def ks_statistic(a: Tensor, b: Tensor) -> tuple[int, int, int]:
    """Integer form of the two-sided KS statistic: ``(h, n, m)`` with ``D = h / lcm(n, m)``.

    ``D = max_v |ECDF_a(v) - ECDF_b(v)|`` over the pooled values (ties handled as scipy does, with
    right-continuous ECDFs), computed exactly in integers: ``h = max |count_a(v) m - count_b(v) n| / gcd(n, m)``.

    Example:
        >>> ks_statistic(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.5, 4.0]))    # D = 2/3 - 0 ... = 2/3
        (4, 3, 2)
    """
    x, y = np.sort(_as_float64(a, "a")), np.sort(_as_float64(b, "b"))
    n, m = x.size, y.size
    pooled = np.concatenate([x, y])
    ca = np.searchsorted(x, pooled, side="right").astype(np.int64)
    cb = np.searchsorted(y, pooled, side="right").astype(np.int64)
    g = math.gcd(n, m)
    return int(np.abs(ca * m - cb * n).max()) // g, n, m


def _ks_outside_probability(n: int, m: int, h: int) -> float:
    """P(D >= h / lcm(n, m)) under H0: the share of monotone lattice paths (0,0) -> (n,m) that leave the band.

    ``Q(i, j)`` = share of paths to ``(i, j)`` that have left ``|i m - j n| < h g``;
    ``Q(i, j) = 1`` outside the band, else ``(i Q(i-1, j) + j Q(i, j-1)) / (i + j)``. Computing the complement
    directly (as scipy does) keeps tiny p-values accurate; anti-diagonals are vectorised (``n + m`` numpy steps).
    """
    g = math.gcd(n, m)
    bound = h * g
    i = np.arange(n + 1, dtype=np.int64)
    fi = i.astype(np.float64)
    q = np.zeros(n + 1, dtype=np.float64)  # diagonal k = 0: only (0, 0), inside
    shifted = np.empty_like(q)
    for k in range(1, n + m + 1):
        j = k - i
        shifted[0] = 0.0
        shifted[1:] = q[:-1]
        q = (fi * shifted + (k - fi) * q) / k  # weight j = k - i; 0 at j = 0, garbage (unused) where j < 0
        q[np.abs(i * m - j * n) >= bound] = 1.0
    return float(q[n])


def ks_2samp_exact(a: Tensor, b: Tensor) -> Tensor:
    """Exact two-sided two-sample KS p-value, equal to ``scipy.stats.ks_2samp(a, b, method="exact").pvalue``.

    The p-value is the probability, under the null of one common continuous distribution, that a uniformly
    random interleaving of the two sorted samples reaches an ECDF gap of at least the observed ``D``: counted
    on the ``(n + 1) x (m + 1)`` lattice in float64 (``O(n m)``, about 5 ms at ``n = m = 400``).

    **Lattice.** ``D`` only takes the values ``h / lcm(n, m)``, so the p-value only takes the values of
    :func:`ks_pvalue_lattice`: at TOFU's forget01 (``n = m = 40``) and its 20-item halves the attainable
    forget-quality values are few and far apart (``n = m = 20``, ``D = h/20`` for ``h = 1, 2, ...``: 1.0, 1.0,
    0.983, 0.832, 0.571, 0.336, 0.175, 0.081, 0.034, 0.012, ...), so one item changing its rank moves forget
    quality by a factor of 2 to 4. Compare forget quality between methods on the lattice, not as a continuous
    score. The asymptotic p-value is off at these sizes (``n = m = 20``, ``D = 0.25``: exact 0.571, asymptotic
    0.484; ``D = 0.4``: 0.081 vs 0.059); this function never switches to it.

    Args:
        a: first sample (any shape, flattened; finite values).
        b: second sample.

    Returns:
        A float64 scalar tensor in ``[0, 1]``.

    Raises:
        ValueError: for an empty sample or non-finite values.

    Example:
        >>> a = torch.tensor([0.1, 0.4, 0.7, 0.9]); b = torch.tensor([0.5, 0.8, 1.2, 1.5, 2.0])
        >>> round(float(ks_2samp_exact(a, b)), 6)       # scipy: 0.285714
        0.285714
        >>> float(ks_2samp_exact(a, a))                 # D = 0
        1.0
    """
    h, n, m = ks_statistic(a, b)
    if h == 0:
        return torch.tensor(1.0, dtype=torch.float64)
    p = _ks_outside_probability(n, m, h)
    return torch.tensor(min(max(p, 0.0), 1.0), dtype=torch.float64)


def ks_pvalue_lattice(n: int, m: int) -> Tensor:
    """Every p-value the exact KS test can give for sizes ``(n, m)``: entry ``h`` is ``P(D >= h / lcm(n, m))``.

    Only the ``h`` that some pair of samples can reach matter (``h`` a multiple of the reachable gaps); the
    table shows how coarse forget quality is at TOFU sizes.

    Raises:
        ValueError: for ``n`` or ``m`` below 1 or a lattice above 10**6 points.

    Example:
        >>> lat = ks_pvalue_lattice(20, 20)             # h = 0..20, D = h / 20
        >>> [round(float(p), 3) for p in lat[3:9]]
        [0.983, 0.832, 0.571, 0.336, 0.175, 0.081]
    """
    if n < 1 or m < 1:
        raise ValueError(f"ks_pvalue_lattice(n={n}, m={m}): sizes must be >= 1")
    lcm = n * m // math.gcd(n, m)
    if lcm > 10**6:
        raise ValueError(f"ks_pvalue_lattice(n={n}, m={m}): lcm {lcm} is too large to tabulate")
    values = [1.0] + [_ks_outside_probability(n, m, h) for h in range(1, lcm + 1)]
    return torch.tensor(values, dtype=torch.float64).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------------
# Truth ratio, utility


def truth_ratio(paraphrased_nll: Tensor, perturbed_nll: Tensor) -> Tensor:
    """TOFU truth ratio ``exp(avgNLL(paraphrased) - mean_k avgNLL(perturbed_k))`` per item.

    Both NLLs are **per-token means** (length-normalised). ``tr < 1``: the model prefers the right answer;
    ``tr = 1``: indifferent; ``tr > 1``: prefers the wrong ones. Where several paraphrases are given
    (``[B, P]``) their avgNLLs are averaged, as open-unlearning does.

    Args:
        paraphrased_nll: ``[B]`` or ``[B, P]`` per-token mean NLL of the (paraphrased) correct answer.
        perturbed_nll: ``[B, K]`` per-token mean NLL of the ``K`` perturbed (wrong) answers.

    Raises:
        ValueError: for mismatched batch sizes.

    Example:
        >>> truth_ratio(torch.tensor([1.0, 2.0]), torch.tensor([[1.0, 1.0], [1.0, 3.0]]))
        tensor([1., 1.])
        >>> truth_ratio(torch.tensor([0.5]), torch.tensor([[2.5]]))     # exp(-2)
        tensor([0.1353])
    """
    para = paraphrased_nll.float()
    para = para.mean(-1) if para.dim() == 2 else para.reshape(-1)
    pert = perturbed_nll.float()
    pert = pert.mean(-1) if pert.dim() == 2 else pert.reshape(-1)
    if para.shape != pert.shape:
        raise ValueError(
            f"truth_ratio: {para.shape[0]} paraphrased items but {pert.shape[0]} rows of perturbed answers"
        )
    return torch.exp(para - pert)


def truth_ratio_aggregate(tr: Tensor, split: str = "forget") -> Tensor:
    """TOFU's aggregate of truth ratios: ``forget``: ``mean(min(tr, 1/tr))``; ``retain``: ``mean(max(0, 1 - tr))``.

    Raises:
        ValueError: for an unknown ``split``.

    Example:
        >>> tr = torch.tensor([0.5, 1.0, 2.0])
        >>> truth_ratio_aggregate(tr, "forget"), truth_ratio_aggregate(tr, "retain")
        (tensor(0.6667), tensor(0.1667))
    """
    if split == "forget":
        return torch.minimum(tr, 1.0 / (tr + 1e-10)).mean()
    if split == "retain":
        return (1.0 - tr).clamp_min(0.0).mean()
    raise ValueError(f"truth_ratio_aggregate(split={split!r}): split must be 'forget' or 'retain'")


def harmonic_mean(values: Tensor) -> Tensor:
    """Harmonic mean (TOFU model utility over its component scores); 0 when a component is 0.

    Raises:
        ValueError: for an empty or negative input.

    Example:
        >>> harmonic_mean(torch.tensor([1.0, 0.5, 0.25]))
        tensor(0.4286)
        >>> harmonic_mean(torch.tensor([0.9, 0.0]))
        tensor(0.)
    """
    v = values.double().reshape(-1)
    if v.numel() == 0 or bool((v < 0).any()):
        raise ValueError("harmonic_mean: needs at least one value, all >= 0")
    if bool((v == 0).any()):
        return torch.tensor(0.0, dtype=values.dtype if values.is_floating_point() else torch.float32)
    return (v.numel() / (1.0 / v).sum()).to(values.dtype if values.is_floating_point() else torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Membership inference


def token_logprobs(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Per-token log-probabilities of the labels under a causal LM (Hugging Face shift) and their mask.

    Example:
        >>> lp, mask = token_logprobs(torch.zeros(1, 3, 4), torch.tensor([[-100, 1, 2]]))
        >>> lp, mask
        (tensor([[-1.3863, -1.3863]]), tensor([[True, True]]))
    """
    shift_logits, shift_labels = logits[:, :-1, :].float(), labels[:, 1:]
    mask = shift_labels != ignore_index
    logp = F.log_softmax(shift_logits, dim=-1)
    lp = logp.gather(-1, shift_labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return lp.masked_fill(~mask, 0.0), mask


def _lowest_k_mean(values: Tensor, mask: Tensor, k: float) -> Tensor:
    """Per row: mean of the ``max(1, int(count * k))`` smallest values among the masked ones."""
    big = torch.finfo(values.dtype).max
    sorted_vals = values.masked_fill(~mask, big).sort(dim=-1).values
    count = mask.sum(-1)
    take = (count.double() * k).long().clamp_min(1)
    pos = torch.arange(values.shape[-1], device=values.device).unsqueeze(0)
    chosen = (pos < take.unsqueeze(-1)) & (pos < count.unsqueeze(-1))
    return (sorted_vals.masked_fill(~chosen, 0.0)).sum(-1) / take.clamp_max(count.clamp_min(1))


def min_k_score(logits: Tensor, labels: Tensor, k: float = 0.4, ignore_index: int = -100) -> Tensor:
    """Min-K% Prob attack score: ``-mean`` of the lowest ``k`` share of token log-probabilities.

    Detecting Pretraining Data from Large Language Models (https://arxiv.org/abs/2310.16789).
    Higher = looks unseen. Works for LMs (``[B, T, V]`` logits, ``[B, T]`` labels) and, with one "token", for
    classifiers (``[B, C]``: the score is the NLL).

    Example:
        >>> logits = torch.zeros(1, 4, 4); logits[0, 0, 1] = 5.0      # first answer token is confident
        >>> min_k_score(logits, torch.tensor([[-100, 1, 2, 3]]), k=0.4)  # the lowest 1 of 3 tokens: -log(1/4)
        tensor([1.3863])
    """
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), labels, reduction="none")
    lp, mask = token_logprobs(logits, labels, ignore_index)
    return -_lowest_k_mean(lp, mask, k)


def min_k_plus_plus_score(logits: Tensor, labels: Tensor, k: float = 0.4, ignore_index: int = -100) -> Tensor:
    """Min-K%++ attack score (https://arxiv.org/abs/2404.02936) on standardised token log-probabilities.

    Per token ``z = (log p(y_t) - mu_t) / sigma_t`` with ``mu_t = E_{v~p}[log p(v)]`` and
    ``sigma_t^2 = E[(log p(v))^2] - mu_t^2`` under the model's own next-token distribution; score =
    ``-mean`` of the lowest ``k`` share of ``z``. Higher = looks unseen. Classifier logits ``[B, C]`` are one token.

    Example:
        >>> logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
        >>> min_k_plus_plus_score(logits, torch.tensor([[-100, 0]]), k=1.0)   # z = (log p_0 - mu) / sigma > 0
        tensor([-0.5203])
    """
    if logits.dim() == 2:
        logits, labels = logits.unsqueeze(1), labels.reshape(-1, 1)
        logits = torch.cat([logits, logits], dim=1)
        labels = torch.cat([torch.full_like(labels, ignore_index), labels], dim=1)
    shift_logits, shift_labels = logits[:, :-1, :].float(), labels[:, 1:]
    mask = shift_labels != ignore_index
    logp = F.log_softmax(shift_logits, dim=-1)
    p = logp.exp()
    mu = (p * logp).sum(-1)
    sigma = ((p * logp.square()).sum(-1) - mu.square()).clamp_min(1e-12).sqrt()
    target = logp.gather(-1, shift_labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    z = ((target - mu) / sigma).masked_fill(~mask, 0.0)
    return -_lowest_k_mean(z, mask, k)


def zlib_score(nll: Tensor, texts: Sequence[str] | Sequence[Sequence[int]] | Tensor) -> Tensor:
    """The zlib attack score (https://arxiv.org/abs/2012.07805): per-token mean NLL / zlib-compressed length.

    ``texts`` are strings (UTF-8, as open-unlearning) or token-id rows (compressed as int32 bytes; ``-100``
    and negative ids dropped). Higher = looks unseen.

    Raises:
        ValueError: when ``texts`` and ``nll`` differ in length.

    Example:
        >>> s = zlib_score(torch.tensor([2.0, 2.0]), ["aaaaaaaaaaaaaaaa", "a quick brown fox"])
        >>> bool(s[0] > s[1])                           # repetitive text compresses better
        True
    """
    nll = nll.reshape(-1).float()
    rows = texts.tolist() if isinstance(texts, Tensor) else list(texts)
    if len(rows) != nll.numel():
        raise ValueError(f"zlib_score: {len(rows)} texts for {nll.numel()} NLL values")
    sizes = []
    for row in rows:
        if isinstance(row, str):
            data = row.encode("utf-8")
        else:
            ids = np.asarray(row, dtype=np.int64).reshape(-1)
            data = ids[ids >= 0].astype(np.int32).tobytes()
        sizes.append(len(zlib.compress(data)))
    return nll / torch.tensor(sizes, dtype=torch.float32, device=nll.device)


def rank_auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """AUROC of ``scores`` for binary ``labels`` (1 = positive) from average ranks (ties count one half).

    Equal to ``sklearn.metrics.roc_auc_score``; NaN unless both classes are present.

    Example:
        >>> rank_auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
        tensor(0.7500)
        >>> rank_auroc(torch.tensor([1.0, 1.0]), torch.tensor([0, 1]))
        tensor(0.5000)
    """
    s = scores.double().reshape(-1)
    y = labels.reshape(-1).bool()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return torch.tensor(float("nan"))
    _, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    avg_rank = ends - (counts.double() - 1) / 2  # 1-based average rank of each distinct value
    rank_sum = avg_rank[inverse][y].sum()
    return ((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).float()


def privleak(auc: float | Tensor, retrain_auc: float | Tensor) -> Tensor:
    """MUSE privleak ``((1 - auc) - (1 - auc_rt)) / (1 - auc_rt) * 100`` for AUCs in the 1 = memorised orientation.

    In MUSE's orientation (forget = positive, ``A = 1 - auc``) this is ``(A - A_RT) / A_RT * 100``: about 0 is
    good, -100 = perfectly memorised, > 0 = over-unlearned (forget samples look *less* seen than holdout ones).

    Raises:
        ValueError: when ``retrain_auc`` is 1 (``1 - auc_rt = 0``).

    Example:
        >>> privleak(0.5, 0.5), privleak(1.0, 0.5), privleak(0.25, 0.5)
        (tensor(0.), tensor(-100.), tensor(50.))
    """
    a, ref = 1.0 - torch.as_tensor(auc, dtype=torch.float32), 1.0 - torch.as_tensor(retrain_auc, dtype=torch.float32)
    if float(ref) <= 0:
        raise ValueError(f"privleak(retrain_auc={float(1 - ref)}): the retrained model's AUC must be < 1")
    return (a - ref) / ref * 100.0


def mia_efficacy(retain_scores: Tensor, test_scores: Tensor, forget_scores: Tensor) -> Tensor:
    """MIA-Efficacy (https://arxiv.org/abs/2304.04934): share of forget samples an attacker calls non-members.

    The attacker is the best single threshold on a 1-D score (e.g. prediction entropy or loss; higher = unseen),
    fit on retain (members) vs test (non-members) by balanced accuracy; the paper uses an SVC on the same
    features, for one feature a threshold rule. Higher = more forgotten; a retrained model gives about
    the test set's non-member rate.

    Raises:
        ValueError: for an empty input.

    Example:
        >>> retain, test = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 1.1, 1.2])
        >>> mia_efficacy(retain, test, torch.tensor([0.15, 1.05])), mia_efficacy(retain, test, torch.tensor([2.0]))
        (tensor(0.5000), tensor(1.))
    """
    r, t, f = (x.double().reshape(-1) for x in (retain_scores, test_scores, forget_scores))
    if r.numel() == 0 or t.numel() == 0 or f.numel() == 0:
        raise ValueError("mia_efficacy: retain, test and forget scores must all be non-empty")
    cand = torch.unique(torch.cat([r, t]))
    mids = torch.cat([cand[:1] - 1, (cand[1:] + cand[:-1]) / 2, cand[-1:] + 1])
    # non-member iff score > threshold; balanced accuracy of each threshold
    tpr = (t.unsqueeze(0) > mids.unsqueeze(1)).double().mean(1)
    tnr = (r.unsqueeze(0) <= mids.unsqueeze(1)).double().mean(1)
    best = mids[int(torch.argmax(tpr + tnr))]
    return (f > best).float().mean()


def extraction_strength(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Extraction strength per sequence as open-unlearning computes it: ``1 - k / |y|``.

    ``k`` = the smallest answer position from which every greedy (teacher-forced argmax) prediction equals the
    answer; when no suffix matches, ``k = |y| - 1`` (open-unlearning's loop), so the value lies in
    ``[1/|y|, 1]``: 1 = the whole answer is extracted from the question alone. Sequences without answer tokens
    give NaN.

    Example:
        >>> logits = torch.full((1, 4, 5), -1.0)
        >>> for t, tok in enumerate([2, 3, 4]): logits[0, t, tok] = 1.0     # predicts labels[t + 1]
        >>> extraction_strength(logits, torch.tensor([[-100, 2, 3, 4]]))
        tensor([1.])
        >>> extraction_strength(logits, torch.tensor([[-100, 0, 3, 4]]))     # first token wrong: k = 1
        tensor([0.6667])
    """
    shift_logits, shift_labels = logits[:, :-1, :], labels[:, 1:]
    mask = shift_labels != ignore_index
    wrong = (shift_logits.argmax(-1) != shift_labels) & mask
    count = mask.sum(-1)
    # position among answer tokens; the answer's last wrong position + 1 = first k whose suffix is all correct
    order = mask.long().cumsum(-1) - 1
    last_wrong = torch.where(wrong, order, torch.full_like(order, -1)).max(-1).values
    k = torch.minimum(last_wrong + 1, (count - 1).clamp_min(0))
    es = 1.0 - k.double() / count.double()
    return torch.where(count > 0, es, torch.full_like(es, float("nan"))).float()


def wasserstein_1d(a: Tensor, b: Tensor) -> Tensor:
    """1-D Wasserstein-1 distance between two empirical samples (``scipy.stats.wasserstein_distance``).

    ``integral |F_a(x) - F_b(x)| dx`` over the pooled sorted values; for equal sizes this is
    ``mean |sort(a) - sort(b)|``.

    Raises:
        ValueError: for an empty sample.

    Example:
        >>> wasserstein_1d(torch.tensor([0.0, 1.0, 3.0]), torch.tensor([5.0, 6.0, 8.0]))
        tensor(5.)
        >>> wasserstein_1d(torch.tensor([0.0]), torch.tensor([0.0, 1.0]))
        tensor(0.5000)
    """
    x, y = a.double().reshape(-1), b.double().reshape(-1)
    if x.numel() == 0 or y.numel() == 0:
        raise ValueError("wasserstein_1d: both samples must be non-empty")
    xs, ys = x.sort().values, y.sort().values
    pooled = torch.cat([xs, ys]).sort().values
    deltas = pooled[1:] - pooled[:-1]
    fa = torch.searchsorted(xs, pooled[:-1], right=True).double() / xs.numel()
    fb = torch.searchsorted(ys, pooled[:-1], right=True).double() / ys.numel()
    return ((fa - fb).abs() * deltas).sum().float()
