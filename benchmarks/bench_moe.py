"""MoE++ vs a vanilla top-2 MoE of the same FFN experts on the Tiny Shakespeare char-LM -> benchmarks/results/moe.md.

Per seed, both models (2 pre-norm transformer layers, d=64, 4 FFN experts of width 256, top-2; MoE++ adds 1 zero,
1 copy and 2 constant experts and gating residuals, tau=0.75) train ``--steps`` steps with Lightning (batch 32 x
64 characters, AdamW 3e-3, balance weight 0.01) from the same seed. Reported: validation loss (8 batches),
the share of (token, slot) assignments sent to FFN experts (train: mean of the last 20 steps; validation), and
throughput of the trained models measured side by side in this process (rounds alternate the two models; median
of the rounds): training step (forward + backward) tokens/s, inference tokens/s, and the time spent inside the
MoE layers alone during inference. Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_moe.py --seeds 0 1 2``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F

from litmix.datamodules.char_lm import CharLMDataModule
from litmix.layers._moe_lm import MoECharLM, evaluate_lm
from litmix.layers.moe_plus_plus import MoEPlusPlus
from litmix.testing import make_trainer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared" / "data")) / "tinyshakespeare" / "input.txt"


def _moe_timer(model: torch.nn.Module) -> tuple[list[float], list]:
    spent: list[float] = [0.0]
    start: list[float] = [0.0]
    handles = []
    for m in model.modules():
        if isinstance(m, MoEPlusPlus):
            handles.append(m.register_forward_pre_hook(lambda *_: start.__setitem__(0, time.perf_counter())))
            handles.append(
                m.register_forward_hook(lambda *_: spent.__setitem__(0, spent[0] + time.perf_counter() - start[0]))
            )
    return spent, handles


def _throughput(models: dict[str, MoECharLM], batches: list, rounds: int) -> dict[str, dict[str, float]]:
    """Median over ``rounds`` of train-step and inference tokens/s and MoE-layer seconds, models alternating."""
    times: dict[str, dict[str, list[float]]] = {k: {"train": [], "infer": [], "moe": []} for k in models}
    tokens = sum(x.numel() for x, _, _ in batches)
    for _ in range(rounds):
        for name, model in models.items():
            model.train()
            t = time.perf_counter()
            for x, y, _ in batches:
                logits = model(x)
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
                (loss + 0.01 * MoEPlusPlus.total_aux_loss(model)).backward()
            times[name]["train"].append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
            model.eval()
            spent, handles = _moe_timer(model)
            with torch.no_grad():
                t = time.perf_counter()
                for x, _, _ in batches:
                    model(x)
                times[name]["infer"].append(time.perf_counter() - t)
            times[name]["moe"].append(spent[0])
            for h in handles:
                h.remove()
    return {
        k: {
            "train_tok_s": tokens / statistics.median(v["train"]),
            "infer_tok_s": tokens / statistics.median(v["infer"]),
            "moe_s": statistics.median(v["moe"]),
        }
        for k, v in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "moe.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for seed in args.seeds:
        dm = CharLMDataModule(str(DATA), block_size=64, batch_size=32, max_chars=300_000, seed=seed)
        dm.setup("fit")
        models, quality = {}, {}
        for name, vanilla in (("vanilla MoE", True), ("MoE++", False)):
            pl.seed_everything(seed, verbose=False)
            lm = MoECharLM(dm.vocab_size, vanilla=vanilla)
            make_trainer(max_steps=args.steps).fit(lm, datamodule=dm)
            val_loss, val_frac = evaluate_lm(lm, dm.val_dataloader(), max_batches=8)
            last = lm.ffn_tokens_history[-20:]
            train_frac = sum(last) / len(last) / (32 * 64 * 2 * 2)
            models[name], quality[name] = lm, (val_loss, train_frac, val_frac)
        batches = [b for _, b in zip(range(4), dm.val_dataloader(), strict=False)]
        speed = _throughput(models, batches, args.rounds)
        for name in models:
            v_loss, t_frac, v_frac = quality[name]
            s, base = speed[name], speed["vanilla MoE"]
            rows.append(
                f"| {seed} | {name} | {v_loss:.4f} ({v_loss / quality['vanilla MoE'][0]:.3f}x) | {t_frac:.3f} | "
                f"{v_frac:.3f} | {s['train_tok_s']:.0f} ({s['train_tok_s'] / base['train_tok_s']:.2f}x) | "
                f"{s['infer_tok_s']:.0f} ({s['infer_tok_s'] / base['infer_tok_s']:.2f}x) | "
                f"{s['moe_s'] * 1e3:.1f} ({s['moe_s'] / base['moe_s']:.2f}x) |"
            )
            print(rows[-1], flush=True)
    header = [
        "# MoE++ vs vanilla MoE (Tiny Shakespeare char-LM, CPU, 1 thread)",
        "",
        f"{args.steps} training steps per model and seed; throughput of the trained models side by side in one "
        f"process (median of {args.rounds} alternating rounds over 4 validation batches of 32 x 64 characters). "
        "FFN share: (token, slot) assignments sent to FFN experts / all assignments (vanilla: 1 by construction).",
        "",
        "| seed | model | val loss (ratio) | FFN share, train | FFN share, val | train fwd+bwd tokens/s (ratio) | "
        "inference tokens/s (ratio) | ms inside the MoE layers per inference pass of 4 batches (ratio) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    Path(args.out).write_text("\n".join([*header, *rows]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
