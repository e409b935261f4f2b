"""ULD, unlearning from logit difference, on plain tensors: the assistant's loss and the combined logits.

Ji et al., "Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit Difference"
(NeurIPS 2024, https://arxiv.org/abs/2406.08607; reference code UCSB-NLP-Chang/ULD). The base model stays frozen.
An **assistant** is trained with the reversed objectives: *remember* the forget set (NLL) and *forget* the retain
set (its distribution pushed to uniform, ``KL(U || p_a)``). The unlearned model's logits are
``l_base + weight * l_assistant`` with ``weight < 0`` (the paper subtracts the assistant), the assistant's logits
zeroed outside the tokens the base model finds plausible (relative-top filter ``log p_base >= max log p_base +
log(top)``). On retain data the assistant is near-uniform, i.e. a constant shift of the logits that leaves the
base softmax unchanged, so utility is kept by construction; on forget data it adds a large negative logit on the
true answer.

Conventions: language-model logits ``[B, T, V]`` with labels ``[B, T]`` (``-100`` on prompt/padding, Hugging
Face shift: logits at ``t`` predict the label at ``t + 1``); classifier logits ``[B, C]`` with labels ``[B]``.
"""

from __future__ import annotations

import copy
import math

import torch.nn.functional as F
from torch import Tensor, nn

from litmix.registry import register

__all__ = ["find_layer_list", "truncate_layers", "uld_assistant_loss", "uld_logits", "uniform_kl"]

#: Attribute paths searched (in order) for a model's list of transformer blocks.
LAYER_PATHS = ("layers", "h", "blocks", "transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers")


def _check_top(owner: str, top: float | None) -> None:
    if top is not None and (isinstance(top, bool) or not isinstance(top, int | float)):
        raise TypeError(f"{owner}(top={top!r}): top must be a float in (0, 1] or None")
    if top is not None and not (0.0 < float(top) <= 1.0):
        raise ValueError(f"{owner}(top={top!r}): top must be in (0, 1] (or None: no plausibility filter)")


@register(
    "function",
    "unlearning",
    paper="Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit Difference "
    "(https://arxiv.org/abs/2406.08607)",
)
def uld_logits(base_logits: Tensor, assistant_logits: Tensor, weight: float = -1.0, top: float | None = 0.1) -> Tensor:
    """The unlearned model's logits ``base + weight * filter(assistant)``.

    ``filter`` zeroes the assistant's logit of every token (class) whose base log-probability is below
    ``max log p_base + log(top)`` (ULD's relative-top plausibility filter): only tokens the base model deems
    plausible are pushed down. ``top=None`` = no filter; ``top=1`` = only the base's most likely token(s).
    Upstream defaults: ``weight=-1, top=0.1`` (``uld.yaml``); the evaluation scripts use ``weight=-0.8, top=1e-2``.

    Args:
        base_logits: ``[..., V]`` logits of the frozen base model.
        assistant_logits: the assistant's logits, same shape.
        weight: the assistant's coefficient (finite; ULD uses a negative value).
        top: relative probability threshold in ``(0, 1]``, or None for no filter.

    Raises:
        ValueError: shapes differ, ``weight`` not finite or ``top`` outside ``(0, 1]``.
        TypeError: ``top`` not a number.

    Example:
        >>> import torch
        >>> base = torch.log(torch.tensor([[0.70, 0.25, 0.05]]))
        >>> assistant = torch.tensor([[3.0, 1.0, 5.0]])
        >>> uld_logits(base, assistant, weight=-1.0, top=0.1) - base     # class 2: p 0.05 < 0.1 * 0.7, kept out
        tensor([[-3., -1.,  0.]])
        >>> uld_logits(base, assistant, weight=-1.0, top=None) - base
        tensor([[-3., -1., -5.]])

        A constant assistant leaves the base distribution unchanged:

        >>> torch.allclose(uld_logits(base, torch.full((1, 3), 2.0), top=None).softmax(-1), base.softmax(-1))
        True
    """
    owner = "uld_logits"
    if base_logits.shape != assistant_logits.shape:
        raise ValueError(
            f"{owner}: base logits {tuple(base_logits.shape)} and assistant logits {tuple(assistant_logits.shape)} "
            "differ (the assistant must share the base's vocabulary / classes)"
        )
    if not math.isfinite(float(weight)):
        raise ValueError(f"{owner}(weight={weight!r}): weight must be finite")
    _check_top(owner, top)
    assistant = assistant_logits.to(base_logits.dtype)
    if top is not None:
        logp = F.log_softmax(base_logits.float(), dim=-1)
        plausible = logp >= logp.max(dim=-1, keepdim=True).values + math.log(float(top))
        assistant = assistant.masked_fill(~plausible, 0.0)
    return base_logits + float(weight) * assistant


