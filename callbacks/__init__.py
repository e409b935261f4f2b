"""Callbacks: distillation, sparsity, proxy scoring and other methods for any LightningModule."""

from litmix.callbacks.adanpc import AdaNPC
from litmix.callbacks.dynamic_sparse_embedding import DynamicSparseEmbedding
from litmix.callbacks.dynamic_sparse_training import DynamicSparseTraining
from litmix.callbacks.flag_aggregation import FlagAggregation
from litmix.callbacks.gradient_matching_split import GradientMatchingSplit
from litmix.callbacks.gradient_noise import GradientNoise
from litmix.callbacks.gradual_pruning import GradualPruning
from litmix.callbacks.inference_cost import InferenceCost
from litmix.callbacks.knowledge_distillation import KnowledgeDistillation
from litmix.callbacks.l0_projection import L0Projection
from litmix.callbacks.lazy_rich_monitor import LazyRichMonitor
from litmix.callbacks.lottery_ticket import LotteryTicket
from litmix.callbacks.mst_compression import MSTCompression
from litmix.callbacks.netinfof_probe import NetInfoFProbe
from litmix.callbacks.one_shot_pruning import OneShotPruning
from litmix.callbacks.pada_sampler import PADASampling
from litmix.callbacks.polarization_pruning import PolarizationPruning
from litmix.callbacks.quantization_aware_training import QuantizationAwareTraining
from litmix.callbacks.save_init import SaveInit
from litmix.callbacks.shrinking_schedule import ShrinkingSchedule
from litmix.callbacks.ssvi import SSVI
from litmix.callbacks.structured_pruning import StructuredPruning
from litmix.callbacks.thresholdout_validation import ThresholdoutValidation
from litmix.callbacks.token_pruning import TokenPruning
from litmix.callbacks.topological_concentration import TopologicalConcentration
from litmix.callbacks.unlearning_evaluator import UnlearningEvaluator
from litmix.callbacks.zero_cost_proxies import ZeroCostProxies

__all__ = [
    "SSVI",
    "AdaNPC",
    "DynamicSparseEmbedding",
    "DynamicSparseTraining",
    "FlagAggregation",
    "GradientMatchingSplit",
    "GradientNoise",
    "GradualPruning",
    "InferenceCost",
    "KnowledgeDistillation",
    "L0Projection",
    "LazyRichMonitor",
    "LotteryTicket",
    "MSTCompression",
    "NetInfoFProbe",
    "OneShotPruning",
    "PADASampling",
    "PolarizationPruning",
    "QuantizationAwareTraining",
    "SaveInit",
    "ShrinkingSchedule",
    "StructuredPruning",
    "ThresholdoutValidation",
    "TokenPruning",
    "TopologicalConcentration",
    "UnlearningEvaluator",
    "ZeroCostProxies",
]
