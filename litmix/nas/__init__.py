"""Neural architecture search spaces and offline ground truth (NAS-Bench-201)."""

from litmix.nas.bn_recalibration import recalibrate_bn
from litmix.nas.gm_split import GradientMatchingSplitter
from litmix.nas.losses import DiffKendallLoss
from litmix.nas.nb201 import (
    DATASETS,
    EDGES,
    NUM_CELLS,
    OPS,
    NB201Cell,
    NB201Network,
    NB201Record,
    Pooling,
    ReLUConvBN,
    ResNetBasicBlock,
    Zero,
    all_codes,
    arch_to_code,
    build_nb201_network,
    code_to_arch,
    count_ops,
    load_nb201,
    make_op,
    nb201_param_count,
    parse_code,
)
from litmix.nas.rank_metrics import best_rank_at_k, kendall_tau, pearson_r, precision_at_k, rank_report, spearman_rho
from litmix.nas.ranker import ProxyRanker
from litmix.nas.robot import RoBoTResult, RoBoTSearch, minmax_normalize
from litmix.nas.supernet import NB201Supernet

__all__ = [
    "DATASETS",
    "EDGES",
    "NUM_CELLS",
    "OPS",
    "DiffKendallLoss",
    "GradientMatchingSplitter",
    "NB201Cell",
    "NB201Network",
    "NB201Record",
    "NB201Supernet",
    "Pooling",
    "ProxyRanker",
    "ReLUConvBN",
    "ResNetBasicBlock",
    "RoBoTResult",
    "RoBoTSearch",
    "Zero",
    "all_codes",
    "arch_to_code",
    "best_rank_at_k",
    "build_nb201_network",
    "code_to_arch",
    "count_ops",
    "kendall_tau",
    "load_nb201",
    "make_op",
    "minmax_normalize",
    "nb201_param_count",
    "parse_code",
    "pearson_r",
    "precision_at_k",
    "rank_report",
    "recalibrate_bn",
    "spearman_rho",
]
