"""ConceptClusterPruning / ComputeAwareFiltering and their maths: selection, bad inputs, state, DDP, logging."""

import csv

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import nn

from litmix.datamodules import ComputeAwareFiltering, ConceptClusterPruning, DigitsDataModule
from litmix.functional.data_pruning import (
    choose_pool,
    cluster_complexity,
    complexity_keep_counts,
    concept_cluster_selection,
    farthest_from_centroid,
    fit_utility_curve,
    kmeans,
    semantic_dedup,
    utility_curve_loss,
)
from litmix.testing import TinyClassifier, TinyDataModule, make_trainer, run_ddp

CURVES = [{"a": 1.0, "b": -0.5, "tau": 1.0}, {"a": 1.0, "b": -0.4, "tau": 1.0}]


class CountingEmbed:
    """Flattened inputs times 2; counts the samples it embedded."""

    def __init__(self):
        self.samples = 0

    def __call__(self, x):
        self.samples += len(x)
        return x.flatten(1) * 2.0


def _digits(**kwargs):
    return DigitsDataModule(batch_size=32, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# maths


def test_kmeans_is_deterministic_per_seed_and_finds_separated_blobs():
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = centers.repeat_interleave(30, 0) + 0.3 * torch.randn(90, 2, generator=gen)
    c1, a1 = kmeans(x, 3, seed=1)
    c2, a2 = kmeans(x, 3, seed=1)
    assert torch.equal(c1, c2)
    assert torch.equal(a1, a2)
    truth = torch.arange(3).repeat_interleave(30)
    for t in range(3):  # every true blob maps to exactly one cluster
        assert a1[truth == t].unique().numel() == 1
    assert a1.unique().numel() == 3


def test_keep_counts_follow_complexity_cap_at_sizes_and_sum_exactly():
    gen = torch.Generator().manual_seed(0)
    complexity = torch.rand(30, generator=gen)
    sizes = torch.randint(1, 40, (30,), generator=gen)
    for num_keep in (1, 50, 200, int(sizes.sum()) - 1, int(sizes.sum()) + 5):
        counts = complexity_keep_counts(complexity, sizes, num_keep, tau=0.2)
        assert int(counts.sum()) == min(num_keep, int(sizes.sum()))
        assert bool((counts <= sizes).all())
        assert bool((counts >= 0).all())
        uncapped = counts < sizes
        c, k = complexity[uncapped], counts[uncapped]
        # among clusters that are not full, a more complex cluster never keeps fewer (up to the rounding unit)
        worse = (c[:, None] > c[None, :]) & (k[:, None] < k[None, :] - 1)
        assert not bool(worse.any())


def test_overflow_is_redistributed():
    counts = complexity_keep_counts(torch.tensor([10.0, 0.0, 0.0]), torch.tensor([2, 10, 10]), 12, tau=1.0)
    assert counts.tolist() == [2, 5, 5]


def test_farthest_samples_are_kept_in_each_cluster():
    gen = torch.Generator().manual_seed(0)
    dist = torch.rand(100, generator=gen)
    assign = torch.randint(0, 5, (100,), generator=gen)
    counts = torch.tensor([3, 0, 5, 1, 2])
    kept = farthest_from_centroid(dist, assign, counts)
    assert torch.bincount(assign[kept], minlength=5).tolist() == counts.tolist()
    for c in range(5):
        members = (assign == c).nonzero().flatten()
        top = members[dist[members].argsort(descending=True)[: counts[c]]]
        assert sorted(top.tolist()) == sorted(kept[assign[kept] == c].tolist())


def test_semantic_dedup_removes_near_duplicates_only():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=gen)
    dup = torch.cat([x, x[:10] + 1e-4 * torch.randn(10, 16, generator=gen)])
    assign = torch.zeros(50, dtype=torch.long)
    keep = semantic_dedup(dup, assign, dup.mean(0, keepdim=True), eps=1e-3)
    assert int(keep.sum()) == 40
    for i in range(10):  # exactly one of each pair survives
        assert bool(keep[i]) != bool(keep[40 + i])


def test_selection_keeps_the_fraction_and_dedups_before_counting():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 8, generator=gen)
    x = torch.cat([x, x[:50]])  # 50 exact duplicates
    sel = concept_cluster_selection(x, 0.5, 5, dedup_eps=1e-4, seed=0)
    assert len(sel.kept) == 125
    assert int(sel.dedup_sizes.sum()) == 200
    assert int(sel.sizes.sum()) == 250
    assert len(set(sel.kept.tolist())) == 125
    d_intra, d_inter = cluster_complexity(x, torch.randn(5, 8, generator=gen), sel.assign)
    assert d_intra.shape == d_inter.shape == (5,)


