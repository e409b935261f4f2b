"""PHATGOOSE (arXiv 2402.05859): routing maths, layer modes, freezing, bad arguments and the zero-shot effect."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from litmix.functional.phatgoose import (
    gated_lora_delta,
    lora_mixture,
    phatgoose_scores,
    routing_matrix,
    standardize,
    top_k_routing,
)
from litmix.layers import PHATGOOSELinear, import_expert, phatgoose_mode, to_phatgoose

# ---------------------------------------------------------------- routing maths vs a hand computation


def test_scores_match_a_hand_computation():
    torch.manual_seed(0)
    x, gates = torch.randn(3, 5), torch.randn(4, 5)
    expected = torch.empty(3, 4)
    for t in range(3):
        xs = (x[t] - x[t].mean()) / math.sqrt(x[t].var(unbiased=False) + 1e-5)
        for e in range(4):
            gs = (gates[e] - gates[e].mean()) / math.sqrt(gates[e].var(unbiased=False) + 1e-5)
            expected[t, e] = float((xs * gs).sum()) / math.sqrt(5)
    torch.testing.assert_close(phatgoose_scores(x, gates), expected)
    torch.testing.assert_close(phatgoose_scores(x, gates, scale=False), expected * math.sqrt(5))
    # invariant to shifting and (positively) scaling tokens or gates: only the standardized direction matters
    torch.testing.assert_close(phatgoose_scores(3 * x + 7, 0.5 * gates - 2), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(standardize(x).mean(-1), torch.zeros(3), atol=1e-6, rtol=0)


def test_top_k_combination_matches_a_hand_computation():
    torch.manual_seed(1)
    x = torch.randn(2, 6)
    a, b = torch.randn(3, 2, 6), torch.randn(3, 4, 2)  # 3 experts, rank 2, 6 -> 4
    scores = torch.tensor([[0.3, 2.0, 1.0], [-1.0, 0.5, 0.6]])
    weights, index = top_k_routing(scores, top_k=2)
    assert index.tolist() == [[1, 2], [2, 1]]
    w0 = [math.exp(2.0) / (math.exp(2.0) + math.exp(1.0)), math.exp(1.0) / (math.exp(2.0) + math.exp(1.0))]
    w1 = [math.exp(0.6) / (math.exp(0.6) + math.exp(0.5)), math.exp(0.5) / (math.exp(0.6) + math.exp(0.5))]
    torch.testing.assert_close(weights, torch.tensor([w0, w1]))
    mix = routing_matrix(weights, index, 3)
    torch.testing.assert_close(mix, torch.tensor([[0.0, w0[0], w0[1]], [0.0, w1[1], w1[0]]]))
    out = lora_mixture(x, a, b, mix, scaling=0.5)
    expected = torch.stack(
        [
            0.5 * (w0[0] * b[1] @ a[1] @ x[0] + w0[1] * b[2] @ a[2] @ x[0]),
            0.5 * (w1[0] * b[2] @ a[2] @ x[1] + w1[1] * b[1] @ a[1] @ x[1]),
        ]
    )
    torch.testing.assert_close(out, expected)
    gate = torch.randn(6)
    torch.testing.assert_close(
        gated_lora_delta(x, a[0], b[0], gate, 2.0), torch.sigmoid(x @ gate)[:, None] * 2.0 * (x @ a[0].T @ b[0].T)
    )


def test_layer_modes_match_the_formulas():
    torch.manual_seed(2)
    layer = PHATGOOSELinear(6, 4, num_experts=3, rank=2, alpha=4.0, top_k=2)
    with torch.no_grad():
        for group in (layer.lora_a, layer.lora_b, layer.gates):
            for p in group:
                p.normal_()
    x = torch.randn(5, 6)
    base = layer.base(x)
    a, b, g = layer.stacked()
    deltas = torch.stack([2.0 * x @ a[e].T @ b[e].T for e in range(3)])  # scaling = 4 / 2
    torch.testing.assert_close(layer.set_mode("base")(x), base)
    torch.testing.assert_close(layer.set_mode("expert", expert=1)(x), base + deltas[1])
    gate = torch.sigmoid(x @ g[2])[:, None]
    torch.testing.assert_close(layer.set_mode("gate", expert=2)(x), base + gate * deltas[2])
    torch.testing.assert_close(layer.set_mode("uniform")(x), base + deltas.mean(0))
    routed = layer.set_mode("route")(x)
    scores = phatgoose_scores(x, g)
    weights, index = top_k_routing(scores, 2)
    expected = base + torch.stack(
        [sum(weights[t, j] * deltas[index[t, j], t] for j in range(2)) for t in range(5)]  # type: ignore[misc]
    )
    torch.testing.assert_close(routed, expected)
    assert torch.equal(layer.last_index, index)
    layer.top_k = 3  # top_k = all experts: a dense softmax over every score
    torch.testing.assert_close(layer(x), base + torch.einsum("te,eto->to", scores.softmax(-1), deltas))


def test_example_routing_takes_one_decision_per_example():
    torch.manual_seed(3)
    layer = PHATGOOSELinear(6, 4, num_experts=4, rank=2, top_k=1, routing="example")
    with torch.no_grad():
        for p in layer.gates:
            p.normal_()
    x = torch.randn(2, 7, 6)
    layer(x)
    assert layer.last_index is not None
    assert (layer.last_index == layer.last_index[:, :1]).all()
    per_example = phatgoose_scores(x, layer.stacked()[2]).mean(1).argmax(-1)
    assert torch.equal(layer.last_index[:, 0, 0], per_example)


# ---------------------------------------------------------------- wrapping, freezing


def test_to_phatgoose_wraps_linear_and_hf_conv1d_and_keeps_outputs():
    conv1d = pytest.importorskip("transformers.pytorch_utils").Conv1D
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), conv1d(3, 8), nn.MultiheadAttention(3, 1))
    x = torch.randn(4, 5)
    before = net[2](net[1](net[0](x)))
    to_phatgoose(net, num_experts=2, rank=2)
    assert type(net[0]) is PHATGOOSELinear
    assert type(net[2]) is PHATGOOSELinear
    assert type(net[3].out_proj) is not PHATGOOSELinear  # attention reads out_proj.weight directly: left alone
    torch.testing.assert_close(net[2](net[1](net[0](x))), before)  # fresh experts: the base model's output
    assert (net[2].in_features, net[2].out_features) == (8, 3)


def test_gate_training_leaves_adapters_and_base_bit_identical():
    torch.manual_seed(5)
    net = to_phatgoose(nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)), 3, 2)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for expert in range(3):  # give every expert a trained adapter first
        opt = torch.optim.AdamW(phatgoose_mode(net, "expert", expert), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    trained = phatgoose_mode(net, "gate", 1)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"0.gates.1", "3.gates.1"}
    opt = torch.optim.AdamW(trained, lr=0.1, weight_decay=0.1)
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"0.gates.1", "3.gates.1"}  # LayerNorm, base weights, adapters, other gates: bit-identical


def test_expert_training_trains_only_that_adapter():
    net = to_phatgoose(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), num_experts=2, rank=1)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert names == []  # route mode trains nothing
    phatgoose_mode(net, "expert", 0)
    names = [n for n, p in net.named_parameters() if p.requires_grad]
    assert names == ["0.lora_a.0", "0.lora_b.0", "2.lora_a.0", "2.lora_b.0"]


def test_independently_trained_experts_are_assembled_into_one_router():
    import copy

    torch.manual_seed(6)
    base = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    contributors = []
    for _ in range(2):  # each contributor wraps its own copy of the base model and trains one expert + its gates
        own = to_phatgoose(copy.deepcopy(base), num_experts=1, rank=2, top_k=1)
        for stage in ("expert", "gate"):
            opt = torch.optim.Adam(phatgoose_mode(own, stage, 0), lr=0.1)
            for _ in range(3):
                opt.zero_grad()
                F.cross_entropy(own(x), y).backward()
                opt.step()
        contributors.append(own)
    routed = to_phatgoose(copy.deepcopy(base), num_experts=2, rank=2, top_k=1)
    for slot, own in enumerate(contributors):
        import_expert(routed, own, expert=slot)
        phatgoose_mode(routed, "gate", slot)
        phatgoose_mode(own, "gate", 0)
        torch.testing.assert_close(routed(x), own(x))
    with pytest.raises(ValueError, match="expert"):
        import_expert(routed, contributors[0], expert=2)
    stranger = to_phatgoose(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), 1, 2, top_k=1)
    with pytest.raises(ValueError, match="source"):  # another base model
        import_expert(routed, stranger, 0)


# ---------------------------------------------------------------- bad arguments name themselves


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"num_experts": 0}, ValueError, "num_experts"),
        ({"rank": 0}, ValueError, "rank"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"top_k": 5, "num_experts": 4}, ValueError, "top_k"),
        ({"top_k": 1.5}, TypeError, "top_k"),
        ({"routing": "sequence"}, ValueError, "routing"),
        ({"bias": 1}, TypeError, "bias"),
        ({"eps": -1.0}, ValueError, "eps"),
        ({"in_features": 0}, ValueError, "in_features"),
    ],
)
def test_bad_constructor_arguments_are_named(kwargs, error, name):
    base = {"in_features": 4, "out_features": 3}
    with pytest.raises(error, match=name):
        PHATGOOSELinear(**{**base, **kwargs})


def test_bad_mode_forward_and_function_arguments_are_named():
    layer = PHATGOOSELinear(4, 3, num_experts=2)
    with pytest.raises(ValueError, match="mode"):
        layer.set_mode("train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expert"):
        layer.set_mode("gate")
    with pytest.raises(ValueError, match="expert"):
        layer.set_mode("expert", expert=2)
    with pytest.raises(ValueError, match="expert"):
        layer.set_mode("route", expert=0)
    with pytest.raises(ValueError, match="in_features"):
        layer(torch.randn(2, 5))
    with pytest.raises(TypeError, match="layer"):
        PHATGOOSELinear.from_linear(nn.Conv2d(1, 1, 1))
    with pytest.raises(ValueError, match="model"):
        phatgoose_mode(nn.Sequential(nn.ReLU()), "route")
    with pytest.raises(ValueError, match="top_k"):
        phatgoose_mode(nn.Sequential(layer), "route", top_k=3)
    with pytest.raises(ValueError, match="skip"):
        to_phatgoose(nn.Sequential(nn.Linear(2, 2)), skip=["nope"])
    with pytest.raises(ValueError, match="model"):
        to_phatgoose(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="top_k"):
        to_phatgoose(nn.Sequential(nn.Linear(2, 2)), num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="top_k"):
        top_k_routing(torch.zeros(2, 3), top_k=4)
    with pytest.raises(ValueError, match="gates"):
        phatgoose_scores(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="x"):
        phatgoose_scores(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="index"):
        routing_matrix(torch.ones(1, 1), torch.tensor([[3]]), 3)
    with pytest.raises(ValueError, match="mix"):
        lora_mixture(torch.zeros(1, 2), torch.zeros(3, 1, 2), torch.zeros(3, 2, 1), torch.zeros(1, 2))
    with pytest.raises(ValueError, match="eps"):
        standardize(torch.zeros(2), eps=0.0)


# ---------------------------------------------------------------- the LightningModule shell


def test_module_stage_is_checkpointed_and_stages_without_parameters_refuse_to_fit():
    from litmix.plugins import PHATGOOSEModule

    module = PHATGOOSEModule.example().module
    module.set_stage("gate", expert=2, top_k=1)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["litmix"]["stage"] == "gate"
    fresh = PHATGOOSEModule.example().module
    fresh.load_state_dict(module.state_dict(), strict=True)
    fresh.on_load_checkpoint(checkpoint)
    assert (fresh.stage, fresh.expert) == ("gate", 2)
    assert [n for n, p in fresh.named_parameters() if p.requires_grad] == ["model.0.gates.2", "model.2.gates.2"]
    assert fresh.model[0].top_k == 1
    fresh.set_stage("route", expert=0)  # the expert is ignored outside the expert/gate stages
    with pytest.raises(ValueError, match="stage"):
        fresh.configure_optimizers()
    x = torch.randn(3, 8)
    torch.testing.assert_close(fresh(x), fresh.model(x))


def test_module_bad_arguments_are_named():
    from litmix.plugins import PHATGOOSEModule

    def mlp():
        return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))

    with pytest.raises(ValueError, match="expert"):
        PHATGOOSEModule(mlp(), stage="gate", expert=None)
    with pytest.raises(ValueError, match="expert"):
        PHATGOOSEModule(mlp(), stage="expert", expert=4, num_experts=4)
    with pytest.raises(ValueError, match="top_k"):
        PHATGOOSEModule(mlp(), top_k=3, num_experts=2)
    with pytest.raises(ValueError, match="model"):
        PHATGOOSEModule(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="model"):
        PHATGOOSEModule("not a module")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stage"):
        PHATGOOSEModule(mlp(), stage="train")  # type: ignore[arg-type]


# ---------------------------------------------------------------- effect: zero-shot routing on a digits task mixture


def _tasks():
    def rot(k):
        return lambda x: torch.rot90(x.view(-1, 8, 8), k, dims=(1, 2)).reshape(-1, 64)

    return [rot(1), rot(2), rot(3), lambda x: torch.flip(x.view(-1, 8, 8), dims=(2,)).reshape(-1, 64)]


def _phatgoose_on_digits(seed: int) -> dict[str, float]:
    """Base MLP on upright digits; one LoRA expert + gates per task (rotations, mirror); unlabeled task mixture."""
    sklearn = pytest.importorskip("sklearn.datasets")
    data, labels = sklearn.load_digits(return_X_y=True)
    x_all, y_all = torch.tensor(data, dtype=torch.float32) / 16.0, torch.tensor(labels)
    perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(seed))
    train, test = perm[:1200], perm[1200:]
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def fit(params, xs, ys, steps, lr):
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(net(xs), ys).backward()
            opt.step()

    fit(net.parameters(), x_all[train], y_all[train], 150, 1e-2)
    tasks = _tasks()
    to_phatgoose(net, num_experts=len(tasks), rank=8, alpha=16.0, top_k=2)
    for i, task in enumerate(tasks):  # each expert, then its gate, on its own task only
        fit(phatgoose_mode(net, "expert", i), task(x_all[train]), y_all[train], 150, 1e-2)
        fit(phatgoose_mode(net, "gate", i), task(x_all[train]), y_all[train], 60, 2e-2)
    xs = torch.cat([task(x_all[test]) for task in tasks])  # the held-out mixture, no task labels
    ys = y_all[test].repeat(len(tasks))
    task_of = torch.arange(len(tasks)).repeat_interleave(len(test))
    out: dict[str, float] = {}
    with torch.no_grad():

        def accuracy() -> float:
            return float((net(xs).argmax(-1) == ys).float().mean())

        phatgoose_mode(net, "base")
        out["base"] = accuracy()
        phatgoose_mode(net, "uniform")
        out["uniform"] = accuracy()
        correct = torch.zeros(len(ys), dtype=torch.bool)
        for i in range(len(tasks)):
            phatgoose_mode(net, "expert", i)
            mask = task_of == i
            correct[mask] = net(xs[mask]).argmax(-1) == ys[mask]
        out["oracle"] = float(correct.float().mean())
        for k in (1, 2):
            phatgoose_mode(net, "route", top_k=k)
            out[f"top{k}"] = accuracy()
            first = net[0]
            assert isinstance(first, PHATGOOSELinear)
            assert first.last_index is not None
            out[f"routed_right_top{k}"] = float((first.last_index[:, 0] == task_of).float().mean())
        # truly held-out tasks: transformations no expert was trained on
        noise = torch.Generator().manual_seed(100 + seed)
        held_out = [
            lambda x: x.view(-1, 8, 8).transpose(1, 2).reshape(-1, 64),
            lambda x: torch.flip(x.view(-1, 8, 8), dims=(1,)).reshape(-1, 64),
            lambda x: (tasks[0](x) + 0.2 * torch.randn(x.shape, generator=noise)).clamp(0, 1),
        ]
        xs = torch.cat([task(x_all[test]) for task in held_out])
        ys = y_all[test].repeat(len(held_out))
        phatgoose_mode(net, "base")
        out["held_out_base"] = accuracy()
        phatgoose_mode(net, "uniform")
        out["held_out_uniform"] = accuracy()
        best = 0.0
        for i in range(len(tasks)):
            phatgoose_mode(net, "expert", i)
            best = max(best, accuracy())
        out["held_out_best_expert"] = best  # chosen with the labels: an upper reference, not a method
        for k in (1, 2):
            phatgoose_mode(net, "route", top_k=k)
            out[f"held_out_top{k}"] = accuracy()
    return out


@pytest.fixture(scope="session")
def digits_results():
    return {seed: _phatgoose_on_digits(seed) for seed in (0, 1, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phatgoose_routes_zero_shot_on_a_digits_task_mixture(digits_results, seed):
    """Measured (base / uniform / top-1 / top-2 / oracle accuracy on the 4-task mixture, first-layer routing accuracy):

    seed 0: 0.273 / 0.154 / 0.487 / 0.410 / 0.903, routed right 0.504
    seed 1: 0.265 / 0.301 / 0.456 / 0.369 / 0.738, routed right 0.539
    seed 2: 0.265 / 0.289 / 0.514 / 0.387 / 0.847, routed right 0.559
    """
    r = digits_results[seed]
    assert r["top1"] >= r["base"] + 0.12, r  # measured margins 0.214 / 0.191 / 0.249
    assert r["top1"] >= r["uniform"] + 0.10, r  # 0.333 / 0.155 / 0.225
    assert r["top2"] >= r["base"] + 0.06, r  # the paper's k = 2: 0.137 / 0.104 / 0.122
    assert r["top2"] >= r["uniform"] + 0.04, r  # 0.256 / 0.068 / 0.098
    assert r["oracle"] >= r["top1"] + 0.15, r  # routing does not reach the oracle here: 0.416 / 0.282 / 0.333
    assert r["routed_right_top1"] >= 0.45, r  # chance is 0.25


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phatgoose_generalizes_zero_shot_to_held_out_tasks(digits_results, seed):
    """Same experts, a mixture of tasks none was trained on (transpose, upside-down, rot90 + noise).

    Measured (base / uniform / top-1 / top-2 / best single expert picked with the labels):
    seed 0: 0.223 / 0.173 / 0.283 / 0.255 / 0.374
    seed 1: 0.198 / 0.194 / 0.338 / 0.271 / 0.360
    seed 2: 0.200 / 0.214 / 0.396 / 0.289 / 0.418
    """
    r = digits_results[seed]
    assert r["held_out_top1"] >= r["held_out_base"] + 0.04, r  # measured margins 0.060 / 0.140 / 0.196
    assert r["held_out_top1"] >= r["held_out_uniform"] + 0.08, r  # 0.110 / 0.144 / 0.182
    assert r["held_out_top2"] >= r["held_out_base"] + 0.02, r  # 0.032 / 0.073 / 0.089
