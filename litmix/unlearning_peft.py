"""LoRA adapters (PEFT) for unlearning a Hugging Face causal LM, and a tiny GPT-2 to unlearn.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", https://arxiv.org/abs/2106.09685) trains a
low-rank update ``B A`` next to frozen weights. :class:`~litmix.plugins.UnlearningModule` accepts
``lora={"r": 8, "alpha": 16, "target_modules": [...], "dropout": 0.0}`` and wraps its model with
``peft.get_peft_model``: only the adapter parameters train, and the reference model of NPO-type losses is the same
model with its adapters disabled (no second copy in memory). :func:`merge_lora` returns the merged plain model,
which ``save_pretrained`` writes and ``from_pretrained`` reloads.

``peft`` is optional (``pip install 'litmix[peft]'``); it is imported only when LoRA is asked for.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from litmix.validation import check_float, check_int, check_type

__all__ = [
    "LORA_KEYS",
    "apply_lora",
    "check_lora",
    "default_target_modules",
    "merge_lora",
    "train_tofu_gpt2",
]

#: Keys a ``lora`` dict may hold.
LORA_KEYS = ("r", "alpha", "target_modules", "dropout")
#: Default target modules, first family present in the model wins: Llama-style attention, then GPT-2's Conv1D.
DEFAULT_TARGETS = (("q_proj", "v_proj"), ("c_attn", "c_proj"))


def _import_peft(owner: str) -> Any:
    try:
        import peft
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"{owner}(lora=...): LoRA needs the optional `peft` extra: pip install 'litmix[peft]'"
        ) from err
    return peft


def _adaptable(module: nn.Module) -> bool:
    """A layer LoRA can wrap: ``nn.Linear``, ``nn.Embedding`` or transformers' GPT-2 ``Conv1D``."""
    return isinstance(module, nn.Linear | nn.Embedding) or type(module).__name__ == "Conv1D"


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def default_target_modules(model: nn.Module, owner: str = "litmix") -> list[str]:
    """LoRA target module names for ``model``: ``q_proj``/``v_proj`` (Llama-style) or ``c_attn``/``c_proj`` (GPT-2).

    Raises:
        ValueError: when the model has neither family, naming ``lora`` and listing some adaptable layers.

    Example:
        >>> net = nn.ModuleDict({"q_proj": nn.Linear(2, 2), "v_proj": nn.Linear(2, 2), "o": nn.Linear(2, 2)})
        >>> default_target_modules(net)
        ['q_proj', 'v_proj']
    """
    names = [n for n, m in model.named_modules() if n and _adaptable(m)]
    for family in DEFAULT_TARGETS:
        found = [t for t in family if any(_matches(n, t) for n in names)]
        if found:
            return found
    raise ValueError(
        f"{owner}(lora=...): no default LoRA target modules ({', '.join(t for f in DEFAULT_TARGETS for t in f)}) in "
        f"{type(model).__name__}; give lora['target_modules'], e.g. some of {names[:8]}"
    )


def check_lora(owner: str, lora: Any) -> dict[str, Any] | None:
    """Validate a ``lora`` argument and fill its defaults (``alpha`` 2r, ``dropout`` 0, ``target_modules`` None).

    Raises:
        TypeError: ``lora`` not a dict, or a value of the wrong type, naming ``lora``.
        ValueError: unknown keys, ``r`` < 1, ``alpha`` <= 0, ``dropout`` outside [0, 1), empty ``target_modules``.

    Example:
        >>> check_lora("UnlearningModule", {"r": 4})
        {'r': 4, 'alpha': 8.0, 'target_modules': None, 'dropout': 0.0}
        >>> check_lora("M", {"rank": 4})
        Traceback (most recent call last):
        ...
        ValueError: M(lora={'rank': 4}): unknown key(s) ['rank']; lora accepts r, alpha, target_modules, dropout
    """
    if lora is None:
        return None
    check_type(owner, "lora", lora, dict)
    unknown = sorted(str(k) for k in lora if k not in LORA_KEYS)
    if unknown:
        raise ValueError(f"{owner}(lora={lora!r}): unknown key(s) {unknown}; lora accepts {', '.join(LORA_KEYS)}")
    r = check_int(owner, "lora['r']", lora.get("r", 8), low=1, high=1 << 16)
    alpha = check_float(owner, "lora['alpha']", lora.get("alpha", 2.0 * r), low=0.0, low_open=True)
    dropout = check_float(owner, "lora['dropout']", lora.get("dropout", 0.0), low=0.0, high=1.0, high_open=True)
    targets = lora.get("target_modules")
    if targets is not None:
        check_type(owner, "lora['target_modules']", targets, (list, tuple))
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise ValueError(
                f"{owner}(lora={lora!r}): lora['target_modules'] must be a non-empty list of module names (or None)"
            )
        targets = list(targets)
    return {"r": r, "alpha": float(alpha), "target_modules": targets, "dropout": float(dropout)}


