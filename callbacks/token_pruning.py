"""Zero-shot token pruning of a Vision Transformer from its attention graph (Zero-TPrune) as a Lightning callback."""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.functional.token_pruning import (
    PAPER,
    cls_attention_importance,
    merge_tokens,
    select_tokens,
    wpr_importance,
)
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

__all__ = ["TokenPruning"]

METHODS = ("zero_tprune", "cls_attn", "random")
BACKENDS = ("auto", "hf", "timm")
TIMM_EXTRA = "pip install 'litmix[timm]' (or: pip install timm)"


def require_timm(owner: str) -> Any:
    """Import ``timm.models.vision_transformer`` or raise an ``ImportError`` naming the caller and the extra."""
    try:
        import timm.models.vision_transformer as vt
    except ImportError as err:
        raise ImportError(
            f"{owner}(backend='timm'): timm ViT blocks need the optional timm package, which is not installed; "
            f"install the extra: {TIMM_EXTRA}"
        ) from err
    return vt


def _is_hf_vit_layer(m: nn.Module) -> bool:
    return type(m).__module__.startswith("transformers.") and type(m).__name__ == "ViTLayer"


def _is_timm_block(m: nn.Module) -> bool:
    return type(m).__module__.startswith("timm.") and hasattr(m, "attn") and hasattr(m.attn, "qkv")


def find_vit_blocks(module: nn.Module, backend: str = "auto", owner: str = "TokenPruning") -> list[nn.Module]:
    """The transformer blocks of the ViT(s) in ``module``, in ``named_modules`` order.

    Hugging Face ``transformers`` ``ViTLayer`` blocks (``backend="hf"``) and ``timm`` vision-transformer blocks
    (``backend="timm"``: any ``timm`` block with an ``attn.qkv`` projection, e.g.
    ``timm.models.vision_transformer.Block``); ``"auto"`` takes whichever is present.

    Raises:
        ImportError: ``backend="timm"`` without timm installed (naming the extra).
    """
    if backend == "timm":
        require_timm(owner)
    hf = [m for m in module.modules() if _is_hf_vit_layer(m)] if backend in ("auto", "hf") else []
    tm = [m for m in module.modules() if _is_timm_block(m)] if backend in ("auto", "timm") else []
    return hf or tm


def _attention(q: Tensor, k: Tensor, scale: float, drop: float, training: bool) -> Tensor:
    attn = torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1, dtype=torch.float32).to(q.dtype)
    return F.dropout(attn, drop, training) if drop > 0 else attn


