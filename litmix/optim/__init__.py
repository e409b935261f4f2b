"""Optimizers usable from ``configure_optimizers`` and tools to measure them.

* :class:`Lion`: the sign-momentum optimizer of Chen et al. 2023 (one state tensor per parameter);
* :class:`FRUGAL` and :func:`frugal_param_groups`: AdamW in a subspace, signSGD in the rest (Zmushko et al. 2024);
* :class:`MFAC`: steps along the inverse empirical Fisher of a sliding gradient window (Frantar et al. 2021);
* :func:`memory_report`: optimizer state bytes in total and per parameter element, for any optimizer.
"""

from litmix.optim.frugal import FRUGAL, frugal_param_groups
from litmix.optim.lion import Lion
from litmix.optim.memory import memory_report
from litmix.optim.mfac import MFAC

__all__ = ["FRUGAL", "MFAC", "Lion", "frugal_param_groups", "memory_report"]
