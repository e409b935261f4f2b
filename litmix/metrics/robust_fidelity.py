"""Robust fidelity (Fid_alpha+, Fid_alpha-, Fid_Delta) of GNN explanations as a torchmetrics Metric."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from litmix.functional.robust_fidelity import check_fidelity_args, robust_fidelity
from litmix.registry import register
from litmix.validation import check_int


@register(
    "metric",
    "proxy",
    paper="Towards Robust Fidelity for Evaluating Explainability of Graph Neural Networks "
    "(https://arxiv.org/abs/2310.01820)",
    module="litmix.metrics",
)
class RobustFidelity(Metric):
    """Average robust fidelity of explanations.

    Zheng et al., "Towards Robust Fidelity for Evaluating Explainability of Graph Neural Networks"
    (ICLR 2024, https://arxiv.org/abs/2310.01820). Each :meth:`update` scores one explanation with
    :func:`litmix.functional.robust_fidelity.robust_fidelity` (``Fid_+``: remove each explanation edge with
    probability ``alpha1``; ``Fid_-``: keep the explanation and each other edge with probability ``alpha2``;
    expectations over ``num_samples`` random masks; see that module for the reading of the paper's
    definitions). :meth:`compute` returns the means ``{"fid_plus", "fid_minus", "fid_delta"}``; sums are
    all-reduced under DDP. For node tasks pass the node's k-hop subgraph (the paper uses 3 hops), e.g. from
    ``torch_geometric.utils.k_hop_subgraph``; a PyG ``Explanation``'s ``edge_mask`` thresholded to bool
    plugs in directly.

    Args:
        alpha1: share of explanation edges removed for ``Fid_+``, in [0, 1] (paper default 0.1).
        alpha2: share of non-explanation edges kept for ``Fid_-``, in [0, 1] (paper default 0.9).
        num_samples: random masks per expectation (>= 1, paper 50).
        mode: ``"prob"`` (probability version) or ``"acc"`` (accuracy version).
        undirected: one draw per undirected edge.
        seed: seed of the mask generator.

    Raises:
        TypeError: for arguments of the wrong type (e.g. ``alpha1="0.1"``, ``undirected=1``), naming them.
        ValueError: for alphas outside [0, 1] or NaN, ``num_samples < 1``, an unknown ``mode`` or a negative
            ``seed``.

    Example:
        >>> class DegreeModel(nn.Module):
        ...     def forward(self, x, ei):
        ...         d = torch.zeros(x.shape[0]).index_add_(0, ei[1], torch.ones(ei.shape[1]))
        ...         return torch.stack([torch.zeros_like(d), d], dim=1)
        >>> ei = torch.tensor([[1, 2, 3], [0, 0, 0]])
        >>> metric = RobustFidelity(alpha1=0.5, undirected=False)
        >>> metric.update(DegreeModel(), torch.zeros(4, 1), ei, torch.tensor([True, True, False]), target=1, index=0)
        >>> sorted(metric.compute())
        ['fid_delta', 'fid_minus', 'fid_plus']
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    sum_plus: Tensor
    sum_minus: Tensor
    count: Tensor

    def __init__(
        self,
        alpha1: float = 0.1,
        alpha2: float = 0.9,
        num_samples: int = 50,
        mode: Literal["prob", "acc"] = "prob",
        undirected: bool = True,
        seed: int = 0,
        **kwargs: object,
    ) -> None:
        check_fidelity_args("RobustFidelity", alpha1, alpha2, num_samples, mode, undirected)
        check_int("RobustFidelity", "seed", seed, low=0)
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.alpha1, self.alpha2, self.num_samples = float(alpha1), float(alpha2), int(num_samples)
        self.mode: Literal["prob", "acc"] = mode
        self.undirected, self.seed = bool(undirected), int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        self.add_state("sum_plus", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("sum_minus", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(
        self,
        model: nn.Module,
        x: Tensor,
        edge_index: Tensor,
        edge_mask: Tensor,
        target: int,
        index: int | None = None,
    ) -> None:
        """Score one explanation (``edge_mask`` True on explanation edges) of ``model``'s output ``index``."""
        fp, fm = robust_fidelity(
            model,
            x,
            edge_index,
            edge_mask,
            int(target),
            index=index,
            alpha1=self.alpha1,
            alpha2=self.alpha2,
            num_samples=self.num_samples,
            mode=self.mode,
            undirected=self.undirected,
            generator=self._generator,
        )
        self.sum_plus += fp
        self.sum_minus += fm
        self.count += 1

    def compute(self) -> dict[str, Tensor]:
        """Mean ``fid_plus``, ``fid_minus`` and ``fid_delta = fid_plus - fid_minus`` (NaN when empty)."""
        n = self.count.clamp_min(1).double()
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=n.device)
        plus = self.sum_plus / n if self.count > 0 else nan
        minus = self.sum_minus / n if self.count > 0 else nan
        return {"fid_plus": plus.float(), "fid_minus": minus.float(), "fid_delta": (plus - minus).float()}
