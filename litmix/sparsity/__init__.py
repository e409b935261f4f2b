"""The sparsity engine shared by every litmix pruner (:class:`~litmix.sparsity.MaskEngine`).

Selection functions live in :mod:`litmix.functional.sparsity`; the Lightning callbacks (``GradualPruning``,
``DynamicSparseTraining``, ``OneShotPruning``, ...) in :mod:`litmix.callbacks`.
"""

from litmix.sparsity.engine import MaskEngine

__all__ = ["MaskEngine"]
