"""M-FAC: matrix-free products with the inverse of the damped empirical Fisher, and OBS pruning built on them.

Frantar, Kurtic and Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information",
NeurIPS 2021, https://arxiv.org/abs/2107.03356 (reference code: IST-DASLab/M-FAC, ``prun.py`` and ``optim.py``).

For ``m`` gradients ``g_1 .. g_m`` of ``d`` parameters (the rows of ``G``) the damped empirical Fisher is
``F = damp * I + (1/m) * sum_i g_i g_i^T``; it is never materialised (``d x d``), only ``m x d`` tensors are held.

* The **static** algorithm (:func:`inverse_fisher`) runs the Woodbury recursion once over a fixed set of gradients:
  ``Hg_i = g_i / damp - sum_{k<i} (Hg_k . g_i / denom_k) Hg_k`` and ``denom_i = m + g_i . Hg_i``; then
  ``F^-1 x = x / damp - sum_i (Hg_i . x / denom_i) Hg_i`` (:func:`inverse_fisher_mul`) and
  ``diag(F^-1) = 1 / damp - sum_i Hg_i**2 / denom_i`` (:func:`inverse_fisher_diag`). ``block_size`` splits the
  ``d`` coordinates into independent blocks (a block-diagonal Fisher), all computed together, as for pruning.
* The **dynamic** algorithm (:func:`window_update`, :func:`window_coefficients`, :func:`window_inverse_mul`) keeps a
  sliding window (ring buffer) of the last ``m`` gradients and their ``m x m`` Gram matrix ``K = G G^T``; by
  Woodbury ``F^-1 x = (x - G^T c) / damp`` with ``c = (m I + K / damp)^-1 (G x) / damp``, an ``m x m`` solve per
  product. This replaces the reference's non-pivoted LU (``torch.lu(pivot=False)``, CUDA only) with a pivoted solve
  in float64 that runs on any device; the result is the same matrix. :class:`litmix.optim.MFAC` uses it.
* **OBS pruning** (:func:`obs_saliency`, :func:`obs_update`, :func:`mfac_obs_masks`): drop the weights of lowest
  ``w_q**2 / (2 [F^-1]_qq)`` and move the others by ``dw = -F^-1 sum_{q in drop} (w_q / [F^-1]_qq) e_q``, in
  ``recomputations`` steps whose densities fall geometrically, with fresh gradients at each step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from litmix.data import split_batch
from litmix.models import output_logits
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_type

__all__ = [
    "InverseFisher",
    "inverse_fisher",
    "inverse_fisher_diag",
    "inverse_fisher_mul",
    "mfac_obs_masks",
    "obs_saliency",
    "obs_update",
    "window_coefficients",
    "window_inverse_mul",
    "window_update",
]

_PAPER = "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information (https://arxiv.org/abs/2107.03356)"


class InverseFisher(NamedTuple):
    """The precomputed static M-FAC factors of one (possibly blocked) damped empirical Fisher.

    Attributes:
        hg: ``(m, blocks, block)`` tensor: the rows ``H_{i-1} g_i`` of every block.
        denom: ``(m, blocks)`` tensor: ``m + g_i . H_{i-1} g_i``.
        damp: the dampening ``damp`` (``F = damp * I + G^T G / m``).
        numel: ``d``, the number of coordinates (the last block is zero-padded).
    """

    hg: Tensor
    denom: Tensor
    damp: float
    numel: int


def _check_damp(owner: str, damp: Any) -> float:
    return check_float(owner, "damp", damp, low=0.0, low_open=True)


def _blocked(x: Tensor, numel: int, block: int) -> Tensor:
    """``(..., d)`` -> ``(..., blocks, block)``, zero-padding the last block."""
    pad = (-numel) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block)


@register("function", "sparsity", paper=_PAPER, module="litmix.functional.mfac")
def inverse_fisher(grads: Tensor, damp: float = 1e-5, block_size: int | None = None) -> InverseFisher:
    """The static M-FAC algorithm: precompute ``F^-1`` for ``F = damp * I + (1/m) sum_i g_i g_i^T``.

    Frantar, Kurtic and Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information",
    https://arxiv.org/abs/2107.03356 (Algorithm 1). ``O(m^2 d)`` time, ``O(m d)`` memory (the factors reuse the size
    of ``grads``). With ``block_size`` the coordinates are split into consecutive blocks of that size (the last
    zero-padded, which is exact: a padded coordinate has a zero gradient, so it is decoupled) and each block gets its
    own Fisher, all blocks handled together by batched products, as the reference's ``HInvFastBatch``.

    Args:
        grads: ``(m, d)`` tensor, one gradient per row (float64 for exact comparisons).
        damp: dampening ``> 0`` added to the diagonal.
        block_size: coordinates per block, or ``None`` for one block of ``d`` (the full Fisher).

    Returns:
        The factors for :func:`inverse_fisher_mul` and :func:`inverse_fisher_diag`.

    Raises:
        TypeError: if ``grads`` is not a tensor.
        ValueError: if ``grads`` is not 2-D with ``m >= 1`` and ``d >= 1``, ``damp <= 0`` or ``block_size < 1``.

    Example:
        >>> g = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> fisher = inverse_fisher(g, damp=0.1)
        >>> x = torch.ones(6, dtype=torch.float64)
        >>> dense = 0.1 * torch.eye(6, dtype=torch.float64) + g.T @ g / 4
        >>> torch.allclose(inverse_fisher_mul(fisher, x), torch.linalg.solve(dense, x))
        True
        >>> torch.allclose(inverse_fisher_diag(fisher), torch.linalg.inv(dense).diagonal())
        True
    """
    owner = "inverse_fisher"
    check_type(owner, "grads", grads, Tensor)
    if grads.dim() != 2 or grads.shape[0] < 1 or grads.shape[1] < 1:
        raise ValueError(f"{owner}(grads=<{tuple(grads.shape)}>): grads must be a 2-D (m, d) tensor with m, d >= 1")
    damp = _check_damp(owner, damp)
    check_int(owner, "block_size", block_size, low=1, allow_none=True)
    return _inverse_fisher(grads.detach().clone(), damp, block_size)


def _inverse_fisher(grads: Tensor, damp: float, block_size: int | None) -> InverseFisher:
    """:func:`inverse_fisher` without checks, free to overwrite ``grads`` (the reference reuses its memory)."""
    m, d = grads.shape
    block = d if block_size is None else min(block_size, d)
    # layout (m, blocks, block): the recursion's products are elementwise multiply-and-sum over whole rows, faster
    # on CPUs than batched matrix-vector products of many small blocks
    hg = _blocked(grads, d, block)
    denom = torch.empty(m, hg.shape[1], dtype=hg.dtype, device=hg.device)
    inv_damp = 1.0 / damp
    for i in range(m):
        g = hg[i].clone()  # (blocks, block)
        row = hg[i].mul_(inv_damp)
        if i > 0:
            prev = hg[:i]  # (i, blocks, block)
            coef = (prev * g).sum(-1).div_(denom[:i])  # (i, blocks)
            row -= (prev * coef.unsqueeze(-1)).sum(0)
        denom[i] = m + (g * row).sum(-1)
    return InverseFisher(hg, denom, damp, d)


def inverse_fisher_mul(fisher: InverseFisher, x: Tensor) -> Tensor:
    """``F^-1 x`` for the factors of :func:`inverse_fisher` (``x`` of shape ``(d,)``).

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> inverse_fisher_mul(inverse_fisher(g, damp=1.0), torch.ones(2, dtype=torch.float64))  # F = diag(1.5, 3)
        tensor([0.6667, 0.3333], dtype=torch.float64)
    """
    hg, denom = fisher.hg, fisher.denom
    xb = _blocked(x.to(hg.dtype), fisher.numel, hg.shape[-1])  # (blocks, block)
    coef = (hg * xb).sum(-1).div_(denom)  # (m, blocks)
    out = xb / fisher.damp - (hg * coef.unsqueeze(-1)).sum(0)
    return out.reshape(-1)[: fisher.numel]


def inverse_fisher_diag(fisher: InverseFisher) -> Tensor:
    """``diag(F^-1)`` (shape ``(d,)``) for the factors of :func:`inverse_fisher`.

    Example:
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> inverse_fisher_diag(inverse_fisher(g, damp=1.0))
        tensor([0.6667, 0.3333], dtype=torch.float64)
    """
    sq = torch.zeros_like(fisher.hg[0])
    for hg_i, denom_i in zip(fisher.hg, fisher.denom, strict=True):
        sq.addcmul_(hg_i, hg_i / denom_i.unsqueeze(-1))
    return (1.0 / fisher.damp - sq).reshape(-1)[: fisher.numel]


@register("function", "optimization", paper=_PAPER, module="litmix.functional.mfac")
def window_update(grads: Tensor, gram: Tensor, slot: int, g: Tensor) -> Tensor:
    """Put gradient ``g`` into row ``slot`` of the sliding window ``grads`` and keep ``gram = grads @ grads.T``.

    The dynamic M-FAC algorithm's update (https://arxiv.org/abs/2107.03356, section 3.2): the oldest gradient of
    the ring buffer is replaced, and one row and column of the ``m x m`` Gram matrix are recomputed (``O(m d)``).
    Both tensors are changed in place.

    Args:
        grads: ``(m, d)`` window.
        gram: ``(m, m)`` Gram matrix of ``grads``.
        slot: row to overwrite, in ``[0, m)``.
        g: ``(d,)`` new gradient.

    Returns:
        ``grads @ g`` after the update (``(m,)``), the dot products :func:`window_coefficients` needs for ``x = g``.

    Raises:
        ValueError: for a ``slot`` outside the window or mismatched shapes.

    Example:
        >>> G, K = torch.zeros(2, 3), torch.zeros(2, 2)
        >>> window_update(G, K, 0, torch.tensor([1.0, 2.0, 0.0]))
        tensor([5., 0.])
        >>> window_update(G, K, 1, torch.tensor([0.0, 1.0, 1.0]))
        tensor([2., 2.])
        >>> K
        tensor([[5., 2.],
                [2., 2.]])
    """
    m = grads.shape[0]
    if gram.shape != (m, m) or g.shape != grads.shape[1:]:
        raise ValueError(
            f"window_update(grads=<{tuple(grads.shape)}>, gram=<{tuple(gram.shape)}>, g=<{tuple(g.shape)}>): "
            "need grads (m, d), gram (m, m) and g (d,)"
        )
    if not 0 <= slot < m:
        raise ValueError(f"window_update(slot={slot}): slot must be in [0, {m})")
    grads[slot] = g
    dots = grads @ g
    gram[slot, :] = dots.to(gram.dtype)
    gram[:, slot] = dots.to(gram.dtype)
    return dots


def window_coefficients(gram: Tensor, dots: Tensor, damp: float) -> Tensor:
    """``c`` with ``F^-1 x = (x - G^T c) / damp`` for ``F = damp I + G^T G / m``, from ``K = G G^T`` and ``G x``.

    Woodbury: ``c = (m I + K / damp)^-1 (G x) / damp``, an ``m x m`` solve in float64 (pivoted LU, any device).

    Example:
        >>> G = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> x = torch.ones(2, dtype=torch.float64)
        >>> (x - G.T @ window_coefficients(G @ G.T, G @ x, 1.0)) / 1.0  # F = diag(1.5, 3)
        tensor([0.6667, 0.3333], dtype=torch.float64)
    """
    m = gram.shape[0]
    a = gram.to(torch.float64) / damp
    a.diagonal().add_(float(m))
    return torch.linalg.solve(a, dots.to(torch.float64) / damp)


@register("function", "optimization", paper=_PAPER, module="litmix.functional.mfac")
def window_inverse_mul(grads: Tensor, gram: Tensor, x: Tensor, damp: float = 1e-5) -> Tensor:
    """``F^-1 x`` for the sliding window ``grads`` (``F = damp I + grads^T grads / m``), the dynamic algorithm.

    Frantar, Kurtic and Alistarh, https://arxiv.org/abs/2107.03356 (section 3.2, the M-FAC optimizer's product).
    ``O(m d + m^3)``: two passes over the window and an ``m x m`` solve (see :func:`window_coefficients`).

    Args:
        grads: ``(m, d)`` window (rows that were never filled are zeros and count as zero gradients).
        gram: ``(m, m)`` Gram matrix ``grads @ grads.T`` kept by :func:`window_update`.
        x: ``(d,)`` vector.
        damp: dampening ``> 0``.

    Returns:
        ``(d,)`` tensor in ``x``'s dtype.

    Raises:
        ValueError: if ``damp <= 0``.

    Example:
        >>> gen = torch.Generator().manual_seed(0)
        >>> G, K = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, 3, dtype=torch.float64)
        >>> for i in range(4):  # the 4th gradient replaces the 1st in the ring buffer
        ...     _ = window_update(G, K, i % 3, torch.randn(5, dtype=torch.float64, generator=gen))
        >>> x = torch.randn(5, dtype=torch.float64, generator=gen)
        >>> dense = 1e-2 * torch.eye(5, dtype=torch.float64) + G.T @ G / 3
        >>> torch.allclose(window_inverse_mul(G, K, x, damp=1e-2), torch.linalg.solve(dense, x))
        True
    """
    damp = _check_damp("window_inverse_mul", damp)
    c = window_coefficients(gram, grads @ x, damp).to(grads.dtype)
    return ((x - grads.T @ c) / damp).to(x.dtype)


@register("function", "sparsity", paper=_PAPER, module="litmix.functional.mfac")
def obs_saliency(weights: Tensor, inv_diag: Tensor) -> Tensor:
    """The OBS saliency ``w_q**2 / (2 [F^-1]_qq)``: the loss increase of dropping weight ``q`` alone.

    Optimal Brain Surgeon (Hassibi and Stork 1993) with M-FAC's inverse Fisher diagonal,
    https://arxiv.org/abs/2107.03356 (section 4).

    Raises:
        ValueError: if the shapes differ.

    Example:
        >>> obs_saliency(torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.5, 4.0, 0.125]))
        tensor([1.0000, 0.5000, 1.0000])
    """
    if weights.shape != inv_diag.shape:
        raise ValueError(
            f"obs_saliency(weights=<{tuple(weights.shape)}>, inv_diag=<{tuple(inv_diag.shape)}>): shapes differ"
        )
    return weights.square() / (2.0 * inv_diag)


@register("function", "sparsity", paper=_PAPER, module="litmix.functional.mfac")
def obs_update(weights: Tensor, drop: Tensor, fisher: InverseFisher) -> Tensor:
    """The OBS update that compensates dropping ``weights[drop]``: ``w + dw`` with the dropped entries set to 0.

    ``dw = -F^-1 sum_{q in drop} (w_q / [F^-1]_qq) e_q`` (the reference's update for several weights at once, which
    ignores the correlations between the dropped weights; :func:`mfac_obs_masks` keeps each step small).

    Args:
        weights: ``(d,)`` flat weights (the coordinates of ``fisher``).
        drop: ``(d,)`` bool, the weights to remove.
        fisher: :func:`inverse_fisher` factors of the same ``d`` coordinates.

    Returns:
        The new ``(d,)`` weights (a new tensor).

    Raises:
        ValueError: if the shapes do not match ``fisher``.

    Example:
        >>> g = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)  # strongly correlated weights
        >>> fisher = inverse_fisher(g, damp=0.01)
        >>> w = torch.tensor([0.5, 2.0], dtype=torch.float64)
        >>> obs_update(w, torch.tensor([True, False]), fisher)  # w_2 absorbs w_1: the sum is nearly kept
        tensor([0.0000, 2.4950], dtype=torch.float64)
    """
    if weights.shape != (fisher.numel,) or drop.shape != weights.shape:
        raise ValueError(
            f"obs_update(weights=<{tuple(weights.shape)}>, drop=<{tuple(drop.shape)}>): both must be ({fisher.numel},)"
        )
    diag = inverse_fisher_diag(fisher)
    w = weights.to(fisher.hg.dtype)
    e = torch.zeros_like(w)
    e[drop] = -w[drop] / diag[drop]
    out = w + inverse_fisher_mul(fisher, e)
    out[drop] = 0.0
    return out.to(weights.dtype)


def _default_loss(model: nn.Module, batch: Any) -> Tensor:
    x, y, _ = split_batch(batch)
    if y is None:
        raise ValueError("mfac_obs_masks(loss_fn=None): the default loss needs batches with targets; pass loss_fn")
    logits = output_logits(model(x), owner="mfac_obs_masks")
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _batches(loader: Iterable[Any], count: int) -> Iterable[Any]:
    """``count`` batches of ``loader``, starting it again when it runs out."""
    produced = 0
    while produced < count:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            produced += 1
            if produced == count:
                return
        if empty:
            raise ValueError("mfac_obs_masks(loader=...): the loader yields no batches")


def _select_drop(scores: Tensor, count: int) -> Tensor:
    """Bool mask of the ``count`` lowest scores (ties broken by position: a stable sort)."""
    drop = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if count > 0:
        drop[torch.sort(scores, stable=True).indices[:count]] = True
    return drop


def _select_drop_nm(scores: Tensor, keep: Tensor, kept: Tensor, group: int, pruned_per_group: int) -> Tensor:
    """Bool mask over the kept coordinates: the N:M choice of the weights to drop.

    In every group of ``group`` consecutive weights the lowest scores are chosen until the group has
    ``pruned_per_group`` pruned weights (the ones pruned already count first).
    """
    full = torch.full((keep.numel(),), -math.inf, dtype=scores.dtype, device=scores.device)
    full[kept.to(scores.device)] = scores
    order = torch.sort(full.view(-1, group), dim=1, stable=True).indices[:, :pruned_per_group]
    chosen = torch.zeros(full.numel() // group, group, dtype=torch.bool, device=scores.device)
    chosen.scatter_(1, order, True)
    return chosen.view(-1)[kept.to(scores.device)]


def _average_over_ranks(grads: Tensor) -> None:
    """Under ``torch.distributed``, average the gradient rows over the ranks, so every rank prunes alike."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(grads)
        grads.div_(dist.get_world_size())


