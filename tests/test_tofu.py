"""TOFUDataModule on the real offline TOFU files, and the synthetic TOFU-shaped task generator."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from litmix.datamodules.tofu import EVAL_SPLITS, TOFUDataModule
from litmix.functional.synthetic_tofu import SYNTHETIC_TOFU_FILES, make_synthetic_tofu, synthetic_tofu_root
from litmix.validation import MissingPathError

REPO = Path(__file__).resolve().parents[1]
TOFU = Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared" / "data")) / "tofu"
needs_tofu = pytest.mark.skipif(not (TOFU / "forget10.json").is_file(), reason="offline TOFU files not found")
BIG = 1024  # longer than any TOFU item in bytes: nothing is truncated


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def real_dm():
    dm = TOFUDataModule(str(TOFU), forget_split="forget10", max_length=BIG, eval_batch_size=16)
    dm.setup("fit")
    return dm


# ------------------------------------------------------------------------------------------ real files
@needs_tofu
def test_row_counts_equal_the_files(real_dm):
    for forget in ("forget01", "forget05"):
        dm = TOFUDataModule(str(TOFU), forget_split=forget, max_length=BIG)
        dm.setup("fit")
        pct = int(forget[-2:])
        assert len(dm.forget_dataset) == len(_lines(TOFU / f"{forget}.json")) == 40 * pct
        assert len(dm.retain_dataset) == len(_lines(TOFU / f"retain{100 - pct}.json")) == 4000 - 40 * pct
        assert len(dm.eval_dataset("holdout")) == len(_lines(TOFU / f"holdout{forget[-2:]}.json"))
    assert (len(real_dm.forget_dataset), len(real_dm.retain_dataset)) == (400, 3600)
    for split in EVAL_SPLITS[2:]:
        file = {"holdout": "holdout10", "forget_perturbed": "forget10_perturbed"}.get(split, split)
        assert len(real_dm.eval_dataset(split)) == len(_lines(TOFU / f"{file}.json")), split
    assert real_dm.val_loader_names == ["forget", "retain", "holdout"]
    assert len(real_dm.val_dataloader()) == 3


@needs_tofu
def test_label_masking_and_answers(real_dm):
    tok = real_dm.tokenizer
    rows = _lines(TOFU / "forget10.json")
    for i in (0, 7, 399):
        item = real_dm.forget_dataset[i]
        prompt = real_dm.prompt_template.format(question=rows[i]["question"])
        n_prompt = 1 + len(prompt.encode("utf-8"))  # bos + prompt bytes
        assert item["index"] == i
        assert (item["labels"][:n_prompt] == -100).all()  # no label on the question
        assert (item["labels"][n_prompt:] == item["input_ids"][n_prompt:]).all()
        assert tok.decode(item["input_ids"][:n_prompt]) == prompt
        assert tok.decode(item["labels"][item["labels"] >= 0]) == rows[i]["answer"]
        assert int(item["labels"][-1]) == tok.eos_id
    batch = next(iter(real_dm.eval_dataloader("forget")))
    pad = batch["attention_mask"] == 0
    assert pad.any()
    assert (batch["labels"][pad] == -100).all()
    assert (batch["input_ids"][pad] == tok.pad_id).all()
    assert batch["index"].tolist() == list(range(16))


@needs_tofu
def test_five_perturbed_answers_aligned_per_row(real_dm):
    tok = real_dm.tokenizer
    base = _lines(TOFU / "forget10.json")
    pert = _lines(TOFU / "forget10_perturbed.json")
    assert [r["question"] for r in pert] == [r["question"] for r in base]
    ds = real_dm.eval_dataset("forget_perturbed")
    assert real_dm.num_perturbed["forget10_perturbed"] == real_dm.num_perturbed["retain_perturbed"] == 5
    for i in (0, 123, 399):
        item = ds[i]
        assert item["perturbed"]["labels"].shape[0] == 5
        labels = item["perturbed"]["labels"]
        assert [tok.decode(row[row >= 0]) for row in labels] == pert[i]["perturbed_answer"]
        para = item["paraphrased"]["labels"]
        assert tok.decode(para[para >= 0]) == pert[i]["paraphrased_answer"]
        assert tok.decode(item["labels"][item["labels"] >= 0]) == base[i]["answer"]
        # the perturbed answers follow the row's own question
        prompt = 1 + len(real_dm.prompt_template.format(question=base[i]["question"]).encode())
        assert (item["perturbed"]["input_ids"][:, :prompt] == item["input_ids"][:prompt]).all()
    batch = next(iter(real_dm.eval_dataloader("real_authors_perturbed")))
    assert batch["perturbed"]["input_ids"].shape[:2] == (16, 3)  # TOFU: 3 wrong answers for real authors


@needs_tofu
def test_truncation_cuts_only_the_answer():
    dm = TOFUDataModule(str(TOFU), forget_split="forget01", max_length=320)
    dm.setup("fit")
    rows = _lines(TOFU / "retain99.json")
    items = dm.retain_dataset.items
    cut = [i for i, it in enumerate(items) if len(it["input_ids"]) == 320]
    assert max(len(it["input_ids"]) for it in items) == 320
    assert len(cut) > 10
    for i in [*cut[:40], *range(40)]:
        item = items[i]
        prompt = dm.prompt_template.format(question=rows[i]["question"])
        assert dm.tokenizer.decode(item["input_ids"][: 1 + len(prompt.encode())]) == prompt
        answer = bytes(int(t) for t in item["labels"] if 0 <= t < 256)  # byte tokens: a cut may split a character
        assert rows[i]["answer"].encode().startswith(answer)
        assert answer == rows[i]["answer"].encode() or i in cut
    n_answer = [int((items[i]["labels"] >= 0).sum()) for i in cut]  # answer bytes (+ eos when it fits)
    assert sum(n < len(rows[i]["answer"].encode()) for n, i in zip(n_answer, cut, strict=True)) > 10
    with pytest.raises(ValueError, match=r"max_length=100.*raise max_length"):
        TOFUDataModule(str(TOFU), forget_split="forget01", max_length=100).setup("fit")


@needs_tofu
def test_train_shards_disjoint_and_complete_under_two_ranks(real_dm):
    seen = []
    for rank in range(2):
        real_dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        idx = [i for b in real_dm.train_dataloader() for i in b["index"].tolist()]
        seen.append(idx)
    real_dm.trainer = None
    assert len(seen[0]) == len(seen[1]) == 200
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(400))
    batch = next(iter(real_dm.train_dataloader()))
    assert sorted(batch) == ["forget", "index", "retain"]
    # the forget side of pair i is forget item i
    i = int(batch["index"][0])
    row = batch["forget"]["input_ids"][0]
    assert torch.equal(row[: len(real_dm.forget_dataset[i]["input_ids"])], real_dm.forget_dataset[i]["input_ids"])


@needs_tofu
def test_unlearning_module_runs_two_steps_on_a_tiny_gpt2():
    transformers = pytest.importorskip("transformers")
    from litmix.plugins.unlearning_module import UnlearningModule
    from litmix.testing import make_trainer

    torch.manual_seed(0)
    dm = TOFUDataModule(
        str(TOFU), forget_split="forget01", max_length=256, batch_size=4, eval_batch_size=8,
        val_splits=["forget", "retain", "holdout", "real_authors"],
    )  # fmt: skip
    config = transformers.GPT2Config(
        vocab_size=dm.vocab_size, n_positions=256, n_layer=2, n_head=4, n_embd=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    before = [p.detach().clone() for p in model.parameters()]
    module = UnlearningModule(model, forget_loss="npo", retain_loss="nll", cache_reference=True, lr=1e-3)
    trainer = make_trainer(max_steps=2, limit_val_batches=1, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 2
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.validate(module, datamodule=dm)
    assert module.ref_nll_cache is not None
    assert module.ref_nll_cache.shape == (40,)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["val/forget_nll"])
    assert "val/forget_mia_auc" in metrics
    assert torch.isfinite(metrics["val/real_authors_acc"])  # a named loader beyond the four standard splits
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_idkdpo_alternate_answers_and_evaluator_loaders():
    """IdkDPO reads forget items' ``alternate`` answers; UnlearningEvaluator finds the named loaders."""
    from litmix.callbacks.unlearning_evaluator import UnlearningEvaluator
    from litmix.datamodules.tofu import _TinyCausalLM
    from litmix.plugins.unlearning_module import UnlearningModule
    from litmix.testing import make_trainer

    dm = TOFUDataModule(synthetic_tofu_root(), batch_size=4, max_length=48, alternate_answers=["I don't know."])
    dm.setup("fit")
    alt = dm.forget_dataset[3]["alternate"]
    assert dm.tokenizer.decode(alt["labels"][alt["labels"] >= 0]) == "I don't know."
    assert torch.equal(alt["input_ids"][:10], dm.forget_dataset[3]["input_ids"][:10])  # the same question
    torch.manual_seed(0)
    module = UnlearningModule(_TinyCausalLM(dm.vocab_size), forget_loss="idkdpo", retain_loss="nll", lr=1e-3)
    trainer = make_trainer(max_steps=2, limit_val_batches=1, callbacks=[UnlearningEvaluator(images=False)])
    trainer.fit(module, datamodule=dm)
    keys = {k for k in trainer.callback_metrics if k.startswith("unlearn/")}
    assert {"unlearn/forget_nll", "unlearn/retain_nll", "unlearn/holdout_nll", "unlearn/mia_auc"} <= keys


