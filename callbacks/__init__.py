"""Callbacks: distillation, sparsity, proxy scoring and other methods for any LightningModule."""

from litmix.callbacks.knowledge_distillation import KnowledgeDistillation

__all__ = ["KnowledgeDistillation"]
