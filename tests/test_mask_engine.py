"""Unit tests of the shared mask engine (litmix.sparsity.MaskEngine) and its selection functions."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from litmix.functional.sparsity import (
    cosine_update_fraction,
    erk_densities,
    magnitude_masks,
    nm_masks,
    prune_and_grow,
    random_masks,
    structured_masks,
)
from litmix.sparsity import MaskEngine


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


NAMES = ["0.weight", "2.weight"]


def _engine(net: nn.Module, sparsity: float = 0.5) -> MaskEngine:
    params = dict(net.named_parameters())
    engine = MaskEngine("Test")
    engine.attach(net, magnitude_masks({n: params[n] for n in NAMES}, sparsity, "layer"))
    engine.apply()
    return engine


# ----------------------------------------------------------------------------- selection functions


@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (4, 8), (1, 2)])
def test_nm_masks_keep_exactly_n_of_every_m_largest(n, m):
    w = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    mask = nm_masks({"w": w}, n, m)["w"]
    groups, kept = mask.reshape(-1, m), w.abs().reshape(-1, m)
    assert (groups.sum(dim=1) == n).all()
    # every kept weight is at least as large as every pruned one of its group
    lowest_kept = kept.masked_fill(~groups, float("inf")).min(dim=1).values
    highest_pruned = kept.masked_fill(groups, float("-inf")).max(dim=1).values
    assert (lowest_kept >= highest_pruned).all()
    conv = nm_masks({"c": torch.randn(4, 2, 2, 2)}, 2, 4)["c"]  # rows: out channels, groups over in * kh * kw
    assert (conv.reshape(-1, 4).sum(dim=1) == 2).all()


def test_nm_masks_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"m=4.*'w'.*rows of 6"):
        nm_masks({"w": torch.randn(3, 6)}, 2, 4)
    with pytest.raises(ValueError, match="n=5"):
        nm_masks({"w": torch.randn(3, 8)}, 5, 4)
    with pytest.raises(TypeError, match="n and m must be int"):
        nm_masks({"w": torch.randn(3, 8)}, 2.0, 4)  # type: ignore[arg-type]


def test_structured_masks_remove_whole_lowest_norm_rows():
    w = torch.randn(10, 6, generator=torch.Generator().manual_seed(1))
    w[[2, 7]] *= 0.01
    mask = structured_masks({"w": w}, 0.2)["w"]
    assert (mask.all(dim=1) | (~mask).all(dim=1)).all()  # every row all kept or all pruned
    assert (~mask).all(dim=1).nonzero().view(-1).tolist() == [2, 7]
    conv = structured_masks({"c": torch.randn(8, 3, 3, 3), "l": torch.randn(4, 5)}, 0.5, "global")
    pruned_rows = sum(int((~m).reshape(m.shape[0], -1).all(dim=1).sum()) for m in conv.values())
    assert pruned_rows == 6  # half of all 12 rows, ranked together
    with pytest.raises(ValueError, match="sparsity"):
        structured_masks({"w": w}, 1.5)


def test_erk_densities_hit_the_budget_and_favour_small_layers():
    shapes = {"a": (784, 300), "b": (300, 100), "c": (100, 10), "conv": (16, 8, 3, 3)}
    for density in (0.05, 0.1, 0.3):
        d = erk_densities(shapes, density)
        total = sum(torch.Size(s).numel() for s in shapes.values())
        kept = sum(d[k] * torch.Size(s).numel() for k, s in shapes.items())
        assert kept == pytest.approx(density * total, rel=1e-9)
        assert all(0 < v <= 1 for v in d.values())
        assert d["a"] < d["b"] <= d["c"]
    with pytest.raises(ValueError, match="density"):
        erk_densities(shapes, 0.0)


def test_random_masks_exact_counts_and_reproducible():
    shapes = {"a": (30, 20), "b": (7,)}
    m1 = random_masks(shapes, {"a": 0.1, "b": 0.5}, torch.Generator().manual_seed(3))
    m2 = random_masks(shapes, {"a": 0.1, "b": 0.5}, torch.Generator().manual_seed(3))
    assert int(m1["a"].sum()) == 60
    assert int(m1["b"].sum()) == 4
    assert all(torch.equal(m1[k], m2[k]) for k in shapes)
    with pytest.raises(ValueError, match="'a'"):
        random_masks(shapes, {"a": 1.5, "b": 0.5})


def test_prune_and_grow_keeps_budget_drops_smallest_grows_largest_gradient():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(40, 50, generator=gen)
    mask = random_masks({"w": w.shape}, {"w": 0.2}, gen)["w"]
    w = w * mask
    g = torch.randn(40, 50, generator=gen)
    new = prune_and_grow(w, mask, 0.3, g)
    assert int(new.sum()) == int(mask.sum())
    k = round(0.3 * int(mask.sum()))
    dropped, grown = mask & ~new, new & ~mask
    assert int(dropped.sum()) <= k
    assert int(dropped.sum()) == int(grown.sum())
    threshold = w.abs()[mask].kthvalue(k).values
    assert (w.abs()[dropped] <= threshold).all()  # only the k smallest kept weights were dropped
    candidates = ~mask
    assert g.abs()[grown].min() >= g.abs()[candidates & ~new].max()  # the largest |gradient| grew
    rand = prune_and_grow(w, mask, 0.3, None, torch.Generator().manual_seed(1))
    assert int(rand.sum()) == int(mask.sum())
    assert not torch.equal(rand, new)
    assert torch.equal(prune_and_grow(w, mask, 0.0, g), mask)
    assert cosine_update_fraction(0, 100, 0.3) == pytest.approx(0.3)
    assert cosine_update_fraction(50, 100, 0.3) == pytest.approx(0.15)
    assert cosine_update_fraction(100, 100, 0.3) == 0.0
    with pytest.raises(ValueError, match="fraction"):
        prune_and_grow(w, mask, 1.2, g)


# ----------------------------------------------------------------------------- engine


def test_attach_registers_non_persistent_buffers_and_strict_load_works():
    net = _net()
    engine = _engine(net)
    assert engine.names == NAMES
    assert engine.sparsity_report() == {"0.weight": 0.5, "2.weight": 0.5, "global": 0.5}
    assert not any(k.endswith("_mask") for k in net.state_dict())
    assert net[0].weight_mask.data_ptr() == engine.masks["0.weight"].data_ptr()  # one tensor
    assert (net[0].weight[~net[0].weight_mask] == 0).all()
    _net(1).load_state_dict(net.state_dict())  # strict
    pickle.loads(pickle.dumps(engine))
    with pytest.raises(ValueError, match=r"unknown parameters \['nope.weight'\]"):
        MaskEngine().attach(net, {"nope.weight": None})
    with pytest.raises(ValueError, match="shape"):
        MaskEngine().attach(net, {"0.weight": torch.ones(3, 3, dtype=torch.bool)})
    with pytest.raises(TypeError, match="owner"):
        MaskEngine(3)  # type: ignore[arg-type]


def test_state_round_trip_is_bit_packed_and_exact():
    net = _net()
    engine = _engine(net, 0.7)
    state = pickle.loads(pickle.dumps(engine.state_dict()))
    assert sum(len(v["bits"]) for v in state["masks"].values()) == (16 * 32 + 32 * 8) // 8
    fresh = _net(2)
    other = MaskEngine()
    other.load_state_dict(state)  # before attach: kept
    other.attach(fresh, dict(other.masks))
    for n in NAMES:
        assert torch.equal(other.masks[n], engine.masks[n])
    attached = _engine(_net(3), 0.1)
    attached.load_state_dict(state)  # attached: copied into the live buffers
    assert attached.sparsity_report()["global"] == pytest.approx(0.7, abs=0.01)
    bad = {"masks": {"9.weight": state["masks"]["0.weight"]}}
    with pytest.raises(ValueError, match=r"9\.weight"):
        attached.load_state_dict(bad)


def test_regrown_coordinates_get_fresh_optimizer_state_and_pruned_first_moments_zero():
    net = _net()
    engine = _engine(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(4, 16)).pow(2).sum().backward()
        engine.mask_gradients()
        opt.step()
        engine.after_step(opt)
    old = {n: m.clone() for n, m in engine.masks.items()}
    new = {n: ~m for n, m in old.items()}  # swap: regrow every pruned coordinate
    regrown = engine.update(new, opt)
    p = net[0].weight
    state = opt.state[p]
    assert torch.equal(regrown["0.weight"], ~old["0.weight"])
    assert (state["exp_avg"][regrown["0.weight"]] == 0).all()
    assert (state["exp_avg_sq"][regrown["0.weight"]] == 0).all()  # fresh, second moment included
    assert (state["exp_avg"][~net[0].weight_mask] == 0).all()  # newly pruned: first moment zero
    assert (p[~net[0].weight_mask] == 0).all()
    assert (p[regrown["0.weight"]] == 0).all()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 16)).sum().backward()
    sgd.step()
    coords = torch.zeros_like(p, dtype=torch.bool)
    coords[0, :3] = True
    assert engine.reset_state(sgd, "0.weight", coords) == 1
    assert (sgd.state[p]["momentum_buffer"][coords] == 0).all()


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_gradient_accumulation_matches_one_big_batch(opt_cls):
    """Gradients masked once after accumulating 2 micro-batches == masked gradient of the full batch."""
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(5))
    results = []
    for micro in (1, 2):
        net = _net()
        engine = _engine(net, 0.6)
        opt = opt_cls(net.parameters(), lr=0.05, **({"momentum": 0.9} if opt_cls is torch.optim.SGD else {}))
        for _ in range(5):
            opt.zero_grad()
            for chunk in x.chunk(micro):
                (net(chunk).pow(2).mean() / micro).backward()
            engine.mask_gradients()
            opt.step()
            engine.after_step(opt)
            assert not engine.check_weights()
        results.append([p.detach().clone() for p in net.parameters()])
    for a, b in zip(*results, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_after_step_remasks_for_unknown_optimizers():
    net = _net()
    engine = _engine(net)
    lbfgs = torch.optim.LBFGS(net.parameters())
    assert engine.needs_remask(lbfgs)
    assert not engine.needs_remask(torch.optim.Adam(net.parameters()))
    with torch.no_grad():
        net[0].weight.add_(1.0)
    assert engine.check_weights()["0.weight"] == 256
    engine.after_step(lbfgs)
    assert not engine.check_weights()


def test_export_dense_and_sparse_state_dicts_with_measured_sizes():
    net = _net()
    engine = _engine(net, 0.9)
    dense = engine.dense_state_dict(net)
    dense_bytes = MaskEngine.nbytes(dense)
    assert dense_bytes == sum(p.numel() * 4 for p in net.parameters())
    bitmask = engine.to_sparse_state_dict(net)
    nnz = sum(int(m.sum()) for m in engine.masks.values())
    masked = sum(m.numel() for m in engine.masks.values())
    biases = (32 + 8) * 4
    assert MaskEngine.nbytes(bitmask) == nnz * 4 + masked // 8 + biases
    assert MaskEngine.nbytes(bitmask) < 0.2 * dense_bytes
    csr = engine.to_sparse_state_dict(net, layout="csr")
    assert MaskEngine.nbytes(csr) < dense_bytes
    for exported in (bitmask, csr):
        restored = MaskEngine.from_sparse_state_dict(torch.load(_saved(exported), weights_only=False))
        fresh = _net(4)
        fresh.load_state_dict(restored)  # strict
        for k, v in dense.items():
            assert torch.equal(fresh.state_dict()[k], v)
    with pytest.raises(ValueError, match="layout"):
        engine.to_sparse_state_dict(net, layout="coo")  # type: ignore[arg-type]


def _saved(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


@pytest.mark.skipif(
    MaskEngine.semi_structured_supported()[0], reason="CPU-only check (the GPU path is tested where one is lent)"
)
def test_semi_structured_export_refused_clearly_without_a_supported_gpu():
    net = _net()
    engine = MaskEngine()
    engine.attach(net, nm_masks({n: dict(net.named_parameters())[n] for n in NAMES}, 2, 4))
    with pytest.raises(RuntimeError, match=r"CUDA.*to_sparse_state_dict instead"):
        engine.to_semi_structured(net)


@pytest.mark.skipif(not MaskEngine.semi_structured_supported()[0], reason="needs a CUDA GPU of compute capability 8+")
def test_semi_structured_export_on_gpu_round_trip():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(128, 128)).half().cuda()
    engine = MaskEngine()
    engine.attach(net, nm_masks({"0.weight": net[0].weight}, 2, 4))
    engine.apply()
    x = torch.randn(128, 128, dtype=torch.half, device="cuda")
    expected = net(x)
    assert engine.to_semi_structured(net) == ["0.weight"]
    assert torch.allclose(net(x), expected, atol=1e-2, rtol=1e-2)


def test_make_permanent_drops_buffers_keeps_zeros():
    net = _net()
    _engine(net)
    assert MaskEngine.make_permanent(net) == NAMES
    assert not any(k.endswith("_mask") for k, _ in net.named_buffers())
    assert float((net[0].weight == 0).float().mean()) == 0.5


def test_filled_second_moments_keep_pruned_weights_exactly_zero():
    """Second moments at pruned coordinates set to 1 (a CPU speed fix) change nothing: updates there stay exactly 0."""
    net = _net()
    engine = _engine(net, 0.9)
    opt = torch.optim.AdamW(net.parameters(), lr=0.01, weight_decay=0.1, amsgrad=True)
    for step in range(30):
        opt.zero_grad()
        net(torch.randn(4, 16)).pow(2).sum().backward()
        engine.mask_gradients()
        opt.step()
        engine.after_step(opt)
        if step == 0:
            assert engine.fill_second_moments(opt) == 4  # exp_avg_sq and max_exp_avg_sq of two weights
        assert not engine.check_weights()
    p, mask = net[0].weight, net[0].weight_mask
    assert (opt.state[p]["exp_avg_sq"][~mask] > 0.9).all()
    assert (opt.state[p]["exp_avg"][~mask] == 0).all()
    regrown = engine.update({n: torch.ones_like(m) for n, m in engine.masks.items()}, opt)
    assert (opt.state[p]["exp_avg_sq"][regrown["0.weight"]] == 0).all()  # regrown: fresh state


# ----------------------------------------------------------------------------- the pruners' shared shell


@pytest.mark.parametrize(
    "cls_name", ["GradualPruning", "DynamicSparseTraining", "LotteryTicket", "PolarizationPruning", "OneShotPruning"]
)
def test_every_pruner_logs_sparsity_per_layer_and_an_image_at_each_mask_change(cls_name, tmp_path):
    import csv

    from lightning.pytorch.loggers import CSVLogger

    import litmix.callbacks
    from litmix.testing import make_trainer

    cls = getattr(litmix.callbacks, cls_name)
    module, dm, [cb] = cls.example()
    logger = CSVLogger(tmp_path, name="csv")
    make_trainer(max_steps=2, callbacks=[cb], logger=logger, log_every_n_steps=50).fit(module, datamodule=dm)
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    prefix, report = cb.log_prefix, cb.engine.sparsity_report()
    changes = [r for r in rows if r.get(f"{prefix}/sparsity")]
    assert changes, rows  # written at the mask change although no logging step (50) came
    for name, value in report.items():
        if name != "global":  # per layer, at the last change, equal to the final masks
            assert float(changes[-1][f"{prefix}/sparsity/{name}"]) == pytest.approx(value)
    images = sorted((tmp_path / "csv").rglob(f"images/{prefix}_sparsity_per_layer_step*.png"))
    assert len(images) >= 1
    assert len(images) == len({r["step"] for r in changes})  # one image per mask change


def test_sparsity_image_is_skipped_without_matplotlib(tmp_path, monkeypatch):
    import sys

    from lightning.pytorch.loggers import CSVLogger

    from litmix.callbacks import GradualPruning
    from litmix.testing import fit_tiny

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails like an absent package
    logger = CSVLogger(tmp_path, name="csv")
    fit_tiny([GradualPruning(0.5, start_step=0, end_step=1, every_n_steps=1)], max_steps=2, logger=logger)
    assert not list(tmp_path.rglob("*.png"))
    with open(f"{logger.log_dir}/metrics.csv") as f:
        assert "pruning/sparsity/net.0.weight" in f.readline()
