"""Cascades: the small model answers, the inputs it is unsure of go on.

`deferral` scores how well a small model's confidence gates a cascade
(deferral curves, s_d, s_o) and sweeps cascades over the deferral ratio from
precomputed logits; `forward` runs a batched cascade that really skips the
large model's work. The Gatekeeper loss that tunes the small model's
confidence (arXiv 2502.19335) is a training loss, `duojax.core.losses`, and
is re-exported here.
"""

from duojax.cascade.deferral import (
  cascade_outputs,
  cascade_sweep,
  deferral_curve,
  deferral_performance,
  deferral_report,
  distributional_overlap,
  ideal_deferral,
  random_deferral,
  threshold_for_ratio,
)
from duojax.cascade.forward import default_buckets, make_cascade_forward, reference_cascade
from duojax.core.losses import gatekeeper_loss

__all__ = [
  "cascade_outputs",
  "cascade_sweep",
  "default_buckets",
  "deferral_curve",
  "deferral_performance",
  "deferral_report",
  "distributional_overlap",
  "gatekeeper_loss",
  "ideal_deferral",
  "make_cascade_forward",
  "random_deferral",
  "reference_cascade",
  "threshold_for_ratio",
]
