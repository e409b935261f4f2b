"""A tiny causal transformer char-LM with MoE++ (or vanilla MoE) feed-forward blocks, for tests and benchmarks."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.data import split_batch
from litmix.layers.moe_plus_plus import MoEPlusPlus

__all__ = ["MoECharLM", "evaluate_lm"]


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, moe: dict[str, Any]) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.moe = MoEPlusPlus(dim, **moe)

    def forward(self, x: Tensor, mask: Tensor, prev: Tensor | None) -> Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.moe(self.norm2(x), prev_logits=prev)


class MoECharLM(pl.LightningModule):
    """Pre-norm causal transformer whose FFNs are :class:`MoEPlusPlus` layers (gating residuals chained).

    Logs per training step ``train_loss``, ``moe/aux_loss``, ``moe/ffn_tokens`` (assignments sent to FFN experts,
    summed over layers) and ``moe/ffn_fraction``; ``ffn_tokens_history`` keeps the per-step counts.
    ``vanilla=True`` builds the same FFN experts without zero-computation experts or gating residuals.

    Example:
        >>> lm = MoECharLM(vocab_size=10, embed_dim=16, layers=2, heads=2, block_size=8)
        >>> lm(torch.zeros(2, 8, dtype=torch.long)).shape
        torch.Size([2, 8, 10])
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 64,
        layers: int = 2,
        heads: int = 4,
        block_size: int = 64,
        num_experts: int = 4,
        hidden: int | None = None,
        top_k: int = 2,
        vanilla: bool = False,
        zero_experts: int = 1,
        copy_experts: int = 1,
        constant_experts: int = 2,
        tau: float = 0.75,
        balance_weight: float = 0.01,
        lr: float = 3e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        moe: dict[str, Any] = {"num_experts": num_experts, "hidden": hidden, "top_k": top_k, "tau": tau}
        if vanilla:
            moe.update(zero_experts=0, copy_experts=0, constant_experts=0, gating_residual=False)
        else:
            moe.update(zero_experts=zero_experts, copy_experts=copy_experts, constant_experts=constant_experts)
        self.tok = nn.Embedding(vocab_size, embed_dim)
        self.pos = nn.Parameter(torch.zeros(block_size, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, heads, moe) for _ in range(layers))
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, vocab_size)
        mask = torch.triu(torch.full((block_size, block_size), float("-inf")), diagonal=1)
        self.mask: Tensor
        self.register_buffer("mask", mask, persistent=False)
        self.balance_weight, self.lr = balance_weight, lr
        self.ffn_tokens_history: list[int] = []

    def forward(self, idx: Tensor) -> Tensor:
        """Logits ``(B, T, vocab)``."""
        t = idx.shape[1]
        x = self.tok(idx) + self.pos[:t]
        prev: Tensor | None = None
        for block in self._blocks():
            x = block(x, self.mask[:t, :t], prev)
            prev = block.moe.router_logits
        return self.head(self.norm(x))  # type: ignore[no-any-return]

    def ffn_tokens(self) -> int:
        """FFN-expert assignments of the last forward, summed over layers."""
        return sum(int(b.moe.ffn_tokens) for b in self._blocks())

    def _blocks(self) -> list[_Block]:
        return [b for b in self.blocks if isinstance(b, _Block)]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Cross-entropy plus ``balance_weight`` times the summed load-balance losses."""
        x, y, _ = split_batch(batch)
        assert y is not None
        logits = self(x)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        aux = MoEPlusPlus.total_aux_loss(self)
        ffn = self.ffn_tokens()
        self.ffn_tokens_history.append(ffn)
        slots = x.numel() * self.hparams["top_k"] * len(self.blocks)
        self.log("train_loss", ce, prog_bar=True)
        self.log("moe/aux_loss", aux)
        self.log("moe/ffn_tokens", float(ffn))
        self.log("moe/ffn_fraction", ffn / slots)
        return ce + self.balance_weight * aux

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW."""
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


@torch.no_grad()
def evaluate_lm(model: MoECharLM, loader: Any, max_batches: int | None = None) -> tuple[float, float]:
    """Mean validation cross-entropy and FFN-assignment fraction of ``model`` over ``loader``."""
    model.eval()
    losses, ffn, slots = [], 0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y, _ = split_batch(batch)
        assert y is not None
        logits = model(x)
        losses.append(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))))
        ffn += model.ffn_tokens()
        slots += x.numel() * model.hparams["top_k"] * len(model.blocks)
    model.train()
    return sum(losses) / len(losses), ffn / slots