def _parse_nm(owner: str, structure: Any) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"N:M"`` -> (N, M) with 1 <= N < M (N weights kept of every M)."""
    check_type(owner, "structure", structure, str)
    if structure == "unstructured":
        return None
    parts = structure.split(":")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        n, m = int(parts[0]), int(parts[1])
        if 1 <= n < m:
            return n, m
    raise ValueError(f"{owner}(structure={structure!r}): structure must be 'unstructured' or 'N:M' with 1 <= N < M")


@register("function", "sparsity", paper=_PAPER, module="litmix.functional.mfac")
def mfac_obs_masks(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor] | None,
    loader: Iterable[Any],
    sparsity: float | Mapping[str, float],
    *,
    parameter_names: Iterable[str] | None = None,
    num_grads: int = 64,
    block_size: int | None = 128,
    damp: float = 1e-5,
    recomputations: int = 16,
    scope: Literal["global", "layer"] = "global",
    structure: str = "unstructured",
    masks: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """One-shot M-FAC OBS pruning: masks of the weights to keep, with the OBS update applied to ``model`` in place.

    Frantar, Kurtic and Alistarh, "M-FAC: Efficient Matrix-Free Approximations of Second-Order Information",
    https://arxiv.org/abs/2107.03356 (section 4; the reference's ``MFACPruner``). The density falls geometrically
    from the current one to ``1 - sparsity`` in ``recomputations`` steps; each step draws ``num_grads`` fresh
    gradients (one per batch of ``loader``, in ``eval()`` mode), builds the blocked inverse Fisher of the weights
    still kept (blocks of ``block_size`` consecutive coordinates of the selected weights, flattened in order),
    drops the lowest OBS saliencies ``w_q**2 / (2 [F^-1]_qq)`` and moves the remaining weights by the OBS update
    (:func:`obs_update`). Pruned weights are exactly 0 afterwards. Memory: ``num_grads`` times the selected weights.
    Under ``torch.distributed`` (DDP) every rank draws gradients from its own batches and the gradient rows are
    averaged over the ranks (one ``all_reduce`` per recomputation), so all ranks compute the same masks and weights.

    Args:
        model: any module; its selected weights are changed in place. Gradients of ``model`` are cleared
            (``.grad = None``) and its train/eval mode is restored afterwards.
        loss_fn: ``loss_fn(model, batch) -> scalar loss``, or ``None`` for cross-entropy on
            ``model(inputs)`` against the targets of a ``(inputs, targets, ...)`` / dict batch.
        loader: iterable of batches (a ``DataLoader``); restarted when it has fewer than ``num_grads`` batches.
        sparsity: target fraction of the selected weights that is zero, in [0, 1); or a mapping parameter name ->
            its own sparsity (per-layer targets, e.g. an OWL profile; it names the pruned parameters).
        parameter_names: names (as in ``model.named_parameters()``) to prune; default: the weights of every Linear /
            Conv layer (:func:`litmix.functional.sparsity.default_parameter_names`).
        num_grads: gradients per recomputation (the paper's ``m``, 64 for pruning).
        block_size: Fisher block size (128 in the paper); ``None`` for the full Fisher.
        damp: dampening of the Fisher (1e-5 in the paper).
        recomputations: number of steps (16 in the paper).
        scope: ``"global"`` ranks saliencies over all selected weights, ``"layer"`` prunes each tensor to
            ``sparsity`` on its own.
        structure: ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``): keep ``N`` of every ``M`` consecutive weights
            along each row's input (the weight flattened to ``(rows, numel / rows)``); ``sparsity`` is then
            ``1 - N / M`` whatever is passed, reached group by group over the recomputations.
        masks: optional earlier masks (``True`` = kept): their pruned weights stay pruned and out of the Fisher.

    Returns:
        Parameter name -> bool mask (``True`` = kept) of the weight's shape and device.

    Raises:
        TypeError: for a ``model`` that is not an ``nn.Module`` or arguments of the wrong type, naming them.
        ValueError: for a ``sparsity`` outside [0, 1), ``num_grads``/``recomputations`` < 1, ``damp <= 0``,
            an unknown ``scope``, a bad ``structure`` or an ``M`` that does not divide a layer's input size, a name
            not in ``model``, a per-layer ``sparsity`` that does not name the pruned parameters, nothing to prune,
            ``masks`` of the wrong shape, or a loader with no batches.

    Example:
        >>> torch.manual_seed(0) and None
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> data = [(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(4)]
        >>> masks = mfac_obs_masks(net, None, data, 0.5, num_grads=8, recomputations=2)
        >>> {name: int((~m).sum()) for name, m in masks.items()}  # 24 of the 48 weights, ranked globally
        {'0.weight': 16, '2.weight': 8}
        >>> int((net[0].weight == 0).sum() + (net[2].weight == 0).sum())
        24
    """
    owner = "mfac_obs_masks"
    check_type(owner, "model", model, nn.Module)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"{owner}(loss_fn={loss_fn!r}): loss_fn must be callable(model, batch) or None")
    if not isinstance(loader, Iterable):
        raise TypeError(f"{owner}(loader={loader!r}): loader must be an iterable of batches (a DataLoader)")
    per_layer: dict[str, float] | None = None
    if isinstance(sparsity, Mapping):
        per_layer = {
            str(n): check_float(owner, f"sparsity[{n!r}]", v, low=0.0, high=1.0, high_open=True)
            for n, v in sparsity.items()
        }
        overall = 0.0
    else:
        overall = check_float(owner, "sparsity", sparsity, low=0.0, high=1.0, high_open=True)
    num_grads = check_int(owner, "num_grads", num_grads, low=1)
    check_int(owner, "block_size", block_size, low=1, allow_none=True)
    damp = _check_damp(owner, damp)
    recomputations = check_int(owner, "recomputations", recomputations, low=1)
    check_choice(owner, "scope", scope, ("global", "layer"))
    nm = _parse_nm(owner, structure)
    named = dict(model.named_parameters())
    if parameter_names is None and per_layer is not None:
        parameter_names = list(per_layer)
    if parameter_names is None:
        from litmix.functional.sparsity import default_parameter_names

        names = default_parameter_names(model)
    else:
        names = list(parameter_names)
        missing = [n for n in names if n not in named]
        if missing:
            raise ValueError(f"{owner}(parameter_names={names!r}): not parameters of the model: {missing}")
    if not names:
        raise ValueError(f"{owner}(model={type(model).__name__}): nothing to prune (no Linear/Conv weights selected)")
    if per_layer is not None and set(per_layer) != set(names):
        raise ValueError(
            f"{owner}(sparsity={per_layer!r}): a per-layer sparsity must name exactly the pruned parameters {names}"
        )
    if nm is not None:
        bad = [n for n in names if named[n].dim() == 0 or (named[n].numel() // named[n].shape[0]) % nm[1] != 0]
        if bad:
            raise ValueError(
                f"{owner}(structure={structure!r}): {nm[1]} must divide the input size (numel / rows) of {bad}"
            )
    params = [named[n] for n in names]
    keep: list[Tensor] = []
    for n, p in zip(names, params, strict=True):
        if masks is not None and n in masks:
            if masks[n].shape != p.shape:
                raise ValueError(
                    f"{owner}(masks[{n!r}]=<{tuple(masks[n].shape)}>): must have the shape {tuple(p.shape)}"
                )
            keep.append(masks[n].to(p.device, torch.bool).reshape(-1).clone())
        else:
            keep.append(torch.ones(p.numel(), dtype=torch.bool, device=p.device))
    loss_of = loss_fn if loss_fn is not None else _default_loss

    def pruned_target(numel: int, start_pruned: int, j: int, target: float) -> int:
        final = round(target * numel)
        if j == recomputations or final <= start_pruned:
            return max(final, start_pruned)
        density0 = 1.0 - start_pruned / numel
        fac = ((1.0 - target) / density0) ** (1.0 / recomputations)
        return max(start_pruned, min(final, round(numel * (1.0 - density0 * fac**j))))

    mode = "nm" if nm is not None else ("layer" if per_layer is not None or scope == "layer" else "global")
    targets = [per_layer[n] if per_layer is not None else overall for n in names]
    start = [int((~k).sum()) for k in keep]
    total, start_total = sum(p.numel() for p in params), sum(start)
    was_training = model.training
    requires = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        for j in range(1, recomputations + 1):
            if mode == "global":
                need = pruned_target(total, start_total, j, overall) - sum(int((~k).sum()) for k in keep)
            elif mode == "layer":
                counts = [
                    pruned_target(p.numel(), s0, j, t) - int((~k).sum())
                    for p, s0, k, t in zip(params, start, keep, targets, strict=True)
                ]
                need = sum(max(c, 0) for c in counts)
            else:
                assert nm is not None
                per_group = round((nm[1] - nm[0]) * j / recomputations)  # pruned weights per group of M
                need = sum(int((per_group - (~k).view(-1, nm[1]).sum(1)).clamp(min=0).sum()) for k in keep)
            if need <= 0:
                continue  # nothing to drop at this density: no gradients drawn
            kept = [torch.nonzero(k).view(-1) for k in keep]
            kept_sizes = [idx.numel() for idx in kept]
            d1 = sum(kept_sizes)
            first = params[0]
            grads = torch.zeros(num_grads, d1, dtype=first.dtype, device=first.device)
            for i, batch in enumerate(_batches(loader, num_grads)):
                model.zero_grad(set_to_none=True)
                with torch.enable_grad():  # callers may be inside torch.no_grad()
                    loss_of(model, batch).backward()
                offset = 0
                for p, idx in zip(params, kept, strict=True):
                    if p.grad is not None:
                        grads[i, offset : offset + idx.numel()] = p.grad.reshape(-1)[idx].to(first.device)
                    offset += idx.numel()
            model.zero_grad(set_to_none=True)
            _average_over_ranks(grads)
            fisher = _inverse_fisher(grads, damp, block_size)
            del grads
            with torch.no_grad():
                w1 = torch.cat(
                    [p.detach().reshape(-1)[idx].to(first.device) for p, idx in zip(params, kept, strict=True)]
                )
                scores = obs_saliency(w1.to(fisher.hg.dtype), inverse_fisher_diag(fisher))
                if mode == "global":
                    drop = _select_drop(scores, need)
                else:
                    parts, offset = [], 0
                    for i, (k, idx, size) in enumerate(zip(keep, kept, kept_sizes, strict=True)):
                        piece = scores[offset : offset + size]
                        if mode == "layer":
                            parts.append(_select_drop(piece, max(counts[i], 0)))
                        else:
                            assert nm is not None
                            parts.append(_select_drop_nm(piece, k, idx, nm[1], per_group))
                        offset += size
                    drop = torch.cat(parts)
                w_new = obs_update(w1, drop, fisher)
                offset = 0
                for p, k, idx, size in zip(params, keep, kept, kept_sizes, strict=True):
                    flat = p.detach().reshape(-1).clone()
                    piece_w, piece_drop = w_new[offset : offset + size], drop[offset : offset + size]
                    flat[idx] = piece_w.to(p.device, p.dtype)
                    k[idx[piece_drop.to(idx.device)]] = False
                    flat.masked_fill_(~k, 0.0)
                    p.copy_(flat.view(p.shape))
                    offset += size
            del fisher
        with torch.no_grad():  # the weights pruned by earlier masks are 0 too, even when nothing was left to drop
            for p, k in zip(params, keep, strict=True):
                p.masked_fill_(~k.view(p.shape), 0.0)
    finally:
        model.zero_grad(set_to_none=True)
        for p, r in zip(params, requires, strict=True):
            p.requires_grad_(r)
        model.train(was_training)
    return {n: k.reshape(p.shape) for n, p, k in zip(names, params, keep, strict=True)}
