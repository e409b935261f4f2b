"""Auto-GNN: a REINFORCE controller with a conservative explorer over per-layer GNN choices.

Zhou, Song, Huang & Hu, "Auto-GNN: Neural Architecture Search of Graph Neural Networks"
(https://arxiv.org/abs/1909.03184). The search evaluates *child* GNNs on one node-classification graph
(Cora / CiteSeer full batch); the controller learns from their validation accuracy, and child models inherit
weights only between *homogeneous* layers (the paper's constrained parameter sharing).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.nas._search_space import space_entries
from litmix.registry import register
from litmix.validation import check_bool, check_float, check_int

__all__ = ["DEFAULT_GNN_SPACE", "AutoGNNResult", "AutoGNNSearch", "GNNLayer", "build_gnn", "prepare_graph"]

AUTO_GNN_PAPER = "Auto-GNN: Neural Architecture Search of Graph Neural Networks (https://arxiv.org/abs/1909.03184)"

DEFAULT_GNN_SPACE: dict[str, tuple[Any, ...]] = {
    "attention": ("const", "gcn", "gat"),
    "aggregation": ("sum", "mean", "max"),
    "activation": ("relu", "elu", "tanh", "sigmoid", "identity"),
    "hidden": (4, 8, 16, 32, 64),
    "heads": (1, 2, 4),
}
"""Per-layer decision classes and their values (the paper's classes, trimmed to what is cheap on CPU)."""

_KNOWN_VALUES: dict[str, tuple[Any, ...]] = {
    "attention": ("const", "gcn", "gat"),
    "aggregation": ("sum", "mean", "max"),
    "activation": ("relu", "elu", "tanh", "sigmoid", "identity", "leaky_relu", "softplus", "relu6"),
}
_ACTIVATIONS: dict[str, Any] = {
    "relu": F.relu,
    "elu": F.elu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
    "leaky_relu": F.leaky_relu,
    "softplus": F.softplus,
    "relu6": F.relu6,
}
#: Decision classes that do not exist in the output layer (its width is the number of classes, no activation).
_HIDDEN_ONLY = ("hidden", "activation")


def _check_space(owner: str, space: Any) -> dict[str, tuple[Any, ...]]:
    """Validate a search space: known classes, non-empty lists of known values (ints >= 1 for widths/heads)."""
    out, entries = space_entries(owner, space, DEFAULT_GNN_SPACE)
    for key, values in entries:
        if key in _KNOWN_VALUES:
            bad = [v for v in values if not isinstance(v, str) or v not in _KNOWN_VALUES[key]]
            if bad:
                raise ValueError(
                    f"{owner}(search_space={space!r}): unknown {key} names {bad} in search_space; "
                    f"known: {_KNOWN_VALUES[key]}"
                )
        else:
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1024]
            if bad:
                raise ValueError(
                    f"{owner}(search_space={space!r}): search_space[{key!r}] needs ints in [1, 1024], got {bad}"
                )
        if len(set(values)) != len(values):
            raise ValueError(f"{owner}(search_space={space!r}): search_space[{key!r}] repeats a value")
        out[key] = values
    return out


# ------------------------------------------------------------------------------------------------ the graph
@dataclass
class _Graph:
    x: Tensor  # dense or sparse COO features
    y: Tensor
    src: Tensor  # with self loops
    dst: Tensor
    gcn_norm: Tensor  # (E,) symmetric normalisation D^-1/2 (A+I) D^-1/2
    deg: Tensor  # (N,) in-degree with the self loop
    adj: dict[str, Tensor]  # sparse CSR propagation matrices for the edge-weight-only layers
    train: Tensor
    val: Tensor
    test: Tensor
    num_nodes: int
    num_features: int
    num_classes: int


