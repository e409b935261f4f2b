"""torchmetrics classes used by litmix plugins (DDP-safe, per-sample states de-duplicated by index)."""

from litmix.metrics.indexed_mean import IndexedMean
from litmix.metrics.mia_auc import MembershipInferenceAUC
from litmix.metrics.robust_fidelity import RobustFidelity

__all__ = ["IndexedMean", "MembershipInferenceAUC", "RobustFidelity"]