class _Pruner:
    """Scores and prunes the tokens after one block's attention (shared by the HF and timm block forwards)."""

    def __init__(self, cb: TokenPruning, index: int) -> None:
        self.cb, self.index = cb, index

    def __call__(self, x: Tensor, attn: Tensor, k: Tensor) -> Tensor:
        cb = self.cb
        n = x.shape[1]
        keep = min(n - 1, max(0, round(cb.keep_rate * (n - 1))))
        cb._tokens[self.index] = (n, keep + 1)
        if keep == n - 1:
            return x
        if cb.method == "zero_tprune":
            scores = wpr_importance(attn, iters=cb.iters)
        elif cb.method == "cls_attn":
            scores = cls_attention_importance(attn)
        else:
            scores = torch.rand(x.shape[:2], device=x.device)
        kept, pruned = select_tokens(scores, keep)
        if cb.merge:
            keys = k.transpose(1, 2).reshape(x.shape[0], n, -1)
            return merge_tokens(x, keys, kept, pruned, scores if cb.method != "random" else None)
        return x.gather(1, kept.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def _hf_forward(layer: Any, prune: _Pruner) -> Callable[..., Tensor]:
    """A pruning forward for a ``transformers`` ``ViTLayer`` (v5 ``q_proj``/``o_proj`` or v4 ``query``/``dense``)."""
    att = layer.attention
    if hasattr(att, "q_proj"):  # transformers >= 5
        q_lin, k_lin, v_lin, o_lin = att.q_proj, att.k_proj, att.v_proj, att.o_proj
        heads, drop = int(att.num_attention_heads), float(att.attention_dropout)
        post: Callable[[Tensor], Tensor] = layer.dropout
    else:  # transformers 4: ViTAttention(attention=ViTSelfAttention, output=ViTSelfOutput)
        sa = att.attention
        q_lin, k_lin, v_lin, o_lin = sa.query, sa.key, sa.value, att.output.dense
        heads, drop = int(sa.num_attention_heads), float(sa.dropout_prob if hasattr(sa, "dropout_prob") else 0.0)
        post = att.output.dropout

    def forward(self: Any, hidden_states: Tensor, attention_mask: Tensor | None = None, **_: Any) -> Tensor:
        if attention_mask is not None:
            raise ValueError("TokenPruning: ViT layers with an attention_mask are not supported")
        b, n, _d = hidden_states.shape
        h = self.layernorm_before(hidden_states)
        q, k, v = (lin(h).view(b, n, heads, -1).transpose(1, 2) for lin in (q_lin, k_lin, v_lin))
        attn = _attention(q, k, q.shape[-1] ** -0.5, drop, self.training)
        ctx = (attn @ v).transpose(1, 2).reshape(b, n, -1)
        x = post(o_lin(ctx)) + hidden_states
        x = prune(x, attn, k)
        if hasattr(self, "mlp"):
            return x + self.dropout(self.mlp(self.layernorm_after(x)))
        return self.output(self.intermediate(self.layernorm_after(x)), x)

    return forward


def _timm_forward(block: Any, prune: _Pruner) -> Callable[..., Tensor]:
    """A pruning forward for a ``timm`` vision-transformer ``Block`` (fused ``qkv``, optional q/k norms)."""
    at = block.attn
    ident = nn.Identity()

    def forward(self: Any, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        b, n, _c = x.shape
        heads = int(at.num_heads)
        qkv = at.qkv(self.norm1(x)).reshape(b, n, 3, heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = getattr(at, "q_norm", ident)(q), getattr(at, "k_norm", ident)(k)
        drop = float(getattr(at.attn_drop, "p", 0.0))
        attn = _attention(q, k, float(getattr(at, "scale", q.shape[-1] ** -0.5)), drop, self.training)
        ctx = getattr(at, "norm", ident)((attn @ v).transpose(1, 2).reshape(b, n, -1))
        out = at.proj_drop(at.proj(ctx))
        x = x + getattr(self, "drop_path1", ident)(getattr(self, "ls1", ident)(out))
        x = prune(x, attn, k)
        mlp = self.mlp(self.norm2(x))
        return x + getattr(self, "drop_path2", ident)(getattr(self, "ls2", ident)(mlp))

    return forward


class _TinyViT(pl.LightningModule):
    """A 2-layer Hugging Face ViT on ``TinyDataModule``'s 16 features read as a 1x4x4 image (patch 2: 4 tokens)."""

    def __init__(self, side: int = 4, patch: int = 2, num_classes: int = 4, lr: float = 0.05) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        cfg = ViTConfig(
            image_size=side,
            patch_size=patch,
            num_channels=1,
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=num_classes,  # type: ignore[call-arg]
        )
        self.side, self.lr = side, lr
        self.vit = ViTForImageClassification(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.vit(pixel_values=x.view(-1, 1, self.side, self.side)).logits

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y, _ = split_batch(batch)
        assert y is not None
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = split_batch(batch)
        assert y is not None
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


@register("callback", "sparsity", paper=PAPER)
class TokenPruning(LitmixCallback):
    """Zero-shot token pruning of a Vision Transformer by the weighted PageRank of its attention (Zero-TPrune).

    Implements the I-stage of Wang et al., "Zero-TPrune: Zero-Shot Token Pruning through Leveraging of the
    Attention Graph in Pre-Trained Transformers" (CVPR 2024, https://arxiv.org/abs/2305.17328): at each block
    in ``layers``, after the attention, token importance is the weighted PageRank of that block's attention
    graph (:func:`litmix.functional.token_pruning.wpr_importance`, ``iters`` power iterations, near-uniform
    heads down-weighted); the ``keep_rate`` most important non-CLS tokens go on to the MLP and the later blocks,
    the rest are dropped, or with ``merge=True`` averaged into their most similar kept token (key cosine,
    importance-weighted; :func:`~litmix.functional.token_pruning.merge_tokens`). CLS is always kept. No
    training is needed. Baselines: ``method="cls_attn"`` (the attention CLS pays each token, EViT) and
    ``method="random"``. ``keep_rate`` applies at every listed layer, so the tokens leaving the last one are
    ``keep_rate ** len(layers)`` of the patches.

    The pruning forward is installed on the block instances (an instance ``forward`` attribute, no hooks) at
    the start of fit / validate / test / predict and removed at ``teardown``: the model's parameters, buffers,
    state dict and checkpoints are untouched, and after the Trainer finishes the model is the user's again.
    Supported blocks: Hugging Face ``transformers`` ``ViTLayer`` (``ViTForImageClassification``/``ViTModel``)
    and ``timm`` ``vision_transformer.Block`` (``backend="timm"`` needs the optional ``timm`` extra). The
    callback holds no state beyond its configuration (resume and DDP are trivially consistent; ``random``
    draws from each rank's torch RNG). Logs ``<prefix>/token_fraction`` (mean tokens per block relative to the
    unpruned count, the FLOPs fraction of the blocks to first order) at each validation epoch end.

    Args:
        method: ``"zero_tprune"`` (weighted PageRank), ``"cls_attn"`` or ``"random"``.
        keep_rate: fraction of the non-CLS tokens kept at each listed layer, in (0, 1].
        layers: block indices (0-based) after whose attention tokens are pruned.
        iters: weighted-PageRank iterations (>= 1).
        merge: merge pruned tokens into the most similar kept ones instead of dropping them.
        backend: ``"auto"``, ``"hf"`` (transformers) or ``"timm"``.
        name: optional instance name (unique checkpoint key and log prefix).

    Raises:
        TypeError: arguments of the wrong type.
        ValueError: ``keep_rate`` outside (0, 1], negative or duplicate ``layers``, ``iters < 1``, an unknown
            ``method``/``backend``; in ``setup``: a model with no supported attention blocks or ``layers`` beyond
            its block count.
        ImportError: ``backend="timm"`` without timm installed (in ``setup``, naming the extra).

    Example:
        >>> from litmix.testing import fit_tiny
        >>> module, datamodule, (cb,) = TokenPruning.example()
        >>> _ = fit_tiny([cb], module=module, datamodule=datamodule, max_steps=2)
        >>> any("forward" in vars(m) for m in module.modules())  # the model is restored after the run
        False
    """

    default_log_prefix: ClassVar[str] = "token_pruning"

    def __init__(
        self,
        method: str = "zero_tprune",
        keep_rate: float = 0.7,
        layers: list[int] | None = None,
        iters: int = 30,
        merge: bool = False,
        backend: str = "auto",
        name: str | None = None,
    ) -> None:
        super().__init__(name=name)
        owner = type(self).__name__
        check_choice(owner, "method", method, METHODS)
        check_float(owner, "keep_rate", keep_rate, low=0.0, high=1.0, low_open=True)
        layers = [1] if layers is None else layers
        check_type(owner, "layers", layers, (list, tuple))
        for v in layers:
            check_int(owner, "layers", v, low=0)
        if not layers or len(set(layers)) != len(layers):
            raise ValueError(f"{owner}(layers={layers!r}): layers must be a non-empty list of distinct ints >= 0")
        check_int(owner, "iters", iters, low=1)
        check_bool(owner, "merge", merge)
        check_choice(owner, "backend", backend, BACKENDS)
        self.method, self.keep_rate, self.layers = method, float(keep_rate), [int(v) for v in layers]
        self.iters, self.merge, self.backend = int(iters), bool(merge), backend
        self._blocks: list[nn.Module] = []
        self._tokens: dict[int, tuple[int, int]] = {}  # pruned block -> (tokens in, tokens out), last forward
        self._depth = 0

    @classmethod
    def example(cls) -> Example:
        """A 2-layer HF ViT on ``TinyDataModule`` (16 features as a 4x4 image), pruning half the tokens at block 0."""
        from litmix.testing import TinyDataModule

        return Example(_TinyViT(), TinyDataModule(in_features=16), [cls(keep_rate=0.5, layers=[0])])

    def _state_key_fields(self) -> dict[str, Any]:
        return {"method": self.method, "keep_rate": self.keep_rate, "layers": self.layers}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_blocks"], state["_tokens"] = [], {}
        return state

    # ---------------------------------------------------------------- patching
    def blocks(self, module: nn.Module) -> list[nn.Module]:
        """The supported blocks of ``module``; ``ValueError`` when none or when ``layers`` exceed their count."""
        owner = type(self).__name__
        blocks = find_vit_blocks(module, self.backend, owner)
        if not blocks:
            raise ValueError(
                f"{owner}(backend={self.backend!r}): {type(module).__name__} has no supported attention blocks "
                "(transformers ViTLayer or timm vision_transformer.Block); token pruning needs a ViT"
            )
        if max(self.layers) >= len(blocks):
            raise ValueError(
                f"{owner}(layers={self.layers}): the model has {len(blocks)} blocks, so layers must be in "
                f"[0, {len(blocks) - 1}]"
            )
        return blocks

    def apply(self, module: nn.Module) -> None:
        """Install the pruning forward on every block of ``module`` (idempotent; :meth:`restore` undoes it)."""
        if self._blocks:
            return
        blocks = self.blocks(module)
        make = _hf_forward if _is_hf_vit_layer(blocks[0]) else _timm_forward
        for i in self.layers:  # the other blocks keep their own (e.g. SDPA) forward
            block = blocks[i]
            block.forward = types.MethodType(make(block, _Pruner(self, i)), block)  # type: ignore[method-assign]
        self._blocks, self._depth = blocks, len(blocks)

    def restore(self) -> None:
        """Remove the pruning forwards: the blocks run their class's own ``forward`` again."""
        for block in self._blocks:
            vars(block).pop("forward", None)
        self._blocks, self._tokens = [], {}

    def token_fraction(self) -> float | None:
        """Tokens per block (attention and MLP halves) of the last forward over the unpruned count (None before one)."""
        if len(self._tokens) < len(self.layers):
            return None
        first = self._tokens[min(self.layers)][0]
        total, current = 0.0, first
        for i in range(self._depth):
            if i in self._tokens:  # attention on the tokens in, MLP on the tokens kept
                n_in, current = self._tokens[i]
                total += (n_in + current) / 2
            else:
                total += current
        return total / (self._depth * first)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check the model (supported blocks, ``layers`` in range) before any compute."""
        super().setup(trainer, pl_module, stage)
        self.blocks(pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the pruning forwards."""
        self.apply(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the pruning forwards (idempotent)."""
        self.apply(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the pruning forwards (idempotent)."""
        self.apply(pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Install the pruning forwards (idempotent)."""
        self.apply(pl_module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the token fraction of the last forward."""
        frac = self.token_fraction()
        if frac is not None and not math.isnan(frac):
            pl_module.log(f"{self.log_prefix}/token_fraction", frac, rank_zero_only=True)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Restore the user's blocks."""
        self.restore()
