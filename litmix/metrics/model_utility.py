"""TOFU model utility (harmonic mean of component scores) as a torchmetrics ``Metric``."""

from __future__ import annotations

import torch
from torch import Tensor

from litmix.functional.unlearning_metrics import harmonic_mean
from litmix.metrics._indexed_rows import IndexedRows
from litmix.registry import register
from litmix.validation import check_type

#: TOFU's nine components: {retain, real authors, world facts} x {probability, ROUGE-L recall, truth ratio}.
TOFU_COMPONENTS = [
    f"{split}_{score}"
    for split in ("retain", "real_authors", "world_facts")
    for score in ("prob", "rouge", "truth_ratio")
]


@register(
    "metric",
    "unlearning",
    paper="TOFU: A Task of Fictitious Unlearning for LLMs (https://arxiv.org/abs/2401.06121)",
    module="litmix.metrics",
)
class ModelUtility(IndexedRows):
    """TOFU model utility: the harmonic mean of per-component means of per-item scores.

    TOFU's components (default, :data:`TOFU_COMPONENTS`): on the retain set, real authors and world facts, the
    answer probability (retain: ``exp(-avgNLL)``; the other two: normalised against the wrong options,
    ``p(true) / (p(true) + sum p(wrong))``), ROUGE-L recall of the generated answer, and the truth-ratio score
    ``max(0, 1 - tr)``. Each component is the mean of its per-item values (de-duplicated by index, so DDP
    padding does not count twice); utility = harmonic mean over components, so one collapsed component
    (e.g. retain probability near 0) pulls it to 0. Classifiers can use e.g. ``["retain_acc", "test_acc"]``.

    Args:
        components: names of the components (non-empty, distinct strings); all must be updated before compute.
        **kwargs: torchmetrics ``Metric`` options.

    Raises:
        TypeError: ``components`` not a list of strings.
        ValueError: an empty or repeated component list; in ``update`` an unknown component name; in
            ``compute`` a component never updated.

    Example:
        >>> mu = ModelUtility(components=["retain_acc", "test_acc"])
        >>> mu.update("retain_acc", torch.tensor([1.0, 1.0, 0.0, 1.0]), torch.arange(4))
        >>> mu.update("test_acc", torch.tensor([0.5, 0.5]), torch.arange(2))
        >>> mu.component_scores()
        {'retain_acc': 0.75, 'test_acc': 0.5}
        >>> mu.compute()                                # 2 / (1/0.75 + 1/0.5)
        tensor(0.6000, dtype=torch.float64)
    """

    higher_is_better = True

    def __init__(self, components: list[str] | None = None, **kwargs: object) -> None:
        name = type(self).__name__
        check_type(name, "components", components, list, allow_none=True)
        comps = list(TOFU_COMPONENTS) if components is None else components
        if not comps:
            raise ValueError(f"{name}(components=[]): give at least one component name")
        for c in comps:
            if not isinstance(c, str):
                raise TypeError(f"{name}(components={comps!r}): components must be strings, got {type(c).__name__}")
            if not c.strip():
                raise ValueError(f"{name}(components={comps!r}): component names must be non-empty")
        if len(set(comps)) != len(comps):
            raise ValueError(f"{name}(components={comps!r}): component names must be distinct")
        super().__init__(**kwargs)
        self.components = list(comps)

    def update(self, component: str, values: Tensor, index: Tensor) -> None:
        """Add per-item ``values`` of ``component`` for the items ``index``."""
        if component not in self.components:
            raise ValueError(
                f"{type(self).__name__}.update(component={component!r}): unknown component; "
                f"expected one of {self.components}"
            )
        self._add(values.reshape(-1), index, self.components.index(component))

    def component_scores(self) -> dict[str, float]:
        """Mean of each updated component (components never updated are left out)."""
        out = {}
        for g, c in enumerate(self.components):
            vals = self.rows(g)[0]
            if vals.numel():
                out[c] = round(float(vals.mean()), 12)
        return out

    def compute(self) -> Tensor:
        """Harmonic mean of the component means."""
        scores = self.component_scores()
        missing = [c for c in self.components if c not in scores]
        if missing:
            raise ValueError(f"{type(self).__name__}.compute: components {missing} were never updated")
        return harmonic_mean(torch.tensor([scores[c] for c in self.components], dtype=torch.float64))