# ------------------------------------------------------------------------------------------ synthetic task
def test_synthetic_task_round_trip_and_determinism(tmp_path):
    a = make_synthetic_tofu(tmp_path / "a", n_entities=200, seed=3)
    b = make_synthetic_tofu(tmp_path / "b", n_entities=200, seed=3)
    c = make_synthetic_tofu(tmp_path / "c", n_entities=200, seed=4)
    for name in SYNTHETIC_TOFU_FILES:
        assert (Path(a) / f"{name}.json").read_bytes() == (Path(b) / f"{name}.json").read_bytes()
    assert (Path(a) / "full.json").read_bytes() != (Path(c) / "full.json").read_bytes()
    counts = {n: len(_lines(Path(a) / f"{n}.json")) for n in SYNTHETIC_TOFU_FILES}
    assert counts["forget10"] == 20
    assert counts["retain90"] == 180
    assert counts["forget01"] == 2
    assert counts["retain99"] == 198
    assert counts["holdout10"] == 20
    assert counts["forget05_perturbed"] == 10
    full = _lines(Path(a) / "full.json")
    assert _lines(Path(a) / "retain90.json") + _lines(Path(a) / "forget10.json") == full  # TOFU's layout
    pert = _lines(Path(a) / "forget10_perturbed.json")
    assert all(len(r["perturbed_answer"]) == 5 and r["answer"] not in r["perturbed_answer"] for r in pert)
    # the same keys as the real files
    if (TOFU / "forget10_perturbed.json").is_file():
        for name in ("forget10_perturbed", "real_authors", "world_facts_perturbed", "retain90"):
            assert _lines(TOFU / f"{name}.json")[0].keys() == _lines(Path(a) / f"{name}.json")[0].keys(), name
    dm = TOFUDataModule(a, forget_split="forget10", tokenizer="word", batch_size=8)
    dm.setup("fit")
    # [bos] Question: e017 Answer: a.. a.. a.. [eos]: the catalogue's prompt [BOS, entity, SEP] + 3 answer tokens
    item = dm.forget_dataset[0]
    assert len(item["input_ids"]) == 8
    assert (item["labels"] >= 0).sum() == 4
    assert dm.tokenizer.decode(item["labels"][item["labels"] >= 0]) == pert[0]["answer"]
    assert dm.vocab_size == 4 + 2 + 200 + 20 + 10 + 10 + 20  # specials, template words, entities, answers
    for split in EVAL_SPLITS:
        assert len(dm.eval_dataset(split)) > 0