def apply_lora(model: nn.Module, lora: dict[str, Any], owner: str = "litmix") -> nn.Module:
    """Wrap ``model`` in LoRA adapters (``peft.get_peft_model``, in place); only adapter parameters train.

    ``lora`` is a dict checked by :func:`check_lora`. Target modules must name adaptable layers of the model
    (``nn.Linear``, ``nn.Embedding``, GPT-2 ``Conv1D``), matched as peft does (the full name or its last parts).

    Raises:
        ValueError: a target module the model does not have (or that is not adaptable), naming ``lora``.
        ImportError: ``peft`` is missing (names the extra ``litmix[peft]``).

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> peft_net = apply_lora(net, {"r": 2, "target_modules": ["0"]})
        >>> sorted(n.split(".")[-3] for n, p in peft_net.named_parameters() if p.requires_grad)
        ['lora_A', 'lora_B']
    """
    cfg = check_lora(owner, lora)
    assert cfg is not None
    targets = cfg["target_modules"] or default_target_modules(model, owner)
    layers = {n: m for n, m in model.named_modules() if n}
    matched: list[nn.Module] = []
    for target in targets:
        hits = [m for n, m in layers.items() if _matches(n, target)]
        if not hits or not all(_adaptable(m) for m in hits):
            shown = [n for n, m in layers.items() if _adaptable(m)][:8]
            raise ValueError(
                f"{owner}(lora={lora!r}): target module {target!r} is not an adaptable layer (Linear, Embedding, "
                f"Conv1D) of {type(model).__name__}; some that are: {shown}"
            )
        matched.extend(hits)
    peft = _import_peft(owner)
    fan_in_fan_out = all(type(m).__name__ == "Conv1D" for m in matched)
    config = peft.LoraConfig(
        r=cfg["r"],
        lora_alpha=cfg["alpha"],
        lora_dropout=cfg["dropout"],
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
    )
    return peft.get_peft_model(model, config)  # type: ignore[no-any-return]


def is_peft_model(model: nn.Module) -> bool:
    """Whether ``model`` is a ``peft.PeftModel`` (False when peft is not installed)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return isinstance(model, PeftModel)


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain model with LoRA updates merged into its weights, as a new module (``model`` is unchanged).

    A model without adapters is returned as a deep copy. The result of a Hugging Face model is the
    ``PreTrainedModel`` itself: ``save_pretrained`` writes it and ``from_pretrained`` reloads it.

    Example:
        >>> net = apply_lora(nn.Sequential(nn.Linear(4, 2)), {"r": 2, "target_modules": ["0"]})
        >>> type(merge_lora(net)).__name__
        'Sequential'
    """
    merged = copy.deepcopy(model)
    if is_peft_model(merged):
        merged = merged.merge_and_unload()  # type: ignore[operator]
    return merged


