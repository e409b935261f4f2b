"""TOFU (fictitious-author QA) read from its offline JSON Lines files, as forget/retain LM batches."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from litmix.base import Example, LitmixDataModule
from litmix.datamodules.forget_retain import ForgetAnchoredSampler, ForgetRetainPairs
from litmix.functional.synthetic_tofu import synthetic_tofu_root
from litmix.registry import register
from litmix.validation import MissingPathError, check_choice, check_int, check_str, check_type

FORGET_SPLITS = ("forget01", "forget05", "forget10")
RETAIN_SPLITS = ("retain90", "retain95", "retain99")
HOLDOUT_SPLITS = ("holdout01", "holdout05", "holdout10")
#: Evaluation loaders :meth:`TOFUDataModule.eval_dataloader` serves (``*_perturbed``: with paraphrased and
#: perturbed answers aligned per row).
EVAL_SPLITS = (
    "forget",
    "retain",
    "holdout",
    "real_authors",
    "world_facts",
    "forget_perturbed",
    "retain_perturbed",
    "real_authors_perturbed",
    "world_facts_perturbed",
)
DEFAULT_VAL_SPLITS = ("forget", "retain", "holdout")
TOKENIZERS = ("byte", "word")
DEFAULT_TEMPLATE = "Question: {question}\nAnswer: "
PAD_VALUES: dict[str, int] = {"input_ids": 0, "attention_mask": 0, "labels": -100}  # input_ids: the tokenizer's pad


# ---------------------------------------------------------------------------------------------- tokenizers
class _ByteTokenizer:
    """UTF-8 bytes 0-255, then pad 256, bos 257, eos 258 (no download, any text)."""

    vocab_size, pad_id, bos_id, eos_id = 259, 256, 257, 258

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")


class _WordTokenizer:
    """Whitespace-separated words of every file the DataModule reads; pad 0, bos 1, eos 2, unk 3."""

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, words: Sequence[str]) -> None:
        self.itos = ["<pad>", "<bos>", "<eos>", "<unk>", *sorted(set(words))]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.vocab_size = len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, self.unk_id) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[int(i)] for i in ids if 4 <= int(i) < self.vocab_size)


class _HFTokenizer:
    """A Hugging Face tokenizer loaded from a local folder (``local_files_only``: never downloads)."""

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.bos_id = self.tok.bos_token_id
        self.eos_id = self.tok.eos_token_id
        pad = self.tok.pad_token_id
        self.pad_id = int(pad if pad is not None else (self.eos_id if self.eos_id is not None else 0))
        self.vocab_size = len(self.tok)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tok.decode([int(i) for i in ids], skip_special_tokens=True))


# ---------------------------------------------------------------------------------------------- data
def read_tofu_file(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a TOFU JSON Lines file (also accepts one JSON array).

    Example:
        >>> import os
        >>> rows = read_tofu_file(os.path.join(synthetic_tofu_root(), "forget10.json"))
        >>> len(rows), sorted(rows[0])
        (10, ['answer', 'question'])
    """
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if isinstance(r, dict)]


class _Items(Dataset):
    """Pre-tokenised items (dicts of tensors); ``with_index`` adds ``"index"`` = the position in the split."""

    def __init__(self, items: list[dict[str, Any]], with_index: bool = True) -> None:
        self.items, self.with_index = items, with_index

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.items[i]
        return {**item, "index": i} if self.with_index else item


class _Concat(Dataset):
    """Forget items then retain items, for :class:`ForgetRetainPairs` (which pairs positions of one dataset)."""

    def __init__(self, first: list[dict[str, Any]], second: list[dict[str, Any]]) -> None:
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.first[i] if i < len(self.first) else self.second[i - len(self.first)]


def _pad_stack(key: str, values: list[Tensor], pad_id: int) -> Tensor:
    fill = pad_id if key == "input_ids" else PAD_VALUES[key]
    length = max(v.shape[-1] for v in values)
    out = []
    for v in values:
        if v.shape[-1] < length:
            pad = torch.full((*v.shape[:-1], length - v.shape[-1]), fill, dtype=v.dtype)
            v = torch.cat([v, pad], dim=-1)
        out.append(v)
    return torch.stack(out)


