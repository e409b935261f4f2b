"""Binary layers and MST compression (arXiv 2308.13735): exact tree-order inference, tree cost, regulariser."""

import math
import os

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from litmix.callbacks import MSTCompression
from litmix.data import split_batch
from litmix.functional.binary import (
    MSTTree,
    binarize,
    hamming_distances,
    mst_compress,
    mst_conv2d,
    mst_linear,
    mst_regularizer,
    sign_ste,
)
from litmix.functional.denseshift import unpack_codes
from litmix.layers import BinaryConv2d, BinaryLinear, to_binary
from litmix.testing import TinyClassifier, fit_tiny, make_trainer

# ----------------------------------------------------------------------------- exact reconstruction


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_order_linear_reproduces_the_binary_layer(seed):
    torch.manual_seed(seed)
    layer = BinaryLinear(48, 40, binary_activations=True)
    x = torch.randn(16, 48)
    # binary activations: integer sums, so tree order is bit-exact
    assert torch.equal(layer.forward_mst(x), layer(x).detach())
    # float activations: equal up to float summation order
    layer.binary_activations = False
    assert torch.allclose(layer.forward_mst(x), layer(x).detach(), atol=1e-5, rtol=0)
    # and it is not trivially so: each child reads only its Hamming-distance inputs
    tree = layer.mst()
    signs, _ = binarize(layer.weight.detach())
    assert torch.allclose(mst_linear(x, signs, tree), x @ signs.T, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", [0, 1])
def test_tree_order_conv_reproduces_the_binary_layer(seed):
    torch.manual_seed(seed)
    conv = BinaryConv2d(3, 8, 3, stride=2, padding=1, binary_activations=True)
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(conv.forward_mst(x), conv(x).detach())
    conv.binary_activations = False
    assert torch.allclose(conv.forward_mst(x), conv(x).detach(), atol=1e-5, rtol=0)


def test_binary_forward_is_alpha_times_signs_with_straight_through_gradient():
    torch.manual_seed(0)
    layer = BinaryLinear(5, 3)
    x = torch.randn(4, 5)
    alpha = layer.weight.detach().abs().mean(1)
    expected = F.linear(x, layer.weight.detach().sign() * alpha[:, None], layer.bias.detach())
    assert torch.allclose(layer(x), expected, atol=1e-6)
    layer(x).sum().backward()
    assert layer.weight.grad is not None
    assert layer.weight.grad.abs().sum() > 0
    z = torch.tensor([0.0, -3.0], requires_grad=True)
    sign_ste(z).sum().backward()
    assert z.grad.tolist() == [1.0, 0.0]  # clipped outside |x| <= 1


# ----------------------------------------------------------------------------- the tree


def _prim(dist):
    """Independent O(n^2) Prim: total weight of a minimum spanning tree."""
    n = len(dist)
    seen, best, total = {0}, dist[0].astype(float).copy(), 0
    best[0] = np.inf
    for _ in range(n - 1):
        j = int(np.argmin(best))
        total += best[j]
        seen.add(j)
        best = np.minimum(best, dist[j])
        best[list(seen)] = np.inf
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_is_a_minimum_spanning_tree_rooted_at_a_centre(seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(30, 20, generator=gen)
    w[5] = w[3]  # identical channels (distance 0) stay in the tree
    tree = mst_compress(w)
    dist = hamming_distances(w)
    assert (tree.parent == -1).sum() == 1
    assert tree.parent[tree.root] == -1
    assert sorted(tree.order.tolist()) == list(range(30))
    assert tree.order[0] == tree.root
    position = {int(c): i for i, c in enumerate(tree.order)}
    children = [j for j in range(30) if j != tree.root]
    assert all(position[int(tree.parent[j])] < position[j] for j in children)  # parents first
    edge_sum = sum(int(dist[j, tree.parent[j]]) for j in children)
    assert edge_sum == _prim(dist.numpy())
    assert tree.cost == 20 + edge_sum
    assert tree.dense_cost == 600
    assert tree.cost < tree.dense_cost
    # minimum depth: rooting anywhere else is not shallower
    import networkx as nx

    graph = nx.Graph([(j, int(tree.parent[j])) for j in children])
    assert tree.depth == min(nx.eccentricity(graph).values())


def test_identical_channels_cost_one_dense_row():
    w = torch.ones(6, 10)
    tree = mst_compress(w)
    assert tree.cost == 10
    assert tree.depth == 1
    assert mst_compress(torch.ones(1, 4)) == MSTTree(torch.tensor([-1]), torch.tensor([0]), 0, 4, 4, 0)


def test_regulariser_only_touches_differing_pairs_and_is_zero_on_agreeing_edges():
    w = torch.tensor([[0.5, -0.1, 0.3], [0.4, 0.2, 0.3]], requires_grad=True)
    parent = torch.tensor([-1, 0])
    loss = mst_regularizer(w, parent)
    loss.backward()
    assert w.grad[:, 0].abs().sum() == 0
    assert w.grad[:, 2].abs().sum() == 0
    assert w.grad[0, 1] != 0
    assert w.grad[1, 1] == 0
    same = torch.tensor([[0.5, 0.1], [0.4, 0.2]])
    assert mst_regularizer(same, torch.tensor([-1, 0])) == 0


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda: mst_compress(torch.ones(4)), "weight_sign"),
        (lambda: mst_compress([[1.0]]), "weight_sign"),
        (lambda: mst_linear(torch.randn(2, 5), torch.ones(3, 4), mst_compress(torch.ones(3, 4))), "x"),
        (lambda: mst_linear(torch.randn(2, 4), torch.ones(3, 4), mst_compress(torch.ones(2, 4))), "tree"),
        (lambda: mst_linear(torch.randn(2, 4), torch.ones(3, 4), "tree"), "tree"),
        (
            lambda: mst_linear(torch.randn(2, 4), torch.ones(3, 4), mst_compress(torch.ones(3, 4)), torch.ones(2)),
            "alpha",
        ),
        (lambda: mst_conv2d(torch.randn(1, 2, 4, 4), torch.ones(3, 4), mst_compress(torch.ones(3, 4))), "weight_sign"),
        (lambda: mst_regularizer(torch.ones(3, 4), torch.tensor([-1, 0])), "parent"),
        (lambda: binarize(torch.ones(3)), "weight"),
        (lambda: BinaryLinear(0, 3), "in_features"),
        (lambda: BinaryLinear(4, 3)(torch.randn(2, 5)), "in_features"),
        (lambda: BinaryConv2d(2, 3, 3)(torch.randn(1, 4, 5, 5)), "in_channels"),
        (lambda: BinaryLinear.from_float(nn.ReLU()), "layer"),
        (lambda: BinaryConv2d.from_float(nn.Conv2d(2, 2, (1, 3))), "layer"),
        (lambda: to_binary(nn.Sequential(nn.ReLU())), "model"),
        (lambda: MSTCompression(weight=-1.0), "weight"),
        (lambda: MSTCompression(update_every=0), "update_every"),
    ],
)
def test_bad_inputs_fail_naming_the_argument(call, arg):
    with pytest.raises((TypeError, ValueError), match=arg):
        call()


