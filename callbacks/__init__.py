"""Callbacks: distillation, sparsity, proxy scoring and other methods for any LightningModule."""

from litmix.callbacks.gradual_pruning import GradualPruning
from litmix.callbacks.knowledge_distillation import KnowledgeDistillation

__all__ = ["GradualPruning", "KnowledgeDistillation"]
