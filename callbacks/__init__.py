"""Callbacks: distillation, sparsity, proxy scoring and other methods for any LightningModule."""

__all__: list[str] = []