class _LogitsOnly(nn.Module):
    """``model(input_ids).logits`` as a tensor, so the testbed's training loop trains a Hugging Face model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids).logits  # type: ignore[no-any-return]


def tiny_gpt2(vocab_size: int, n_positions: int, n_embd: int = 32, n_layer: int = 1, n_head: int = 4) -> Any:
    """A randomly initialised Hugging Face ``GPT2LMHeadModel`` without dropout (token ids 0 = bos = eos).

    Example:
        >>> tiny_gpt2(10, 8, n_embd=8, n_head=2).config.resid_pdrop
        0.0
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    sizes: dict[str, Any] = {"n_positions": n_positions, "n_embd": n_embd, "n_layer": n_layer, "n_head": n_head}
    config = GPT2Config(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0, **sizes)
    config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = 0.0  # no dropout: NPO's step 0 is (2/beta) log 2
    return GPT2LMHeadModel(config)


def train_tofu_gpt2(
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    seed: int = 0,
    n_entities: int = 100,
    n_embd: int = 32,
    n_layer: int = 1,
    n_head: int = 4,
    steps: int = 300,
    lr: float = 1e-2,
    batch: int = 64,
) -> Path:
    """Train a tiny GPT-2 (no dropout) on the synthetic TOFU task and ``save_pretrained`` it to ``out_dir``.

    The task (:func:`litmix.functional.synthetic_tofu.make_synthetic_tofu`, ``forget10``) is written to
    ``data_dir`` (a temporary folder when None, also saved as ``out_dir/tofu_data.txt``) and read by
    :class:`~litmix.datamodules.TOFUDataModule` with its word tokenizer and template ``"{question} :"``; the model
    is trained on forget + retain. Returns ``out_dir``; ``AutoModelForCausalLM.from_pretrained(out_dir)`` reloads it.
    """
    from litmix.datamodules.tofu import TOFUDataModule
    from litmix.functional.synthetic_tofu import make_synthetic_tofu
    from litmix.unlearning_testbed import TOKEN_KEYS, _train, lm_batch

    out = Path(out_dir)
    root = data_dir if data_dir is not None else tempfile.mkdtemp(prefix="litmix-tofu-gpt2-")
    root = make_synthetic_tofu(root, n_entities=n_entities, seed=seed)
    dm = TOFUDataModule(root, forget_split="forget10", tokenizer="word", prompt_template="{question} :")
    dm.setup("fit")
    pad = dm.tokenizer.pad_id
    forget, retain = lm_batch(dm.forget_dataset.items, pad), lm_batch(dm.retain_dataset.items, pad)
    full = {k: torch.cat([retain[k], forget[k]]) for k in TOKEN_KEYS}
    torch.manual_seed(seed)
    model = tiny_gpt2(dm.vocab_size, int(full["input_ids"].shape[1]), n_embd=n_embd, n_layer=n_layer, n_head=n_head)
    _train(_LogitsOnly(model), full, steps, lr, batch, seed)
    model.save_pretrained(str(out))
    (out / "tofu_data.txt").write_text(str(root))
    return out


@torch.no_grad()
def tofu_split_scores(model: nn.Module, data_dir: str | Path) -> dict[str, float]:
    """Mean per-item answer NLL (sum over tokens) and token accuracy of ``model`` on the forget / retain splits.

    ``data_dir`` holds the synthetic task written by :func:`train_tofu_gpt2` (read as it does). Returns
    ``forget_nll``, ``retain_nll``, ``forget_acc``, ``retain_acc``; the model is evaluated in eval mode and put back.
    """
    from litmix.datamodules.tofu import TOFUDataModule
    from litmix.functional.unlearning import sequence_correct, sequence_nll
    from litmix.models import output_logits
    from litmix.unlearning_testbed import lm_batch

    dm = TOFUDataModule(str(data_dir), forget_split="forget10", tokenizer="word", prompt_template="{question} :")
    dm.setup("fit")
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for split, ds in (("forget", dm.forget_dataset), ("retain", dm.retain_dataset)):
            batch = lm_batch(ds.items, dm.tokenizer.pad_id)
            logits = output_logits(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
            out[f"{split}_nll"] = float(sequence_nll(logits, batch["labels"], reduction="sum").mean())
            correct, count = sequence_correct(logits, batch["labels"])
            out[f"{split}_acc"] = float(correct.sum() / count.sum())
    finally:
        model.train(was_training)
    return out


__all__ += ["is_peft_model", "tiny_gpt2", "tofu_split_scores"]