def test_callback_refuses_a_module_without_binary_layers():
    with pytest.raises(MisconfigurationException, match="to_binary"):
        fit_tiny([MSTCompression()], module=TinyClassifier())


def test_binary_checkpoint_keys_match_the_float_model():
    float_model = TinyClassifier()
    binary = to_binary(TinyClassifier())
    float_model.load_state_dict(binary.state_dict(), strict=True)


# ----------------------------------------------------------------------------- storage


def test_binary_weights_export_at_one_bit_each(tmp_path):
    torch.manual_seed(0)
    layer = BinaryLinear(256, 256, bias=False)
    exported = layer.export()
    assert exported["signs"].numel() == 256 * 256 // 8
    signs = unpack_codes(exported["signs"], 1, 256 * 256).view(256, 256).bool()
    assert torch.equal(signs, ~torch.signbit(layer.weight.detach()))
    torch.save({"signs": exported["signs"].clone(), "alpha": exported["alpha"]}, tmp_path / "bin.pt")
    torch.save(layer.weight.detach().clone(), tmp_path / "fp32.pt")
    ratio = os.path.getsize(tmp_path / "bin.pt") / os.path.getsize(tmp_path / "fp32.pt")
    # 8 KiB of bits + 1 KiB of float32 alphas vs 256 KiB, plus torch.save headers (measured 0.0413)
    assert ratio < 1 / 32 + 1 / 256 + 0.01