def test_hugging_face_tokenizer_from_a_local_folder(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    root = synthetic_tofu_root()
    words = sorted(
        {w for n in ("full", "forget10") for r in _lines(Path(root) / f"{n}.json") for w in r["answer"].split()}
    )
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[BOS]", "[EOS]", "Question:", "Answer:", *words])}
    inner = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    inner.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=inner, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )
    fast.save_pretrained(tmp_path / "tok")
    dm = TOFUDataModule(root, tokenizer=str(tmp_path / "tok"))
    dm.setup("fit")
    item = dm.forget_dataset[0]
    assert int(item["input_ids"][0]) == 2
    assert int(item["input_ids"][-1]) == 3
    answer = _lines(Path(root) / "forget10.json")[0]["answer"]
    assert dm.tokenizer.decode(item["labels"][item["labels"] >= 0]) == answer
    assert dm.vocab_size == len(vocab)


# ------------------------------------------------------------------------------------------ bad arguments
def _copy_synthetic(tmp_path) -> Path:
    root = tmp_path / "tofu"
    shutil.copytree(synthetic_tofu_root(), root)
    return root


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"forget_split": "forget20"}, ValueError, "forget_split='forget20'"),
        ({"retain_split": "retain80"}, ValueError, "retain_split='retain80'"),
        ({"forget_split": "forget01", "retain_split": "retain90"}, ValueError, "complement"),
        ({"holdout_split": "holdout99"}, ValueError, "holdout_split='holdout99'"),
        ({"val_splits": ["forget", "bogus"]}, ValueError, "val_splits='bogus'"),
        ({"tokenizer": "gpt2"}, ValueError, "tokenizer='gpt2'.*nothing is downloaded"),
        ({"prompt_template": "Q: {q}"}, ValueError, "prompt_template"),
        ({"prompt_template": "no question"}, ValueError, "prompt_template"),
        ({"max_length": 1}, ValueError, "max_length"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"alternate_answers": []}, ValueError, "alternate_answers"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        TOFUDataModule(synthetic_tofu_root(), **kwargs)


