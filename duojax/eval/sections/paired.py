"""The paired section: each headline method minus the reference, with intervals.

Method and reference (large+TS) are scored on the same bootstrap resamples
of the test split (rows drawn with replacement, `config.bootstrap` rounds,
seeded with `config.seed`), so the interval of their difference reflects
the test set's sampling noise without the between-method correlation that
two separate intervals would ignore. Reported: the difference on the full
test split and the 2.5–97.5 percentiles of the resampled differences.

Results key: "paired_vs_reference" (absent when the reference is not among
the methods or `config.bootstrap` is 0).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from duojax.core import metrics
from duojax.eval.inputs import TEST, EvalInputs
from duojax.eval.sections.methods import REFERENCE

PAIRED_METRICS = ("acc", "nll", "ece", "auroc", "aurc", "sac98")


def enabled(config) -> bool:
  return config.bootstrap > 0


def build(inputs: EvalInputs, results: dict) -> dict:
  del results
  names = [m.name for m in inputs.methods]
  if REFERENCE not in names:
    return {}
  reference = inputs.outputs(inputs.method(REFERENCE), TEST)
  labels = inputs.bank.labels[TEST]
  return {"paired_vs_reference": {
      method.name: paired_bootstrap(inputs.outputs(method, TEST), reference, labels,
                                    inputs.config.bootstrap, inputs.config.seed)
      for method in inputs.methods if method.headline and method.name != REFERENCE}}


def paired_bootstrap(output, reference, labels, rounds: int, seed: int) -> dict:
  """Method − reference on the same resamples of the test set: mean and 95% interval.

  `output` and `reference` are (logits [N, C], confidence [N]) pairs.
  """
  rng = np.random.default_rng(seed)
  n = len(labels)
  labels = jnp.asarray(labels)
  diffs = {k: [] for k in PAIRED_METRICS}
  for _ in range(rounds):
    idx = jnp.asarray(rng.integers(0, n, n))
    ours = metrics.evaluate(output[0][idx], labels[idx], output[1][idx])
    theirs = metrics.evaluate(reference[0][idx], labels[idx], reference[1][idx])
    for k in PAIRED_METRICS:
      diffs[k].append(float(ours[k]) - float(theirs[k]))
  full_ours = metrics.evaluate(output[0], labels, output[1])
  full_theirs = metrics.evaluate(reference[0], labels, reference[1])
  return {k: {"diff": float(full_ours[k]) - float(full_theirs[k]),
              "ci95": [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]}
          for k, v in diffs.items()}


def markdown(results: dict) -> list[str]:
  paired = results.get("paired_vs_reference")
  if not paired:
    return []
  lines = [f"### Paired differences vs {results['reference']} on the test split "
           "(bootstrap 95% interval)", "",
           "| method | Δacc | ΔNLL | ΔECE | ΔAUROC | ΔAURC‰ | ΔSAC@98 |",
           "|---|---|---|---|---|---|---|"]
  for name, d in paired.items():
    cells = []
    for k in PAIRED_METRICS:
      scale, digits = (1e3, 2) if k == "aurc" else (1.0, 4)
      lo, hi = d[k]["ci95"]
      cells.append(f"{d[k]['diff'] * scale:+.{digits}f} "
                   f"[{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines

