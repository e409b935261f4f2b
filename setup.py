"""Computes the package list: the core ``litmix`` plus the top-level plugin folders as its subpackages."""

from setuptools import find_packages, setup

FOLDERS = ("callbacks", "plugins", "datamodules")


def _packages() -> list[str]:
    packages = ["litmix"] + [f"litmix.{p}" for p in find_packages("litmix")]
    for folder in FOLDERS:
        packages.append(f"litmix.{folder}")
        packages += [f"litmix.{folder}.{p}" for p in find_packages(folder)]
    return packages


setup(packages=_packages())
