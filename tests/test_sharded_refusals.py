"""Real FSDP runs of the plugins that refuse sharded strategies (UnlearningModule, InferenceCost, SaveInit).

Lightning's FSDP refuses CPU accelerators ("The strategy `fsdp` requires a GPU accelerator"), so these run only
where a GPU is present; the CPU suites test the same refusals with a stub strategy object
(``test_sharded_strategy_refused_in_setup`` in test_unlearning.py, test_inference_cost.py, test_save_init.py).
"""

import pytest
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from litmix.callbacks import InferenceCost, SaveInit
from litmix.plugins import UnlearningModule
from litmix.testing import make_trainer

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="The strategy `fsdp` requires a GPU accelerator (none here)"
)


@pytest.mark.parametrize("cls", [UnlearningModule, InferenceCost, SaveInit])
def test_fsdp_is_refused_at_setup_naming_strategy_and_alternative(cls):
    module, datamodule, callbacks = cls.example()
    trainer = make_trainer(accelerator="cuda", devices=1, strategy="fsdp", callbacks=callbacks, max_steps=1)
    with pytest.raises(MisconfigurationException, match=rf"{cls.__name__}.*FSDPStrategy.*ddp"):
        trainer.fit(module, datamodule=datamodule)
