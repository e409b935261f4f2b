"""Optimizers usable from ``configure_optimizers`` and tools to measure them.

* :class:`Lion`: the sign-momentum optimizer of Chen et al. 2023 (one state tensor per parameter);
* :func:`memory_report`: optimizer state bytes in total and per parameter element, for any optimizer.
"""

from litmix.optim.lion import Lion
from litmix.optim.memory import memory_report

__all__ = ["Lion", "memory_report"]
