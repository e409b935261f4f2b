"""Train a character-level Hugging Face GPT-2 on Tiny Shakespeare and save it with ``save_pretrained``.

The evaluation model of one-shot pruning (``benchmarks/bench_oneshot.py``, ``tests/test_oneshot_pruning.py``):
a ``GPT2LMHeadModel`` built from a ``GPT2Config`` (no download), trained with AdamW on random windows of the
first 90 % of the text; the last 10 % validates. The folder gets the model (``config.json``,
``model.safetensors``) and ``vocab.json`` (the sorted characters), and loads back with
``GPT2LMHeadModel.from_pretrained(folder)``, as a user loads a real checkpoint.

    .venv/bin/python benchmarks/train_char_gpt.py runs/char_gpt   # default: 4 blocks, d=96, ~0.46 M parameters
    .venv/bin/python benchmarks/train_char_gpt.py runs/tiny --n-layer 2 --n-embd 64 --steps 300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
TEXT = Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared" / "data")) / "tinyshakespeare" / "input.txt"


def load_splits(path: str | Path = TEXT, val_fraction: float = 0.1) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The sorted characters and the train / validation id tensors."""
    text = Path(path).read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_val = int(len(ids) * val_fraction)
    return chars, ids[:-n_val], ids[-n_val:]


def random_windows(ids: torch.Tensor, n: int, block: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random windows of ``block + 1`` ids (inputs and shifted targets)."""
    starts = torch.randint(0, len(ids) - block - 1, (n,), generator=gen)
    return torch.stack([ids[s : s + block + 1] for s in starts.tolist()])


def calibration_batches(
    ids: torch.Tensor, n_seqs: int = 32, block: int = 128, batch: int = 8, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Calibration data: ``n_seqs`` random training windows as Hugging Face ``{"input_ids"}`` batches."""
    gen = torch.Generator().manual_seed(seed)
    w = random_windows(ids, n_seqs, block, gen)[:, :-1]
    return [{"input_ids": w[i : i + batch]} for i in range(0, n_seqs, batch)]


@torch.no_grad()
def perplexity(model: Any, ids: torch.Tensor, block: int = 128, max_windows: int = 256, batch: int = 32) -> float:
    """Validation perplexity over consecutive non-overlapping windows (the first ``max_windows``)."""
    was = model.training
    model.eval()
    n = min((len(ids) - 1) // block, max_windows)
    x = ids[: n * block].view(n, block)
    y = ids[1 : n * block + 1].view(n, block)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        logits = model(input_ids=x[i : i + batch]).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y[i : i + batch].reshape(-1), reduction="sum"
        )
        total, count = total + float(loss), count + y[i : i + batch].numel()
    model.train(was)
    return math.exp(total / count)


def build(vocab: int, n_layer: int, n_head: int, n_embd: int, block: int) -> Any:
    """A GPT-2 from a config (no pretrained weights, no dropout)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=vocab,
        n_positions=block,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def train_char_gpt(
    out_dir: str | Path | None = None,
    n_layer: int = 4,
    n_head: int = 4,
    n_embd: int = 96,
    block: int = 64,
    steps: int = 1000,
    batch: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    text: str | Path = TEXT,
    log_every: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Train (AdamW, cosine decay after 5 % warm-up, weight decay 0.1); save to ``out_dir`` when given."""
    torch.manual_seed(seed)
    chars, train_ids, _ = load_splits(text)
    model = build(len(chars), n_layer, n_head, n_embd, block)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=lr)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    )
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        w = random_windows(train_ids, batch, block, gen)
        out = model(input_ids=w[:, :-1], labels=None)
        loss = torch.nn.functional.cross_entropy(out.logits.reshape(-1, len(chars)), w[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step} loss {loss.item():.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    info = {
        "chars": chars,
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_seconds": time.perf_counter() - start,
        "config": {
            "n_layer": n_layer,
            "n_head": n_head,
            "n_embd": n_embd,
            "block": block,
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "seed": seed,
        },
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out)
        (out / "vocab.json").write_text(json.dumps(info, ensure_ascii=False))
    return model, info


def main() -> None:
    """Command line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=96)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, info = train_char_gpt(
        args.out_dir,
        args.n_layer,
        args.n_head,
        args.n_embd,
        args.block,
        args.steps,
        args.batch,
        args.lr,
        args.seed,
        log_every=100,
    )
    _, _, val_ids = load_splits()
    ppl = perplexity(model, val_ids, args.block)
    print(f"{info['n_params']} parameters, {info['train_seconds']:.0f} s, val ppl {ppl:.3f}")


if __name__ == "__main__":
    main()
