"""Every forget and retain loss of :class:`litmix.plugins.UnlearningModule`, on plain tensors, and their registry.

Conventions (open-unlearning, https://github.com/locuslab/open-unlearning): a language-model sample's NLL is
the **sum** of its answer-token NLLs (prompt positions labelled ``-100``); token-level losses take logits and
targets already shifted by the caller (Hugging Face shift: logits at ``t`` predict the label at ``t + 1``)
and skip ``ignore_index`` targets. A classifier sample is one "token". Reference quantities (``ref_*``) never
receive gradients.

Forget losses (name in :data:`FORGET_LOSSES` -> function):

==============  ===========================================================  =====================================
name            forget term                                                  paper
==============  ===========================================================  =====================================
``grad_ascent`` ``-mean(NLL)`` (token mean for LMs)                          https://arxiv.org/abs/2210.01504
``grad_diff``   as ``grad_ascent``, retain term NLL by default               https://arxiv.org/abs/2401.06121
``npo``         ``-(2/b) mean logsigmoid(b (NLL - NLL_ref))``                https://arxiv.org/abs/2404.05868
``simnpo``      ``-(2/b) mean logsigmoid(b (NLL/|y| - margin))``, no ref     https://arxiv.org/abs/2410.07163
``idkdpo``      DPO, "I don't know" answer preferred, forget answer not      https://arxiv.org/abs/2305.18290
``undial``      CE to ``softmax(ref_logits - b onehot(y))``                  https://arxiv.org/abs/2402.10052
``wga``         ``-mean_tok(p^b NLL_tok)``, weight detached                  https://arxiv.org/abs/2502.19301
``rmu``         ``MSE(h_l(x_f), c u)``, u a fixed random unit vector         https://arxiv.org/abs/2403.03218
==============  ===========================================================  =====================================

Aliases: ``ga`` = ``grad_ascent``, ``graddiff`` = ``grad_diff``, ``idkpo`` = ``idkdpo``.
Retain losses (:data:`RETAIN_LOSSES`): ``nll`` (mean NLL), ``kl`` (``KL(ref || theta)``), ``activation``
(RMU's ``MSE(h_l(x_r), h_l^ref(x_r))``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from litmix.functional.unlearning import grad_ascent_loss, kl_retain_loss, npo_loss, retain_nll_loss
from litmix.registry import register

__all__ = [
    "ALIASES",
    "FORGET_LOSSES",
    "RETAIN_LOSSES",
    "ForgetLossSpec",
    "activation_mse",
    "grad_ascent_loss",
    "grad_diff_loss",
    "idk_dpo_loss",
    "kl_retain_loss",
    "npo_loss",
    "resolve_forget_loss",
    "retain_nll_loss",
    "rmu_direction",
    "rmu_forget_loss",
    "simnpo_loss",
    "undial_loss",
    "undial_targets",
    "wga_loss",
]


def _check_beta(owner: str, beta: float) -> None:
    if not (isinstance(beta, int | float) and beta > 0 and beta == beta and beta != float("inf")):
        raise ValueError(f"{owner}(beta={beta}): beta must be a finite number > 0")


def _same_shape(owner: str, **tensors: Tensor | None) -> None:
    shapes = {k: tuple(v.shape) for k, v in tensors.items() if v is not None}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{owner}: shapes differ: {shapes}")


@register(
    "loss",
    "unlearning",
    paper="TOFU: A Task of Fictitious Unlearning for LLMs (https://arxiv.org/abs/2401.06121)",
)
def grad_diff_loss(forget_nll: Tensor, retain_nll: Tensor, retain_weight: float = 1.0) -> Tensor:
    """Gradient difference: ``-mean(forget_nll) + retain_weight * mean(retain_nll)``.

    Gradient ascent on the forget set (Knowledge Unlearning, https://arxiv.org/abs/2210.01504) plus
    gradient descent on the retain set, the GradDiff baseline of TOFU (https://arxiv.org/abs/2401.06121).

    Args:
        forget_nll: per-sample forget NLLs ``[B]`` (token means for LMs, as open-unlearning).
        retain_nll: per-sample retain NLLs ``[B_r]``.
        retain_weight: weight of the retain term (>= 0).

    Raises:
        ValueError: for a negative or non-finite ``retain_weight``.

    Example:
        >>> grad_diff_loss(torch.tensor([1.0, 3.0]), torch.tensor([0.5, 0.5]))
        tensor(-1.5000)
    """
    if not (retain_weight >= 0 and retain_weight != float("inf")):
        raise ValueError(f"grad_diff_loss(retain_weight={retain_weight}): retain_weight must be finite and >= 0")
    return grad_ascent_loss(forget_nll) + retain_weight * retain_nll_loss(retain_nll)


@register(
    "loss",
    "unlearning",
    paper="Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning "
    "(https://arxiv.org/abs/2410.07163)",
)
def simnpo_loss(nll: Tensor, length: Tensor | None = None, beta: float = 4.5, margin: float = 0.0) -> Tensor:
    """SimNPO: reference-free, length-normalised NPO, ``-(2/beta) mean logsigmoid(beta (nll/|y| - margin))``.

    As open-unlearning's ``SimNPO`` (``delta`` = ``margin``); the paper writes the margin as
    ``gamma = beta * margin``. No reference model: the loss depends on the trained model only.

    Args:
        nll: per-sample NLL sums ``[B]``.
        length: answer lengths ``|y|`` ``[B]`` (None = 1: classifiers, or ``nll`` already a token mean).
        beta: inverse temperature (> 0); 4.5 for TOFU forget10 (Unlearn-Simple).
        margin: reward margin ``delta`` subtracted from the length-normalised NLL.

    Raises:
        ValueError: for ``beta <= 0`` or mismatched shapes.

    Example:
        >>> simnpo_loss(torch.tensor([6.0]), torch.tensor([3.0]), beta=1.0)   # -2 log sigmoid(2)
        tensor(0.2539)
    """
    _check_beta("simnpo_loss", beta)
    _same_shape("simnpo_loss", nll=nll, length=length)
    avg = nll if length is None else nll / length.to(nll.dtype).clamp_min(1)
    return -(2.0 / beta) * F.logsigmoid(beta * (avg - margin)).mean()


@register(
    "loss",
    "unlearning",
    paper="Direct Preference Optimization: Your Language Model is Secretly a Reward Model "
    "(https://arxiv.org/abs/2305.18290), with 'I don't know' answers preferred as in TOFU "
    "(https://arxiv.org/abs/2401.06121)",
)
def idk_dpo_loss(
    nll: Tensor,
    ref_nll: Tensor,
    alt_nll: Tensor | None = None,
    ref_alt_nll: Tensor | None = None,
    beta: float = 0.1,
) -> Tensor:
    """IdkDPO: DPO with the alternative ("I don't know") answer preferred over the forget answer.

    ``-(2/beta) mean logsigmoid(beta [(ref_alt_nll - alt_nll) - (ref_nll - nll)])``, i.e.
    ``log pi/pi_ref`` of the preferred answer minus that of the forget answer (open-unlearning's
    ``compute_dpo_loss``, the ``2/beta`` scale of NPO). Without an alternative (``alt_nll=None``) it is
    exactly :func:`~litmix.functional.unlearning.npo_loss`.

    Args:
        nll: forget-answer NLL sums under the trained model ``[B]``.
        ref_nll: the same under the reference model ``[B]``.
        alt_nll: alternative-answer NLL sums under the trained model ``[B]`` (None: NPO).
        ref_alt_nll: the same under the reference model ``[B]``.
        beta: inverse temperature (> 0).

    Raises:
        ValueError: for ``beta <= 0``, mismatched shapes, or only one of ``alt_nll`` / ``ref_alt_nll``.

    Example:
        >>> nll = torch.tensor([2.0, 5.0])
        >>> idk_dpo_loss(nll, nll, nll, nll, beta=0.1)                    # 20 log 2 at the reference
        tensor(13.8629)
        >>> bool(idk_dpo_loss(nll + 1, nll, beta=0.1) == npo_loss(nll + 1, nll, beta=0.1))
        True
    """
    _check_beta("idk_dpo_loss", beta)
    if (alt_nll is None) != (ref_alt_nll is None):
        raise ValueError("idk_dpo_loss: give both alt_nll and ref_alt_nll, or neither")
    _same_shape("idk_dpo_loss", nll=nll, ref_nll=ref_nll, alt_nll=alt_nll, ref_alt_nll=ref_alt_nll)
    lose = ref_nll.detach() - nll
    win = 0.0 if alt_nll is None or ref_alt_nll is None else ref_alt_nll.detach() - alt_nll
    return -(2.0 / beta) * F.logsigmoid(beta * (win - lose)).mean()


def _token_mask(targets: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    mask = targets != ignore_index
    return mask, targets.masked_fill(~mask, 0)


def undial_targets(ref_logits: Tensor, targets: Tensor, beta: float = 10.0, ignore_index: int = -100) -> Tensor:
    """UNDIAL's soft labels ``softmax(ref_logits - beta * onehot(target))`` (``[..., V]``, no gradient).

    Example:
        >>> undial_targets(torch.zeros(1, 2), torch.tensor([0]), beta=float(torch.tensor(3.0).log()))
        tensor([[0.2500, 0.7500]])
    """
    _, safe = _token_mask(targets, ignore_index)
    onehot = F.one_hot(safe, ref_logits.shape[-1]).to(torch.float32)
    return F.softmax(ref_logits.detach().float() - beta * onehot, dim=-1)


@register(
    "loss",
    "unlearning",
    paper="UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models "
    "(https://arxiv.org/abs/2402.10052)",
)
def undial_loss(
    logits: Tensor, ref_logits: Tensor, targets: Tensor, beta: float = 10.0, ignore_index: int = -100
) -> Tensor:
    """UNDIAL: self-distillation toward the reference logits with the forget token's logit lowered by ``beta``.

    ``mean over tokens of CE(softmax(logits), softmax(ref_logits - beta * onehot(y)))``. The mean runs over
    the answer tokens only (open-unlearning averages over every position, prompt and padding included).

    Args:
        logits: ``[B, C]`` or shifted ``[B, T, V]`` logits of the trained model.
        ref_logits: the reference model's logits, same shape (no gradient).
        targets: ``[B]`` or ``[B, T]`` token ids, ``ignore_index`` where no loss applies.
        beta: logit reduction of the forget token (> 0); 10 in the paper's TOFU setting.
        ignore_index: target value excluded from the loss.

    Raises:
        ValueError: for ``beta <= 0`` or ``logits`` / ``ref_logits`` of different shapes.

    Example:
        >>> ref = torch.tensor([[0.0, 0.0]])
        >>> b = float(torch.tensor(3.0).log())
        >>> undial_loss(ref.clone(), ref, torch.tensor([0]), beta=b)   # CE(uniform, [1/4, 3/4])
        tensor(0.6931)
    """
    _check_beta("undial_loss", beta)
    _same_shape("undial_loss", logits=logits, ref_logits=ref_logits)
    mask, _ = _token_mask(targets, ignore_index)
    soft = undial_targets(ref_logits, targets, beta, ignore_index)
    ce = -(soft * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    if not mask.any():
        return logits.sum() * 0.0
    return ce[mask].mean()


@register(
    "loss",
    "unlearning",
    paper="Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond (https://arxiv.org/abs/2502.19301)",
)
def wga_loss(logits: Tensor, targets: Tensor, beta: float = 1.0, ignore_index: int = -100) -> Tensor:
    """Weighted gradient ascent: ``-mean_tok(p^beta * NLL_tok)`` with the weight ``p^beta`` detached.

    ``p`` = the model's own probability of the target token, so tokens already forgotten (``p -> 0``) stop
    contributing: gradient ascent that damps itself. Mean over answer tokens (open-unlearning ``WGA``).

    Args:
        logits: ``[B, C]`` or shifted ``[B, T, V]`` logits.
        targets: ``[B]`` or ``[B, T]`` token ids, ``ignore_index`` where no loss applies.
        beta: exponent of the weight (> 0); 1 in the paper.
        ignore_index: target value excluded from the loss.

    Raises:
        ValueError: for ``beta <= 0``.

    Example:
        >>> logits = torch.log(torch.tensor([[0.5, 0.5], [0.25, 0.75]]))
        >>> wga_loss(logits, torch.tensor([0, 0]), beta=1.0)   # -(0.5 log 2 + 0.25 log 4) / 2
        tensor(-0.3466)
    """
    _check_beta("wga_loss", beta)
    mask, safe = _token_mask(targets, ignore_index)
    nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), safe.reshape(-1), reduction="none")
    nll = nll.reshape(safe.shape)
    weight = torch.exp(-nll.detach()) ** beta
    if not mask.any():
        return logits.sum() * 0.0
    return -(weight * nll)[mask].mean()


def activation_mse(activations: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean squared error of activations, per sample averaged over (masked) positions, then over samples.

    ``[B, D]``: ``mean((a - t)^2)``; ``[B, T, D]``: per sample ``sum_t mask * mean_d (a - t)^2 / sum_t mask``,
    then the batch mean (open-unlearning's RMU ``compute_activation_loss``). ``target`` broadcasts.

    Example:
        >>> activation_mse(torch.ones(2, 3), torch.zeros(3))
        tensor(1.)
    """
    sq = (activations.float() - target.float()).pow(2).mean(-1)
    if sq.dim() == 1:
        return sq.mean()
    if mask is None:
        return sq.mean()
    m = mask.to(sq.dtype)
    return ((sq * m).sum(-1) / m.sum(-1).clamp_min(1)).mean()


def rmu_direction(dim: int, coeff: float = 20.0, seed: int = 0) -> Tensor:
    """RMU's steering target ``c * u``: ``u`` uniform in ``[0, 1)^dim``, normalised to unit length (WMDP's recipe).

    Example:
        >>> v = rmu_direction(8, coeff=2.0, seed=0)
        >>> round(float(v.norm()), 5), bool((v >= 0).all())
        (2.0, True)
    """
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (coeff * u / u.norm()).float()


@register(
    "loss",
    "unlearning",
    paper="The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning (https://arxiv.org/abs/2403.03218)",
)
def rmu_forget_loss(activations: Tensor, direction: Tensor, mask: Tensor | None = None) -> Tensor:
    """RMU forget term: steer a layer's activations on forget data to the fixed vector ``c * u``.

    ``activation_mse(h_l(x_f), c u)``; its retain partner is ``activation_mse(h_l(x_r), h_l^ref(x_r))``
    (retain loss ``"activation"``), keeping retain activations close to the frozen model's.

    Args:
        activations: ``[B, D]`` or ``[B, T, D]`` activations of the chosen layer on forget data.
        direction: ``[D]`` target (see :func:`rmu_direction`).
        mask: optional ``[B, T]`` positions to use (LM answer positions).

    Raises:
        ValueError: when ``direction`` does not match the activations' last dimension.

    Example:
        >>> target = rmu_direction(4, coeff=2.0)
        >>> float(rmu_forget_loss(target.expand(3, 4), target))
        0.0
    """
    if direction.dim() != 1 or direction.shape[0] != activations.shape[-1]:
        raise ValueError(
            f"rmu_forget_loss: direction shape {tuple(direction.shape)} does not match activations' last "
            f"dimension {activations.shape[-1]}"
        )
    return activation_mse(activations, direction.to(activations.device), mask)


# ----------------------------------------------------------------------------- registry
Needs = Literal["none", "ref_nll", "ref_logits", "activations"]


@dataclass(frozen=True)
class ForgetLossSpec:
    """What :class:`~litmix.plugins.UnlearningModule` must compute for a forget loss.

    Attributes:
        name: registry name.
        needs: ``"none"`` (model NLLs only), ``"ref_nll"`` (reference NLL per forget item: cacheable),
            ``"ref_logits"`` (reference logits: cacheable for classifiers), ``"activations"`` (a layer's output).
        beta: default ``beta`` (None: the loss has none).
        reduction: LM per-sample NLL reduction it uses (``"sum"`` or ``"mean"``).
        default_retain: retain loss used when the user gives none (None: no retain term).
        paper: arXiv link.
    """

    name: str
    needs: Needs
    beta: float | None
    reduction: Literal["sum", "mean"]
    default_retain: str | None
    paper: str


FORGET_LOSSES: dict[str, ForgetLossSpec] = {
    s.name: s
    for s in (
        ForgetLossSpec("grad_ascent", "none", None, "mean", None, "https://arxiv.org/abs/2210.01504"),
        ForgetLossSpec("grad_diff", "none", None, "mean", "nll", "https://arxiv.org/abs/2401.06121"),
        ForgetLossSpec("npo", "ref_nll", 0.1, "sum", None, "https://arxiv.org/abs/2404.05868"),
        ForgetLossSpec("simnpo", "none", 4.5, "sum", None, "https://arxiv.org/abs/2410.07163"),
        ForgetLossSpec("idkdpo", "ref_nll", 0.1, "sum", None, "https://arxiv.org/abs/2305.18290"),
        ForgetLossSpec("undial", "ref_logits", 10.0, "mean", None, "https://arxiv.org/abs/2402.10052"),
        ForgetLossSpec("wga", "none", 1.0, "mean", None, "https://arxiv.org/abs/2502.19301"),
        ForgetLossSpec("rmu", "activations", None, "mean", "activation", "https://arxiv.org/abs/2403.03218"),
    )
}
#: Other accepted spellings (catalogue / open-unlearning names).
ALIASES: dict[str, str] = {"ga": "grad_ascent", "graddiff": "grad_diff", "idkpo": "idkdpo"}
#: Retain losses: ``nll`` mean NLL on retain data; ``kl`` KL(ref || theta); ``activation`` RMU's activation MSE.
RETAIN_LOSSES: tuple[str, ...] = ("nll", "kl", "activation")


def resolve_forget_loss(name: str, owner: str = "resolve_forget_loss", argument: str = "forget_loss") -> ForgetLossSpec:
    """The :class:`ForgetLossSpec` of a registry name or alias; ``ValueError`` listing every name otherwise.

    Example:
        >>> resolve_forget_loss("ga").name
        'grad_ascent'
        >>> resolve_forget_loss("sgd")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: resolve_forget_loss(forget_loss='sgd'): unknown forget loss; registered: grad_ascent, ...
    """
    if not isinstance(name, str):
        raise TypeError(f"{owner}({argument}={name!r}): {argument} must be a str naming a forget loss")
    key = ALIASES.get(name, name)
    if key not in FORGET_LOSSES:
        raise ValueError(
            f"{owner}({argument}={name!r}): unknown forget loss; registered: {', '.join(FORGET_LOSSES)} "
            f"(aliases: {', '.join(ALIASES)})"
        )
    return FORGET_LOSSES[key]
