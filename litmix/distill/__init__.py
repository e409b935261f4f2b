"""Distillation loss terms for :class:`~litmix.plugins.DistillationModule`, addressed by module paths.

Each term is a small ``nn.Module`` built from a JSON-friendly spec (:func:`build_term`), so LightningCLI YAML
works: ``terms: [{kind: kd, temperature: 4.0}, {kind: fitnet, student: layers.1, teacher: layers.3}]``.
The maths lives in :mod:`litmix.functional.distill_losses` (shared with
:class:`~litmix.callbacks.KnowledgeDistillation`).
"""

from litmix.distill.attention_transfer import AttentionTransferTerm
from litmix.distill.base import DistillTerm, ProjectedTerm, feature_tensor, infer_width
from litmix.distill.contrastive import ContrastiveTerm
from litmix.distill.fitnet import FitNetTerm
from litmix.distill.logit_discriminator import LogitDiscriminatorTerm
from litmix.distill.logits_kd import LogitsKDTerm
from litmix.distill.projector import FeatureProjector
from litmix.distill.rkd import RKDTerm
from litmix.distill.terms import TERM_KINDS, build_term

__all__ = [
    "TERM_KINDS",
    "AttentionTransferTerm",
    "ContrastiveTerm",
    "DistillTerm",
    "FeatureProjector",
    "FitNetTerm",
    "LogitDiscriminatorTerm",
    "LogitsKDTerm",
    "ProjectedTerm",
    "RKDTerm",
    "build_term",
    "feature_tensor",
    "infer_width",
]