def prepare_graph(data: Any, owner: str = "prepare_graph") -> _Graph:
    """Self loops, GCN edge weights and sparse features of a node-classification graph (PyG ``Data`` or dict).

    Args:
        data: a ``torch_geometric.data.Data`` (or a mapping) with ``x``, ``y``, ``edge_index`` and bool
            ``train_mask`` / ``val_mask`` / ``test_mask``.
        owner: name used in error messages.

    Raises:
        ValueError: naming ``data`` when it has no node features ``x`` (or no labels, edges or masks), or when
            the masks select no training / validation node.

    Example:
        >>> from litmix.datamodules.graph import _tiny_graph
        >>> g = prepare_graph(_tiny_graph())
        >>> g.num_nodes, g.num_features, g.num_classes, int(g.train.numel())
        (48, 8, 3, 18)
    """

    def get(key: str) -> Any:
        return data.get(key) if isinstance(data, Mapping) else getattr(data, key, None)

    x = get("x")
    if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{owner}(data=...): data has no node features: data.x must be a (num_nodes, F>0) tensor")
    n = int(x.shape[0])
    for key in ("y", "edge_index", "train_mask", "val_mask"):
        if not isinstance(get(key), Tensor):
            raise ValueError(f"{owner}(data=...): data lacks the tensor {key!r} (needs x, y, edge_index, masks)")
    y, ei = get("y"), get("edge_index")
    if y.shape[0] != n or y.is_floating_point():
        raise ValueError(f"{owner}(data=...): data.y must hold {n} integer labels")
    if ei.dim() != 2 or ei.shape[0] != 2 or (ei.numel() and (int(ei.min()) < 0 or int(ei.max()) >= n)):
        raise ValueError(f"{owner}(data=...): data.edge_index must be a (2, E) tensor of node ids in [0, {n})")
    masks = {}
    for key in ("train_mask", "val_mask", "test_mask"):
        mask = get(key)
        masks[key] = mask.nonzero().flatten() if isinstance(mask, Tensor) else torch.zeros(0, dtype=torch.long)
    if masks["train_mask"].numel() == 0 or masks["val_mask"].numel() == 0:
        raise ValueError(f"{owner}(data=...): data.train_mask and data.val_mask must select at least one node")
    loops = torch.arange(n)
    keep = ei[0] != ei[1]
    src = torch.cat([ei[0][keep], loops])
    dst = torch.cat([ei[1][keep], loops])
    deg = torch.zeros(n).index_add_(0, dst, torch.ones(dst.numel()))
    inv = deg.pow(-0.5)
    xf = x.float()
    if not xf.is_sparse and (xf != 0).float().mean() < 0.1:
        xf = xf.to_sparse()
    norm = inv[src] * inv[dst]
    adj = {}
    for att, w in (("const", torch.ones(dst.numel())), ("gcn", norm)):
        for agg, scale in (("sum", torch.ones(dst.numel())), ("mean", 1.0 / deg[dst])):
            adj[f"{att}-{agg}"] = torch.sparse_coo_tensor(
                torch.stack([dst, src]), w * scale, (n, n), check_invariants=True
            ).coalesce()
    return _Graph(
        x=xf,
        y=y.long(),
        src=src,
        dst=dst,
        gcn_norm=norm,
        deg=deg,
        adj=adj,
        train=masks["train_mask"],
        val=masks["val_mask"],
        test=masks["test_mask"],
        num_nodes=n,
        num_features=int(x.shape[1]),
        num_classes=int(y.max()) + 1,
    )


