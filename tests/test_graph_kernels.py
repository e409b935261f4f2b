"""Dense graph kernels and their plain / logarithmic distances (Ivashkin & Chebotarev, arXiv 1605.01046)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch_geometric.data import Data
from torch_geometric.transforms import LargestConnectedComponents
from torch_geometric.utils import stochastic_blockmodel_graph, subgraph

from litmix.functional.graph_kernels import (
    communicability_kernel,
    forest_kernel,
    heat_kernel,
    kernel_distance,
    log_kernel_distance,
    regularized_laplacian_kernel,
    walk_kernel,
)

PATH = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
A = np.array([[0.0, 1, 0], [1, 0, 1], [0, 1, 0]])
L = np.diag(A.sum(1)) - A


def test_exact_values_on_a_path() -> None:
    torch.testing.assert_close(communicability_kernel(PATH, 3, t=0.7), torch.from_numpy(scipy.linalg.expm(0.7 * A)))
    torch.testing.assert_close(heat_kernel(PATH, 3, t=0.4), torch.from_numpy(scipy.linalg.expm(-0.4 * L)))
    # by hand: (I + L)^-1 of the path is [[5, 2, 1], [2, 4, 2], [1, 2, 5]] / 8
    forest = torch.tensor([[5.0, 2, 1], [2, 4, 2], [1, 2, 5]], dtype=torch.float64) / 8
    torch.testing.assert_close(forest_kernel(PATH, 3, t=1.0), forest)
    torch.testing.assert_close(regularized_laplacian_kernel(PATH, 3, t=1.0), forest)
    d = A.sum(1) ** -0.5
    l_sym = np.eye(3) - d[:, None] * A * d[None, :]
    torch.testing.assert_close(
        regularized_laplacian_kernel(PATH, 3, t=2.0, normalized=True),
        torch.from_numpy(np.linalg.inv(np.eye(3) + 2 * l_sym)),
    )
    # by hand: (I - A/2)^-1 = [[3, 2, 1], [2, 4, 2], [1, 2, 3]] / 2
    walk = torch.tensor([[3.0, 2, 1], [2, 4, 2], [1, 2, 3]], dtype=torch.float64) / 2
    torch.testing.assert_close(walk_kernel(PATH, 3, t=0.5), walk)
    # duplicate edges count once; a directed graph is fine for communicability and walk
    torch.testing.assert_close(communicability_kernel(torch.cat([PATH, PATH], 1), 3), communicability_kernel(PATH, 3))
    directed = torch.tensor([[0, 1], [1, 2]])
    torch.testing.assert_close(communicability_kernel(directed, 3), torch.from_numpy(scipy.linalg.expm(np.triu(A))))


def test_distances() -> None:
    k = forest_kernel(PATH, 3, t=1.0)
    plain, log = kernel_distance(k), log_kernel_distance(k)
    # plain: half the squared Euclidean distance of the Gram vectors
    root = torch.from_numpy(scipy.linalg.sqrtm(k.numpy()).real)
    torch.testing.assert_close(plain, torch.cdist(root, root).pow(2) / 2)
    h = torch.log(k)
    torch.testing.assert_close(log[0, 2], (h[0, 0] + h[2, 2]) / 2 - h[0, 2])
    for d in (plain, log):
        assert torch.equal(d, d.T)
        assert bool((torch.diagonal(d) == 0).all())
        assert bool((d + 1e-12 >= 0).all())
    # the log-forest distance is cutpoint additive (node 1 separates 0 and 2); the plain one is not
    torch.testing.assert_close(log[0, 2], log[0, 1] + log[1, 2])
    assert float(plain[0, 2]) < float(plain[0, 1] + plain[1, 2]) - 0.05


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="max_nodes=2"):
        communicability_kernel(PATH, 3, max_nodes=2)
    kernels: tuple[Callable[..., torch.Tensor], ...] = (
        communicability_kernel,
        heat_kernel,
        forest_kernel,
        regularized_laplacian_kernel,
        walk_kernel,
    )
    for fn in kernels:
        with pytest.raises(ValueError, match=r"\(t="):
            fn(PATH, 3, t=0.0)
        with pytest.raises(ValueError, match=r"\(t="):
            fn(PATH, 3, t=float("nan"))
        with pytest.raises(TypeError, match="edge_index"):
            fn(PATH.float(), 3)
        with pytest.raises(ValueError, match="edge_index"):
            fn(PATH, 2)
        with pytest.raises(TypeError, match="num_nodes"):
            fn(PATH, 3.0)
    for fn in kernels[1:4]:
        with pytest.raises(ValueError, match="undirected"):
            fn(torch.tensor([[0, 1], [1, 2]]), 3)
    with pytest.raises(TypeError, match="normalized"):
        regularized_laplacian_kernel(PATH, 3, normalized="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"1 / rho\(A\) = 0.7071"):
        walk_kernel(PATH, 3, t=0.71)
    distances: tuple[Callable[..., torch.Tensor], ...] = (kernel_distance, log_kernel_distance)
    for fn in distances:
        with pytest.raises(TypeError, match="kernel"):
            fn([[1.0]])
        with pytest.raises(TypeError, match="kernel"):
            fn(torch.ones(2, 2, dtype=torch.long))
        with pytest.raises(ValueError, match="square"):
            fn(torch.ones(2, 3))
        with pytest.raises(ValueError, match="NaN"):
            fn(torch.full((2, 2), float("nan")))
    # a disconnected graph: zero kernel entries have no log
    two_edges = torch.tensor([[0, 1, 2, 3], [1, 0, 3, 2]])
    with pytest.raises(ValueError, match="disconnected"):
        log_kernel_distance(forest_kernel(two_edges, 4))


def _mds(distance: torch.Tensor, dim: int) -> np.ndarray:
    """Classical MDS coordinates of ``d = (squared distance) / 2``: the top eigenvectors of ``-J d J``."""
    d = distance.numpy()
    n = d.shape[0]
    j = np.eye(n) - 1.0 / n
    w, v = np.linalg.eigh(-j @ d @ j)
    top = np.argsort(w)[::-1][:dim]
    return v[:, top] * np.sqrt(np.clip(w[top], 0.0, None))


def _scores(y: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    return adjusted_rand_score(y, pred), normalized_mutual_info_score(y, pred)


def _plain_and_log(edge_index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain and the log communicability distance at ``t = 1 / rho(A)``."""
    adj = torch.zeros(num_nodes, num_nodes, dtype=torch.float64)
    adj[edge_index[0], edge_index[1]] = 1.0
    k = communicability_kernel(edge_index, num_nodes, t=1.0 / float(torch.linalg.eigvalsh(adj).max()))
    return kernel_distance(k), log_kernel_distance(k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_communicability_clusters_a_planted_partition_better(seed: int) -> None:
    """SBM with 3 blocks of 40, p_in 0.3, p_out 0.1; Ward on 20 MDS coordinates (the paper uses Ward).

    Measured ARI / NMI plain -> log: seed 0 0.544/0.505 -> 0.681/0.631, seed 1 0.102/0.221 -> 0.533/0.484,
    seed 2 0.340/0.337 -> 0.601/0.561.
    """
    torch.manual_seed(seed)
    probs = torch.full((3, 3), 0.1).fill_diagonal_(0.3)
    edge_index = stochastic_blockmodel_graph([40, 40, 40], probs)
    y = np.repeat(np.arange(3), 40)

    plain, log = (
        _scores(y, AgglomerativeClustering(3, linkage="ward").fit_predict(_mds(d, 20)))
        for d in _plain_and_log(edge_index, 120)
    )
    (plain_ari, plain_nmi), (log_ari, log_nmi) = plain, log
    print(f"seed {seed}: plain ARI {plain_ari:.3f} NMI {plain_nmi:.3f}, log ARI {log_ari:.3f} NMI {log_nmi:.3f}")
    assert log_ari > plain_ari + 0.1
    assert log_nmi > plain_nmi + 0.1


@pytest.fixture(scope="module")
def cora_three_classes(cora: Data) -> Data:
    """Cora's classes 0, 1, 2, largest connected component of their induced subgraph (892 nodes)."""
    mask = torch.isin(cora.y, torch.tensor([0, 1, 2]))
    edge_index, _ = subgraph(mask, cora.edge_index, relabel_nodes=True, num_nodes=cora.num_nodes)
    return LargestConnectedComponents()(Data(edge_index=edge_index, y=cora.y[mask], num_nodes=int(mask.sum())))


@pytest.mark.slow
def test_log_communicability_clusters_cora_better(cora_three_classes: Data) -> None:
    """KMeans (3 MDS coordinates) over seeds 0/1/2: ARI 0.121 -> 0.820 and NMI 0.287 -> 0.742 on every seed."""
    g = cora_three_classes
    y = g.y.numpy()
    assert g.num_nodes == 892
    coords = [_mds(d, 3) for d in _plain_and_log(g.edge_index, g.num_nodes)]
    for seed in (0, 1, 2):
        plain, log = (_scores(y, KMeans(3, n_init=10, random_state=seed).fit_predict(x)) for x in coords)
        (plain_ari, plain_nmi), (log_ari, log_nmi) = plain, log
        print(f"seed {seed}: plain ARI {plain_ari:.3f} NMI {plain_nmi:.3f}, log ARI {log_ari:.3f} NMI {log_nmi:.3f}")
        assert log_ari > 0.75
        assert log_nmi > 0.65
        assert log_ari > plain_ari + 0.5
        assert log_nmi > plain_nmi + 0.3
