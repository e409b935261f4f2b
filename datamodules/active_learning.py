"""Active learning on scikit-learn's digits with a random, uncertainty or learned acquisition strategy."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset, TensorDataset

from litmix.active_learning_policy import ActiveLearningPolicy
from litmix.base import Example, LitmixDataModule
from litmix.data import EpochShuffleSampler, IndexedDataset, stratified_split
from litmix.functional.active_learning import STRATEGIES, acquire_indices, rbf_similarity
from litmix.models import output_logits
from litmix.registry import register
from litmix.validation import check_choice, check_float, check_int, check_path, check_type

__all__ = ["ActiveLearningDataModule"]

PAPER = "Learning to Actively Learn: A Robust Approach (https://arxiv.org/abs/2010.15382)"
MAX_SEED = 2**32 - 1
DIGITS_CLASSES = 10


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@register("datamodule", "data", paper=PAPER)
class ActiveLearningDataModule(LitmixDataModule):
    """Pool-based active learning on digits with a learned acquisition policy (Zhang, Jain & Jamieson).

    "Learning to Actively Learn: A Robust Approach" (https://arxiv.org/abs/2010.15382) learns the acquisition
    policy itself on source problems and applies it to new ones. This DataModule holds a *labelled* and an
    *unlabelled* pool (the training split of scikit-learn's digits, restricted to ``classes``; labels are the
    positions in ``classes``). The training loader serves only the labelled samples (shuffled by ``(seed,
    epoch)``; Lightning shards them under DDP). Each acquisition round (:meth:`acquire`) adds ``acquire_size``
    pool samples chosen by ``strategy``:

    * ``"random"``: uniformly (seeded by ``(seed, round)``);
    * ``"uncertainty"``: smallest margin between the model's two most probable classes;
    * ``"learned"``: highest score of an :class:`~litmix.active_learning_policy.ActiveLearningPolicy`
      (trained on source tasks with :meth:`ActiveLearningPolicy.fit`) on the per-candidate state features
      (the model's uncertainty, pool density and distance to the labelled set in pixel space, label balance,
      budget spent), one pick at a time.

    With ``epochs_per_round`` set, a round runs automatically at the start of every ``epochs_per_round``-th
    epoch with the LightningModule being trained (the DataModule sets the Trainer's
    ``reload_dataloaders_every_n_epochs`` to ``epochs_per_round`` when it is 0, so that the grown labelled set
    is served); otherwise call :meth:`acquire` yourself between fits. Under DDP every rank must call
    :meth:`acquire` (the automatic rounds do): rank 0 decides and broadcasts, so the ranks hold one labelled
    set. The labelled positions (in acquisition order), the unlabelled ones and the round count are the
    checkpointed state, so a resumed run continues with the same pools.

    Args:
        strategy: ``"random"``, ``"uncertainty"`` or ``"learned"``.
        policy: the policy of ``"learned"``: an :class:`ActiveLearningPolicy` or the path of one saved with
            :meth:`ActiveLearningPolicy.save`; ``None`` for the other strategies.
        classes: the digit classes used (distinct, in 0..9, at least 2); all ten when ``None``.
        initial_size: labelled samples before the first round (random, seeded), >= 1.
        acquire_size: samples added per round, >= 1.
        max_labelled: the labelling budget (rounds stop there), >= ``initial_size``; the pool size when ``None``.
        epochs_per_round: run a round every that many epochs (>= 1), or ``None`` for manual rounds only.
        batch_size: training batch size, >= 1.
        val_fraction: share of every class held out for validation, in (0, 1).
        seed: seed of the split, the initial set, random acquisition and the shuffling, in [0, 2**32 - 1].

    Raises:
        TypeError: for an argument of the wrong type, naming it.
        ValueError: for a value out of range, ``"learned"`` without a policy, a missing or invalid policy file,
            duplicate or out-of-range classes, ``max_labelled < initial_size``, or (at ``setup``) an initial set
            or budget larger than the pool.

    Example:
        >>> from litmix.testing import TinyClassifier
        >>> dm = ActiveLearningDataModule(strategy="uncertainty", classes=[3, 8], initial_size=6, acquire_size=4)
        >>> dm.setup("fit")
        >>> len(dm.labelled), len(dm.train_dataloader().dataset)
        (6, 6)
        >>> new = dm.acquire(TinyClassifier(in_features=64, num_classes=2))
        >>> len(new), len(dm.labelled), dm.rounds
        (4, 10, 1)
    """

    def __init__(
        self,
        strategy: Literal["random", "uncertainty", "learned"] = "uncertainty",
        policy: ActiveLearningPolicy | str | None = None,
        classes: list[int] | None = None,
        initial_size: int = 10,
        acquire_size: int = 10,
        max_labelled: int | None = None,
        epochs_per_round: int | None = 1,
        batch_size: int = 32,
        val_fraction: float = 0.3,
        seed: int = 0,
    ) -> None:
        name = type(self).__name__
        strategy = check_choice(name, "strategy", strategy, STRATEGIES)
        check_type(name, "policy", policy, (ActiveLearningPolicy, str), allow_none=True)
        if classes is not None:
            check_type(name, "classes", classes, (list, tuple))
            classes = [check_int(name, "classes", c, low=0, high=DIGITS_CLASSES - 1) for c in classes]
            if len(set(classes)) != len(classes) or len(classes) < 2:
                raise ValueError(f"{name}(classes={classes!r}): classes must be at least 2 distinct digits")
        initial_size = check_int(name, "initial_size", initial_size, low=1)
        acquire_size = check_int(name, "acquire_size", acquire_size, low=1)
        max_labelled = check_int(name, "max_labelled", max_labelled, low=1, allow_none=True)
        if max_labelled is not None and max_labelled < initial_size:
            raise ValueError(
                f"{name}(max_labelled={max_labelled}): max_labelled must be >= initial_size ({initial_size})"
            )
        epochs_per_round = check_int(name, "epochs_per_round", epochs_per_round, low=1, allow_none=True)
        batch_size = check_int(name, "batch_size", batch_size, low=1)
        val_fraction = check_float(name, "val_fraction", val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        seed = check_int(name, "seed", seed, low=0, high=MAX_SEED)
        if strategy == "learned" and policy is None:
            raise ValueError(f"{name}(strategy='learned', policy=None): the learned strategy needs a policy")
        if isinstance(policy, str):
            path = check_path(name, "policy", policy)
            try:
                policy = ActiveLearningPolicy.load(str(path))
            except ValueError as err:
                raise ValueError(f"{name}(policy={policy!r}): {err}") from err
        super().__init__()
        self.strategy, self.policy = strategy, policy
        self.classes = list(range(DIGITS_CLASSES)) if classes is None else list(classes)
        self.num_classes = len(self.classes)
        self.initial_size, self.acquire_size, self.max_labelled = initial_size, acquire_size, max_labelled
        self.epochs_per_round, self.batch_size = epochs_per_round, batch_size
        self.val_fraction, self.seed = val_fraction, seed
        self._labelled: Tensor | None = None  # pool positions in acquisition order
        #: Completed acquisition rounds.
        self.rounds = 0

    @classmethod
    def example(cls) -> Example:
        """A :class:`~litmix.testing.TinyClassifier` on digits 3 vs 8, an untrained learned policy, 1 round/epoch."""
        from litmix.testing import TinyClassifier

        dm = cls(
            strategy="learned",
            policy=ActiveLearningPolicy(hidden=8, seed=0),
            classes=[3, 8],
            initial_size=16,
            acquire_size=8,
            batch_size=8,
        )
        return Example(TinyClassifier(in_features=64, num_classes=2), dm, [])

    # ---- data -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        """Load and split the digits (idempotent); draw the initial labelled set; ask the Trainer to reload.

        Raises:
            ValueError: if ``initial_size`` or ``max_labelled`` exceeds the pool.
        """
        trainer = self.trainer
        if (
            trainer is not None
            and self.epochs_per_round is not None
            and getattr(trainer, "reload_dataloaders_every_n_epochs", None) == 0
        ):
            trainer.reload_dataloaders_every_n_epochs = self.epochs_per_round  # type: ignore[attr-defined]
        self._load_data()

    def _load_data(self) -> None:
        if hasattr(self, "full_dataset"):
            return
        from sklearn.datasets import load_digits

        data = load_digits()
        keep = torch.isin(torch.as_tensor(data.target), torch.tensor(self.classes))
        x = torch.tensor(data.data, dtype=torch.float32)[keep] / 16.0
        remap = torch.full((DIGITS_CLASSES,), -1, dtype=torch.long)
        remap[torch.tensor(self.classes)] = torch.arange(self.num_classes)
        y = remap[torch.as_tensor(data.target, dtype=torch.long)[keep]]
        pool, val = stratified_split(y, 1.0 - self.val_fraction, seed=self.seed)
        name = type(self).__name__
        if self.initial_size > len(pool):
            raise ValueError(f"{name}(initial_size={self.initial_size}): the pool has only {len(pool)} samples")
        if self.max_labelled is not None and self.max_labelled > len(pool):
            raise ValueError(f"{name}(max_labelled={self.max_labelled}): the pool has only {len(pool)} samples")
        self.x, self.targets = x, y
        self.pool = pool  # indices of the data set that form the pool
        self.full_dataset = IndexedDataset(TensorDataset(x, y))
        self.val_dataset = Subset(self.full_dataset, val.tolist())
        self._similarity: Tensor | None = None
        if self._labelled is None:
            gen = torch.Generator().manual_seed(self.seed)
            self._labelled = torch.randperm(len(pool), generator=gen)[: self.initial_size]
        self._check_loaded()

    def _check_loaded(self) -> None:
        assert self._labelled is not None
        if len(self._labelled) and int(self._labelled.max()) >= len(self.pool):
            raise ValueError(
                f"{type(self).__name__}: the loaded labelled set names pool position {int(self._labelled.max())}, "
                f"but this pool has {len(self.pool)} samples"
            )

    @property
    def labelled(self) -> Tensor:
        """Data-set indices of the labelled samples, in acquisition order."""
        if self._labelled is None:
            self.setup("fit")
        assert self._labelled is not None
        return self.pool[self._labelled]

    @property
    def unlabelled(self) -> Tensor:
        """Data-set indices of the unlabelled pool samples (sorted)."""
        labelled = self.labelled
        return self.pool[~torch.isin(self.pool, labelled)]

    @property
    def budget(self) -> int:
        """The labelling budget (``max_labelled``, or the pool size)."""
        if not hasattr(self, "pool"):
            self.setup("fit")
        return self.max_labelled if self.max_labelled is not None else len(self.pool)

    def train_dataloader(self) -> DataLoader:
        """The labelled samples, shuffled by ``(seed, epoch)``; runs the acquisition rounds that are due first."""
        if not hasattr(self, "pool"):
            self.setup("fit")
        trainer = self.trainer
        if trainer is not None and self.epochs_per_round is not None:
            due = trainer.current_epoch // self.epochs_per_round
            while self.rounds < due and len(self.labelled) < self.budget:
                self.acquire(trainer.lightning_module)
        dataset = Subset(self.full_dataset, self.labelled.tolist())
        sampler = EpochShuffleSampler(len(dataset), seed=self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)

    def val_dataloader(self) -> DataLoader:
        """The validation split of the same classes."""
        if not hasattr(self, "pool"):
            self.setup("fit")
        return DataLoader(self.val_dataset, batch_size=256)

    def test_dataloader(self) -> DataLoader:
        """The validation split."""
        return self.val_dataloader()

    # ---- acquisition ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def pool_probabilities(self, model: torch.nn.Module) -> Tensor:
        """``(n_pool, C)`` class probabilities of ``model`` on the pool (evaluated in eval mode, mode restored)."""
        if not hasattr(self, "pool"):
            self.setup("fit")
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = model.training
        model.eval()
        try:
            logits = output_logits(model(self.x[self.pool].to(device)), owner=type(self).__name__)
        finally:
            model.train(was_training)
        return torch.softmax(logits.float().cpu(), dim=-1)

    def acquire(self, model: torch.nn.Module | None = None, n: int | None = None) -> Tensor:
        """One acquisition round: label ``n`` (default ``acquire_size``) pool samples chosen by the strategy.

        Capped by the budget and the unlabelled count. Under DDP every rank must call it: rank 0 chooses and
        broadcasts. Returns the data-set indices added (in the order chosen).

        Raises:
            TypeError: if ``model`` is not an ``nn.Module`` (``None`` is allowed for ``"random"`` only).
            ValueError: for ``n < 1``.
        """
        name = type(self).__name__
        if self.strategy != "random" or model is not None:
            check_type(f"{name}.acquire", "model", model, torch.nn.Module)
        n = self.acquire_size if n is None else check_int(f"{name}.acquire", "n", n, low=1)
        labelled = self.labelled  # sets up if needed
        assert self._labelled is not None
        n = min(n, self.budget - len(labelled), len(self.pool) - len(labelled))
        chosen: Tensor | None = None
        if _rank() == 0 and n > 0:
            chosen = self._choose(model, n)
        chosen = _broadcast(chosen)
        if chosen is None:
            chosen = torch.zeros(0, dtype=torch.long)
        self._labelled = torch.cat([self._labelled, chosen.long().cpu()])
        self.rounds += 1
        self._log()
        return self.pool[chosen]

    def _choose(self, model: torch.nn.Module | None, n: int) -> Tensor:
        assert self._labelled is not None
        mask = torch.zeros(len(self.pool), dtype=torch.bool)
        mask[self._labelled] = True
        if self.strategy == "random":
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.rounds + 1) % 2**63)
            free = torch.nonzero(~mask).flatten()
            return free[torch.randperm(len(free), generator=gen)[:n]]
        assert model is not None
        probs = self.pool_probabilities(model)
        if self._similarity is None and self.strategy == "learned":
            self._similarity = rbf_similarity(self.x[self.pool].double()).float()
        span = max(1, self.budget - self.initial_size)
        progress = min(1.0, max(0.0, (len(self._labelled) - self.initial_size) / span))
        return acquire_indices(
            probs,
            self._similarity,
            mask,
            self.targets[self.pool],
            n,
            strategy=self.strategy,
            policy=self.policy,
            progress=progress,
        )

    def _log(self) -> None:
        trainer = self.trainer
        if trainer is None or not trainer.is_global_zero:
            return
        metrics = {"active_learning/labelled": float(len(self.labelled)), "active_learning/round": float(self.rounds)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    # ---- state ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Version, labelled pool positions (acquisition order), labelled / unlabelled data-set indices, rounds."""
        state = super().state_dict()
        state["rounds"] = self.rounds
        if self._labelled is not None:
            state["labelled_positions"] = self._labelled.clone()
            if hasattr(self, "pool"):
                state["pool_size"] = len(self.pool)
                state["labelled"] = self.labelled.clone()
                state["unlabelled"] = self.unlabelled.clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the pools and the round count (a resumed run continues with the same labelled set).

        Raises:
            ValueError: for a newer state version or a labelled set from a pool of another size.
        """
        super().load_state_dict(state_dict)
        self.rounds = int(state_dict.get("rounds", 0))
        if state_dict.get("labelled_positions") is None:
            return
        self._load_data()
        pool_size = state_dict.get("pool_size")
        if pool_size is not None and int(pool_size) != len(self.pool):
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's pools are for a pool of {pool_size} samples, "
                f"this one has {len(self.pool)} (other classes, val_fraction or seed?)"
            )
        self._labelled = torch.as_tensor(state_dict["labelled_positions"]).long().clone()
        self._check_loaded()
