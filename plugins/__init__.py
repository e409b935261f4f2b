"""LightningModules: methods that own the training step (unlearning, NAS, ...)."""

from litmix.plugins.unlearning_module import UnlearningModule

__all__ = ["UnlearningModule"]
