"""Tiny causal-LM fixtures shared by the unlearning evaluation tests (TOFU-shaped items with perturbed answers)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader


class TokenLM(nn.Module):
    """A causal token model with the Hugging Face call signature (``input_ids``, ``attention_mask``)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.head = nn.Embedding(11, 16), nn.Linear(16, 11)

    def forward(self, input_ids, attention_mask=None):
        return {"logits": self.head(torch.tanh(self.emb(input_ids)).cumsum(1))}


def perturbed_lm_loaders(seed: int = 1) -> dict[str, DataLoader]:
    """``forget`` (9), ``forget_perturbed`` (9, with ``paraphrased`` and 3 ``perturbed`` answers), ``retain`` (6) and
    ``holdout`` (5) loaders of random 8-token items, the first 3 positions labelled -100 (the prompt)."""
    g = torch.Generator().manual_seed(seed)

    def part(n, k=None):
        ids = torch.randint(0, 11, (n, 8) if k is None else (n, k, 8), generator=g)
        labels = ids.clone()
        labels[..., :3] = -100
        return ids, labels

    def loader(n, perturbed=False):
        (ids, labels), (pids, plabels), (wids, wlabels) = part(n), part(n), part(n, 3)
        items = []
        for i in range(n):
            item = {"input_ids": ids[i], "labels": labels[i], "index": torch.tensor(i)}
            if perturbed:
                item["paraphrased"] = {"input_ids": pids[i], "labels": plabels[i]}
                item["perturbed"] = {"input_ids": wids[i], "labels": wlabels[i]}
            items.append(item)
        return DataLoader(items, batch_size=4)

    return {"forget": loader(9), "forget_perturbed": loader(9, True), "retain": loader(6), "holdout": loader(5)}