# ----------------------------------------------------------------------------- effect on digits


class _BinaryMLP(pl.LightningModule):
    """Digits MLP 64-256-256-10 with BatchNorm; the two hidden Linears binary, the classifier float."""

    def __init__(self):
        super().__init__()
        h = 256
        self.net = nn.Sequential(
            nn.Linear(64, h),
            nn.BatchNorm1d(h),
            nn.ReLU(),
            nn.Linear(h, h),
            nn.BatchNorm1d(h),
            nn.ReLU(),
            nn.Linear(h, 10),
        )
        to_binary(self.net, skip=["6"])

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, _ = split_batch(batch)
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def _fit(seed, weight, epochs=20):
    from litmix.datamodules.digits import DigitsDataModule

    pl.seed_everything(seed, verbose=False)
    model, dm = _BinaryMLP(), DigitsDataModule(batch_size=64, seed=seed)
    callbacks = [MSTCompression(weight=weight)] if weight else []
    make_trainer(max_epochs=epochs, callbacks=callbacks).fit(model, datamodule=dm)
    dm.setup("validate")
    model.eval()
    xs, ys = zip(*[(b[0], b[1]) for b in dm.val_dataloader()], strict=True)
    with torch.no_grad():
        acc = (model(torch.cat(xs)).argmax(1) == torch.cat(ys)).float().mean().item()
    trees = [m.mst() for m in model.net if isinstance(m, BinaryLinear)]
    return model, acc, sum(t.cost for t in trees), sum(t.dense_cost for t in trees)


@pytest.fixture(scope="module")
def mst_runs():
    return {"plain": _fit(0, 0.0), "reg": _fit(0, 0.003)}


@pytest.mark.slow
def test_trained_binary_mlp_tree_is_cheaper_than_dense_and_exact(mst_runs):
    """Measured (seeds 0/1/2): accuracy 0.978/0.980/0.987, tree cost 0.381/0.380/0.381 of C_out * C_in."""
    model, acc, cost, dense = mst_runs["plain"]
    assert acc > 0.95
    assert cost < 0.5 * dense
    model.eval()
    x = torch.randn(32, 64)
    layer = model.net[3]
    h = torch.relu(model.net[1](model.net[0](x))).detach()
    assert torch.allclose(layer.forward_mst(h), layer(h).detach(), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_regulariser_lowers_tree_cost_by_ten_percent_at_two_points(mst_runs):
    """Measured (weight 0.003, 20 epochs, seeds 0/1/2): cost -14.3/-14.8/-14.8 %, accuracy -0.19/-0.74/-0.37 points."""
    _, acc0, cost0, _ = mst_runs["plain"]
    _, acc1, cost1, _ = mst_runs["reg"]
    assert cost1 <= 0.9 * cost0
    assert acc1 >= acc0 - 0.02
    assert math.isfinite(acc1)


def test_signed_zeros_are_binarized_consistently_everywhere():
    """The sign bit decides: +0.0 -> +1, -0.0 -> -1 in the forward, the tree, the export and the regulariser."""
    layer = BinaryLinear(4, 3, bias=False, binary_activations=True)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, -0.0, 1.0, -1.0], [-0.0, -0.0, 1.0, 1.0], [0.0, 0.0, -1.0, 1.0]]))
    x = torch.tensor([[1.0, 2.0, -3.0, 4.0]])
    assert torch.equal(layer.forward_mst(x), layer(x).detach())
    signs = unpack_codes(layer.export()["signs"], 1, 12).view(3, 4)
    assert signs[0].tolist() == [1, 0, 1, 0]
    assert hamming_distances(layer.weight)[0].tolist() == [0, 2, 3]
