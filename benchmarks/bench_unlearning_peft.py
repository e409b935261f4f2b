"""NPO+RT unlearning of a tiny GPT-2 loaded with ``from_pretrained``: LoRA adapters vs full fine-tuning.

For each seed: :func:`litmix.unlearning_peft.train_tofu_gpt2` trains a GPT-2 on the synthetic TOFU task and saves it
with ``save_pretrained``; :class:`litmix.plugins.UnlearningModule` (NPO+RT, cached reference) then unlearns the
forget split from that folder, once through LoRA adapters and once with every weight trainable, in a plain
Lightning Trainer. Reported: forget / retain NLL (mean summed answer NLL) and accuracy before and after, the
trainable parameters, the optimizer state bytes and the fit wall time (ratio LoRA / full, side by side).

Run: ``python benchmarks/bench_unlearning_peft.py [--seeds 0 1 2] [--steps 60]``; writes
``benchmarks/results/unlearning_peft.md``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from litmix.datamodules.tofu import TOFUDataModule
from litmix.plugins.unlearning_module import UnlearningModule
from litmix.testing import make_trainer
from litmix.unlearning_peft import tiny_gpt2, tofu_split_scores, train_tofu_gpt2

RESULTS = Path(__file__).parent / "results" / "unlearning_peft.md"
TASK: dict[str, Any] = {"n_entities": 50, "steps": 150, "batch": 32}
LORA = {"r": 8, "alpha": 16}
LR = {"lora": 1e-2, "full": 1e-3}


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer state (AdamW: two moments per trainable parameter)."""
    return sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))


def _unchanged(flag: float) -> str:
    return "n/a (all train)" if flag != flag else str(bool(flag))


def unlearn(model_dir: Path, lora: dict[str, Any] | None, steps: int, lr: float, seed: int = 0) -> dict[str, float]:
    """NPO+RT from the saved folder; scores after, trainable parameters, optimizer bytes, wall time."""
    data_dir = (model_dir / "tofu_data.txt").read_text()
    torch.manual_seed(seed)
    module = UnlearningModule(
        str(model_dir), forget_loss="npo", retain_loss="nll", lr=lr, cache_reference=True, lora=lora
    )
    base = {n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad}
    dm = TOFUDataModule(data_dir, tokenizer="word", prompt_template="{question} :", batch_size=5, seed=seed)
    trainer = make_trainer(max_steps=steps, limit_val_batches=0, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    wall = time.perf_counter() - start
    params = dict(module.model.named_parameters())
    return {
        **tofu_split_scores(module.model, data_dir),
        "trainable": float(sum(p.numel() for p in params.values() if p.requires_grad)),
        "total": float(sum(p.numel() for p in params.values())),
        "opt_bytes": float(optimizer_state_bytes(trainer.optimizers[0])),
        "base_unchanged": float(all(torch.equal(v, params[n]) for n, v in base.items())) if base else float("nan"),
        "wall_s": wall,
    }


def memory_at_size(n_embd: int, n_layer: int, vocab: int = 8192, block: int = 128) -> dict[str, dict[str, float]]:
    """Trainable parameters and AdamW state bytes after one NPO+RT step of a random GPT-2 of this size (LoRA, full)."""
    from litmix.functional.synthetic_tofu import make_synthetic_tofu

    folder = Path(tempfile.mkdtemp(prefix="bench-peft-mem-"))
    tiny_gpt2(vocab, block, n_embd=n_embd, n_layer=n_layer).save_pretrained(str(folder))
    (folder / "tofu_data.txt").write_text(make_synthetic_tofu(tempfile.mkdtemp(), n_entities=20, seed=0))
    out = {}
    for name, lora in (("lora", LORA), ("full", None)):
        res = unlearn(folder, lora, 1, LR[name])
        out[name] = {k: res[k] for k in ("trainable", "total", "opt_bytes")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    rows = []
    for seed in args.seeds:
        model_dir = train_tofu_gpt2(tempfile.mkdtemp(prefix="bench-peft-"), seed=seed, **TASK)
        from transformers import AutoModelForCausalLM

        before = tofu_split_scores(
            AutoModelForCausalLM.from_pretrained(str(model_dir)), (model_dir / "tofu_data.txt").read_text()
        )
        for name, lora in (("lora", LORA), ("full", None)):
            res = unlearn(model_dir, lora, args.steps, LR[name], seed)
            rows.append((seed, name, before, res))
            print(seed, name, before, res, flush=True)
    lines = [
        "# NPO+RT on a tiny GPT-2 (from_pretrained): LoRA vs full fine-tuning",
        "",
        f"Synthetic TOFU task {TASK}, GPT-2 n_embd 32 x 1 layer; NPO+RT (beta 0.1, cached reference), batch 5 + 5, "
        f"{args.steps} steps, AdamW; lr LoRA {LR['lora']} (r {LORA['r']}, alpha {LORA['alpha']}, c_attn + c_proj), "
        f"full {LR['full']}. NLL = mean summed answer NLL per item. Times: one process, side by side (2 loaded cores).",
        "",
        "| seed | run | forget NLL before -> after | retain NLL before -> after | forget acc after | retain acc after "
        "| trainable params (share) | optimizer state bytes | base weights unchanged | fit s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for seed, name, b, r in rows:
        lines.append(
            f"| {seed} | {name} | {b['forget_nll']:.2f} -> {r['forget_nll']:.2f} | {b['retain_nll']:.2f} -> "
            f"{r['retain_nll']:.2f} | {r['forget_acc']:.2f} | {r['retain_acc']:.2f} | {int(r['trainable'])} "
            f"({r['trainable'] / r['total']:.1%}) | {int(r['opt_bytes'])} | {_unchanged(r['base_unchanged'])} "
            f"| {r['wall_s']:.2f} |"
        )
    by = {(s, n): r for s, n, _, r in rows}
    ratios = [by[(s, "lora")]["opt_bytes"] / by[(s, "full")]["opt_bytes"] for s in args.seeds]
    walls = [by[(s, "lora")]["wall_s"] / by[(s, "full")]["wall_s"] for s in args.seeds]
    lines += [
        "",
        f"Optimizer state LoRA / full: {', '.join(f'{x:.3f}' for x in ratios)}; fit time LoRA / full: "
        f"{', '.join(f'{x:.2f}' for x in walls)} (per seed).",
    ]
    lines += [
        "",
        "Memory at larger (random) GPT-2 sizes, vocabulary 8192, after one step (parameters with grad, AdamW state):",
        "",
        "| GPT-2 | run | parameters with grad (share) | optimizer state bytes | LoRA / full state |",
        "|---|---|---|---|---|",
    ]
    for n_embd, n_layer in ((128, 2), (256, 4)):
        mem = memory_at_size(n_embd, n_layer)
        ratio = mem["lora"]["opt_bytes"] / mem["full"]["opt_bytes"]
        for name, m in mem.items():
            lines.append(
                f"| n_embd {n_embd} x {n_layer} | {name} | {int(m['trainable'])} ({m['trainable'] / m['total']:.2%}) "
                f"| {int(m['opt_bytes'])} | {ratio:.4f} |"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
