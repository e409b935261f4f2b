"""llm-compressor's SparseGPT and Wanda on the char-level GPT-2, for ``benchmarks/bench_oneshot.py``.

Run with a Python environment that has ``llmcompressor`` (it pins ``transformers<=5.17``, so not this project's
environment), e.g. a separate venv whose ``site-packages`` adds this project's torch through a ``.pth`` file::

    /tmp/lcvenv/bin/python benchmarks/bench_oneshot_llmcompressor.py runs/char_gpt --seed 0

Prints one JSON line per (method, setting): validation perplexity and wall seconds of ``oneshot``. Same model
folder, same calibration windows (``train_char_gpt.calibration_batches``), same validation windows as litmix.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_char_gpt import calibration_batches, load_splits, perplexity

SETTINGS = [("50 %", 0.5, "0:0"), ("70 %", 0.7, "0:0"), ("2:4", 0.5, "2:4")]


def _char_tokenizer(chars: list[str]):
    """A character-level fast tokenizer (llm-compressor requires a processor when given a dataset)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=chars[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=chars[0], unk_token=chars[0])


def conv1d_to_linear(model: torch.nn.Module) -> int:
    """Replace every HF ``Conv1D`` by the equivalent ``nn.Linear`` (transposed weight): same function.

    llm-compressor 0.14 selects prunable layers by class name (``Linear``, ``Conv1d``, ``Conv2d``, ``Conv3d``), so
    GPT-2's ``Conv1D`` layers are silently skipped (measured: 0 % sparsity, dense perplexity).
    """
    count = 0
    for name, module in list(model.named_modules()):
        if type(module).__name__ != "Conv1D":
            continue
        d_in, d_out = module.weight.shape
        lin = torch.nn.Linear(d_in, d_out)
        with torch.no_grad():
            lin.weight.copy_(module.weight.T)
            lin.bias.copy_(module.bias)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, lin)
        count += 1
    return count


def main() -> None:
    """Prune with llm-compressor's one-shot entry point and print JSON lines."""
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--keep-conv1d", action="store_true", help="do not convert HF Conv1D to nn.Linear")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from transformers import GPT2LMHeadModel

    base = GPT2LMHeadModel.from_pretrained(args.model).eval()
    if not args.keep_conv1d:
        conv1d_to_linear(base)
    block = base.config.n_positions
    chars, train_ids, val_ids = load_splits()
    processor = _char_tokenizer(chars)
    batches = calibration_batches(train_ids, args.calib, block, 8, seed=args.seed)
    rows = torch.cat([b["input_ids"] for b in batches])
    ds = Dataset.from_dict({"input_ids": rows.tolist(), "attention_mask": torch.ones_like(rows).tolist()})
    targets = ["re:.*c_attn$", "re:.*attn.c_proj$", "re:.*c_fc$", "re:.*mlp.c_proj$"]
    for setting, sparsity, structure in SETTINGS:
        for name, cls in (("sparsegpt", SparseGPTModifier), ("wanda", WandaPruningModifier)):
            model = copy.deepcopy(base)
            recipe = cls(sparsity=sparsity, mask_structure=structure, targets=targets, ignore=["lm_head"])
            start = time.perf_counter()
            oneshot(
                model=model,
                dataset=ds,
                recipe=recipe,
                processor=processor,
                num_calibration_samples=len(rows),
                max_seq_length=block,
                pipeline="sequential",
                sequential_targets=["GPT2Block"],
            )
            seconds = time.perf_counter() - start
            ppl = perplexity(model, val_ids, block, args.windows)
            zeros = [
                float((m.weight == 0).float().mean())
                for n, m in model.named_modules()
                if type(m).__name__ in ("Conv1D", "Linear") and "lm_head" not in n
            ]
            print(
                json.dumps(
                    {
                        "seed": args.seed,
                        "setting": setting,
                        "method": f"llm-compressor {name}",
                        "ppl": ppl,
                        "seconds": seconds,
                        "sparsity": sum(zeros) / max(len(zeros), 1),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
