"""Forget quality: exact two-sample KS p-value against the retain-only model, as a torchmetrics ``Metric``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from litmix.functional.unlearning_metrics import ks_2samp_exact, ks_statistic
from litmix.metrics._indexed_rows import IndexedRows
from litmix.registry import register
from litmix.validation import check_type

_MODEL, _REFERENCE = 0, 1


def _check_reference(owner: str, value: object) -> list[float] | None:
    check_type(owner, "reference_values", value, list, allow_none=True)
    if value is None:
        return None
    assert isinstance(value, list)
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
            kind = TypeError if isinstance(v, bool) or not isinstance(v, int | float) else ValueError
            raise kind(f"{owner}(reference_values=[..., {v!r}, ...]): reference_values must be finite numbers")
        out.append(float(v))
    if not out:
        raise ValueError(f"{owner}(reference_values=[]): give at least one reference value, or None")
    return out


@register(
    "metric",
    "unlearning",
    paper="TOFU: A Task of Fictitious Unlearning for LLMs (https://arxiv.org/abs/2401.06121)",
    module="litmix.metrics",
)
class ForgetQuality(IndexedRows):
    """TOFU forget quality: exact KS p-value between the unlearned and the retain-only model's statistics.

    Per forget item, a statistic (TOFU: the truth ratio, :class:`~litmix.metrics.TruthRatio`; classifiers:
    e.g. the per-sample NLL) of the unlearned model is compared with the same statistic of the model
    retrained without the forget set (``reference=True`` updates, or ``reference_values`` loaded from the
    retain model's logs). High (near 1) = indistinguishable from retraining. The p-value is exact and equals
    ``scipy.stats.ks_2samp(method="exact")`` (:func:`~litmix.functional.unlearning_metrics.ks_2samp_exact`);
    note its **lattice**: with ``n`` forget items it takes only the values of
    :func:`~litmix.functional.unlearning_metrics.ks_pvalue_lattice` (``n = m = 20``: 1.0, 0.983, 0.832, 0.571,
    0.336, ...). Rows are kept with their index and de-duplicated, so the value does not depend on the number
    of DDP ranks. :attr:`statistic` and :attr:`sizes` hold ``D`` and ``(n, m)`` of the last :meth:`compute`.

    Args:
        reference_values: the retain-only model's per-item statistics (finite numbers), or None to feed them
            with ``update(..., reference=True)``.
        **kwargs: torchmetrics ``Metric`` options.

    Raises:
        TypeError: ``reference_values`` not a list of numbers.
        ValueError: an empty or non-finite ``reference_values``; in ``update``, values and indices of different
            lengths or non-finite values.

    Example:
        >>> fq = ForgetQuality(reference_values=[0.1, 0.4, 0.7, 0.9])
        >>> fq.update(torch.tensor([0.5, 0.8, 1.2, 1.5, 2.0]), torch.arange(5))
        >>> round(float(fq.compute()), 6), round(fq.statistic, 3), fq.sizes    # scipy: 0.285714
        (0.285714, 0.6, (5, 4))

        No reference: NaN, never a made-up value.

        >>> float(ForgetQuality().compute())
        nan
    """

    higher_is_better = True

    def __init__(self, reference_values: list[float] | None = None, **kwargs: object) -> None:
        ref = _check_reference(type(self).__name__, reference_values)
        super().__init__(**kwargs)
        self.reference_values = ref
        self.statistic: float = float("nan")
        self.sizes: tuple[int, int] = (0, 0)

    def update(self, values: Tensor, index: Tensor, reference: bool = False) -> None:
        """Add per-item statistics of the unlearned model (or of the retain-only model, ``reference=True``)."""
        values = values.reshape(-1)
        if not bool(torch.isfinite(values).all()):
            raise ValueError(f"{type(self).__name__}.update: values must be finite")
        self._add(values, index, _REFERENCE if reference else _MODEL)

    def reference(self) -> Tensor:
        """The reference statistics used: ``reference_values`` or the de-duplicated ``reference=True`` rows."""
        if self.reference_values is not None:
            return torch.tensor(self.reference_values, dtype=torch.float64)
        return self.rows(_REFERENCE)[0].reshape(-1).cpu()

    def compute(self) -> Tensor:
        """The exact KS p-value (float64); NaN when either side is empty."""
        model = self.rows(_MODEL)[0].reshape(-1).cpu()
        ref = self.reference()
        if model.numel() == 0 or ref.numel() == 0:
            self.statistic, self.sizes = float("nan"), (model.numel(), ref.numel())
            return torch.tensor(float("nan"), dtype=torch.float64)
        h, n, m = ks_statistic(model, ref)
        self.statistic, self.sizes = h * math.gcd(n, m) / (n * m), (n, m)
        return ks_2samp_exact(model, ref)
