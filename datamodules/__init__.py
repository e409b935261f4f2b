"""LightningDataModules: offline data sets and forget/retain splits."""

from litmix.datamodules.active_learning import ActiveLearningDataModule
from litmix.datamodules.char_lm import CharLMDataModule
from litmix.datamodules.compute_aware_filtering import ComputeAwareFiltering
from litmix.datamodules.concept_cluster_pruning import ConceptClusterPruning
from litmix.datamodules.digits import DigitsDataModule
from litmix.datamodules.forget_retain import ForgetRetainDataModule
from litmix.datamodules.graph import GraphDataModule
from litmix.datamodules.interaction import InteractionDataModule
from litmix.datamodules.link import LinkDataModule
from litmix.datamodules.mnist import MNISTDataModule
from litmix.datamodules.modular_arithmetic import ModularArithmeticDataModule
from litmix.datamodules.proxy_features import ProxyFeatureDataModule
from litmix.datamodules.sampled_graph import SampledGraphDataModule
from litmix.datamodules.teacher_cache import TeacherCacheDataModule
from litmix.datamodules.tofu import TOFUDataModule
from litmix.datamodules.unlabeled_pool import UnlabeledPoolDataModule
from litmix.datamodules.xor_cluster import XORClusterDataModule

__all__ = [
    "ActiveLearningDataModule",
    "CharLMDataModule",
    "ComputeAwareFiltering",
    "ConceptClusterPruning",
    "DigitsDataModule",
    "ForgetRetainDataModule",
    "GraphDataModule",
    "InteractionDataModule",
    "LinkDataModule",
    "MNISTDataModule",
    "ModularArithmeticDataModule",
    "ProxyFeatureDataModule",
    "SampledGraphDataModule",
    "TOFUDataModule",
    "TeacherCacheDataModule",
    "UnlabeledPoolDataModule",
    "XORClusterDataModule",
]
