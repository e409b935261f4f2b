"""FlexiBERT: a heterogeneous transformer design space, a graph-similarity embedding and a BOSHNAS-style search.

Tuli, Dedhia, Tuli & Jha, "FlexiBERT: Are Current Transformer Architecture Search Spaces Flexible Enough?"
(JAIR 2023, https://arxiv.org/abs/2205.11656), at CPU scale on a character-level language model.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litmix.nas._search_space import space_entries
from litmix.registry import register
from litmix.validation import check_float, check_int

__all__ = ["DEFAULT_FLEXI_SPACE", "FlexiBERTSearch", "FlexiLM", "flexi_param_count", "wl_embedding"]

FLEXIBERT_PAPER = (
    "FlexiBERT: Are Current Transformer Architecture Search Spaces Flexible Enough? (https://arxiv.org/abs/2205.11656)"
)
DEFAULT_FLEXI_SPACE: dict[str, tuple[Any, ...]] = {
    "attention": ("sa", "lt", "conv"),
    "hidden": (32, 48, 64),
    "ff": (64, 128, 256),
    "heads": (2, 4),
}
"""Per-layer choices: token mixing (self-attention / linear transform / convolution), width, FF width, heads."""
_ATTENTION = ("sa", "lt", "conv")


def _check_arch(owner: str, arch: Any) -> list[dict[str, Any]]:
    if isinstance(arch, str) or not isinstance(arch, Sequence) or not arch:
        raise ValueError(f"{owner}(arch={arch!r}): arch must be a non-empty list of per-layer dicts")
    out = []
    for layer in arch:
        if not isinstance(layer, Mapping) or set(layer) != set(DEFAULT_FLEXI_SPACE):
            raise ValueError(f"{owner}(arch={arch!r}): every layer needs exactly the keys {tuple(DEFAULT_FLEXI_SPACE)}")
        if layer["attention"] not in _ATTENTION:
            raise ValueError(
                f"{owner}(arch={arch!r}): unknown attention names {layer['attention']!r}; known {_ATTENTION}"
            )
        for key in ("hidden", "ff", "heads"):
            v = layer[key]
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
                raise ValueError(f"{owner}(arch={arch!r}): {key} must be an int in [1, 4096]")
        if layer["hidden"] % layer["heads"]:
            raise ValueError(f"{owner}(arch={arch!r}): hidden {layer['hidden']} is not divisible by heads")
        out.append(dict(layer))
    return out


def _check_space(owner: str, space: Any) -> dict[str, tuple[Any, ...]]:
    """Known classes, non-empty value lists, known attention names, sizes in [1, 4096]."""
    out, entries = space_entries(owner, space, DEFAULT_FLEXI_SPACE)
    for key, values in entries:
        if key == "attention":
            bad = [v for v in values if v not in _ATTENTION]
            if bad:
                raise ValueError(
                    f"{owner}(search_space={space!r}): unknown attention names {bad} in search_space; "
                    f"known {_ATTENTION}"
                )
        elif any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096 for v in values):
            raise ValueError(f"{owner}(search_space={space!r}): search_space[{key!r}] needs ints in [1, 4096]")
        out[key] = values
    if not any(h % n == 0 for h in out["hidden"] for n in out["heads"]):
        raise ValueError(f"{owner}(search_space={space!r}): no hidden width in search_space is divisible by a heads")
    return out


class _Mixer(nn.Module):
    """Causal token mixing: multi-head self-attention, a learned causal linear transform, or a depthwise conv."""

    def __init__(self, kind: str, hidden: int, heads: int, block_size: int, kernel: int = 5) -> None:
        super().__init__()
        self.kind, self.heads = kind, heads
        if kind == "sa":
            self.qkv = nn.Linear(hidden, 3 * hidden)
        elif kind == "lt":  # FNet's fixed Fourier mixing is not causal: a learned lower-triangular mixing per head
            mix = torch.tril(torch.ones(block_size, block_size))
            self.mix = nn.Parameter((mix / mix.sum(1, keepdim=True)).repeat(heads, 1, 1))
        else:
            self.kernel = kernel
            self.conv = nn.Conv1d(hidden, hidden, kernel, groups=hidden)
        self.out = nn.Linear(hidden, hidden)

    def forward(self, x: Tensor) -> Tensor:
        b, t, h = x.shape
        if self.kind == "sa":
            q, k, v = self.qkv(x).view(b, t, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, h)
        elif self.kind == "lt":
            mix = torch.tril(self.mix[:, :t, :t])
            y = torch.einsum("nts,bnsd->bntd", mix, x.view(b, t, self.heads, h // self.heads).transpose(1, 2))
            y = y.transpose(1, 2).reshape(b, t, h)
        else:
            y = self.conv(F.pad(x.transpose(1, 2), (self.kernel - 1, 0))).transpose(1, 2)
        return self.out(y)


class _Block(nn.Module):
    def __init__(self, in_dim: int, layer: Mapping[str, Any], block_size: int) -> None:
        super().__init__()
        hidden = layer["hidden"]
        self.proj = nn.Linear(in_dim, hidden) if in_dim != hidden else nn.Identity()
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.mixer = _Mixer(layer["attention"], hidden, layer["heads"], block_size)
        self.ff = nn.Sequential(nn.Linear(hidden, layer["ff"]), nn.GELU(), nn.Linear(layer["ff"], hidden))

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        x = x + self.mixer(self.ln1(x))
        return x + self.ff(self.ln2(x))


class FlexiLM(nn.Module):
    """A heterogeneous causal transformer LM: per-layer token mixing, width, FF width and heads.

    Layers of different widths are joined by a linear projection (FlexiBERT's relaxation of the homogeneous
    stack). Pre-LayerNorm residual blocks, learned positions, untied output head.

    Raises:
        ValueError: for an empty architecture, unknown attention names or a width not divisible by heads.

    Example:
        >>> arch = [{"attention": "conv", "hidden": 32, "ff": 64, "heads": 2},
        ...         {"attention": "sa", "hidden": 48, "ff": 128, "heads": 4}]
        >>> lm = FlexiLM(arch, vocab_size=10, block_size=16)
        >>> tuple(lm(torch.zeros(2, 16, dtype=torch.long)).shape)
        (2, 16, 10)
    """

    def __init__(self, arch: Sequence[Mapping[str, Any]], vocab_size: int, block_size: int) -> None:
        super().__init__()
        arch = _check_arch("FlexiLM", arch)
        first = arch[0]["hidden"]
        self.tok = nn.Embedding(vocab_size, first)
        self.pos = nn.Parameter(torch.zeros(1, block_size, first))
        blocks, in_dim = [], first
        for layer in arch:
            blocks.append(_Block(in_dim, layer, block_size))
            in_dim = layer["hidden"]
        self.blocks = nn.ModuleList(blocks)
        self.ln = nn.LayerNorm(in_dim)
        self.head = nn.Linear(in_dim, vocab_size)

    def forward(self, idx: Tensor) -> Tensor:
        """Token ids ``(B, T)`` -> next-token logits ``(B, T, vocab)``."""
        x = self.tok(idx) + self.pos[:, : idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def flexi_param_count(arch: Sequence[Mapping[str, Any]], vocab_size: int, block_size: int) -> int:
    """Number of parameters of :class:`FlexiLM`, analytically (no model is built).

    Example:
        >>> flexi_param_count([{"attention": "sa", "hidden": 32, "ff": 64, "heads": 2}], 10, 16)
        9770
    """
    arch = _check_arch("flexi_param_count", arch)
    first = arch[0]["hidden"]
    total = vocab_size * first + block_size * first
    in_dim = first
    for layer in arch:
        h, f, n = layer["hidden"], layer["ff"], layer["heads"]
        if in_dim != h:
            total += in_dim * h + h
        total += 4 * h + (h * h + h) + (h * f + f + f * h + h)  # two LayerNorms, mixer output, FF
        kind = layer["attention"]
        total += 3 * h * h + 3 * h if kind == "sa" else (n * block_size * block_size if kind == "lt" else 5 * h + h)
        in_dim = h
    return total + 2 * in_dim + in_dim * vocab_size + vocab_size


def _arch_graph(arch: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[tuple[int, int]]]:
    """The computational graph: input -> (mixer, add-norm, ff, add-norm) per layer -> output, node labels."""
    labels, edges = ["input"], []
    for layer in arch:
        for label in (
            f"{layer['attention']}/h{layer['hidden']}/n{layer['heads']}",
            f"addnorm/h{layer['hidden']}",
            f"ff/{layer['ff']}",
            f"addnorm/h{layer['hidden']}",
        ):
            labels.append(label)
            edges.append((len(labels) - 2, len(labels) - 1))
        edges.append((len(labels) - 5, len(labels) - 3))  # residual around the mixer
    labels.append("output")
    edges.append((len(labels) - 2, len(labels) - 1))
    return labels, edges


def _wl_features(arch: Sequence[Mapping[str, Any]], iterations: int) -> Counter[str]:
    labels, edges = _arch_graph(arch)
    nbrs: list[list[int]] = [[] for _ in labels]
    for a, b in edges:
        nbrs[a].append(b)
        nbrs[b].append(a)
    feats = Counter(labels)
    for _ in range(iterations):
        labels = [f"{lab}({','.join(sorted(labels[j] for j in nbrs[i]))})" for i, lab in enumerate(labels)]
        feats.update(labels)
    return feats


def wl_embedding(archs: Sequence[Sequence[Mapping[str, Any]]], dim: int = 8, iterations: int = 2) -> Tensor:
    """Graph-similarity embedding of architectures: Weisfeiler-Lehman subtree kernel, then classical MDS.

    Each architecture is its computational graph (mixer / add-norm / FF nodes labelled with their type and sizes,
    residual edges); the normalised WL kernel ``k(a, b)`` defines the distance ``sqrt(2 - 2k)`` and classical
    multidimensional scaling embeds the set in ``dim`` dimensions, so that Euclidean distances approximate graph
    dissimilarities (FlexiBERT's Transformer2vec embeds with a graph-edit-distance similarity instead).

    Example:
        >>> a = [{"attention": "sa", "hidden": 32, "ff": 64, "heads": 2}]
        >>> b = [{"attention": "sa", "hidden": 32, "ff": 128, "heads": 2}]
        >>> c = [{"attention": "conv", "hidden": 64, "ff": 256, "heads": 4}]
        >>> e = wl_embedding([a, b, c], dim=2)
        >>> bool((e[0] - e[1]).norm() < (e[0] - e[2]).norm())
        True
    """
    feats = [_wl_features(a, iterations) for a in archs]
    vocab = {k: i for i, k in enumerate(sorted({k for f in feats for k in f}))}
    phi = torch.zeros(len(archs), len(vocab), dtype=torch.float64)
    for i, f in enumerate(feats):
        for k, v in f.items():
            phi[i, vocab[k]] = v
    phi = phi / phi.norm(dim=1, keepdim=True)
    k = phi @ phi.T
    n = k.shape[0]
    j = torch.eye(n, dtype=torch.float64) - 1.0 / n
    b = j @ k @ j  # double-centred kernel = Gram matrix of the MDS coordinates of d^2 = 2 - 2k (up to a factor)
    vals, vecs = torch.linalg.eigh(b)
    order = vals.argsort(descending=True)[:dim]
    coords = vecs[:, order] * vals[order].clamp(min=0).sqrt()
    if coords.shape[1] < dim:
        coords = F.pad(coords, (0, dim - coords.shape[1]))
    return coords.float()


@register("utility", "nas", paper=FLEXIBERT_PAPER, module="litmix.nas")
class FlexiBERTSearch:
    """FlexiBERT's heterogeneous transformer space with a BOSHNAS-style search, for a char-level LM.

    Tuli et al., "FlexiBERT: Are Current Transformer Architecture Search Spaces Flexible Enough?" (JAIR 2023,
    https://arxiv.org/abs/2205.11656). Every layer chooses its token mixing (``sa``: causal multi-head
    self-attention; ``lt``: a linear transform of the sequence, FNet-like but learned and causal; ``conv``: a
    causal depthwise convolution), its width, FF width and heads (:data:`DEFAULT_FLEXI_SPACE`); layers of
    different widths are joined by projections (:class:`FlexiLM`). Architectures are embedded by graph
    similarity (:func:`wl_embedding`). The search (after BOSHNAS, simplified): a candidate pool of
    ``pool_size`` random architectures whose parameter count lies in ``[min_param_ratio, 1] x`` the budget
    (default: the homogeneous baseline's count, so the found model is never larger); ``n_init`` random
    evaluations, then each step fits an ensemble of ``ensemble`` MLP surrogates on the embeddings of the
    evaluated architectures (targets: standardised ``-log`` validation perplexity), and evaluates the unevaluated
    candidate maximising UCB ``μ + κ σ`` (ensemble mean and spread; BOSHNAS optimises the acquisition by
    gradients over the embedding (GOBI) and adds an aleatoric head, here the pool is scored exhaustively).
    An evaluation trains the LM for ``train_steps`` AdamW steps and returns its validation perplexity.

    Args:
        num_layers: layers per architecture (>= 1).
        budget: architectures trained during the search (>= 1).
        n_init: random evaluations before the surrogate is used (>= 1).
        pool_size: candidate pool size (>= 1).
        baseline_hidden: width of the homogeneous baseline (all ``sa`` layers, FF ``4 x`` width, 4 heads).
        min_param_ratio: lower bound of a candidate's parameters relative to the budget, in (0, 1].
        embed_dim: dimensions of the graph-similarity embedding (>= 1).
        ensemble: surrogate ensemble size (>= 2).
        kappa: UCB exploration weight (>= 0).
        train_steps: optimisation steps per evaluation (>= 1).
        batch_size: sequences per step (>= 1).
        block_size: characters per sequence (>= 2).
        lr: AdamW learning rate (> 0).
        val_batches: validation batches per evaluation (>= 1).
        seed: seed of the pool, the surrogates and the trainings (>= 0).
        search_space: class -> list of values replacing the defaults of :data:`DEFAULT_FLEXI_SPACE` per class
            (``attention`` names from ``sa``, ``lt``, ``conv``).

    Raises:
        TypeError: for arguments of the wrong type.
        ValueError: for out-of-range arguments (``budget < 1`` ...), an empty or unknown search-space class or
            unknown attention names in ``search_space``; in :meth:`search`, for a text too short for
            one block, or when no pool candidate fits the parameter budget.

    Example:
        >>> text = "to be or not to be, that is the question. " * 60
        >>> s = FlexiBERTSearch(budget=2, n_init=1, pool_size=8, baseline_hidden=32, train_steps=3,
        ...                     batch_size=2, block_size=8, val_batches=1, min_param_ratio=0.5)
        >>> out = s.search(text)
        >>> len(out["ppl"]), out["best_params"] <= out["baseline_params"]
        (2, True)
    """

    def __init__(
        self,
        num_layers: int = 2,
        budget: int = 6,
        n_init: int = 2,
        pool_size: int = 200,
        baseline_hidden: int = 48,
        min_param_ratio: float = 0.85,
        embed_dim: int = 8,
        ensemble: int = 5,
        kappa: float = 1.0,
        train_steps: int = 150,
        batch_size: int = 16,
        block_size: int = 32,
        lr: float = 3e-3,
        val_batches: int = 8,
        seed: int = 0,
        search_space: dict[str, list[Any]] | None = None,
    ) -> None:
        owner = "FlexiBERTSearch"
        self.num_layers = check_int(owner, "num_layers", num_layers, low=1, high=12)
        self.budget = check_int(owner, "budget", budget, low=1)
        self.n_init = check_int(owner, "n_init", n_init, low=1)
        self.pool_size = check_int(owner, "pool_size", pool_size, low=1, high=100_000)
        self.baseline_hidden = check_int(owner, "baseline_hidden", baseline_hidden, low=4, high=4096)
        if self.baseline_hidden % 4:
            raise ValueError(f"{owner}(baseline_hidden={baseline_hidden}): baseline_hidden must be divisible by 4")
        self.min_param_ratio = check_float(owner, "min_param_ratio", min_param_ratio, low=0.0, high=1.0, low_open=True)
        self.embed_dim = check_int(owner, "embed_dim", embed_dim, low=1, high=256)
        self.ensemble = check_int(owner, "ensemble", ensemble, low=2, high=64)
        self.kappa = check_float(owner, "kappa", kappa, low=0.0)
        self.train_steps = check_int(owner, "train_steps", train_steps, low=1)
        self.batch_size = check_int(owner, "batch_size", batch_size, low=1)
        self.block_size = check_int(owner, "block_size", block_size, low=2, high=4096)
        self.lr = check_float(owner, "lr", lr, low=0.0, low_open=True)
        self.val_batches = check_int(owner, "val_batches", val_batches, low=1)
        self.seed = check_int(owner, "seed", seed, low=0, high=2**31 - 1)
        self.space = _check_space(owner, search_space)

    @classmethod
    def example(cls) -> FlexiBERTSearch:
        """A 2-architecture search with 3-step trainings (the class example).

        Example:
            >>> FlexiBERTSearch.example().budget
            2
        """
        return cls(budget=2, n_init=1, pool_size=8, baseline_hidden=32, train_steps=3, batch_size=2, block_size=8)

    def baseline_arch(self) -> list[dict[str, Any]]:
        """The homogeneous baseline: ``num_layers`` self-attention layers of ``baseline_hidden``, FF 4x, 4 heads.

        Example:
            >>> FlexiBERTSearch(num_layers=1, baseline_hidden=32).baseline_arch()
            [{'attention': 'sa', 'hidden': 32, 'ff': 128, 'heads': 4}]
        """
        h = self.baseline_hidden
        return [{"attention": "sa", "hidden": h, "ff": 4 * h, "heads": 4} for _ in range(self.num_layers)]

    # --------------------------------------------------------------------------------------------- data
    def _data(self, text: str) -> tuple[Tensor, Tensor, int]:
        if not isinstance(text, str):
            raise TypeError(f"FlexiBERTSearch.search(text={type(text).__name__}): text must be a str")
        chars = sorted(set(text))
        ids = torch.tensor(_encode(text, chars), dtype=torch.long)
        n_val = max(len(ids) // 10, self.block_size + 2)
        if len(ids) - n_val < self.block_size + 2:
            raise ValueError(
                f"FlexiBERTSearch.search(text=...): the text ({len(ids)} characters) is too short for block_size "
                f"{self.block_size}"
            )
        return ids[:-n_val], ids[-n_val:], len(chars)

    def _batch(self, ids: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        starts = torch.randint(0, len(ids) - self.block_size - 1, (self.batch_size,), generator=gen)
        x = torch.stack([ids[s : s + self.block_size] for s in starts.tolist()])
        y = torch.stack([ids[s + 1 : s + 1 + self.block_size] for s in starts.tolist()])
        return x, y

    def train_and_evaluate(self, arch: Sequence[Mapping[str, Any]], text: str, seed: int | None = None) -> float:
        """Train :class:`FlexiLM` ``arch`` on the first 90 % of ``text``; validation perplexity on the rest.

        Raises:
            ValueError: for an invalid ``arch`` or a text too short for one block.
        """
        arch = _check_arch("FlexiBERTSearch.train_and_evaluate", arch)
        train, val, vocab = self._data(text)
        seed = self.seed if seed is None else int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FlexiLM(arch, vocab, self.block_size)
            opt = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=0.01)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=self.train_steps, pct_start=0.1)
            gen = torch.Generator().manual_seed(seed + 1)
            model.train()
            for _ in range(self.train_steps):
                x, y = self._batch(train, gen)
                loss = F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            model.eval()
            vgen = torch.Generator().manual_seed(12345)
            losses = []
            with torch.no_grad():
                for _ in range(self.val_batches):
                    x, y = self._batch(val, vgen)
                    losses.append(float(F.cross_entropy(model(x).reshape(-1, vocab), y.reshape(-1))))
        return math.exp(sum(losses) / len(losses))

    # --------------------------------------------------------------------------------------------- search
    def _pool(self, vocab: int, budget_params: int) -> list[list[dict[str, Any]]]:
        gen = torch.Generator().manual_seed(self.seed + 17)
        pool: list[list[dict[str, Any]]] = []
        seen: set[str] = set()
        for _ in range(self.pool_size * 50):
            if len(pool) >= self.pool_size:
                break
            arch = [
                {k: v[int(torch.randint(len(v), (1,), generator=gen))] for k, v in self.space.items()}
                for _ in range(self.num_layers)
            ]
            key = repr(arch)
            if key in seen or any(layer["hidden"] % layer["heads"] for layer in arch):
                continue
            seen.add(key)
            p = flexi_param_count(arch, vocab, self.block_size)
            if self.min_param_ratio * budget_params <= p <= budget_params:
                pool.append(arch)
        if not pool:
            raise ValueError(
                f"FlexiBERTSearch.search: no architecture of the space fits the parameter budget "
                f"[{self.min_param_ratio} x {budget_params}, {budget_params}]; "
                "change baseline_hidden or min_param_ratio"
            )
        return pool

    def _ucb(self, emb: Tensor, done: list[int], targets: list[float]) -> Tensor:
        y = torch.tensor(targets)
        y = (y - y.mean()) / (y.std() if len(targets) > 1 and y.std() > 0 else 1.0)
        x = emb[done]
        preds = []
        for m in range(self.ensemble):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed * 1000 + 7 * m + len(done))
                net = nn.Sequential(nn.Linear(emb.shape[1], 32), nn.Tanh(), nn.Linear(32, 1))
                opt = torch.optim.Adam(net.parameters(), lr=0.02, weight_decay=1e-3)
                for _ in range(100):
                    loss = F.mse_loss(net(x).squeeze(-1), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                with torch.no_grad():
                    preds.append(net(emb).squeeze(-1))
        p = torch.stack(preds)
        return p.mean(0) + self.kappa * p.std(0)

    def search(self, text: str) -> dict[str, Any]:
        """Run the search on ``text`` (e.g. Tiny Shakespeare); returns the evaluated architectures and the best.

        Returns:
            ``{"best_arch", "best_ppl", "best_params", "baseline_arch", "baseline_params", "archs", "ppl",
            "params", "pool_size"}``.

        Raises:
            ValueError: for a text too short for one block, or an empty candidate pool.
        """
        _, _, vocab = self._data(text)
        baseline = self.baseline_arch()
        budget_params = flexi_param_count(baseline, vocab, self.block_size)
        pool = self._pool(vocab, budget_params)
        emb = wl_embedding(pool, self.embed_dim)
        gen = torch.Generator().manual_seed(self.seed + 29)
        order = torch.randperm(len(pool), generator=gen).tolist()
        done: list[int] = []
        ppl: list[float] = []
        for step in range(min(self.budget, len(pool))):
            if step < self.n_init:
                i = order[step]
            else:
                score = self._ucb(emb, done, [-math.log(p) for p in ppl])
                score[done] = -math.inf
                i = int(score.argmax())
            done.append(i)
            ppl.append(self.train_and_evaluate(pool[i], text, seed=self.seed))
        best = min(range(len(ppl)), key=lambda j: ppl[j])
        return {
            "best_arch": copy.deepcopy(pool[done[best]]),
            "best_ppl": ppl[best],
            "best_params": flexi_param_count(pool[done[best]], vocab, self.block_size),
            "baseline_arch": baseline,
            "baseline_params": budget_params,
            "archs": [copy.deepcopy(pool[i]) for i in done],
            "ppl": ppl,
            "params": [flexi_param_count(pool[i], vocab, self.block_size) for i in done],
            "pool_size": len(pool),
        }


def _encode(text: str, chars: list[str]) -> list[int]:
    index = {c: i for i, c in enumerate(chars)}
    return [index[c] for c in text]