def test_utility_curve_decays_with_repetition_and_fit_recovers_parameters():
    fresh = utility_curve_loss([1000.0], pool_size=1000, a=2.0, b=-0.4, tau=2.0)
    repeated = utility_curve_loss([1000.0], pool_size=100, a=2.0, b=-0.4, tau=2.0)
    assert float(repeated) > float(fresh)  # 10 passes over 100 samples are worth less than 1000 new ones
    n = [100, 200, 400, 800, 200, 400, 800, 1600]
    p = [800, 800, 800, 800, 100, 100, 100, 100]
    y = [float(utility_curve_loss(ni, pi, a=3.0, b=-0.3, tau=1.5)) for ni, pi in zip(n, p, strict=True)]
    fit = fit_utility_curve(n, p, y)
    assert fit == pytest.approx({"a": 3.0, "b": -0.3, "tau": 1.5}, rel=1e-3)


def test_choose_pool_small_budget_top_only_large_budget_more():
    assert choose_pool(100, [100, 1000], CURVES)[0] == 1
    assert choose_pool(5000, [100, 1000], CURVES)[0] == 2


# ---------------------------------------------------------------------------------------------------------
# bad inputs: named, before compute


@pytest.mark.parametrize("value", [0.0, -0.1, 1.5, float("nan")])
def test_keep_fraction_outside_unit_interval_is_refused(value):
    with pytest.raises(ValueError, match="keep_fraction"):
        ConceptClusterPruning(TinyDataModule(), keep_fraction=value)


def test_keep_fraction_one_keeps_everything():
    dm = ConceptClusterPruning(_digits(train_size=100), keep_fraction=1.0, num_clusters=5)
    dm.setup("fit")
    assert dm.select().tolist() == list(range(dm.num_train))


def test_num_clusters_below_one_or_above_n_is_refused():
    with pytest.raises(ValueError, match="num_clusters"):
        ConceptClusterPruning(TinyDataModule(), num_clusters=0)
    dm = ConceptClusterPruning(TinyDataModule(n=20), num_clusters=21)
    with pytest.raises(ValueError, match=r"num_clusters.*<= 20"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="k"):
        kmeans(torch.zeros(3, 2), 4)


@pytest.mark.parametrize(
    "bad", [lambda x: x.flatten(1)[:, 0], lambda x: x.flatten(1)[:1], lambda x: x.view(len(x), 2, -1)]
)
def test_embed_fn_of_the_wrong_shape_fails_at_setup_before_embedding(bad):
    calls = []

    def fn(x):
        calls.append(len(x))
        return bad(x)

    dm = ConceptClusterPruning(TinyDataModule(n=64), embed_fn=fn, num_clusters=2)
    with pytest.raises(ValueError, match=r"embed_fn.*2-D"):
        dm.setup("fit")
    assert calls == [2]  # only the 2-sample probe ran


def test_embed_fn_that_is_not_callable_is_refused():
    with pytest.raises(TypeError, match="embed_fn"):
        ConceptClusterPruning(TinyDataModule(), embed_fn="pixels")


@pytest.mark.parametrize("budget", [0, -5])
def test_budget_of_zero_or_less_is_refused(budget):
    with pytest.raises(ValueError, match="budget_samples"):
        ComputeAwareFiltering(TinyDataModule(), budget, CURVES, buckets=[[0], [1]])
    with pytest.raises(ValueError, match="budget"):
        choose_pool(budget, [10], CURVES[:1])


@pytest.mark.parametrize("buckets", [[], [[]], [[0, 1], [1, 2]], [[-1], [2]]])
def test_bad_bucket_lists_are_refused(buckets):
    with pytest.raises(ValueError, match="buckets"):
        ComputeAwareFiltering(TinyDataModule(), 100, CURVES[: max(1, len(buckets))], buckets=buckets)


