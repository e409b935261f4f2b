"""Neural architecture search: spaces, supernet math (one module per method), ranking and offline ground truth.

Layout (one module per method or job):

* :mod:`litmix.nas.nb201`: the NAS-Bench-201 cell space, its ground-truth file and the one network skeleton;
* :mod:`litmix.nas.supernet`: the weight-sharing NB201 supernet (SPOS);
* :mod:`litmix.nas.sampling`: step-seeded path sampling shared by every supernet method;
* :mod:`litmix.nas.pada`, :mod:`litmix.nas.gm_split`, :mod:`litmix.nas.ofa`, :mod:`litmix.nas.deps`,
  :mod:`litmix.nas.proxyless`: the math of PA&DA, GM-NAS, Once-for-All, DεpS and ProxylessNAS;
* :mod:`litmix.nas.evaluation`: subnet accuracy with inherited weights and BN re-calibration;
* :mod:`litmix.nas.schedules`: training progress and the per-step cosine learning-rate schedule;
* :mod:`litmix.nas.ddp`: keeping buffers (BatchNorm statistics) equal across DDP ranks;
* :mod:`litmix.nas.rank_metrics` and :mod:`litmix.nas.rank_losses`: judging and training architecture rankings;
* :mod:`litmix.nas.ranker` and :mod:`litmix.nas.robot`: zero-cost proxy ranking and the RoBoT search.
"""

from litmix.nas.auto_gnn import AutoGNNResult, AutoGNNSearch
from litmix.nas.ddp import broadcast_buffers
from litmix.nas.diffusion_nag import DiffusionNAG
from litmix.nas.evaluation import recalibrate_bn, subnet_accuracy
from litmix.nas.flexibert import FlexiBERTSearch
from litmix.nas.gm_split import EdgeSplit, GradientMatchingSplitter, gradient_match_distance, mincut_partition
from litmix.nas.nb201 import (
    DATASETS,
    EDGES,
    NUM_CELLS,
    OPS,
    LightReduction,
    NB201Cell,
    NB201Network,
    NB201Record,
    NB201Skeleton,
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
from litmix.nas.rank_losses import DiffKendallLoss, diff_kendall_tau, pairwise_rank_loss, zscore
from litmix.nas.rank_metrics import best_rank_at_k, kendall_tau, pearson_r, precision_at_k, rank_report, spearman_rho
from litmix.nas.ranker import ProxyRanker
from litmix.nas.robot import RoBoTResult, RoBoTSearch, minmax_normalize
from litmix.nas.sampling import make_generator, sample_path, step_seed
from litmix.nas.schedules import cosine_lr_scheduler, training_progress
from litmix.nas.supernet import NB201Supernet

__all__ = [
    "DATASETS",
    "EDGES",
    "NUM_CELLS",
    "OPS",
    "AutoGNNResult",
    "AutoGNNSearch",
    "DiffKendallLoss",
    "DiffusionNAG",
    "EdgeSplit",
    "FlexiBERTSearch",
    "GradientMatchingSplitter",
    "LightReduction",
    "NB201Cell",
    "NB201Network",
    "NB201Record",
    "NB201Skeleton",
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
    "broadcast_buffers",
    "build_nb201_network",
    "code_to_arch",
    "cosine_lr_scheduler",
    "count_ops",
    "diff_kendall_tau",
    "gradient_match_distance",
    "kendall_tau",
    "load_nb201",
    "make_generator",
    "make_op",
    "mincut_partition",
    "minmax_normalize",
    "nb201_param_count",
    "pairwise_rank_loss",
    "parse_code",
    "pearson_r",
    "precision_at_k",
    "rank_report",
    "recalibrate_bn",
    "sample_path",
    "spearman_rho",
    "step_seed",
    "subnet_accuracy",
    "training_progress",
    "zscore",
]
