"""Metrics: DDP-safe torchmetrics classes (per-sample states de-duplicated by index) and a reusable holdout.

:class:`Thresholdout` answers adaptive queries about a holdout set without overfitting to it.
"""

from litmix.metrics.indexed_mean import IndexedMean
from litmix.metrics.mia_auc import MembershipInferenceAUC
from litmix.metrics.ndcg_at_k import NDCGAtK
from litmix.metrics.recall_at_k import RecallAtK
from litmix.metrics.robust_fidelity import RobustFidelity
from litmix.metrics.thresholdout import Thresholdout

__all__ = ["IndexedMean", "MembershipInferenceAUC", "NDCGAtK", "RecallAtK", "RobustFidelity", "Thresholdout"]
