"""GA, NPO, GA+RT (GradDiff) and NPO+RT on a small synthetic TOFU-shaped task (catalogue unlearning.md §0.8, reduced).

100 entities; prompt ``[BOS, entity, SEP]``, answer = 3 random tokens from a 20-token answer vocabulary
(V = 122); forget set = the first 10 entities. A 1-layer GPT-2 (d 32, 4 heads, no dropout) memorises every
answer (AdamW 3e-3, batch 64, 600 steps); each method then unlearns for 300 steps (AdamW 3e-4, forget batch 8,
retain batch 8, NPO beta 0.1 on answer-sum NLLs, GA on the token mean), as in the catalogue's U1 test (b).
Reported per seed: forget / retain token accuracy and mean forget / retain NLL (answer sums). No oracle model
and no forget quality here (that needs the retrain oracle and the KS metric of the evaluation suite).

Writes ``benchmarks/results/unlearning_synthetic_tofu.md``. Run: ``python benchmarks/unlearning_synthetic_tofu.py``
(a few minutes on one core).
"""

from __future__ import annotations

import argparse
import copy
import logging
import warnings
from pathlib import Path

import torch

from litmix.datamodules.forget_retain import ForgetRetainDataModule
from litmix.functional.unlearning import sequence_correct, sequence_nll
from litmix.plugins.unlearning_module import UnlearningModule
from litmix.testing import make_trainer

RESULTS = Path(__file__).resolve().parent / "results" / "unlearning_synthetic_tofu.md"
ENTITIES, ANSWERS, FORGET = 100, 20, 10
BOS, SEP, VOCAB = ENTITIES + ANSWERS, ENTITIES + ANSWERS + 1, ENTITIES + ANSWERS + 2
METHODS = {
    "GA": {"forget_loss": "grad_ascent"},
    "NPO": {"forget_loss": "npo", "cache_reference": True},
    "GA+RT": {"forget_loss": "grad_diff"},
    "NPO+RT": {"forget_loss": "npo", "retain_loss": "nll", "cache_reference": True},
}


def task(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids ``[E, 6]`` and labels (prompt ``-100``)."""
    gen = torch.Generator().manual_seed(seed)
    answers = torch.randint(ENTITIES, ENTITIES + ANSWERS, (ENTITIES, 3), generator=gen)
    ids = torch.cat(
        [torch.full((ENTITIES, 1), BOS), torch.arange(ENTITIES)[:, None], torch.full((ENTITIES, 1), SEP), answers], 1
    )
    labels = ids.clone()
    labels[:, :3] = -100
    return ids, labels


def stats(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Token accuracy and mean answer-sum NLL."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    correct, count = sequence_correct(logits, labels)
    return float(correct.sum() / count.sum()), float(sequence_nll(logits, labels).mean())


def main(argv: list[str] | None = None) -> str:
    """Train, unlearn with each method, write the table."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    import transformers

    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    rows = []
    for seed in args.seeds:
        ids, labels = task(seed)
        torch.manual_seed(seed)
        config = transformers.GPT2Config(
            n_layer=1, n_head=4, n_embd=32, vocab_size=VOCAB, n_positions=8, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0
        )
        model = transformers.GPT2LMHeadModel(config)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(600):
            batch = torch.randint(0, ENTITIES, (64,), generator=gen)
            opt.zero_grad()
            model(input_ids=ids[batch], labels=labels[batch]).loss.backward()
            opt.step()
        model.eval()
        items = [
            {"input_ids": ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "labels": labels[i]}
            for i in range(ENTITIES)
        ]
        results = {"original": model}
        for name, kwargs in METHODS.items():
            dm = ForgetRetainDataModule.from_dataset(items, forget_indices=list(range(FORGET)), batch_size=8, seed=seed)
            module = UnlearningModule(copy.deepcopy(model), lr=3e-4, **kwargs)
            make_trainer(max_steps=args.steps, max_epochs=-1).fit(module, datamodule=dm)
            results[name] = module.model
        for name, net in results.items():
            fa, fn = stats(net, ids[:FORGET], labels[:FORGET])
            ra, rn = stats(net, ids[FORGET:], labels[FORGET:])
            rows.append(f"| {seed} | {name} | {fa:.3f} | {ra:.3f} | {fn:.2f} | {rn:.2f} |")
            print(rows[-1], flush=True)
    lines = [
        f"Synthetic TOFU-shaped task (reduced §0.8: {ENTITIES} entities, {FORGET} forgotten, 1-layer GPT-2 d 32), "
        f"{args.steps} unlearning steps, AdamW 3e-4, batch 8 (+ 8 retain).",
        "",
        "| seed | model | forget token acc | retain token acc | forget NLL (sum) | retain NLL (sum) |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    table = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)
    print(table)
    return table


if __name__ == "__main__":
    main()
