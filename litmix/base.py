"""Public import path of the litmix base classes (defined in the private :mod:`litmix._base`).

They live in a ``_``-module so that LightningCLI's short-name resolution and ``--help`` never offer the bases
themselves as selectable callbacks, modules or data modules.
"""

from litmix._base import Example, LitmixCallback, LitmixDataModule, LitmixModule, check_state_version

__all__ = ["Example", "LitmixCallback", "LitmixDataModule", "LitmixModule", "check_state_version"]
