"""One-shot pruning of the char-level GPT-2: validation perplexity and pruning time per method and sparsity.

Loads the model saved by ``benchmarks/train_char_gpt.py`` with ``GPT2LMHeadModel.from_pretrained(folder)`` (trains
it first when the folder is missing), prunes a fresh copy with every method of
:func:`litmix.functional.oneshot_pruning.prune_model` at 50 %, 70 % and 2:4 on the same calibration data (32
training windows, seed 0), and writes validation perplexity and wall time to ``benchmarks/results/oneshot.md``.

    .venv/bin/python benchmarks/bench_oneshot.py [--model runs/char_gpt] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_char_gpt import calibration_batches, load_splits, perplexity, train_char_gpt

from litmix.functional.oneshot_pruning import prune_model

OUT = Path(__file__).resolve().parent / "results" / "oneshot.md"

VARIANTS = [  # (label, method, refine, profile, sequential)
    ("magnitude", "magnitude", None, "uniform", "auto"),
    ("wanda", "wanda", None, "uniform", "auto"),
    ("wanda, layer by layer", "wanda", None, "uniform", "layer"),
    ("wanda + dsnot", "wanda", "dsnot", "uniform", "auto"),
    ("wanda + owl", "wanda", None, "owl", "auto"),
    ("sparsegpt", "sparsegpt", None, "uniform", "auto"),
    ("sparsegpt, block by block", "sparsegpt", None, "uniform", "block"),
    ("sparsegpt + dsnot", "sparsegpt", "dsnot", "uniform", "auto"),
    ("sparsegpt + owl", "sparsegpt", None, "owl", "auto"),
]
SETTINGS = [("50 %", 0.5, "unstructured"), ("70 %", 0.7, "unstructured"), ("2:4", 0.5, "2:4")]


def main() -> None:
    """Run the table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(Path(__file__).resolve().parents[1] / "runs" / "char_gpt"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="calibration-sample seeds")
    ap.add_argument("--calib", type=int, default=32, help="calibration sequences")
    ap.add_argument("--windows", type=int, default=256, help="validation windows")
    ap.add_argument(
        "--llmcompressor-python",
        default=None,
        help="a Python with llmcompressor installed: runs benchmarks/bench_oneshot_llmcompressor.py per seed",
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    from transformers import GPT2LMHeadModel

    folder = Path(args.model)
    if not (folder / "config.json").exists():
        train_char_gpt(folder, log_every=100)
    model = GPT2LMHeadModel.from_pretrained(folder).eval()
    block = model.config.n_positions
    _, train_ids, val_ids = load_splits()
    dense = perplexity(model, val_ids, block, args.windows)
    rows: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for seed in args.seeds:
        calib = calibration_batches(train_ids, args.calib, block, 8, seed=seed)
        for setting, sparsity, structure in SETTINGS:
            for label, method, refine, profile, sequential in VARIANTS:
                if structure != "unstructured" and profile == "owl":
                    continue
                pruned = copy.deepcopy(model)
                start = time.perf_counter()
                prune_model(
                    pruned,
                    calib,
                    method=method,
                    sparsity=sparsity,
                    structure=structure,
                    refine=refine,
                    sparsity_profile=profile,
                    sequential=sequential,
                )
                seconds = time.perf_counter() - start
                ppl = perplexity(pruned, val_ids, block, args.windows)
                rows.setdefault((setting, label), []).append((ppl, seconds))
                print(f"seed {seed} {setting} {label}: ppl {ppl:.3f} ({seconds:.2f} s)", flush=True)
        if args.llmcompressor_python:
            script = Path(__file__).resolve().parent / "bench_oneshot_llmcompressor.py"
            cmd = [args.llmcompressor_python, str(script), str(folder), "--seed", str(seed), "--calib", str(args.calib)]
            cmd += ["--windows", str(args.windows)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    rows.setdefault((r["setting"], r["method"]), []).append((r["ppl"], r["seconds"]))
                    print(
                        f"seed {seed} {r['setting']} {r['method']}: ppl {r['ppl']:.3f} ({r['seconds']:.2f} s), "
                        f"sparsity {r['sparsity']:.4f}",
                        flush=True,
                    )
    n_params = sum(p.numel() for p in model.parameters())
    lines = [
        "# One-shot pruning of a character-level GPT-2 (Tiny Shakespeare)",
        "",
        f"Model: `GPT2LMHeadModel` from `{folder.name}` ({model.config.n_layer} blocks, d={model.config.n_embd}, "
        f"{n_params:,} parameters, context {block}), trained by `benchmarks/train_char_gpt.py` and loaded with "
        f"`from_pretrained`. Dense validation perplexity **{dense:.3f}** ({args.windows} windows of {block} "
        "characters of the last 10 % of the text). Pruned: every block's `c_attn`, `c_proj`, `c_fc`, `mlp.c_proj` "
        "(HF `Conv1D`); the tied `lm_head` stays dense. Calibration: "
        f"{args.calib} random training windows per seed (seeds {', '.join(map(str, args.seeds))}), "
        "sequential (`prune_model`'s default `sequential='auto'`: layer by layer for SparseGPT and DSnoT, block by "
        "block otherwise; two rows show the other choice). Magnitude and Wanda compare within each output row "
        "(magnitude per row, the stronger baseline); N:M groups run along the inputs. DSnoT refines the base mask "
        "with swaps that never raise a row's reconstruction error.",
        "",
        "Perplexity: mean over calibration seeds (per seed in brackets); time: mean wall seconds of `prune_model` "
        f"on 1 CPU thread of a shared machine ({platform.processor() or platform.machine()}), ratios to magnitude "
        "in the same run.",
        "",
        "| sparsity | method | val perplexity | per seed | prune time (s) | time / magnitude |",
        "|---|---|---|---|---|---|",
    ]
    labels = [v[0] for v in VARIANTS] + ["llm-compressor wanda", "llm-compressor sparsegpt"]
    for setting, _, _ in SETTINGS:
        base_t = sum(t for _, t in rows[(setting, "magnitude")]) / len(args.seeds)
        for label in labels:
            vals = rows.get((setting, label))
            if not vals:
                continue
            ppl = sum(p for p, _ in vals) / len(vals)
            t = sum(s for _, s in vals) / len(vals)
            per = " / ".join(f"{p:.3f}" for p, _ in vals)
            lines.append(f"| {setting} | {label} | {ppl:.3f} | {per} | {t:.2f} | {t / base_t:.1f}x |")
    lines += ["", LLMCOMPRESSOR_NOTE if args.llmcompressor_python else LLMCOMPRESSOR_ABSENT, ""]
    OUT.write_text("\n".join(lines))
    print(OUT.read_text())


LLMCOMPRESSOR_NOTE = """## llm-compressor side by side

`llmcompressor` 0.14.0.1 (newest on the package index when measured) pins `transformers>=5.15.0,<=5.17.0` and
pulls `auto-round`, `compressed-tensors==0.19.0`, `datasets`, `accelerate` and `nvidia-ml-py`; this project's
environment has transformers 5.25.0, so it cannot be installed beside it. It ran from a separate venv (this
project's CPU torch 2.13 through a `.pth` file, transformers 5.17.0) via `benchmarks/bench_oneshot_llmcompressor.py`:
`oneshot(model, dataset, recipe=SparseGPTModifier | WandaPruningModifier(sparsity, mask_structure, targets=the four
block layers, ignore=["lm_head"]), pipeline="sequential", sequential_targets=["GPT2Block"])` with the same model
folder, the same calibration windows and the same validation windows (defaults: dampening 0.01, block 128). Its
pruners select layers by class name (`Linear`, `Conv1d`, `Conv2d`, `Conv3d`), so **GPT-2's HF `Conv1D` layers are
silently skipped** (measured: 0 % sparsity and the dense perplexity); its rows therefore prune the same model with
every `Conv1D` replaced by the equivalent `nn.Linear` (transposed weights, identical outputs). llm-compressor's
Wanda prunes per row like litmix's; its SparseGPT propagates the calibration inputs block by block (litmix: layer by
layer, so each layer also sees the pruned outputs of the layers before it inside the block). Its time includes its
own pipeline set-up (session, tracing, hooks); both timed in the same script run, on the same loaded machine."""

LLMCOMPRESSOR_ABSENT = """## llm-compressor

Not run in this table (pass `--llmcompressor-python` with a Python that has `llmcompressor`). `llmcompressor`
0.14.0.1 pins `transformers<=5.17.0`, so it cannot be installed beside this project's transformers 5.25.0."""


if __name__ == "__main__":
    main()
