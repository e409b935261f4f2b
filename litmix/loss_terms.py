"""Adding loss terms from callbacks to any LightningModule (defined in the private :mod:`litmix._loss_terms`).

Lightning has no loss hook, so litmix supports exactly one of two mechanisms per run:

1. **Protocol** -- a module that sets the class attribute ``collects_loss_terms = True`` calls
   :func:`apply_loss_terms` on its loss inside ``training_step`` (required under manual optimization,
   before ``manual_backward``).
2. **Wrapping** -- for every other module, the first :class:`LossTermCallback` to run ``setup`` replaces
   ``pl_module.training_step`` by an instance attribute that calls the original and then
   :func:`apply_loss_terms`. One wrapper serves all providers, so every term is counted exactly once, and
   ``teardown`` removes it.

**Logging, cheaply.** A per-step ``self.log(..., on_step=True, on_epoch=True)`` costs about as much as a small
model's whole training step, so the core does not call it per step. Each :class:`LossTermCallback` keeps the
detached terms of the current logging window (a list append: no device op, no host sync) and

* at every step where Lightning writes step metrics (``trainer.log_every_n_steps``, the same rule Lightning
  applies) logs ``<log_prefix>/loss_step``: the term of that step;
* at the end of every training epoch logs ``<log_prefix>/loss_epoch`` (to the loggers) and
  ``<log_prefix>/loss`` (callback metrics and progress bar only): the **mean of the term over the epoch's
  training steps** (micro-batches), summed and counted on every rank and reduced across ranks, so under DDP it
  is the mean over all ranks' steps.

Lightning's own ``on_epoch=True`` mean weights each step by its batch size; the two agree whenever the batches
of an epoch have equal sizes. After a mid-epoch resume the epoch mean covers the steps since the resume.

**Non-finite terms.** The terms of each window are checked when the window is flushed, i.e. at every logging
step and at the end of every epoch: a NaN or infinite term stops the run with :class:`FloatingPointError`
naming the plugin's class and ``log_prefix`` and the global step at which the term first became non-finite.
Detection therefore happens within ``log_every_n_steps`` steps (one host sync per window instead of one per
step, which matters on accelerators).
"""

from litmix._loss_terms import (
    LossTermCallback,
    apply_loss_terms,
    install_loss_wrapper,
    loss_term_providers,
    remove_loss_wrapper,
)

__all__ = ["LossTermCallback", "apply_loss_terms", "install_loss_wrapper", "loss_term_providers", "remove_loss_wrapper"]