class TOFUCollator:
    """Pads ``input_ids`` (``pad_id``), ``attention_mask`` (0) and ``labels`` (-100) to the batch's longest.

    Works on nested dicts (training pairs, paraphrased / perturbed answers); ints become a tensor.

    Example:
        >>> batch = TOFUCollator(0)([
        ...     {"input_ids": torch.tensor([5, 6]), "attention_mask": torch.ones(2, dtype=torch.long),
        ...      "labels": torch.tensor([-100, 6]), "index": 0},
        ...     {"input_ids": torch.tensor([7]), "attention_mask": torch.ones(1, dtype=torch.long),
        ...      "labels": torch.tensor([7]), "index": 1}])
        >>> batch["input_ids"].tolist(), batch["labels"].tolist(), batch["index"].tolist()
        ([[5, 6], [7, 0]], [[-100, 6], [7, -100]], [0, 1])
    """

    def __init__(self, pad_id: int) -> None:
        self.pad_id = int(pad_id)

    def __call__(self, items: list[Any]) -> Any:
        """Collate ``items`` (dicts recursed, token tensors padded, other tensors stacked, numbers tensorised)."""
        first = items[0]
        if isinstance(first, dict):
            out = {}
            for key in first:
                values = [it[key] for it in items]
                if key in PAD_VALUES and isinstance(values[0], Tensor):
                    out[key] = _pad_stack(key, values, self.pad_id)
                else:
                    out[key] = self(values)
            return out
        if isinstance(first, Tensor):
            return torch.stack(items)
        if isinstance(first, int | float):
            return torch.tensor(items)
        return items


