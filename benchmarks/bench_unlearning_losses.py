"""Step time of every forget loss of :class:`litmix.plugins.UnlearningModule`, relative to gradient ascent.

A tiny causal LM (GPT-2 config, 2 layers, d 64, vocabulary 222, sequences of 32 tokens, 16 answer tokens),
forget batches of 8 with an "I don't know" alternative answer each; no retain term except where the loss has
one built in (RMU's activation term, shown separately). Settings run interleaved in one process, ``rounds``
times; a setting's time is the minimum over rounds of the median CPU time (training thread) of its steps
after ``skip`` warm-up steps. NPO and IdkDPO run with the reference model resident and with the reference
values cached once at fit start (``cache_reference=True``): the cached step needs no reference forward.

Prints a markdown table and writes ``benchmarks/results/unlearning_losses.md``.

Run: ``python benchmarks/bench_unlearning_losses.py`` (about a minute on one core).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from _machine import cpu_model
from lightning.pytorch.callbacks import Callback

from litmix.datamodules.forget_retain import ForgetRetainDataModule
from litmix.plugins.unlearning_module import UnlearningModule
from litmix.testing import make_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "unlearning_losses.md"
SETTINGS: dict[str, dict[str, Any]] = {
    "grad_ascent": {"forget_loss": "grad_ascent"},
    "npo (resident reference)": {"forget_loss": "npo"},
    "npo (cached reference)": {"forget_loss": "npo", "cache_reference": True},
    "simnpo": {"forget_loss": "simnpo"},
    "idkdpo (resident reference)": {"forget_loss": "idkdpo"},
    "idkdpo (cached reference)": {"forget_loss": "idkdpo", "cache_reference": True},
    "undial (resident reference)": {"forget_loss": "undial"},
    "wga": {"forget_loss": "wga"},
    "rmu (+ activation retain term)": {"forget_loss": "rmu", "rmu_layer": "transformer.h.1", "rmu_coeff": 2.0},
}


class StepTimer(Callback):
    """CPU time of the training thread per step, from step ``skip`` on."""

    def __init__(self, skip: int) -> None:
        self.skip, self.times, self._start = skip, [], 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        """Start the clock."""
        self._start = time.thread_time()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        """Stop the clock."""
        if trainer.global_step > self.skip:
            self.times.append(time.thread_time() - self._start)


def lm_items(n: int, seq: int = 32, prompt: int = 16, vocab: int = 222, seed: int = 0) -> list[dict[str, Any]]:
    """Random prompt/answer sequences, each with an alternative answer to the same prompt."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (seq,), generator=gen)
        alt = torch.cat([ids[:prompt], torch.randint(0, vocab, (seq - prompt,), generator=gen)])
        labels, alt_labels = ids.clone(), alt.clone()
        labels[:prompt], alt_labels[:prompt] = -100, -100
        mask = torch.ones(seq, dtype=torch.long)
        items.append(
            {
                "input_ids": ids,
                "attention_mask": mask,
                "labels": labels,
                "alternate": {"input_ids": alt, "attention_mask": mask, "labels": alt_labels},
            }
        )
    return items


def main(argv: list[str] | None = None) -> str:
    """Run the settings interleaved and write the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    import transformers

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, vocab_size=222, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    base = transformers.GPT2LMHeadModel(config).eval()
    items = lm_items(96)
    best: dict[str, float] = {}
    for _ in range(args.rounds):
        for name, kwargs in SETTINGS.items():
            dm = ForgetRetainDataModule.from_dataset(
                items, forget_indices=list(range(48)), batch_size=8, eval_batch_size=8
            )
            module = UnlearningModule(copy.deepcopy(base), lr=1e-4, **kwargs)
            timer = StepTimer(args.skip)
            make_trainer(max_steps=args.steps, max_epochs=-1, callbacks=[timer]).fit(module, datamodule=dm)
            step = statistics.median(timer.times)
            best[name] = min(best.get(name, float("inf")), step)
    ga = best["grad_ascent"]
    lines = [
        f"Unlearning forget-loss step time (CPU time of the training thread, 1 thread, {cpu_model()}); tiny GPT-2 "
        f"(2 layers, d 64, V 222), forget batch 8 x 32 tokens (16 answer tokens), {args.steps} steps, median after "
        f"{args.skip}, min over {args.rounds} interleaved rounds.",
        "",
        "| forget loss | step (ms) | ratio to grad_ascent |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {t * 1e3:.2f} | {t / ga:.2f} |" for name, t in best.items()]
    table = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()
