"""LightningModules: methods that own the training step (unlearning, NAS, ...)."""

__all__: list[str] = []