# ------------------------------------------------------------------------------------------------ child models
class GNNLayer(nn.Module):
    """One searched message-passing layer: linear map, attention (const / gcn / gat), aggregation, activation.

    ``h = x W`` split into ``heads`` heads; edge weights ``α_ij`` are 1 (const), the GCN normalisation
    ``1/sqrt(d_i d_j)`` (gcn) or GAT's softmax of ``LeakyReLU(a_s·h_j + a_d·h_i)`` over ``i``'s neighbours (gat);
    messages ``α_ij h_j`` are summed / averaged / max-pooled (self loops included); heads are concatenated (hidden
    layers) or averaged (the output layer), then bias and activation.

    Raises:
        ValueError: for an unknown attention, aggregation or activation name.

    Example:
        >>> from litmix.datamodules.graph import _tiny_graph
        >>> g = prepare_graph(_tiny_graph())
        >>> layer = GNNLayer(8, 4, heads=2, attention="gat", aggregation="mean", activation="elu", concat=True)
        >>> tuple(layer(g.x, g).shape)
        (48, 8)
    """

    def __init__(
        self, in_dim: int, out_dim: int, heads: int, attention: str, aggregation: str, activation: str, concat: bool
    ) -> None:
        super().__init__()
        for key, value in (("attention", attention), ("aggregation", aggregation), ("activation", activation)):
            if value not in _KNOWN_VALUES[key]:
                raise ValueError(f"GNNLayer({key}={value!r}): {key} must be one of {_KNOWN_VALUES[key]}")
        self.in_dim, self.out_dim, self.heads = in_dim, out_dim, heads
        self.attention, self.aggregation, self.activation, self.concat = attention, aggregation, activation, concat
        self.weight = nn.Parameter(torch.empty(in_dim, heads * out_dim))
        nn.init.xavier_uniform_(self.weight)
        if attention == "gat":
            self.att_src = nn.Parameter(torch.empty(1, heads, out_dim))
            self.att_dst = nn.Parameter(torch.empty(1, heads, out_dim))
            nn.init.xavier_uniform_(self.att_src)
            nn.init.xavier_uniform_(self.att_dst)
        self.bias = nn.Parameter(torch.zeros(heads * out_dim if concat else out_dim))

    def signature(self) -> tuple[Any, ...]:
        """The homogeneity key: equal keys have equal parameter shapes, attention and activation."""
        return (self.in_dim, self.out_dim, self.heads, self.attention, self.activation, self.concat)

    def forward(self, x: Tensor, g: _Graph) -> Tensor:
        """Messages along ``g``'s edges (self loops included) -> ``(N, heads * out_dim)`` or ``(N, out_dim)``."""
        from torch_geometric.utils import scatter, softmax

        h = torch.sparse.mm(x, self.weight) if x.is_sparse else x @ self.weight
        if self.attention != "gat" and self.aggregation != "max":  # a fixed weighted adjacency: one SpMM
            out = torch.sparse.mm(g.adj[f"{self.attention}-{self.aggregation}"], h)
            out = out if self.concat else out.view(g.num_nodes, self.heads, self.out_dim).mean(1)
            return _ACTIVATIONS[self.activation](out + self.bias)
        h = h.view(-1, self.heads, self.out_dim)
        if self.attention == "const":
            alpha = h.new_ones(g.src.numel(), self.heads)
        elif self.attention == "gcn":
            alpha = g.gcn_norm.unsqueeze(-1).expand(-1, self.heads)
        else:
            a_s = (h * self.att_src).sum(-1)
            a_d = (h * self.att_dst).sum(-1)
            alpha = softmax(F.leaky_relu(a_s[g.src] + a_d[g.dst], 0.2), g.dst, num_nodes=g.num_nodes)
            alpha = F.dropout(alpha, 0.5, self.training)
        msg = h[g.src] * alpha.unsqueeze(-1)
        out = scatter(msg, g.dst, dim=0, dim_size=g.num_nodes, reduce=self.aggregation)
        out = out.reshape(g.num_nodes, -1) if self.concat else out.mean(1)
        return _ACTIVATIONS[self.activation](out + self.bias)


class _ChildGNN(nn.Module):
    def __init__(self, layers: list[GNNLayer], dropout: float) -> None:
        super().__init__()
        self.layers, self.dropout = nn.ModuleList(layers), dropout

    def forward(self, g: _Graph) -> Tensor:
        h = g.x
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = F.dropout(h, self.dropout, self.training)
            h = layer(h, g)
        return h


def build_gnn(
    arch: Sequence[Mapping[str, Any]], num_features: int, num_classes: int, dropout: float = 0.5
) -> nn.Module:
    """A child GNN from per-layer choices; the last layer outputs ``num_classes`` logits (heads averaged).

    The output layer ignores ``hidden`` and ``activation`` (its width is the number of classes, no activation).

    Raises:
        ValueError: for an empty architecture or unknown names in it.

    Example:
        >>> arch = [{"attention": "gcn", "aggregation": "sum", "activation": "relu", "hidden": 16, "heads": 1},
        ...         {"attention": "gat", "aggregation": "sum", "heads": 2}]
        >>> net = build_gnn(arch, num_features=8, num_classes=3)
        >>> [layer.signature() for layer in net.layers]
        [(8, 16, 1, 'gcn', 'relu', True), (16, 3, 2, 'gat', 'identity', False)]
    """
    if not arch:
        raise ValueError("build_gnn(arch=[]): arch needs at least one layer")
    layers: list[GNNLayer] = []
    in_dim = num_features
    for i, choice in enumerate(arch):
        last = i == len(arch) - 1
        heads = int(choice.get("heads", 1))
        out = num_classes if last else int(choice["hidden"])
        act = "identity" if last else str(choice["activation"])
        layer = GNNLayer(in_dim, out, heads, str(choice["attention"]), str(choice["aggregation"]), act, not last)
        layers.append(layer)
        in_dim = out * heads
    return _ChildGNN(layers, dropout)


