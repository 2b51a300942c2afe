"""The evaluation's fitted duo written as a bundle (`duojax.bundle`), when it can be.

The bundle holds the large model and the sidekick with the duo of
`config.bundle_method` as it was fit on val (the weighted duo by default;
"guarded", "dynamic" or "entropy" for a per-input duo from
`config.per_input_duos`), and the duo's val confidence and correctness (its
default abstention threshold is chosen on them), and the members' shift alarm
calibrated on the same rows (`config.shift_alarm_*`), which `duojax.predict`
runs on every chunk of new images. It needs both members'
weights: a logits-file member has none, so the bundle is skipped, saying why.
"""

from __future__ import annotations

import numpy as np

from duojax import api
from duojax.bundle import BundleMember, write_bundle
from duojax.core import metrics
from duojax.eval import methods as methods_lib
from duojax.eval.inputs import LARGE, SIDEKICK, EvalInputs
from duojax.eval.members import PRETRAINED, WORKDIR
from duojax.eval.sections.shift_alarm import fit_alarm
from duojax.models.spec import ModelSpec


def why_not(inputs: EvalInputs) -> str | None:
  """Why this evaluation's duo cannot be bundled; None if it can."""
  if inputs.sidekick is None:
    return "no sidekick, so no duo"
  for name in (LARGE, SIDEKICK):
    kind = inputs.members[name].kind
    if kind not in (WORKDIR, PRETRAINED):
      return f"the {name} is a {kind} file, not a model with weights"
  if f"duo ({inputs.config.bundle_method})" not in {m.name for m in inputs.methods}:
    return f"config.bundle_method={inputs.config.bundle_method!r} is not among the methods"
  return None


def write(inputs: EvalInputs, dataset, path: str) -> str | None:
  """Writes the bundle to `path` and returns it, or prints why not and returns None.
  `dataset`: the model members' data set (its class names and name)."""
  reason = why_not(inputs)
  if reason:
    print(f"bundle: not written: {reason}")
    return None
  duo_method = inputs.method(f"duo ({inputs.config.bundle_method})")
  fitted = inputs.fitted(duo_method)
  if duo_method.kind == "per_input":
    duo = fitted["duo"]
  else:
    duo = api.Duo(np.asarray(fitted["weights"], np.float32), (LARGE, SIDEKICK))
  labels = inputs.bank.labels[methods_lib.FIT_SPLIT]
  logits, confidence = (np.asarray(x) for x in inputs.outputs(duo_method, methods_lib.FIT_SPLIT))
  correct = logits.argmax(-1) == labels
  scores = metrics.evaluate(logits, labels, confidence)
  members = [
    BundleMember(m.model, ModelSpec.from_meta(m.meta), m.inputs)
    for m in (inputs.members[LARGE], inputs.members[SIDEKICK])
  ]
  written = write_bundle(
    path,
    members,
    duo,
    [str(c) for c in dataset.class_names],
    validation=(confidence, correct),
    provenance={"dataset": dataset.name, "split": methods_lib.FIT_SPLIT, "rows": len(labels)},
    metrics={k: float(scores[k]) for k in ("acc", "nll") if k in scores},
    shift_alarm=getattr(duo, "alarm", None) or fit_alarm(inputs),  # a guarded duo's own
  )
  print(f"bundle: {written}")
  return written
