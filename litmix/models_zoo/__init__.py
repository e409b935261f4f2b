"""Model zoo: architecture builders for the proxies, pruning and NAS families.

* :func:`simplenet` (SimpleNet, arXiv 1608.06037).
"""

from litmix.models_zoo.simplenet import simplenet

__all__ = ["simplenet"]
