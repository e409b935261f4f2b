"""Metrics: DDP-safe torchmetrics classes (per-sample states de-duplicated by index) and a reusable holdout.

:class:`Thresholdout` answers adaptive queries about a holdout set without overfitting to it.
"""

from litmix.metrics.extraction_strength import ExtractionStrength
from litmix.metrics.forget_quality import ForgetQuality
from litmix.metrics.hits_at_k import HitsAtK
from litmix.metrics.indexed_mean import IndexedMean
from litmix.metrics.link_mrr import LinkMRR
from litmix.metrics.mia_auc import MembershipInferenceAUC
from litmix.metrics.mia_efficacy import MIAEfficacy
from litmix.metrics.mia_variants import MIAScoreAUC
from litmix.metrics.model_utility import ModelUtility
from litmix.metrics.ndcg_at_k import NDCGAtK
from litmix.metrics.prediction_wasserstein import PredictionWasserstein
from litmix.metrics.privleak import PrivLeak
from litmix.metrics.recall_at_k import RecallAtK
from litmix.metrics.robust_fidelity import RobustFidelity
from litmix.metrics.thresholdout import Thresholdout
from litmix.metrics.truth_ratio import TruthRatio

__all__ = [
    "ExtractionStrength",
    "ForgetQuality",
    "HitsAtK",
    "IndexedMean",
    "LinkMRR",
    "MIAEfficacy",
    "MIAScoreAUC",
    "MembershipInferenceAUC",
    "ModelUtility",
    "NDCGAtK",
    "PredictionWasserstein",
    "PrivLeak",
    "RecallAtK",
    "RobustFidelity",
    "Thresholdout",
    "TruthRatio",
]
