"""Public test utilities for litmix users and extension authors (cf. ``torch_geometric.testing``).

Tiny models and data, fit helpers, a checkpoint round-trip assertion and the plugin contract checks
(:func:`check_plugin`). Nothing here imports pytest.
"""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from litmix.data import IndexedDataset, split_batch

__all__ = [
    "AssertRanksAgree",
    "TinyClassifier",
    "TinyDataModule",
    "assert_fitted_state_roundtrip",
    "assert_resume_matches",
    "assert_state_roundtrip",
    "check_plugin",
    "check_plugin_ddp",
    "ddp_states",
    "fit_tiny",
    "make_trainer",
    "run_ddp",
]


class TinyClassifier(pl.LightningModule):
    """A two-layer MLP classifier for fast tests (8 inputs, 4 classes by default)."""

    def __init__(self, in_features: int = 8, hidden: int = 16, num_classes: int = 4, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
        self.lr = lr

    def forward(self, x: Tensor) -> Tensor:
        """Logits."""
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Cross-entropy loss."""
        x, y, _ = split_batch(batch)
        assert y is not None, "TinyClassifier needs (x, y) batches"
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """Accuracy."""
        x, y, _ = split_batch(batch)
        self.log("val/acc", (self(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam."""
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class TinyDataModule(pl.LightningDataModule):
    """Deterministic Gaussian blobs: ``n`` samples, 8 features, 4 classes, unshuffled batches.

    Items are ``(x, y, index)``, so callbacks that cache per-sample values can be tested.
    """

    def __init__(self, n: int = 64, in_features: int = 8, num_classes: int = 4, batch_size: int = 16) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        centers = torch.randn(num_classes, in_features, generator=gen) * 2
        y = torch.arange(n) % num_classes
        x = centers[y] + torch.randn(n, in_features, generator=gen)
        self.dataset = IndexedDataset(TensorDataset(x, y))
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        """Unshuffled, so that resumed runs see the same batches."""
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader:
        """The same samples."""
        return DataLoader(self.dataset, batch_size=self.batch_size)


def make_trainer(**kwargs: Any) -> pl.Trainer:
    """A quiet CPU Trainer: no logger, progress bar, model summary or sanity check unless overridden."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def fit_tiny(
    callbacks: list[Callback] | None = None,
    module: pl.LightningModule | None = None,
    datamodule: pl.LightningDataModule | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """Fit ``module`` (a :class:`TinyClassifier` by default) with ``callbacks`` and return the trainer."""
    trainer_kwargs.setdefault("max_steps", 2)
    trainer = make_trainer(callbacks=callbacks or [], **trainer_kwargs)
    trainer.fit(module or TinyClassifier(), datamodule=datamodule or TinyDataModule())
    return trainer


def run_ddp(
    callbacks: list[Callback],
    module: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    world_size: int = 2,
    strategy: str = "ddp_fork",
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """Fit on ``world_size`` CPU processes (gloo); returns the parent's trainer.

    Only weights, ``trainer.state`` and ``callback_metrics`` come back to the parent: assert inside hooks
    or log values and read ``trainer.callback_metrics``.
    """
    trainer_kwargs.setdefault("max_steps", 2)
    trainer = make_trainer(devices=world_size, strategy=strategy, callbacks=callbacks, **trainer_kwargs)
    trainer.fit(module, datamodule=datamodule)
    return trainer


def _tensors_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_tensors_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_tensors_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def assert_state_roundtrip(callback: Callback) -> None:
    """``load_state_dict(state_dict())`` on a copy reproduces the state exactly.

    Raises:
        AssertionError: if the state differs after the round trip.
    """
    state = callback.state_dict()
    fresh = copy.deepcopy(callback)
    fresh.load_state_dict(copy.deepcopy(state))
    if not _tensors_equal(state, fresh.state_dict()):
        raise AssertionError(f"{type(callback).__name__}: state_dict changed in a load_state_dict round trip")


def assert_resume_matches(
    make_callbacks: Callable[[], list[Callback]],
    make_module: Callable[[], pl.LightningModule],
    make_datamodule: Callable[[], pl.LightningDataModule],
    tmp_path: str | os.PathLike[str],
    max_epochs: int = 2,
    atol: float = 0.0,
) -> tuple[pl.Trainer, pl.Trainer]:
    """Fit ``max_epochs`` uninterrupted, then resume from the first epoch's checkpoint; weights must match.

    Returns:
        The uninterrupted and the resumed trainer.

    Raises:
        AssertionError: naming the first parameter or buffer that differs.
    """
    tmp = Path(tmp_path)
    pl.seed_everything(0, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    module_a = make_module()
    full = make_trainer(callbacks=[*make_callbacks(), ckpt], max_epochs=max_epochs, enable_checkpointing=True)
    full.fit(module_a, datamodule=make_datamodule())
    first = sorted((tmp / "ckpt").glob("epoch=0-*.ckpt"))
    if not first:
        raise AssertionError(f"no first-epoch checkpoint written in {tmp / 'ckpt'}")
    pl.seed_everything(0, verbose=False)
    module_b = make_module()
    ckpt_b = ModelCheckpoint(dirpath=tmp / "ckpt", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    resumed = make_trainer(callbacks=[*make_callbacks(), ckpt_b], max_epochs=max_epochs, enable_checkpointing=True)
    resumed.fit(module_b, datamodule=make_datamodule(), ckpt_path=str(first[0]))
    if resumed.global_step != full.global_step:
        raise AssertionError(f"resumed global_step {resumed.global_step} != uninterrupted {full.global_step}")
    state_a, state_b = module_a.state_dict(), module_b.state_dict()
    if state_a.keys() != state_b.keys():
        raise AssertionError(f"state_dict keys differ after resume: {set(state_a) ^ set(state_b)}")
    for key, value in state_a.items():
        if not _close(value, state_b[key], atol):
            raise AssertionError(f"{key!r} differs between the uninterrupted and the resumed run")
    callbacks_b = {cb.state_key: cb for cb in resumed.callbacks if _is_litmix(cb)}  # type: ignore[attr-defined]
    for cb in full.callbacks:  # type: ignore[attr-defined]
        other = callbacks_b.get(cb.state_key) if _is_litmix(cb) else None
        if other is None:
            continue
        measured = getattr(cb, "measured_state_keys", ())
        state_a = {k: v for k, v in cb.state_dict().items() if k not in measured}
        state_b = {k: v for k, v in other.state_dict().items() if k not in measured}
        if state_a.keys() != state_b.keys() or not _close(state_a, state_b, atol):
            raise AssertionError(f"callback {cb.state_key!r}: state differs between the uninterrupted and resumed run")
    return full, resumed


def _is_litmix(obj: Any) -> bool:
    """A litmix callback or DataModule (any subclass of the litmix bases, the user's own included)."""
    from litmix.base import LitmixCallback, LitmixDataModule

    return isinstance(obj, LitmixCallback | LitmixDataModule)


def _close(a: Any, b: Any, atol: float) -> bool:
    """Like :func:`_tensors_equal`, with ``atol`` for floating tensors and floats."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return bool(torch.allclose(a, b, atol=atol, rtol=0, equal_nan=True))
        return bool(torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], atol) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y, atol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= atol or a == b or (a != a and b != b)
    return bool(a == b)


def _example(cls: type) -> Any:
    from litmix.base import Example

    example = cls.example()  # type: ignore[attr-defined]
    if not isinstance(example, Example):
        raise AssertionError(
            f"{cls.__name__}.example() must return litmix.base.Example(module, datamodule, callbacks), "
            f"got {type(example).__name__}"
        )
    return example


def _subject(cls: type, example: Any) -> Any:
    """The instance of ``cls`` inside an example (a callback, the module or the datamodule)."""
    for obj in (*example.callbacks, example.module, example.datamodule):
        if isinstance(obj, cls):
            return obj
    raise AssertionError(f"{cls.__name__}.example() holds no instance of {cls.__name__}")


def _stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def assert_fitted_state_roundtrip(cls: type, subject: Any) -> None:
    """The *fitted* ``subject``'s state loads into a fresh ``cls.example()`` instance and reads back equal.

    Raises:
        AssertionError: if a fresh instance does not reproduce the fitted state.
    """
    if isinstance(subject, pl.LightningModule):
        state = {k: v.clone() for k, v in subject.state_dict().items()}
        fresh = _subject(cls, _example(cls))
        fresh.load_state_dict(state, strict=True)
        if not _tensors_equal(state, fresh.state_dict()):
            raise AssertionError(f"{cls.__name__}: the fitted module's state_dict changed in a strict round trip")
        return
    state = copy.deepcopy(subject.state_dict())
    fresh = _subject(cls, _example(cls))
    fresh.load_state_dict(copy.deepcopy(state))
    if not _tensors_equal(state, fresh.state_dict()):
        raise AssertionError(f"{cls.__name__}: a fresh instance does not reproduce the fitted state")


def check_plugin(cls: type, tmp_path: str | os.PathLike[str]) -> None:
    """Run the contract checks every registered Lightning plugin must pass.

    For a callback, a LightningModule or a DataModule: ``example()`` returns an :class:`~litmix.base.Example`;
    the plugin pickles; the example fits 2 steps; the *fitted* instance's state loads into a fresh instance and
    reads back equal; an interrupted and resumed run ends with the same weights as an uninterrupted one.

    Raises:
        AssertionError: when a contract check fails.
    """
    example = _example(cls)
    subject = _subject(cls, example)
    restored = pickle.loads(pickle.dumps(subject))
    if type(restored) is not cls:
        raise AssertionError(f"{cls.__name__} does not survive pickling")
    trainer = make_trainer(callbacks=list(example.callbacks), max_steps=2)
    trainer.fit(example.module, datamodule=example.datamodule)
    if trainer.global_step != 2:
        raise AssertionError(f"{cls.__name__}: the example fit ran {trainer.global_step} steps, expected 2")
    if _stateful(subject):
        assert_fitted_state_roundtrip(cls, subject)

    def part(i: int) -> Callable[[], Any]:
        return lambda: _example(cls)[i]

    assert_resume_matches(part(2), part(0), part(1), tmp_path, max_epochs=2, atol=1e-6)


def ddp_states(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """Everything that must agree across DDP ranks: module weights and the state of callbacks and data."""
    states: dict[str, Any] = {"module": {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}}
    for cb in trainer.callbacks:  # type: ignore[attr-defined]
        if _is_litmix(cb):
            states[f"callback:{cb.state_key}"] = copy.deepcopy(cb.state_dict())
    datamodule = getattr(trainer, "datamodule", None)
    if datamodule is not None and _is_litmix(datamodule):
        states["datamodule"] = copy.deepcopy(datamodule.state_dict())
    return states


class AssertRanksAgree(Callback):
    """Compares :func:`ddp_states` across ranks at the end of training; raises on the first difference.

    Use with :func:`run_ddp`: the assertion runs inside each rank, and a failure propagates to the parent.
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather every rank's states and compare them with rank 0's."""
        import torch.distributed as dist

        mine = ddp_states(trainer, pl_module)
        if not (dist.is_available() and dist.is_initialized()):
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, mine)
        for rank, other in enumerate(gathered[1:], start=1):
            for key in gathered[0]:
                if not _tensors_equal(gathered[0][key], other.get(key)):
                    raise AssertionError(f"rank {rank} disagrees with rank 0 on {key!r}")


def check_plugin_ddp(cls: type, world_size: int = 2) -> pl.Trainer:
    """Fit ``cls.example()`` on ``world_size`` CPU ranks; every rank's weights and plugin states must be equal.

    Raises:
        AssertionError: naming the first state on which a rank disagrees with rank 0.
    """
    example = _example(cls)
    return run_ddp(
        [*example.callbacks, AssertRanksAgree()],
        example.module,
        example.datamodule,
        world_size=world_size,
        strategy="ddp_fork_find_unused_parameters_true",
    )


class TinyTokenLM(pl.LightningModule):
    """A tiny GRU next-token model (for token-level plugins such as ``InferenceCost``).

    Trains on :class:`TinyDataModule` batches by quantising the float features to ``vocab_size`` tokens, or on
    integer token batches directly; ``forward(idx)`` returns logits ``(B, T, vocab_size)``.

    Example:
        >>> TinyTokenLM()(torch.zeros(2, 5, dtype=torch.long)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(self, vocab_size: int = 8, hidden: int = 16) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.emb = nn.Embedding(vocab_size, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, idx: Tensor) -> Tensor:
        """Logits ``(B, T, V)``."""
        out, _ = self.rnn(self.emb(idx))
        return self.head(out)  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Next-token cross-entropy on quantised features (or on integer tokens)."""
        x, _, _ = split_batch(batch)
        half = self.vocab_size / 2
        tokens = x.long() if not x.is_floating_point() else (x.clamp(-half + 0.01, half - 0.01) + half).long()
        logits = self(tokens[:, :-1])
        return nn.functional.cross_entropy(logits.reshape(-1, self.vocab_size), tokens[:, 1:].reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam."""
        return torch.optim.Adam(self.parameters(), lr=0.01)


__all__ += ["TinyTokenLM"]


class StubTrainer:
    """Just enough of a Trainer for a plugin's ``setup``: a ``strategy`` and a ``callbacks`` list.

    With :func:`sharded_strategy`, tests check on a CPU that plugins refuse FSDP/DeepSpeed at ``setup``.

    Example:
        >>> StubTrainer(object()).callbacks
        []
    """

    def __init__(self, strategy: Any, callbacks: list[Callback] | None = None) -> None:
        self.strategy = strategy
        self.callbacks = list(callbacks or [])


def sharded_strategy(cls: type) -> Any:
    """An instance of a sharded strategy class (``FSDPStrategy``, ``DeepSpeedStrategy``) built without ``__init__``.

    Their ``__init__`` needs a GPU or DeepSpeed; plugins decide with ``isinstance``, which the instance passes.

    Example:
        >>> from lightning.pytorch.strategies import FSDPStrategy
        >>> isinstance(sharded_strategy(FSDPStrategy), FSDPStrategy)
        True
    """
    return object.__new__(cls)


__all__ += ["StubTrainer", "sharded_strategy"]


class CollectingClassifier(TinyClassifier):
    """A :class:`TinyClassifier` with manual optimization that adds the loss terms itself.

    ``collects_loss_terms = True``: its ``training_step`` calls :func:`litmix.loss_terms.apply_loss_terms` on
    its task loss, then steps its optimizer, so loss-term callbacks are tested without wrapping the module.

    Example:
        >>> CollectingClassifier().automatic_optimization
        False
    """

    collects_loss_terms = True

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:  # type: ignore[override]
        """Task loss + loss terms, one manual optimizer step."""
        from litmix.loss_terms import apply_loss_terms

        opt = self.optimizers()
        loss = apply_loss_terms(self.trainer, self, batch, batch_idx, super().training_step(batch, batch_idx))
        opt.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        opt.step()  # type: ignore[union-attr]


def digits_split() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The digits data as ``(x, y, train_indices, val_indices)``: the split of ``DigitsDataModule(seed=0)``."""
    from litmix.datamodules.digits import DigitsDataModule

    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    x, y = dm.full_dataset.dataset.tensors
    return x, y, torch.tensor(dm.train_dataset.indices), torch.tensor(dm.val_dataset.indices)  # type: ignore[attr-defined]


_DIGITS_TEACHERS: dict[int, dict[str, Tensor]] = {}


def _digits_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 256), nn.ReLU(), nn.Dropout(0.2),
        nn.Linear(256, 10),
    )  # fmt: skip


def digits_teacher(seed: int) -> nn.Module:
    """The distillation catalogue's §0.8 teacher on :func:`digits_split`'s training part, in eval mode.

    MLP 64-256-256-10 with dropout 0.2, Adam (lr 1e-2, weight decay 5e-4), batch 128, 40 epochs, seeded by
    ``seed`` (the global RNG is left as it was). Trained once per seed and process; every call returns a fresh
    copy.
    """
    with torch.random.fork_rng(devices=[]):
        if seed not in _DIGITS_TEACHERS:
            x, y, train_idx, _ = digits_split()
            xt, yt = x[train_idx], y[train_idx]
            torch.manual_seed(seed)
            trained = _digits_mlp()
            opt = torch.optim.Adam(trained.parameters(), lr=1e-2, weight_decay=5e-4)
            for _ in range(40):
                perm = torch.randperm(len(xt))
                for i in range(0, len(xt), 128):
                    b = perm[i : i + 128]
                    opt.zero_grad()
                    nn.functional.cross_entropy(trained(xt[b]), yt[b]).backward()
                    opt.step()
            _DIGITS_TEACHERS[seed] = {k: v.detach().clone() for k, v in trained.state_dict().items()}
        teacher = _digits_mlp()
    teacher.load_state_dict(_DIGITS_TEACHERS[seed])
    return teacher.eval()


__all__ += ["CollectingClassifier", "digits_split", "digits_teacher"]


class CountingTeacher(nn.Module):
    """Wraps a teacher and counts its forward calls in ``calls`` (tests that a cached teacher is not run again).

    Example:
        >>> teacher = CountingTeacher(nn.Linear(2, 3))
        >>> _ = teacher(torch.ones(4, 2)), teacher(torch.ones(4, 2))
        >>> teacher.calls
        2
    """

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The wrapped teacher's output; one more call counted."""
        self.calls += 1
        return self.inner(*args, **kwargs)


__all__ += ["CountingTeacher"]