def _train_child(
    net: nn.Module, g: _Graph, epochs: int, lr: float, weight_decay: float, seed: int
) -> tuple[float, float]:
    """Full-batch Adam training; returns (best validation accuracy, test accuracy at that epoch)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
        best_val, best_test = -1.0, 0.0
        for _ in range(epochs):
            net.train()
            opt.zero_grad()
            loss = F.cross_entropy(net(g)[g.train], g.y[g.train])
            if not torch.isfinite(loss):
                break
            loss.backward()
            opt.step()
            net.eval()
            with torch.no_grad():
                pred = net(g).argmax(-1)
            val = float((pred[g.val] == g.y[g.val]).float().mean())
            if val > best_val:
                test = float((pred[g.test] == g.y[g.test]).float().mean()) if g.test.numel() else float("nan")
                best_val, best_test = val, test
    return max(best_val, 0.0), best_test


# ------------------------------------------------------------------------------------------------ the search
@dataclass
class AutoGNNResult:
    """Outcome of a search.

    Attributes:
        best_arch: per-layer choices of the best child (by validation accuracy during the search).
        best_val: its validation accuracy during the search.
        archs: every evaluated child, in order.
        val_accs: their validation accuracies.
        inherited: per child, how many layers inherited weights (constrained parameter sharing).
    """

    best_arch: list[dict[str, Any]]
    best_val: float
    archs: list[list[dict[str, Any]]] = field(default_factory=list)
    val_accs: list[float] = field(default_factory=list)
    inherited: list[int] = field(default_factory=list)


@register("utility", "nas", paper=AUTO_GNN_PAPER, module="litmix.nas")
class AutoGNNSearch:
    """Auto-GNN: RL-controlled GNN architecture search with constrained parameter sharing.

    Zhou et al., "Auto-GNN: Neural Architecture Search of Graph Neural Networks" (https://arxiv.org/abs/1909.03184).
    Each of ``num_layers`` layers chooses an attention function, an aggregation, an activation, a hidden width and
    a number of heads (``search_space``; the output layer's width is the number of classes). The *controller*
    holds one categorical distribution per (layer, class) and, with the paper's **conservative explorer**
    (``conservative=True``), a *selector* distribution over classes: each step modifies the best architecture so
    far in one class only (the selector picks the class, the controller re-samples that class in every layer),
    so the search moves in small steps. With ``conservative=False`` each child is sampled whole from the
    controller (plain RL). Both are trained by REINFORCE with reward ``val_acc - b`` and a moving-average
    baseline ``b <- decay * b + (1 - decay) * val_acc``.

    **Constrained parameter sharing** (``share_weights=True``): two layers are *homogeneous* when their weight
    shapes, attention function and activation function are equal (aggregation holds no parameters); a child's
    hidden layer starts from the weights of the best earlier child's homogeneous layer at the same depth, never
    from a heterogeneous one, and the output layer is always trained from scratch. Children train full batch with
    Adam for ``epochs`` epochs (``shared_epochs`` when every hidden layer inherited), reward = best validation
    accuracy. Duplicate children are re-drawn (up to 20 tries) so the budget counts distinct architectures.

    The search is seeded (child ``t`` trains under seed ``seed * 100003 + t``; the controller has its own
    generator) and **resumable**: :meth:`state_dict` / :meth:`load_state_dict` hold the controller, baseline,
    history, shared weights and generator state, and :meth:`search` continues up to ``budget`` children.
    :meth:`random_search` is the baseline of the same budget (uniform distinct children, no sharing) and
    :meth:`evaluate` retrains one architecture from scratch over seeds.

    Args:
        budget: number of child evaluations (>= 1).
        num_layers: GNN layers including the output layer (>= 1).
        search_space: class -> list of values, replacing the defaults of :data:`DEFAULT_GNN_SPACE` per class.
        epochs: training epochs of a child (>= 1).
        shared_epochs: epochs of a child whose hidden layers all inherited weights; ``None`` = ``epochs``.
        lr: Adam learning rate of the children (> 0).
        weight_decay: their weight decay (>= 0).
        dropout: dropout between layers, in [0, 1).
        controller_lr: learning rate of the controller's logits (> 0).
        baseline_decay: moving-average decay of the reward baseline, in [0, 1).
        conservative: use the conservative explorer (modify the best child in one class per step).
        share_weights: constrained parameter sharing between homogeneous layers.
        seed: seed of the controller and of the child trainings (>= 0).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for ``budget < 1``, an empty or unknown search-space class, unknown attention / aggregation /
            activation names, widths outside [1, 1024], out-of-range rates; in :meth:`search`, for a graph without
            node features (naming ``data``).

    Example:
        >>> from litmix.datamodules.graph import _tiny_graph
        >>> search = AutoGNNSearch(budget=3, epochs=5, seed=0)
        >>> result = search.search(_tiny_graph())
        >>> len(result.archs), len(result.best_arch), 0.0 <= result.best_val <= 1.0
        (3, 2, True)
    """

    def __init__(
        self,
        budget: int = 12,
        num_layers: int = 2,
        search_space: dict[str, list[Any]] | None = None,
        epochs: int = 60,
        shared_epochs: int | None = None,
        lr: float = 0.01,
        weight_decay: float = 5e-4,
        dropout: float = 0.5,
        controller_lr: float = 0.2,
        baseline_decay: float = 0.8,
        conservative: bool = True,
        share_weights: bool = True,
        seed: int = 0,
    ) -> None:
        owner = "AutoGNNSearch"
        self.budget = check_int(owner, "budget", budget, low=1)
        self.num_layers = check_int(owner, "num_layers", num_layers, low=1, high=16)
        self.space = _check_space(owner, search_space)
        self.epochs = check_int(owner, "epochs", epochs, low=1)
        self.shared_epochs = check_int(owner, "shared_epochs", shared_epochs, low=1, allow_none=True)
        self.lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        self.weight_decay = check_float(owner, "weight_decay", weight_decay, low=0.0)
        self.dropout = check_float(owner, "dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.controller_lr = check_float(owner, "controller_lr", controller_lr, low=0.0, low_open=True)
        self.baseline_decay = check_float(owner, "baseline_decay", baseline_decay, low=0.0, high=1.0, high_open=True)
        self.conservative = check_bool(owner, "conservative", conservative)
        self.share_weights = check_bool(owner, "share_weights", share_weights)
        self.seed = check_int(owner, "seed", seed, low=0, high=2**31 - 1)
        self.classes = [k for k in self.space if len(self.space[k]) > 1] or list(self.space)
        self._reset()

    def _reset(self) -> None:
        self.logits = {
            (layer, k): torch.zeros(len(self.space[k]))
            for layer in range(self.num_layers)
            for k in self.space
            if not (layer == self.num_layers - 1 and k in _HIDDEN_ONLY)
        }
        self.selector = torch.zeros(len(self.classes))
        self.baseline: float | None = None
        self.generator = torch.Generator().manual_seed(self.seed)
        self.archs: list[list[dict[str, Any]]] = []
        self.val_accs: list[float] = []
        self.inherited: list[int] = []
        self.shared: dict[tuple[Any, ...], tuple[float, dict[str, Tensor]]] = {}

    # --------------------------------------------------------------------------------------------- controller
    def _keys(self, layer: int) -> list[str]:
        return [k for k in self.space if (layer, k) in self.logits]

    def _draw(self, logits: Tensor) -> int:
        return int(torch.multinomial(torch.softmax(logits, 0), 1, generator=self.generator))

    def _propose(self) -> tuple[list[dict[str, Any]], list[tuple[str, Any, int]]]:
        """A child and its decisions ``(kind, key, index)`` for the policy gradient."""
        if not self.conservative or not self.archs:
            decisions: list[tuple[str, Any, int]] = []
            arch = []
            for layer in range(self.num_layers):
                choice = {}
                for k in self._keys(layer):
                    idx = self._draw(self.logits[(layer, k)])
                    decisions.append(("ctrl", (layer, k), idx))
                    choice[k] = self.space[k][idx]
                arch.append(choice)
            return arch, decisions
        best = self.archs[max(range(len(self.val_accs)), key=lambda i: self.val_accs[i])]
        c = self._draw(self.selector)
        cls = self.classes[c]
        decisions = [("sel", None, c)]
        arch = copy.deepcopy(best)
        for layer in range(self.num_layers):
            if (layer, cls) in self.logits:
                idx = self._draw(self.logits[(layer, cls)])
                decisions.append(("ctrl", (layer, cls), idx))
                arch[layer][cls] = self.space[cls][idx]
        return arch, decisions

    def _reinforce(self, decisions: list[tuple[str, Any, int]], reward: float) -> None:
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        for kind, key, idx in decisions:
            logits = self.selector if kind == "sel" else self.logits[key]
            grad = -torch.softmax(logits, 0)  # d log p(idx) / d logits = onehot - softmax
            grad[idx] += 1.0
            logits += self.controller_lr * advantage * grad

    # --------------------------------------------------------------------------------------------- children
    def _child(self, arch: list[dict[str, Any]], g: _Graph, step: int, share: bool) -> tuple[float, float, int]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 100003 + step)
            net = build_gnn(arch, g.num_features, g.num_classes, self.dropout)
        layers: list[GNNLayer] = list(net.layers)  # type: ignore[arg-type]
        inherited = 0
        if share:
            for depth, layer in enumerate(layers[:-1]):  # the output layer never inherits
                stored = self.shared.get((depth, *layer.signature()))
                if stored is not None:
                    layer.load_state_dict(stored[1])
                    inherited += 1
        hidden = len(layers) - 1
        epochs = (
            self.shared_epochs if (share and hidden and inherited == hidden and self.shared_epochs) else self.epochs
        )
        val, test = _train_child(net, g, epochs, self.lr, self.weight_decay, self.seed * 100003 + step)
        if share:
            for depth, layer in enumerate(layers[:-1]):
                key = (depth, *layer.signature())
                if key not in self.shared or self.shared[key][0] <= val:
                    self.shared[key] = (val, {n: p.detach().clone() for n, p in layer.state_dict().items()})
        return val, test, inherited

    def step(self, data: Any) -> float:
        """Propose, train and score one child, update the controller; returns the child's validation accuracy.

        Raises:
            ValueError: for a graph without node features (naming ``data``).
        """
        g = data if isinstance(data, _Graph) else prepare_graph(data, "AutoGNNSearch.search")
        seen = {repr(a) for a in self.archs}
        for _ in range(20):
            arch, decisions = self._propose()
            if repr(arch) not in seen:
                break
            self._reinforce(decisions, self.baseline if self.baseline is not None else 0.0)  # no signal
        val, _, inherited = self._child(arch, g, len(self.archs), self.share_weights)
        self._reinforce(decisions, val)
        self.archs.append(arch)
        self.val_accs.append(val)
        self.inherited.append(inherited)
        return val

    def search(self, data: Any, budget: int | None = None) -> AutoGNNResult:
        """Evaluate children until ``budget`` (default the constructor's) have been evaluated, then report.

        Resuming: a search restored with :meth:`load_state_dict` continues where it stopped.

        Args:
            data: the graph (PyG ``Data`` or a mapping with ``x``, ``y``, ``edge_index`` and masks).
            budget: total number of children (>= 1); default the constructor's ``budget``.

        Raises:
            ValueError: for ``budget < 1`` or a graph without node features, naming the argument.
        """
        total = self.budget if budget is None else check_int("AutoGNNSearch.search", "budget", budget, low=1)
        g = prepare_graph(data, "AutoGNNSearch.search")
        while len(self.archs) < total:
            self.step(g)
        return self.result()

    def result(self) -> AutoGNNResult:
        """The search so far as an :class:`AutoGNNResult`.

        Raises:
            ValueError: before any child was evaluated.
        """
        if not self.archs:
            raise ValueError("AutoGNNSearch.result: no child evaluated yet; call search(data) first")
        best = max(range(len(self.val_accs)), key=lambda i: self.val_accs[i])
        return AutoGNNResult(
            copy.deepcopy(self.archs[best]),
            self.val_accs[best],
            copy.deepcopy(self.archs),
            list(self.val_accs),
            list(self.inherited),
        )

    def random_search(self, data: Any, budget: int | None = None, seed: int | None = None) -> AutoGNNResult:
        """Random-search baseline: ``budget`` distinct uniform children trained from scratch like the search's.

        Does not touch the search state. Raises ``ValueError`` like :meth:`search`.
        """
        total = self.budget if budget is None else check_int("AutoGNNSearch.random_search", "budget", budget, low=1)
        seed = self.seed if seed is None else check_int("AutoGNNSearch.random_search", "seed", seed, low=0)
        g = prepare_graph(data, "AutoGNNSearch.random_search")
        rng = torch.Generator().manual_seed(seed + 7919)
        archs: list[list[dict[str, Any]]] = []
        vals: list[float] = []
        keep = self.seed
        self.seed = seed
        try:
            while len(archs) < total:
                for _ in range(20):
                    arch = [
                        {
                            k: self.space[k][int(torch.randint(len(self.space[k]), (1,), generator=rng))]
                            for k in self._keys(layer)
                        }
                        for layer in range(self.num_layers)
                    ]
                    if repr(arch) not in {repr(a) for a in archs}:
                        break
                val, _, _ = self._child(arch, g, len(archs), share=False)
                archs.append(arch)
                vals.append(val)
        finally:
            self.seed = keep
        best = max(range(len(vals)), key=lambda i: vals[i])
        return AutoGNNResult(copy.deepcopy(archs[best]), vals[best], archs, vals, [0] * len(archs))

    def evaluate(
        self, arch: Sequence[Mapping[str, Any]], data: Any, seeds: Sequence[int] = (0, 1, 2)
    ) -> dict[str, float]:
        """Retrain ``arch`` from scratch once per seed: mean validation and test accuracy (test at best val).

        Raises:
            ValueError: for an empty ``seeds`` or a graph without node features.
        """
        if not seeds:
            raise ValueError("AutoGNNSearch.evaluate(seeds=()): seeds must not be empty")
        g = prepare_graph(data, "AutoGNNSearch.evaluate")
        vals, tests = [], []
        for s in seeds:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(10_000 + int(s))
                net = build_gnn(list(arch), g.num_features, g.num_classes, self.dropout)
            val, test = _train_child(net, g, self.epochs, self.lr, self.weight_decay, 10_000 + int(s))
            vals.append(val)
            tests.append(test)
        return {"val": sum(vals) / len(vals), "test": sum(tests) / len(tests)}

    # --------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: controller logits, selector, baseline, history, shared weights, RNG."""
        return {
            "version": 1,
            "logits": {f"{layer}:{k}": v.clone() for (layer, k), v in self.logits.items()},
            "selector": self.selector.clone(),
            "baseline": self.baseline,
            "generator": self.generator.get_state(),
            "archs": copy.deepcopy(self.archs),
            "val_accs": list(self.val_accs),
            "inherited": list(self.inherited),
            "shared": [(list(k), v, {n: t.clone() for n, t in sd.items()}) for k, (v, sd) in self.shared.items()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (same search space and ``num_layers``).

        Raises:
            ValueError: for a newer state version or a state from another search space.
        """
        if int(state.get("version", 0)) > 1:
            raise ValueError(f"AutoGNNSearch.load_state_dict: state version {state['version']} is newer than 1")
        logits = {(int(k.split(":")[0]), k.split(":", 1)[1]): v.clone() for k, v in state["logits"].items()}
        if set(logits) != set(self.logits) or any(v.shape != self.logits[k].shape for k, v in logits.items()):
            raise ValueError("AutoGNNSearch.load_state_dict: the state is from another search space or depth")
        self.logits = logits
        self.selector = state["selector"].clone()
        self.baseline = state["baseline"]
        self.generator.set_state(state["generator"])
        self.archs = copy.deepcopy(state["archs"])
        self.val_accs = list(state["val_accs"])
        self.inherited = list(state["inherited"])
        self.shared = {tuple(k): (v, dict(sd)) for k, v, sd in state["shared"]}

    @classmethod
    def example(cls) -> AutoGNNSearch:
        """A 3-child search with 5-epoch children (the class example).

        Example:
            >>> AutoGNNSearch.example().budget
            3
        """
        return cls(budget=3, epochs=5, seed=0)
