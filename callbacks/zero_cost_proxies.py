"""Score the model with zero-cost proxies at the start of training (and optionally every n epochs)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, IterableDataset

from litmix._sharded import refuse_sharded_strategy
from litmix.base import Example, LitmixCallback
from litmix.data import split_batch
from litmix.functional.proxies import get_proxy, list_proxies, zero_cost_proxies
from litmix.functional.proxies.core import _is_graph_data
from litmix.registry import register
from litmix.validation import check_bool, check_choice, check_float, check_int, check_type

_PAPER = "Zero-Cost Proxies for Lightweight NAS (https://arxiv.org/abs/2101.08134)"
_FILTERS = ("reference", "extended", "all")
_NAN_POLICIES = ("nan", "raise", "naslib")


@register("callback", "proxy", paper=_PAPER)
class ZeroCostProxies(LitmixCallback):
    """Compute zero-cost proxies (synflow, snip, NASWOT, ...) of the untrained model at fit start and log them.

    Zero-cost proxies (Abdelfattah et al., "Zero-Cost Proxies for Lightweight NAS", ICLR 2021,
    https://arxiv.org/abs/2101.08134) rank untrained architectures by a score computed from one mini-batch;
    see :func:`litmix.functional.proxies.zero_cost_proxies` for the definitions and numerics. The scores are
    computed **once**, on global rank 0, on a deep copy of the LightningModule (the training model is never
    touched, the global RNG is restored), from the first ``batch_size`` samples of the training set
    (``trainer.datamodule.train_dataloader()`` in ``on_fit_start``, else ``trainer.train_dataloader`` in
    ``on_train_start``), then broadcast to every rank. ``on_train_start`` logs them as ``<prefix>/<name>``
    (prefix: ``name`` when given, else ``zc``; ``pl_module.log``, epoch-level, so they reach every logger and
    ``trainer.callback_metrics``; ``sync_dist=True``, which averages the identical values of every rank exactly
    and keeps Lightning from warning under DDP) and, under a ``WandbLogger`` on rank 0, as the W&B table
    ``<prefix>_proxies``. The scores live in :attr:`scores` and in the checkpoint state, so a resumed run does
    not score again.

    With ``every_n_epochs=n`` the *training* model is scored again (same batch, same seed, again on rank 0 and
    broadcast) at the end of every n-th training epoch, i.e. after epochs ``n - 1, 2n - 1, ...`` (0-based),
    and logged as ``zc/<name>`` for that epoch (the value of ``zc/<name>`` logged at the end of an epoch is
    then the re-score, not the fit-start score). Each re-score is appended to :attr:`history` as
    ``{"epoch": e, "step": global_step, "scores": {name: value}}``; the history is part of the checkpoint
    state, so a resumed run keeps the entries of the epochs before the checkpoint (zero-cost-nas issue #4).

    The module's ``forward`` is called with the batch's inputs (``split_batch(batch)[0]``); the targets feed
    the label-based proxies. A PyG ``Data``/``Batch`` batch is handed over whole: ``forward(x, edge_index)``
    gets ``data.x, data.edge_index``, the targets are ``data.y``, restricted to ``data.train_mask`` when present
    (see :func:`~litmix.functional.proxies.zero_cost_proxies`).

    Sharded strategies (FSDP, DeepSpeed) are refused at ``setup``: the copy scored on rank 0 would hold only
    that rank's shard. Use DDP, or score the model before wrapping it with the functional API.

    Args:
        names: proxies to compute (see :func:`litmix.functional.proxies.list_proxies`).
        batch_size: samples in the scoring batch (>= 2).
        log_table: also log a W&B table (only under a ``WandbLogger``).
        seed: torch seed of every proxy.
        layer_filter: ``"reference"`` (Conv2d and Linear weights, as the reference code), ``"extended"`` or
            ``"all"``.
        nan_policy: ``"nan"``, ``"raise"``, ``"naslib"`` (-1e8) or a replacement value for non-finite scores.
        every_n_epochs: also re-score the training model at the end of every n-th training epoch (>= 1), or
            ``None`` (default) to score only at fit start.
        name: optional instance name (unique checkpoint key and log prefix).
        proxy_options: per-proxy options of :func:`~litmix.functional.proxies.zero_cost_proxies`, e.g.
            ``{"naswot": {"count": "reference"}}`` (BayesWatch's double counting of wrapped ReLUs),
            ``{"fisher": {"samsung_broadcast": False}}`` (fisher without the reference's broadcast, which is the
            default) or ``{"zen": {"bn_scaling": "batch"}}`` (option values are checked when the proxies run).

    Raises:
        TypeError: for an argument of the wrong type (naming it).
        ValueError: for unknown proxy names (listing the available ones, also as ``proxy_options`` keys),
            ``batch_size < 2``, an unknown ``layer_filter`` or ``nan_policy``, or ``every_n_epochs < 1``.
        MisconfigurationException: at ``setup`` under ``FSDPStrategy`` or ``DeepSpeedStrategy``.

    Example:
        >>> from litmix.testing import fit_tiny
        >>> cb = ZeroCostProxies(names=["synflow", "snip", "params"], batch_size=16)
        >>> trainer = fit_tiny([cb], max_steps=1)
        >>> sorted(cb.scores), cb.scores["params"]
        (['params', 'snip', 'synflow'], 212.0)
        >>> float(trainer.callback_metrics["zc/params"])
        212.0
        >>> cb = ZeroCostProxies(names=["synflow", "params"], batch_size=16, every_n_epochs=2)
        >>> trainer = fit_tiny([cb], max_epochs=4, max_steps=-1)
        >>> [h["epoch"] for h in cb.history], cb.history[-1]["scores"]["synflow"] != cb.scores["synflow"]
        ([1, 3], True)
    """

    default_log_prefix = "zc"

    def __init__(
        self,
        names: list[str] | tuple[str, ...] = ("synflow", "snip", "grad_norm", "naswot", "params", "flops"),
        batch_size: int = 64,
        log_table: bool = True,
        seed: int = 0,
        layer_filter: str = "reference",
        nan_policy: str | float = "nan",
        every_n_epochs: int | None = None,
        name: str | None = None,
        proxy_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        owner = type(self).__name__
        check_type(owner, "names", names, (list, tuple, str))
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            check_type(owner, "names", n, str)
        unknown = [n for n in names if n not in list_proxies()]
        if not names or unknown:
            raise ValueError(
                f"{owner}(names={names!r}): unknown or no proxy names {unknown}; available proxies: {list_proxies()}"
            )
        check_int(owner, "batch_size", batch_size, low=2)
        check_bool(owner, "log_table", log_table)
        check_int(owner, "seed", seed, low=0)
        check_choice(owner, "layer_filter", layer_filter, _FILTERS)
        if isinstance(nan_policy, str):
            check_choice(owner, "nan_policy", nan_policy, _NAN_POLICIES)
        else:
            check_float(owner, "nan_policy", nan_policy, finite=False)
        check_int(owner, "every_n_epochs", every_n_epochs, low=1, allow_none=True)
        check_type(owner, "proxy_options", proxy_options, dict, allow_none=True)
        for proxy, opts in (proxy_options or {}).items():
            if proxy not in list_proxies():
                raise ValueError(
                    f"{owner}(proxy_options={proxy_options!r}): options for unknown proxy {proxy!r}; available "
                    f"proxies: {list_proxies()}"
                )
            check_type(owner, "proxy_options", opts, dict)
            for key in opts:
                check_type(owner, "proxy_options", key, str)
        super().__init__(name=name)
        self.names: list[str] = list(dict.fromkeys(names))
        self.batch_size = int(batch_size)
        self.log_table = bool(log_table)
        self.seed = int(seed)
        self.layer_filter = layer_filter
        self.nan_policy: str | float = nan_policy
        self.scores: dict[str, float] | None = None
        self.seconds: dict[str, float] = {}
        self.every_n_epochs = every_n_epochs
        self.proxy_options = {k: dict(v) for k, v in (proxy_options or {}).items()}
        self.history: list[dict[str, Any]] = []
        self.computed_here = False  # True on the process that ran the proxies (global rank 0)

    @classmethod
    def example(cls) -> Example:
        """The default proxies on a 16-sample batch of :class:`litmix.testing.TinyClassifier`'s blobs."""
        from litmix.testing import TinyClassifier, TinyDataModule

        return Example(TinyClassifier(), TinyDataModule(), [cls(batch_size=16)])

    def _state_key_fields(self) -> dict[str, Any]:
        """Two unnamed instances differ by what they score and how."""
        return {
            "names": ",".join(self.names),
            "batch_size": self.batch_size,
            "seed": self.seed,
            "layer_filter": self.layer_filter,
            "every_n_epochs": self.every_n_epochs,
            **({"proxy_options": repr(sorted(self.proxy_options.items()))} if self.proxy_options else {}),
        }

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Check state keys; refuse sharded strategies (the scored copy needs whole parameters)."""
        super().setup(trainer, pl_module, stage)
        refuse_sharded_strategy(
            type(self).__name__,
            trainer.strategy,
            "the proxies score a deep copy of the whole model on rank 0, and sharded parameters are only a slice of it",
            instead="strategy='ddp', or score the model before wrapping it with "
            "litmix.functional.zero_cost_proxies(model, inputs, targets)",
        )

    # ------------------------------------------------------------------------------------------------------
    def _first_batch(self, loader: Any) -> Any:
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and not isinstance(dataset, IterableDataset):
            collate = getattr(loader, "collate_fn", None)
            loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=False, collate_fn=collate)
        return next(iter(loader))

    def _compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any) -> dict[str, float]:
        """Scores and ``<name>_seconds`` timings, computed on global rank 0 and broadcast to every rank."""
        scores: dict[str, Any] | None = None
        if trainer.is_global_zero:
            batch = self._first_batch(loader)
            if _is_graph_data(batch):  # a PyG Data/Batch: zero_cost_proxies reads x, edge_index, y, train_mask
                x, y = batch, getattr(batch, "y", None)
            else:
                x, y, _ = split_batch(batch)
            x = pl_module.transfer_batch_to_device(x, pl_module.device, 0)
            needs_labels = [n for n in self.names if get_proxy(n).needs_labels]
            if y is None and needs_labels:
                raise ValueError(
                    f"{type(self).__name__}(names={self.names}): the label-based proxies {needs_labels} need "
                    "targets: (x, y) batches, dicts with a 'y'/'labels' key or PyG Data with y"
                )
            y = y.to(pl_module.device) if isinstance(y, torch.Tensor) and not _is_graph_data(x) else None
            result = zero_cost_proxies(
                pl_module,
                x,
                y,
                names=self.names,
                seed=self.seed,
                layer_filter=self.layer_filter,
                nan_policy=self.nan_policy,  # type: ignore[arg-type]
                return_timings=True,
                options=self.proxy_options,
            )
            scores = {k: float(v) for k, v in result.items()}
            self.computed_here = True
            rank_zero_info(f"ZeroCostProxies: {', '.join(f'{n}={scores[n]:.4g}' for n in self.names)}")
        scores = trainer.strategy.broadcast(scores, src=0)
        assert scores is not None
        return scores

    def _score(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: Any) -> None:
        scores = self._compute(trainer, pl_module, loader)
        self.scores = {n: scores[n] for n in self.names}
        self.seconds = {n: scores[f"{n}_seconds"] for n in self.names}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score from the datamodule's first batch (unless restored from a checkpoint)."""
        datamodule = getattr(trainer, "datamodule", None)
        if self.scores is None and datamodule is not None:
            self._score(trainer, pl_module, datamodule.train_dataloader())

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Score from ``trainer.train_dataloader`` if not done yet; log ``zc/<name>`` and the W&B table."""
        if self.scores is None:
            self._score(trainer, pl_module, trainer.train_dataloader)
        assert self.scores is not None
        self._log(pl_module, self.scores)
        if self.log_table and trainer.is_global_zero:
            from lightning.pytorch.loggers import WandbLogger

            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    rows = [[n, self.scores[n], self.seconds.get(n, float("nan"))] for n in self.names]
                    logger.log_table(key=f"{self.log_prefix}_proxies", columns=["proxy", "score", "seconds"], data=rows)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Every ``every_n_epochs`` epochs: re-score the training model, log ``zc/<name>``, extend the history."""
        n = self.every_n_epochs
        if n is None or (trainer.current_epoch + 1) % n != 0:
            return
        datamodule = getattr(trainer, "datamodule", None)
        loader = datamodule.train_dataloader() if datamodule is not None else trainer.train_dataloader
        computed = self._compute(trainer, pl_module, loader)
        scores = {k: float(computed[k]) for k in self.names}
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step, "scores": scores})
        self._log(pl_module, scores)

    def _log(self, pl_module: pl.LightningModule, scores: dict[str, float]) -> None:
        """Log ``<log_prefix>/<name>`` at epoch level to every logger.

        The values are identical on every rank (broadcast from rank 0), so ``sync_dist=True`` averages equal
        values (exact) at the cost of one all-reduce per key per epoch, and keeps Lightning from warning that
        epoch-level values should be synced under DDP.
        """
        pl_module.log_dict(
            {f"{self.log_prefix}/{k}": float(v) for k, v in scores.items()},
            on_step=False,
            on_epoch=True,
            sync_dist=True,
        )

    def state_dict(self) -> dict[str, Any]:
        """The scores (``None`` before the first fit), their timings and the re-scoring history."""
        return {
            **super().state_dict(),
            "scores": self.scores,
            "seconds": self.seconds,
            "history": [{**h, "scores": dict(h["scores"])} for h in self.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the scores (a resumed run does not score again) and the history."""
        super().load_state_dict(state_dict)
        scores = state_dict.get("scores")
        if scores is not None and set(self.names) <= set(scores):  # else: other proxies requested, score again
            self.scores = {n: scores[n] for n in self.names}
            self.seconds = dict(state_dict.get("seconds", {}))
            self.history = [
                {**h, "scores": {n: h["scores"][n] for n in self.names}} for h in state_dict.get("history", [])
            ]