def test_bucket_and_curve_mismatches_are_refused():
    with pytest.raises(ValueError, match="utilities"):
        ComputeAwareFiltering(TinyDataModule(), 100, CURVES, buckets=[[0, 1]])
    with pytest.raises(ValueError, match="utilities"):
        ComputeAwareFiltering(TinyDataModule(), 100, [{"a": 1.0, "b": -0.5}], buckets=[[0, 1]])
    with pytest.raises(ValueError, match="utilities"):
        ComputeAwareFiltering(TinyDataModule(), 100, [], buckets=[[0, 1]])
    with pytest.raises(ValueError, match="quality_fn"):
        ComputeAwareFiltering(TinyDataModule(), 100, CURVES)
    dm = ComputeAwareFiltering(TinyDataModule(n=16), 100, CURVES, buckets=[[0, 1], [2, 99]])
    with pytest.raises(ValueError, match=r"buckets.*\[99\]"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="bucket_sizes"):
        choose_pool(10, [], [])


# ---------------------------------------------------------------------------------------------------------
# the wrapper


def test_wrapper_forwards_val_and_test_loaders_and_serves_the_kept_subset():
    base = _digits(train_size=200)
    dm = ConceptClusterPruning(base, keep_fraction=0.25, num_clusters=8)
    dm.setup("fit")
    assert dm.val_dataloader().dataset is base.val_dataloader().dataset
    assert dm.test_dataloader().dataset is base.test_dataloader().dataset
    kept = dm.select()
    loader = dm.train_dataloader()
    seen = torch.cat([batch[2] for batch in loader])
    base_index = torch.tensor([base.train_dataset[i][2] for i in kept.tolist()])
    assert sorted(seen.tolist()) == sorted(base_index.tolist())  # each kept sample exactly once per epoch
    assert len(kept) == round(0.25 * dm.num_train)
    assert loader.batch_size == 32


def test_selection_is_deterministic_per_seed():
    a, b, c = (ConceptClusterPruning(_digits(train_size=300), num_clusters=10, seed=s) for s in (0, 0, 5))
    for dm in (a, b, c):
        dm.setup("fit")
    assert torch.equal(a.select(), b.select())
    assert not torch.equal(a.select(), c.select())


def test_embeddings_are_cached_and_reused(tmp_path):
    first_fn, second_fn = CountingEmbed(), CountingEmbed()
    first = ConceptClusterPruning(_digits(train_size=200), embed_fn=first_fn, num_clusters=8, cache_dir=str(tmp_path))
    first.setup("fit")
    kept = first.select()
    assert first_fn.samples == 2 + first.num_train
    assert first.cache_path is not None
    assert first.cache_path.is_file()
    second = ConceptClusterPruning(_digits(train_size=200), embed_fn=second_fn, num_clusters=8, cache_dir=str(tmp_path))
    second.setup("fit")
    assert torch.equal(second.select(), kept)
    assert second_fn.samples == 2  # the probe only: the embeddings came from the cache


def test_module_embedding_runs_in_eval_mode_and_restores_training_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 16), nn.Dropout(0.5))
    net.train()
    dm = ConceptClusterPruning(_digits(train_size=100), embed_fn=net, num_clusters=4)
    dm.setup("fit")
    dm.select()
    assert net.training
    assert dm.embeddings is not None
    assert dm.embeddings.shape == (dm.num_train, 16)
    again = ConceptClusterPruning(_digits(train_size=100), embed_fn=net, num_clusters=4)
    again.setup("fit")
    assert torch.equal(again.select(), dm.select())  # dropout off while embedding: deterministic


def test_compute_aware_filtering_with_quality_scores():
    base = TinyDataModule(n=40)
    dm = ComputeAwareFiltering(base, 10, CURVES, quality_fn=lambda x, y: x[:, 0])
    dm.setup("fit")
    kept = dm.select()
    scores = base.dataset.dataset.tensors[0][:, 0]
    assert dm.num_buckets_selected == 1
    assert sorted(kept.tolist()) == scores.argsort(descending=True)[:20].sort().values.tolist()
    assert dm.predicted_loss(1) < dm.predicted_loss(2)


class _TableLogger(Logger):
    """A logger with ``log_table`` (the WandbLogger signature)."""

    def __init__(self):
        super().__init__()
        self.tables, self.metrics = [], []

    @property
    def name(self):
        return "table"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.metrics.append(metrics)

    def log_table(self, key, columns=None, data=None, dataframe=None, step=None):
        self.tables.append((key, columns, data))


