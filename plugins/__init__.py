"""LightningModules: methods that own the training step (unlearning, NAS, learned proxies)."""

from litmix.plugins.nb201_supernet import NB201SupernetModule
from litmix.plugins.ofa_supernet import OFASupernetModule
from litmix.plugins.parzc_predictor import ParZCPredictor
from litmix.plugins.proxyless_nas import ProxylessNASModule
from litmix.plugins.unlearning_module import UnlearningModule

__all__ = ["NB201SupernetModule", "OFASupernetModule", "ParZCPredictor", "ProxylessNASModule", "UnlearningModule"]
