"""LightGCN on ML-100K u1: litmix (CSR adjacency) vs PyG's LightGCN in a plain loop vs RecBole, one protocol.

Side by side in one process, one CPU thread, the systems' epochs interleaved (epoch 1 of each, then epoch 2 of
each, ...) so that the load of the shared machine hits all of them alike:

* **litmix**: :class:`~litmix.plugins.LightGCNModule` (PyG ``LightGCN`` fed the pre-normalised
  ``torch.sparse_csr`` adjacency), its ``training_step`` on :class:`~litmix.datamodules.InteractionDataModule`
  batches (BPR triplets, uniform negatives outside the user's training items), Adam;
* **PyG plain loop**: ``torch_geometric.nn.models.LightGCN`` on ``edge_index`` (``LGConv`` normalising on every
  call, what PyG's ``examples/lightgcn.py`` does), the same initial weights and the same triplets: it computes
  the same model (the embeddings agree to float rounding), so its recall/NDCG equal litmix's and only the time
  differs; run for ``--pyg-epochs`` epochs;
* **RecBole** 1.2.1 ``LightGCN`` (if ``import recbole`` works; e.g. ``PYTHONPATH=<folder with recbole>``), trained
  by its own ``Trainer._train_epoch`` on its own data loader (the u1 files converted to its atomic format in a
  temporary folder), scored with litmix's metrics after mapping its internal ids back.

Settings (the catalogue's): 64-d, 3 layers, batch 4096, Adam 5e-3, one uniform negative, lambda 1e-4 (RecBole's
``reg_weight=1e-4`` applies to its ``EmbLoss``: the sum of the L2 norms of the batch's ego embeddings divided by the
batch size, a different scale than PyG's squared norm). Protocol: full ranking over all 1682 items, training
items excluded, ties broken by item index, Recall@20 / NDCG@20 averaged over the 459 users with test items (the
test split doubles as validation: epochs are not selected, every ``--eval-every`` epochs is reported).
Popularity and GTE (k = 3) rows need no training. Writes ``benchmarks/results/recsys.md``.

Run: ``python benchmarks/bench_recsys.py`` (about 20 min on a loaded 2-core machine with the defaults).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import torch
from _machine import cpu_model

from litmix.datamodules import InteractionDataModule
from litmix.functional.recsys import gte_scores
from litmix.metrics import NDCGAtK, RecallAtK
from litmix.plugins import LightGCNModule

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "recsys.md"
DATA = Path(os.environ.get("LITMIX_DATA", REPO.parent / "shared" / "data"))


RECBOLE_NOTES = [
    "RecBole 1.2.1 (the newest release on PyPI) declares `torch>=1.10` without an upper bound, so it installs beside "
    "torch 2.13 (here with `pip install --no-deps --target <folder> recbole colorlog==4.7.2 texttable tabulate thop`, "
    "outside the project's venv). It does not run unchanged on this stack; the benchmark patches three things at run "
    "time, none of which touches the model or the training: (1) `Config.compatibility_settings` reads `np.float_`, "
    "`np.complex_`, `np.unicode_`, removed in NumPy 2 (restored as aliases); (2) `LightGCN.get_norm_adj_mat` calls "
    "SciPy's private `dok_matrix._update`, gone in current SciPy (replaced by item assignment, same matrix); (3) "
    "`torch.utils.tensorboard` needs the tensorboard package (stubbed: no logging); `recbole.quick_start` imports "
    "`ray<=2.6.3` at module level, so the benchmark drives `Config` / `create_dataset` / `data_preparation` / "
    "`Trainer._train_epoch` directly. RecBole's epoch time includes its own negative sampling and data loader.",
]


def evaluate(dm: InteractionDataModule, scores: torch.Tensor) -> tuple[float, float]:
    """Recall@20 / NDCG@20 of a full ``(users, items)`` score matrix under the protocol."""
    recall, ndcg = RecallAtK(20), NDCGAtK(20)
    for inputs, targets, users in dm.val_dataloader():
        s = scores[inputs["users"]]
        recall.update(s, targets, users, inputs["exclude"])
        ndcg.update(s, targets, users, inputs["exclude"])
    return float(recall.compute()), float(ndcg.compute())


class Litmix:
    name = "litmix LightGCNModule (CSR adjacency)"

    def __init__(self, dm: InteractionDataModule, args: argparse.Namespace) -> None:
        self.dm = dm
        self.module = LightGCNModule(lr=args.lr, lambda_reg=args.reg)
        self.module.set_graph(dm.train_pairs)
        self.opt = self.module.configure_optimizers()
        self.loader = dm.train_dataloader()

    def epoch(self, e: int) -> None:
        self.loader.sampler.set_epoch(e)  # type: ignore[union-attr]
        for batch in self.loader:
            loss = self.module.training_step(batch, 0)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

    def scores(self) -> torch.Tensor:
        with torch.no_grad():
            return self.module.scores(torch.arange(self.dm.num_users))


class PyGLoop:
    name = "PyG LightGCN, plain loop (edge_index)"

    def __init__(self, dm: InteractionDataModule, args: argparse.Namespace, init: dict[str, Any]) -> None:
        from torch_geometric.nn.models import LightGCN

        self.dm, self.reg, self.num_users = dm, args.reg, dm.num_users
        self.model = LightGCN(dm.num_users + dm.num_items, 64, 3)
        self.model.load_state_dict(init)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        self.loader = dm.train_dataloader()

    def epoch(self, e: int) -> None:
        self.loader.sampler.set_epoch(e)  # type: ignore[union-attr]
        u_off = self.num_users
        for triplets, _, _ in self.loader:
            emb = self.model.get_embedding(self.dm.edge_index)
            u, p, n = triplets[:, 0], triplets[:, 1] + u_off, triplets[:, 2] + u_off
            pos, neg = (emb[u] * emb[p]).sum(-1), (emb[u] * emb[n]).sum(-1)
            loss = self.model.recommendation_loss(pos, neg, node_id=torch.cat([u, p, n]).unique(), lambda_reg=self.reg)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

    def scores(self) -> torch.Tensor:
        with torch.no_grad():
            emb = self.model.get_embedding(self.dm.edge_index)
        return emb[: self.num_users] @ emb[self.num_users :].T


def _stub_tensorboard() -> None:
    """RecBole imports ``torch.utils.tensorboard`` (needs the tensorboard package); logging is not used here."""
    if "torch.utils.tensorboard" in sys.modules:
        return
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")

        class SummaryWriter:
            def __init__(self, *a: Any, **k: Any) -> None:
                pass

            def __getattr__(self, name: str) -> Any:
                return lambda *a, **k: None

        stub.SummaryWriter = SummaryWriter  # type: ignore[attr-defined]
        sys.modules["torch.utils.tensorboard"] = stub


def _numpy2_aliases() -> None:
    """RecBole 1.2.1's ``Config.compatibility_settings`` reads ``np.float_``, ``np.complex_`` and ``np.unicode_``,
    which NumPy 2 removed: restore them as aliases (nothing else is changed)."""
    import numpy as np

    for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
        if not hasattr(np, old):
            setattr(np, old, new)


def _scipy_dok_update() -> None:
    """RecBole 1.2.1's ``LightGCN.get_norm_adj_mat`` fills a ``dok_matrix`` with the private ``_update(dict)``,
    which newer SciPy removed: provide it as item assignment (same matrix)."""
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):

        def _update(self: Any, data: dict[Any, Any]) -> None:
            for key, value in data.items():
                self[key] = value

        sp.dok_matrix._update = _update  # type: ignore[attr-defined]


class RecBole:
    name = "RecBole 1.2.1 LightGCN"

    def __init__(self, dm: InteractionDataModule, args: argparse.Namespace, folder: Path) -> None:
        _stub_tensorboard()
        _numpy2_aliases()
        _scipy_dok_update()
        import logging

        from recbole.config import Config
        from recbole.data import create_dataset, data_preparation
        from recbole.model.general_recommender import LightGCN
        from recbole.trainer import Trainer

        self.dm = dm
        data = folder / "ml100ku1"
        data.mkdir(parents=True)
        header = "user_id:token\titem_id:token\trating:float\n"
        for split, pairs in (("train", dm.train_pairs), ("valid", dm.test_pairs), ("test", dm.test_pairs)):
            rows = "".join(f"{u}\t{i}\t1\n" for u, i in pairs.tolist())
            (data / f"ml100ku1.{split}.inter").write_text(header + rows)
        config = Config(
            model="LightGCN",
            dataset="ml100ku1",
            config_dict={
                "data_path": str(folder),
                "benchmark_filename": ["train", "valid", "test"],
                "load_col": {"inter": ["user_id", "item_id", "rating"]},
                "use_gpu": False,
                "device": "cpu",
                "seed": args.seed,
                "embedding_size": 64,
                "n_layers": 3,
                "reg_weight": args.reg,
                "learning_rate": args.lr,
                "train_batch_size": 4096,
                "eval_batch_size": 4096,
                "train_neg_sample_args": {"distribution": "uniform", "sample_num": 1},
                "metrics": ["Recall", "NDCG"],
                "topk": [20],
                "valid_metric": "Recall@20",
                "show_progress": False,
                "checkpoint_dir": str(folder / "saved"),
                "state": "ERROR",
            },
        )
        logging.getLogger().setLevel(logging.ERROR)
        dataset = create_dataset(config)
        self.train_data, _, _ = data_preparation(config, dataset)
        torch.manual_seed(args.seed)
        self.model = LightGCN(config, self.train_data.dataset)
        self.trainer = Trainer(config, self.model)
        # RecBole's internal ids (token order of first appearance) -> ours (the tokens are our ids)
        tokens = dataset.field2id_token
        self.user_map = torch.tensor([int(t) for t in tokens["user_id"][1:]])
        self.item_map = torch.tensor([int(t) for t in tokens["item_id"][1:]])

    def epoch(self, e: int) -> None:
        self.model.train()
        self.trainer._train_epoch(self.train_data, e, show_progress=False)

    def scores(self) -> torch.Tensor:
        self.model.eval()
        with torch.no_grad():
            user_emb, item_emb = self.model.forward()
        # row r of RecBole's tables is internal id r (0 = padding); ids 1.. map to our ids via the tokens
        out = torch.full((self.dm.num_users, self.dm.num_items), float("-inf"))
        s = user_emb[1:] @ item_emb[1:].T
        out[self.user_map.unsqueeze(1), self.item_map.unsqueeze(0)] = s
        return out


def trainer_overhead(dm: InteractionDataModule, args: argparse.Namespace, epochs: int = 3) -> tuple[float, float]:
    """Seconds per epoch of ``LightGCNModule`` fitted by a Lightning ``Trainer`` and by the plain loop above
    (plain, Trainer, plain again; the plain time is the mean of the two runs)."""
    import logging

    from litmix.testing import make_trainer

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    plain = []
    lightning = 0.0
    for run in ("plain", "trainer", "plain"):
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        if run == "plain":
            system = Litmix(dm, args)
            for e in range(epochs):
                system.epoch(e)
            plain.append((time.perf_counter() - t0) / epochs)
        else:
            module = LightGCNModule(lr=args.lr, lambda_reg=args.reg)
            make_trainer(max_epochs=epochs).fit(module, datamodule=dm)
            lightning = (time.perf_counter() - t0) / epochs
    return lightning, sum(plain) / len(plain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--pyg-epochs", type=int, default=10)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--reg", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-recbole", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = DATA / "movielens100k" / "raw"
    if not root.is_dir():
        sys.exit(f"ML-100K not found at {root} (set LITMIX_DATA)")
    dm = InteractionDataModule(root=root, fold="u1", batch_size=4096, seed=args.seed)
    dm.setup("fit")

    rows: list[str] = []
    pop = torch.bincount(dm.train_pairs[:, 1], minlength=dm.num_items).double().expand(dm.num_users, -1)
    r, n = evaluate(dm, pop)
    rows.append(f"| popularity (training counts) | - | - | {r:.4f} | {n:.4f} | no training |")
    t0 = time.perf_counter()
    gte = gte_scores(dm.train_pairs, dm.num_users, dm.num_items, k=3)
    t_gte = time.perf_counter() - t0
    r, n = evaluate(dm, gte)
    rows.append(f"| GTE k = 3 (`gte_scores`) | - | - | {r:.4f} | {n:.4f} | no training; scores in {t_gte:.2f} s |")

    torch.manual_seed(args.seed)
    systems: list[Any] = [Litmix(dm, args)]
    init = systems[0].module.model.state_dict()
    systems.append(PyGLoop(dm, args, init))
    why_not = ""
    if not args.no_recbole:
        try:
            folder = Path(tempfile.mkdtemp(prefix="recbole_"))
            systems.append(RecBole(dm, args, folder))
        except Exception as err:  # reported in the table
            why_not = f"{type(err).__name__}: {err}"
            print("RecBole not run:", why_not, flush=True)
    with torch.no_grad():
        diff = float((systems[0].module() - systems[1].model.get_embedding(dm.edge_index)).abs().max())
    times: dict[str, list[float]] = {s.name: [] for s in systems}
    metrics: dict[str, dict[int, tuple[float, float]]] = {s.name: {} for s in systems}
    for e in range(args.epochs):
        for s in systems:
            if isinstance(s, PyGLoop) and e >= args.pyg_epochs:
                continue
            t0 = time.perf_counter()
            s.epoch(e)
            times[s.name].append(time.perf_counter() - t0)
            done = e + 1
            if (
                done % args.eval_every == 0
                or done == args.epochs
                or (isinstance(s, PyGLoop) and done == args.pyg_epochs)
            ):
                metrics[s.name][done] = evaluate(dm, s.scores())
                print(s.name, done, f"{sum(times[s.name]) / done:.2f} s/epoch", metrics[s.name][done], flush=True)
    base = sum(times[systems[0].name]) / len(times[systems[0].name])
    for s in systems:
        if not times[s.name]:
            continue
        per = sum(times[s.name]) / len(times[s.name])
        last = max(metrics[s.name])
        curve = ", ".join(f"ep {k}: {v[0]:.4f} / {v[1]:.4f}" for k, v in sorted(metrics[s.name].items()))
        rows.append(
            f"| {s.name} | {per:.2f} (over {len(times[s.name])} epochs) | {per / base:.2f}x | "
            f"{metrics[s.name][last][0]:.4f} | {metrics[s.name][last][1]:.4f} | epoch {last}; Recall / NDCG: {curve} |"
        )
    lightning, plain = trainer_overhead(dm, args)
    rows.append(
        f"| litmix LightGCNModule fitted by a Lightning `Trainer` (3 epochs) | {lightning:.2f} | "
        f"{lightning / plain:.2f}x the plain loop ({plain:.2f} s / epoch, measured around it) | - | - | "
        "same steps; Trainer overhead |"
    )
    lines = [
        "# LightGCN on ML-100K u1: litmix vs PyG plain loop vs RecBole",
        "",
        f"Machine: {cpu_model()}, 1 thread, torch {torch.__version__}; shared and loaded (timings are ratios of "
        "interleaved epochs in one process). Settings: 64-d, 3 layers, batch 4096, Adam "
        f"{args.lr:g}, lambda {args.reg:g}, seed {args.seed}, one uniform negative. Protocol: full ranking, training "
        "items excluded, stable tie-break, K = 20, mean over the 459 users with test items; no validation split "
        "(numbers at fixed epochs).",
        "",
        "| model | s / epoch | time vs litmix | Recall@20 | NDCG@20 | notes |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"litmix and the PyG loop start from the same weights and see the same triplets; their initial embeddings "
        f"differ by max |diff| {diff:.1e}, so their metrics agree and only the time differs.",
    ]
    if why_not:
        lines += ["", f"RecBole was not run: {why_not}"]
    lines += ["", *RECBOLE_NOTES]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