def test_missing_root_and_files_are_named(tmp_path):
    with pytest.raises(MissingPathError, match="data_dir="):
        TOFUDataModule(str(tmp_path / "nowhere"))
    root = _copy_synthetic(tmp_path)
    (root / "holdout10.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_splits='holdout'.*holdout10\.json not found"):
        TOFUDataModule(str(root))
    TOFUDataModule(str(root), val_splits=["forget", "retain"]).setup("fit")  # not needed: fine
    (root / "forget05.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"forget_split='forget05'.*forget05\.json"):
        TOFUDataModule(str(root), forget_split="forget05", val_splits=["forget"])
    dm = TOFUDataModule(str(root), val_splits=["forget"])
    (root / "world_facts.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"split='world_facts'.*world_facts\.json"):
        dm.eval_dataloader("world_facts")
    with pytest.raises(ValueError, match="split='nope'"):
        dm.eval_dataloader("nope")


def test_empty_forget_set_and_forget_equal_to_all_data(tmp_path):
    root = _copy_synthetic(tmp_path)
    forget = (root / "forget10.json").read_text()
    (root / "forget10.json").write_text("")
    with pytest.raises(ValueError, match=r"forget_split='forget10'.*forget set is empty"):
        TOFUDataModule(str(root)).setup("fit")
    (root / "forget10.json").write_text(forget)
    (root / "retain90.json").write_text(forget)
    with pytest.raises(ValueError, match=r"retain_split='retain90'.*forget set covers all data"):
        TOFUDataModule(str(root)).setup("fit")
    (root / "retain90.json").write_text((root / "full.json").read_text())
    with pytest.raises(ValueError, match=r"10 forget rows are also in the retain split"):
        TOFUDataModule(str(root)).setup("fit")


def test_state_dict_refuses_other_splits():
    dm = TOFUDataModule(synthetic_tofu_root())
    state = dm.state_dict()
    assert state["forget_split"] == "forget10"
    assert state["version"] == 1
    TOFUDataModule(synthetic_tofu_root()).load_state_dict(state)
    with pytest.raises(ValueError, match=r"forget_split='forget05'.*forget_split='forget10'"):
        TOFUDataModule(synthetic_tofu_root(), forget_split="forget05").load_state_dict(state)


# ------------------------------------------------------------------------------------------ end to end (slow)
@pytest.mark.slow
def test_end_to_end_unlearning_on_the_synthetic_task(tmp_path):
    """Catalogue 0.8 task, read by TOFUDataModule: fine-tune, unlearn with GradDiff and NPO+RT, report numbers.

    Asserted (held on every seed run): the fine-tuned model knows forget and retain (token accuracy >= 0.99) and
    every unlearning run lowers forget accuracy by >= 0.2 while finite. The GradDiff vs NPO ordering is reported,
    not asserted (see the final report / catalogue U1).
    """
    transformers = pytest.importorskip("transformers")
    from litmix.functional.unlearning import sequence_nll
    from litmix.plugins.unlearning_module import UnlearningModule
    from litmix.testing import make_trainer

    torch.set_num_threads(1)
    root = make_synthetic_tofu(tmp_path / "task", n_entities=200, seed=0)
    dm = TOFUDataModule(str(root), forget_split="forget10", tokenizer="word", batch_size=20, eval_batch_size=256)
    dm.setup("fit")

    def batch(items):
        return {k: torch.stack([it[k] for it in items]) for k in ("input_ids", "attention_mask", "labels")}

    forget, retain = batch(dm.forget_dataset.items), batch(dm.retain_dataset.items)
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=dm.vocab_size, n_positions=16, n_layer=2, n_head=4, n_embd=64, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    model = transformers.GPT2LMHeadModel(config)
    data = {k: torch.cat([retain[k], forget[k]]) for k in retain}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(600):
        idx = torch.randint(len(data["input_ids"]), (64,), generator=gen)
        loss = model(input_ids=data["input_ids"][idx], labels=data["labels"][idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    @torch.no_grad()
    def accuracy(m, d):
        logits = m.eval()(input_ids=d["input_ids"]).logits
        labels = d["labels"][:, 1:]
        mask = labels != -100
        return float(((logits[:, :-1].argmax(-1) == labels) & mask).sum() / mask.sum()), sequence_nll(
            logits, d["labels"], reduction="mean"
        )

    before = accuracy(model, forget)[0]
    assert before >= 0.99
    assert accuracy(model, retain)[0] >= 0.99
    import copy

    for loss_name in ("grad_diff", "npo"):
        m = copy.deepcopy(model).train()
        module = UnlearningModule(
            m, forget_loss=loss_name, retain_loss="nll", lr=1e-3, cache_reference=loss_name == "npo"
        )
        trainer = make_trainer(max_steps=30, limit_val_batches=0, num_sanity_val_steps=0)
        trainer.fit(module, datamodule=dm)
        f_acc, f_nll = accuracy(m, forget)
        r_acc = accuracy(m, retain)[0]
        print(f"{loss_name}+RT: forget acc {f_acc:.3f} retain acc {r_acc:.3f} forget nll {float(f_nll.mean()):.3f}")
        assert torch.isfinite(f_nll).all()
        assert f_acc <= before - 0.2