class _TinyCausalLM(nn.Module):
    """Embedding -> GRU -> vocabulary logits: a causal LM for :meth:`TOFUDataModule.example` (no transformers)."""

    def __init__(self, vocab_size: int, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        hidden, _ = self.rnn(self.embed(input_ids))
        return self.head(hidden)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------------- DataModule
@register(
    "datamodule",
    "unlearning",
    paper="TOFU: A Task of Fictitious Unlearning for LLMs (https://arxiv.org/abs/2401.06121)",
)
class TOFUDataModule(LitmixDataModule):
    """TOFU's offline JSON Lines files as forget-anchored forget/retain LM batches and named evaluation loaders.

    TOFU (Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", https://arxiv.org/abs/2401.06121):
    200 fictitious authors x 20 question/answer pairs; a model fine-tuned on ``full`` must forget
    ``forget01``/``05``/``10`` (1 / 5 / 10 %) and keep its complement ``retain99``/``95``/``90``. Files are
    read from ``data_dir`` (the Hugging Face layout, e.g. ``../shared/data/tofu``); nothing is downloaded. The
    synthetic TOFU-shaped task of :func:`litmix.functional.synthetic_tofu.make_synthetic_tofu` has the same
    schema and is read unchanged.

    **Items.** A row becomes ``prompt_template.format(question=...)`` followed by the answer: ``input_ids`` =
    ``[bos] + prompt + answer + [eos]``, ``labels`` = ``input_ids`` with ``-100`` on the prompt (and bos) and
    on padding (Hugging Face shift: the model shifts them), ``attention_mask``. Sequences longer than
    ``max_length`` lose the end of their **answer** (the question is never cut). Batches are padded to their
    longest item (right padding) by :class:`TOFUCollator`.

    **Training** (the format :class:`~litmix.plugins.UnlearningModule` consumes): items
    ``{"forget": {...}, "retain": {...}, "index": i}`` with ``i`` the position in the forget split; one epoch =
    one pass over the forget split (TOFU / open-unlearning), each forget item paired with the retain item
    ``perm(seed, epoch)[i mod |D_r|]`` (the same on any number of ranks, see
    :class:`~litmix.datamodules.forget_retain.ForgetRetainPairs`); sharded over DDP ranks by a
    ``DistributedSampler``. With ``alternate_answers`` (e.g. ``["I don't know."]``) forget items also carry
    ``"alternate"``: the question with one of these answers (IdkDPO).

    **Evaluation** (:meth:`eval_dataloader`, unshuffled, items carry ``"index"`` = position in the split):
    ``forget``, ``retain`` (optionally a seeded subset of ``eval_retain_size``), ``holdout`` (never trained),
    ``real_authors``, ``world_facts``, and the perturbed variants ``forget_perturbed``, ``retain_perturbed``,
    ``real_authors_perturbed``, ``world_facts_perturbed``, whose items add ``"paraphrased"`` (the question
    with the paraphrased answer; the answer itself where the file has none) and ``"perturbed"`` (the ``K``
    wrong answers, tensors ``[K, L]`` per item, ``[B, K, L]`` per batch, aligned with the row: TOFU has
    ``K = 5`` for forget/retain and 3 for real authors / world facts). ``val_dataloader()`` returns the
    loaders named in :attr:`val_loader_names` (``val_splits``).

    Args:
        data_dir: folder holding the TOFU ``*.json`` files (e.g. ``../shared/data/tofu``).
        forget_split: ``"forget01"``, ``"forget05"`` or ``"forget10"``.
        retain_split: ``"retain99"``, ``"retain95"`` or ``"retain90"``; None = the forget split's complement.
        holdout_split: ``"holdout01"``, ``"holdout05"`` or ``"holdout10"``; None = the forget split's size.
        val_splits: names (out of :data:`EVAL_SPLITS`) of the loaders ``val_dataloader()`` returns; None =
            ``["forget", "retain", "holdout"]`` (the splits ``UnlearningModule`` evaluates).
        tokenizer: ``"byte"`` (UTF-8 bytes, vocabulary 259), ``"word"`` (whitespace words of the files read,
            vocabulary built in order) or the path of a local folder holding a Hugging Face tokenizer
            (``AutoTokenizer.from_pretrained(path, local_files_only=True)``).
        prompt_template: the prompt; must contain ``{question}``.
        max_length: longest sequence in tokens (prompt + answer); longer answers are cut.
        batch_size: training pairs per batch.
        eval_batch_size: items per evaluation batch.
        eval_retain_size: evaluate ``retain`` on a seeded subset of this many items (all when None).
        alternate_answers: "I don't know"-style answers for IdkDPO (item ``i`` gets answer ``i mod len``).
        num_workers: DataLoader workers.
        seed: seed of the shuffling, the retain pairing and the ``eval_retain_size`` subset.

    Raises:
        TypeError: an argument of the wrong type, naming it.
        ValueError: an unknown split (``forget_split``, ``retain_split``, ``holdout_split``, ``val_splits``), a
            ``retain_split`` that is not the complement's kind, a template without ``{question}``, sizes below 1,
            a tokenizer that is neither built in nor a local folder; in :meth:`setup` (before any training):
            an empty forget file, forget rows that are also in the retain split (``"the forget set covers all
            data"`` when nothing else is left), a question longer than ``max_length``, perturbed rows whose
            number of wrong answers differs.
        FileNotFoundError: (also a ``ValueError``) a missing ``data_dir`` or file, naming the argument and file.

    Example:
        >>> dm = TOFUDataModule(synthetic_tofu_root(), forget_split="forget10", batch_size=4)
        >>> dm.setup("fit")
        >>> len(dm.forget_dataset), len(dm.retain_dataset), dm.val_loader_names
        (10, 90, ['forget', 'retain', 'holdout'])
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), sorted(batch["forget"]), batch["index"].shape
        (['forget', 'index', 'retain'], ['attention_mask', 'input_ids', 'labels'], torch.Size([4]))
        >>> item = dm.eval_dataset("forget_perturbed")[0]
        >>> item["perturbed"]["input_ids"].shape[0], dm.tokenizer.decode(item["labels"][item["labels"] >= 0])
        (5, 'a00 a16 a19')
    """

    def __init__(
        self,
        data_dir: str,
        forget_split: str = "forget10",
        retain_split: str | None = None,
        holdout_split: str | None = None,
        val_splits: list[str] | None = None,
        tokenizer: str = "byte",
        prompt_template: str = DEFAULT_TEMPLATE,
        max_length: int = 512,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        eval_retain_size: int | None = None,
        alternate_answers: list[str] | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_type(name, "data_dir", data_dir, (str, os.PathLike))
        if not str(data_dir).strip():
            raise ValueError(f"{name}(data_dir={data_dir!r}): data_dir must be a non-empty path")
        check_choice(name, "forget_split", forget_split, FORGET_SPLITS)
        percent = forget_split[-2:]
        if retain_split is not None:
            check_choice(name, "retain_split", retain_split, RETAIN_SPLITS)
        if holdout_split is not None:
            check_choice(name, "holdout_split", holdout_split, HOLDOUT_SPLITS)
        retain_split = retain_split or f"retain{100 - int(percent)}"
        holdout_split = holdout_split or f"holdout{percent}"
        if int(retain_split[-2:]) + int(percent) != 100:
            raise ValueError(
                f"{name}(forget_split={forget_split!r}, retain_split={retain_split!r}): the retain split must be "
                f"the forget split's complement, retain{100 - int(percent)} (or None)"
            )
        check_type(name, "val_splits", val_splits, (list, tuple), allow_none=True)
        if val_splits is not None:
            if not val_splits:
                raise ValueError(f"{name}(val_splits=[]): give at least one of {EVAL_SPLITS} (or None)")
            for split in val_splits:
                check_choice(name, "val_splits", split, EVAL_SPLITS)
        check_str(name, "tokenizer", tokenizer, allow_empty=False)
        if tokenizer not in TOKENIZERS and not Path(tokenizer).expanduser().is_dir():
            raise ValueError(
                f"{name}(tokenizer={tokenizer!r}): tokenizer must be one of {TOKENIZERS} or a local folder holding "
                "a Hugging Face tokenizer (nothing is downloaded)"
            )
        check_str(name, "prompt_template", prompt_template)
        if "{question}" not in prompt_template:
            raise ValueError(f"{name}(prompt_template={prompt_template!r}): the template must contain '{{question}}'")
        try:
            prompt_template.format(question="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"{name}(prompt_template={prompt_template!r}): only the field {{question}} is allowed ({err!r}); "
                "write literal braces as {{ and }}"
            ) from err
        check_int(name, "max_length", max_length, low=2, high=1_000_000)
        check_int(name, "batch_size", batch_size, low=1)
        check_int(name, "eval_batch_size", eval_batch_size, low=1)
        check_int(name, "eval_retain_size", eval_retain_size, low=1, allow_none=True)
        check_type(name, "alternate_answers", alternate_answers, (list, tuple), allow_none=True)
        if alternate_answers is not None:
            if not alternate_answers:
                raise ValueError(f"{name}(alternate_answers=[]): give at least one answer (or None)")
            for ans in alternate_answers:
                check_str(name, "alternate_answers", ans, allow_empty=False)
        check_int(name, "num_workers", num_workers, low=0)
        check_int(name, "seed", seed, low=0, high=2**32 - 1)
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise MissingPathError(
                f"{name}(data_dir={str(data_dir)!r}): data_dir: no such folder (the TOFU *.json files)"
            )
        self.data_dir = str(data_dir)
        self.forget_split, self.retain_split, self.holdout_split = forget_split, retain_split, holdout_split
        self.val_loader_names: list[str] = list(val_splits or DEFAULT_VAL_SPLITS)
        for arg, file in (("forget_split", forget_split), ("retain_split", retain_split)):
            self._path(file, arg, file)  # a missing file is an error now, before any compute
        for split in self.val_loader_names:
            for file in self._files(split):
                self._path(file, "val_splits", split)
        self.tokenizer_spec, self.prompt_template, self.max_length = tokenizer, prompt_template, max_length
        self.batch_size, self.eval_batch_size, self.eval_retain_size = batch_size, eval_batch_size, eval_retain_size
        self.alternate_answers = list(alternate_answers) if alternate_answers is not None else None
        self.num_workers, self.seed = num_workers, seed
        self._tokenizer: Any = None
        self.eval_datasets: dict[str, Dataset] = {}
        #: Wrong answers per row of each loaded ``*_perturbed`` split.
        self.num_perturbed: dict[str, int] = {}
        self.save_hyperparameters()

    # ------------------------------------------------------------------ files and tokenizer
    def _files(self, split: str) -> list[str]:
        """File names (without ``.json``) behind an evaluation split."""
        return {
            "forget": [self.forget_split],
            "retain": [self.retain_split],
            "holdout": [self.holdout_split],
            "forget_perturbed": [f"{self.forget_split}_perturbed"],
        }.get(split, [split])

    def _path(self, file: str, arg: str, value: str) -> Path:
        path = Path(self.data_dir).expanduser() / f"{file}.json"
        if not path.is_file():
            raise MissingPathError(
                f"{type(self).__name__}(data_dir={self.data_dir!r}, {arg}={value!r}): {path.name} not found in "
                "data_dir (TOFU's Hugging Face files, or make_synthetic_tofu's)"
            )
        return path

    def _rows(self, file: str, arg: str = "val_splits", value: str | None = None) -> list[dict[str, Any]]:
        return read_tofu_file(self._path(file, arg, value or file))

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (built on first use): ``encode``, ``decode``, ``pad_id``, ``bos_id``, ``eos_id``."""
        if self._tokenizer is None:
            if self.tokenizer_spec == "byte":
                self._tokenizer = _ByteTokenizer()
            elif self.tokenizer_spec == "word":
                self._tokenizer = _WordTokenizer(self._vocabulary_words())
            else:
                try:
                    self._tokenizer = _HFTokenizer(str(Path(self.tokenizer_spec).expanduser()))
                except Exception as err:
                    raise ValueError(
                        f"{type(self).__name__}(tokenizer={self.tokenizer_spec!r}): cannot load a Hugging Face "
                        f"tokenizer from this folder ({type(err).__name__}: {err})"
                    ) from err
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        """Vocabulary size of :attr:`tokenizer` (for building the model)."""
        return int(self.tokenizer.vocab_size)

    def _vocabulary_words(self) -> list[str]:
        words = set(self.prompt_template.replace("{question}", " ").split())
        for ans in self.alternate_answers or []:
            words.update(ans.split())
        folder = Path(self.data_dir).expanduser()
        for file in sorted(folder.glob("*.json")):
            for row in read_tofu_file(file):
                for value in row.values():
                    for text in value if isinstance(value, list) else [value]:
                        if isinstance(text, str):
                            words.update(text.split())
        return sorted(words)

    def _encode(self, question: str, answer: str, where: str) -> dict[str, Tensor]:
        tok = self.tokenizer
        prompt = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(
            self.prompt_template.format(question=question)
        )
        if len(prompt) >= self.max_length:
            raise ValueError(
                f"{type(self).__name__}(max_length={self.max_length}): the question of {where} takes "
                f"{len(prompt)} tokens, leaving no room for the answer; raise max_length"
            )
        target = tok.encode(answer) + ([tok.eos_id] if tok.eos_id is not None else [])
        target = target[: self.max_length - len(prompt)]
        ids = torch.tensor(prompt + target, dtype=torch.long)
        labels = ids.clone()
        labels[: len(prompt)] = -100
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}

    def _encode_many(self, question: str, answers: list[str], where: str) -> dict[str, Tensor]:
        parts = [self._encode(question, a, where) for a in answers]
        return {k: _pad_stack(k, [p[k] for p in parts], self.tokenizer.pad_id) for k in parts[0]}

    def _plain_items(self, rows: list[dict[str, Any]], file: str) -> list[dict[str, Any]]:
        items = []
        for i, row in enumerate(rows):
            if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
                raise ValueError(f"{type(self).__name__}: row {i} of {file}.json lacks a 'question' or 'answer' string")
            items.append(self._encode(row["question"], row["answer"], f"row {i} of {file}.json"))
        return items

    def _perturbed_items(self, rows: list[dict[str, Any]], file: str) -> list[dict[str, Any]]:
        items = self._plain_items(rows, file)
        counts = set()
        for i, (row, item) in enumerate(zip(rows, items, strict=True)):
            wrong = row.get("perturbed_answer")
            if not isinstance(wrong, list) or not wrong or not all(isinstance(w, str) for w in wrong):
                raise ValueError(
                    f"{type(self).__name__}: row {i} of {file}.json has no 'perturbed_answer' list of strings"
                )
            counts.add(len(wrong))
            if len(counts) > 1:
                raise ValueError(
                    f"{type(self).__name__}: rows of {file}.json have {sorted(counts)} perturbed answers; every row "
                    "needs the same number"
                )
            para = row.get("paraphrased_answer", row["answer"])
            where = f"row {i} of {file}.json"
            item["paraphrased"] = self._encode(row["question"], para if isinstance(para, str) else row["answer"], where)
            item["perturbed"] = self._encode_many(row["question"], wrong, where)
        self.num_perturbed[file] = counts.pop() if counts else 0
        return items

    # ------------------------------------------------------------------ setup and loaders
    def setup(self, stage: str | None = None) -> None:
        """Read and tokenise the forget/retain splits and the :attr:`val_loader_names` loaders (idempotent)."""
        if not hasattr(self, "train_pairs"):
            self._setup_train()
        for split in self.val_loader_names:
            self.eval_dataset(split)

    def _setup_train(self) -> None:
        name = type(self).__name__
        forget_rows = self._rows(self.forget_split, "forget_split")
        if not forget_rows:
            raise ValueError(
                f"{name}(forget_split={self.forget_split!r}): the forget set is empty ({self.forget_split}.json in "
                f"{self.data_dir} has no rows)"
            )
        retain_all = self._rows(self.retain_split, "retain_split")
        forget_keys = {(r.get("question"), r.get("answer")) for r in forget_rows}
        retain_rows = [r for r in retain_all if (r.get("question"), r.get("answer")) not in forget_keys]
        if not retain_rows:
            raise ValueError(
                f"{name}(forget_split={self.forget_split!r}, retain_split={self.retain_split!r}): the forget set "
                f"covers all data ({len(retain_all)} retain rows, none outside the forget set); nothing is retained"
            )
        if len(retain_rows) < len(retain_all):
            raise ValueError(
                f"{name}(forget_split={self.forget_split!r}, retain_split={self.retain_split!r}): "
                f"{len(retain_all) - len(retain_rows)} forget rows are also in the retain split; they must be disjoint"
            )
        forget_items = self._plain_items(forget_rows, self.forget_split)
        if self.alternate_answers is not None:
            for i, (row, item) in enumerate(zip(forget_rows, forget_items, strict=True)):
                alt = self.alternate_answers[i % len(self.alternate_answers)]
                item["alternate"] = self._encode(row["question"], alt, f"row {i} of {self.forget_split}.json")
        retain_items = self._plain_items(retain_rows, self.retain_split)
        self.forget_dataset = _Items(forget_items)
        self.retain_dataset = _Items(retain_items)
        self.train_pairs = ForgetRetainPairs(
            _Concat(forget_items, retain_items),
            range(len(forget_items)),
            range(len(forget_items), len(forget_items) + len(retain_items)),
            seed=self.seed,
        )

    def eval_dataset(self, split: str) -> Dataset:
        """The evaluation dataset ``split`` (one of :data:`EVAL_SPLITS`), read and tokenised on first use."""
        check_choice(type(self).__name__, "split", split, EVAL_SPLITS)
        if split in self.eval_datasets:
            return self.eval_datasets[split]
        if split in ("forget", "retain"):
            if not hasattr(self, "train_pairs"):
                self._setup_train()
            ds: Dataset = self.forget_dataset if split == "forget" else self.retain_dataset
            if split == "retain" and self.eval_retain_size is not None and self.eval_retain_size < len(ds):  # type: ignore[arg-type]
                gen = torch.Generator().manual_seed(self.seed + 1)
                pick = torch.randperm(len(ds), generator=gen)[: self.eval_retain_size].sort().values  # type: ignore[arg-type]
                ds = _Items([self.retain_dataset.items[int(p)] for p in pick])
        else:
            (file,) = self._files(split)
            rows = self._rows(file, "split", split)
            if not rows:
                raise ValueError(f"{type(self).__name__}: evaluation split {split!r} ({file}.json) has no rows")
            items = self._perturbed_items(rows, file) if split.endswith("_perturbed") else self._plain_items(rows, file)
            ds = _Items(items)
        self.eval_datasets[split] = ds
        return ds

    def train_dataloader(self) -> DataLoader:
        """Forget-anchored ``{"forget", "retain", "index"}`` pairs; one epoch = one pass over the forget split."""
        if not hasattr(self, "train_pairs"):
            self._setup_train()
        world, rank = 1, 0
        if self.trainer is not None:
            world, rank = int(self.trainer.world_size), int(self.trainer.global_rank)
        sampler = ForgetAnchoredSampler(
            self.train_pairs, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=False
        )
        return DataLoader(
            self.train_pairs,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=TOFUCollator(self.tokenizer.pad_id),
        )

    def eval_dataloader(self, split: str) -> DataLoader:
        """An unshuffled loader over one evaluation split (see :data:`EVAL_SPLITS`)."""
        return DataLoader(
            self.eval_dataset(split),
            batch_size=self.eval_batch_size,
            num_workers=self.num_workers,
            collate_fn=TOFUCollator(self.tokenizer.pad_id),
        )

    def forget_dataloader(self) -> DataLoader:
        """The forget split, unshuffled, items carrying their forget position (reference caches)."""
        return self.eval_dataloader("forget")

    def val_dataloader(self) -> list[DataLoader]:
        """Loaders in the order of :attr:`val_loader_names`."""
        return [self.eval_dataloader(s) for s in self.val_loader_names]

    def test_dataloader(self) -> list[DataLoader]:
        """The same loaders as :meth:`val_dataloader`."""
        return self.val_dataloader()

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Version plus the split configuration (a resume with other splits is refused)."""
        return {
            **super().state_dict(),
            "forget_split": self.forget_split,
            "retain_split": self.retain_split,
            "seed": self.seed,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check the version and that the checkpoint used the same forget/retain splits and seed."""
        super().load_state_dict(state_dict)
        for key in ("forget_split", "retain_split", "seed"):
            if key in state_dict and state_dict[key] != getattr(self, key):
                raise ValueError(
                    f"{type(self).__name__}({key}={getattr(self, key)!r}): the checkpoint was written with "
                    f"{key}={state_dict[key]!r}; resume with the same data"
                )

    @classmethod
    def example(cls) -> Example:
        """NPO+RT on a GRU LM over the synthetic TOFU-shaped task (100 entities, forget10 = 10, byte tokens)."""
        from litmix.plugins.unlearning_module import UnlearningModule

        dm = cls(synthetic_tofu_root(), forget_split="forget10", max_length=48, batch_size=4, eval_batch_size=16)
        gen = torch.Generator().manual_seed(0)
        model = _TinyCausalLM(dm.vocab_size, 16)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        module = UnlearningModule(model, forget_loss="npo", retain_loss="nll", cache_reference=True, lr=1e-3)
        return Example(module, dm, [])