def uniform_kl(logits: Tensor) -> Tensor:
    """``KL(U || softmax(logits))`` over the last dimension: ``-log V - mean_v log p_v`` (0 iff uniform).

    Example:
        >>> import torch
        >>> uniform_kl(torch.zeros(2, 4))
        tensor([0., 0.])
        >>> round(float(uniform_kl(torch.tensor([0.0, 0.0, 0.0, 10.0]))), 4)
        6.1138
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    return -math.log(logits.shape[-1]) - logp.mean(-1)


@register(
    "loss",
    "unlearning",
    paper="Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit Difference "
    "(https://arxiv.org/abs/2406.08607)",
    module="litmix.functional.uld",
)
def uld_assistant_loss(
    forget_logits: Tensor,
    forget_labels: Tensor,
    retain_logits: Tensor | None = None,
    retain_labels: Tensor | None = None,
    retain_weight: float = 5.0,
    ignore_index: int = -100,
) -> Tensor:
    """ULD's assistant objective ``NLL_mean(forget) + retain_weight * mean KL(U || p_a)(retain)``.

    The forget term is the token-mean cross-entropy over forget answer tokens (the assistant *remembers* them);
    the retain term pushes the assistant's distribution at every retain answer position to uniform (it
    *forgets* them). LM inputs are shifted here (Hugging Face convention); classifier inputs are ``[B, C]`` /
    ``[B]``. Without retain data the loss is the forget term alone.

    Args:
        forget_logits: assistant logits on forget items, ``[B, T, V]`` or ``[B, C]``.
        forget_labels: ``[B, T]`` (``ignore_index`` on prompt/padding) or ``[B]``.
        retain_logits: assistant logits on retain items (or None).
        retain_labels: labels of the retain items (their positions select where the KL is taken).
        retain_weight: weight of the retain term (finite, >= 0; ULD uses 5).
        ignore_index: label value of prompt / padding positions.

    Raises:
        ValueError: a negative or non-finite ``retain_weight``, retain logits without labels, or no forget
            answer token at all.

    Example:
        >>> import torch
        >>> f = torch.tensor([[2.0, 0.0, 0.0]]); r = torch.tensor([[0.0, 0.0, 0.0]])
        >>> round(float(uld_assistant_loss(f, torch.tensor([0]), r, torch.tensor([1]))), 4)     # CE + 5 * 0
        0.2395
        >>> lm = torch.zeros(1, 3, 4)                                     # uniform: CE = log 4 per token
        >>> round(float(uld_assistant_loss(lm, torch.tensor([[-100, 1, 2]]))), 4)
        1.3863
    """
    owner = "uld_assistant_loss"
    if isinstance(retain_weight, bool) or not math.isfinite(float(retain_weight)) or float(retain_weight) < 0:
        raise ValueError(f"{owner}(retain_weight={retain_weight!r}): retain_weight must be finite and >= 0")
    if (retain_logits is None) != (retain_labels is None):
        raise ValueError(f"{owner}: give retain_logits and retain_labels together (or neither)")

    def positions(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        if logits.dim() == 3:
            logits, labels = logits[:, :-1], labels[:, 1:]
        keep = labels != ignore_index
        return logits[keep], labels[keep]

    f_logits, f_labels = positions(forget_logits, forget_labels)
    if f_labels.numel() == 0:
        raise ValueError(f"{owner}: the forget batch has no answer token (every label is ignore_index)")
    loss = F.cross_entropy(f_logits.float(), f_labels)
    if retain_logits is not None and retain_labels is not None and float(retain_weight) > 0:
        r_logits, _ = positions(retain_logits, retain_labels)
        if r_logits.shape[0]:
            loss = loss + float(retain_weight) * uniform_kl(r_logits).mean()
    return loss


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The first ``nn.ModuleList`` of blocks found at :data:`LAYER_PATHS` (``layers``, ``h``, ``transformer.h``...).

    Raises:
        ValueError: the model has none of these attributes.

    Example:
        >>> find_layer_list(nn.Sequential())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: find_layer_list: the model (Sequential) has no list of blocks at ...
    """
    for path in LAYER_PATHS:
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return path, obj
    raise ValueError(
        f"find_layer_list: the model ({type(model).__name__}) has no list of blocks at any of {LAYER_PATHS}; "
        "build the assistant yourself"
    )


def truncate_layers(model: nn.Module, k: int) -> nn.Module:
    """A deep copy of ``model`` keeping its first ``k`` blocks (ULD's assistant: the base's first layers + head).

    The embeddings, final norm and output head are kept; Hugging Face configs get their layer count updated
    (``num_hidden_layers`` / ``n_layer``).

    Raises:
        ValueError: ``k`` outside ``[1, number of blocks]`` or no block list found (:func:`find_layer_list`).

    Example:
        >>> import torch
        >>> from litmix.unlearning_testbed import TinyCausalTransformer
        >>> small = truncate_layers(TinyCausalTransformer(10, dim=8, layers=2, heads=2), 1)
        >>> len(small.layers), small(torch.zeros(1, 3, dtype=torch.long)).shape
        (1, torch.Size([1, 3, 10]))
    """
    path, layers = find_layer_list(model)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(layers):
        raise ValueError(f"truncate_layers(k={k!r}): k must be an int in [1, {len(layers)}] (blocks at {path!r})")
    out = copy.deepcopy(model)
    _, copied = find_layer_list(out)
    del copied[k:]
    config = getattr(out, "config", None)
    for attr in ("num_hidden_layers", "n_layer"):
        if config is not None and hasattr(config, attr):
            setattr(config, attr, k)
    return out


__all__ += ["LAYER_PATHS"]
