"""LightningDataModules: offline data sets and forget/retain splits."""

from litmix.datamodules.char_lm import CharLMDataModule
from litmix.datamodules.digits import DigitsDataModule
from litmix.datamodules.forget_retain import ForgetRetainDataModule
from litmix.datamodules.graph import GraphDataModule
from litmix.datamodules.mnist import MNISTDataModule
from litmix.datamodules.proxy_features import ProxyFeatureDataModule

__all__ = [
    "CharLMDataModule",
    "DigitsDataModule",
    "ForgetRetainDataModule",
    "GraphDataModule",
    "MNISTDataModule",
    "ProxyFeatureDataModule",
]
