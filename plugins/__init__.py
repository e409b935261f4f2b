"""LightningModules: methods that own the training step (unlearning, NAS, learned proxies)."""

from litmix.plugins.analytic_cil import AnalyticCILModule
from litmix.plugins.compositional_ebm import CompositionalEBM
from litmix.plugins.deepwalk_module import DeepWalkModule
from litmix.plugins.dgmlp_module import DGMLPModule
from litmix.plugins.distillation_module import DistillationModule
from litmix.plugins.fair_gnn_module import FairGNNModule
from litmix.plugins.forward_gnn_module import ForwardGNNModule
from litmix.plugins.gradient_boosted_network import GradientBoostedNetwork
from litmix.plugins.graph_to_mlp import GraphToMLPDistillModule
from litmix.plugins.kd3_module import KD3Module
from litmix.plugins.lightgcn_module import LightGCNModule
from litmix.plugins.mixed_precision_gnn import MixedPrecisionGNN
from litmix.plugins.nb201_supernet import NB201SupernetModule
from litmix.plugins.ncn_module import NCNModule
from litmix.plugins.ofa_conv_supernet import OFAConvSupernetModule
from litmix.plugins.ofa_supernet import OFASupernetModule
from litmix.plugins.parzc_predictor import ParZCPredictor
from litmix.plugins.phatgoose_module import PHATGOOSEModule
from litmix.plugins.proxyless_nas import ProxylessNASModule
from litmix.plugins.regression_unlearning import RegressionUnlearningModule
from litmix.plugins.uld_module import ULDAssistantModule
from litmix.plugins.ultragcn_module import UltraGCNModule
from litmix.plugins.unlearning_module import UnlearningModule
from litmix.plugins.zeroth_order_module import ZerothOrderModule

__all__ = [
    "AnalyticCILModule",
    "CompositionalEBM",
    "DGMLPModule",
    "DeepWalkModule",
    "DistillationModule",
    "FairGNNModule",
    "ForwardGNNModule",
    "GradientBoostedNetwork",
    "GraphToMLPDistillModule",
    "KD3Module",
    "LightGCNModule",
    "MixedPrecisionGNN",
    "NB201SupernetModule",
    "NCNModule",
    "OFAConvSupernetModule",
    "OFASupernetModule",
    "PHATGOOSEModule",
    "ParZCPredictor",
    "ProxylessNASModule",
    "RegressionUnlearningModule",
    "ULDAssistantModule",
    "UltraGCNModule",
    "UnlearningModule",
    "ZerothOrderModule",
]