def test_per_cluster_table_goes_to_log_table_or_csv(tmp_path):
    logger = _TableLogger()
    dm = ConceptClusterPruning(_digits(train_size=100), num_clusters=4)
    trainer = make_trainer(logger=logger, max_steps=1, default_root_dir=tmp_path)
    trainer.fit(TinyClassifier(in_features=64, num_classes=10), datamodule=dm)
    key, columns, data = logger.tables[0]
    assert key == "concept_cluster_pruning/selection"
    assert columns[:4] == ["cluster", "size", "after_dedup", "kept"]
    assert sum(row[3] for row in data) == len(dm.select())
    assert len(data) == 4
    assert any("concept_cluster_pruning/kept_fraction" in m for m in logger.metrics)
    csv_dm = ComputeAwareFiltering(_digits(train_size=100), 50, CURVES, buckets=[list(range(40)), list(range(40, 90))])
    trainer = make_trainer(logger=CSVLogger(tmp_path), max_steps=1, default_root_dir=tmp_path)
    trainer.fit(TinyClassifier(in_features=64, num_classes=10), datamodule=csv_dm)
    with open(csv_dm.table_path) as f:
        rows = list(csv.reader(f))
    assert rows[0][:2] == ["bucket", "size"]
    assert [r[-1] for r in rows[1:]] == ["True", "False"]


# ---------------------------------------------------------------------------------------------------------
# checkpointed selection


@pytest.mark.parametrize("kind", ["ccp", "caf"])
def test_resumed_run_serves_the_checkpointed_subset_without_recomputing(kind, tmp_path):
    embeds = []

    def make():
        fn = CountingEmbed()
        embeds.append(fn)
        if kind == "ccp":
            return ConceptClusterPruning(_digits(train_size=120), embed_fn=fn, num_clusters=6)
        quality = lambda x, y: fn(x)[:, 10]  # noqa: E731
        return ComputeAwareFiltering(_digits(train_size=120), 60, CURVES, quality_fn=quality)

    pl.seed_everything(0, verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    first = make()
    trainer = make_trainer(callbacks=[ckpt], max_epochs=1, enable_checkpointing=True)
    trainer.fit(TinyClassifier(in_features=64, num_classes=10), datamodule=first)
    path = next(tmp_path.glob("epoch=0-*.ckpt"))
    resumed = make()
    resumed._compute_selection = None  # any attempt to recompute would fail
    trainer = make_trainer(max_epochs=2)
    trainer.fit(TinyClassifier(in_features=64, num_classes=10), datamodule=resumed, ckpt_path=str(path))
    assert resumed.selection_source == "checkpoint"
    assert torch.equal(resumed.select(), first.select())
    assert embeds[-1].samples <= 2  # at most the setup probe


def test_loaded_selection_for_another_training_set_is_refused():
    dm = ConceptClusterPruning(_digits(train_size=100), num_clusters=4)
    dm.setup("fit")
    dm.select()
    other = ConceptClusterPruning(_digits(train_size=200), num_clusters=4)
    other.load_state_dict(dm.state_dict())
    with pytest.raises(ValueError, match="selection"):
        other.setup("fit")


# ---------------------------------------------------------------------------------------------------------
# DDP


class _CheckShardedEmbedding(Callback):
    def __init__(self, fn, expected):
        self.fn, self.expected = fn, expected

    def on_train_start(self, trainer, pl_module):
        import torch.distributed as dist

        dm = trainer.datamodule
        kept = dm.select().tolist()
        everything = [None, None]
        dist.all_gather_object(everything, (kept, self.fn.samples))
        assert everything[0][0] == everything[1][0] == self.expected, "ranks disagree with the 1-process selection"
        # each rank embedded its half (plus the 2-sample probe), not the whole set
        counts = [s for _, s in everything]
        assert sum(counts) == 4 + dm.num_train
        assert max(counts) <= 2 + (dm.num_train + 1) // 2


@pytest.mark.ddp
def test_two_ranks_embed_their_shards_and_agree_with_one_process():
    single = ConceptClusterPruning(_digits(train_size=150), num_clusters=6)
    single.setup("fit")
    expected = single.select().tolist()
    fn = CountingEmbed()
    dm = ConceptClusterPruning(_digits(train_size=150), num_clusters=6, embed_fn=lambda x: fn(x) / 2.0)
    trainer = run_ddp(
        [_CheckShardedEmbedding(fn, expected)],
        TinyClassifier(in_features=64, num_classes=10),
        dm,
        strategy="ddp_fork_find_unused_parameters_true",
        max_steps=1,
    )
    assert trainer.state.finished
