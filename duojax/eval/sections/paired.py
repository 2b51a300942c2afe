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

import numpy as np

from duojax.core import metrics
from duojax.errors import ConfigError
from duojax.eval.inputs import TEST, EvalInputs
from duojax.eval.sections.methods import REFERENCE

PAIRED_METRICS = ("acc", "nll", "ece", "auroc", "aurc", "sac98")


def defaults() -> dict:
  return {"bootstrap": 200}  # paired bootstrap rounds (0: no paired section)


def validate(config) -> None:
  if config.bootstrap < 0:
    raise ConfigError(f"config.bootstrap must be >= 0, got {config.bootstrap}")


def enabled(config) -> bool:
  return config.bootstrap > 0


def build(inputs: EvalInputs, results: dict) -> dict:
  del results
  names = [m.name for m in inputs.methods]
  if REFERENCE not in names:
    return {}
  labels = inputs.bank.labels[TEST]
  rows = resample_rows(len(labels), inputs.config.bootstrap, inputs.config.seed)
  reference = _scores(inputs.outputs(inputs.method(REFERENCE), TEST), labels, rows)
  return {
    "paired_vs_reference": {
      method.name: paired_differences(
        _scores(inputs.outputs(method, TEST), labels, rows), reference
      )
      for method in inputs.methods
      if method.headline and method.name != REFERENCE
    }
  }


def resample_rows(num: int, rounds: int, seed: int) -> np.ndarray:
  """[rounds, num] row indices, drawn with replacement, one round after another."""
  rng = np.random.default_rng(seed)
  return np.stack([rng.integers(0, num, num) for _ in range(rounds)])


def _scores(output, labels, rows) -> tuple[dict, dict]:
  """(metrics on the full split, {metric: [rounds]} on the resamples) of an output,
  a (logits [N, C], confidence [N]) pair."""
  logits, confidence = output
  full = metrics.evaluate(logits, labels, confidence)
  resampled = metrics.evaluate_resamples(
    logits, labels, confidence, rows=rows, names=PAIRED_METRICS
  )
  return full, resampled


def paired_differences(ours: tuple[dict, dict], theirs: tuple[dict, dict]) -> dict:
  """Method − reference, both scored by `_scores` on the same resamples: the
  difference on the full split and the 95% percentile interval of the resampled
  differences (NaN rounds, e.g. an AUROC with no errors, left out)."""
  return {
    k: {
      "diff": ours[0][k] - theirs[0][k],
      "ci95": [float(np.nanpercentile(ours[1][k] - theirs[1][k], q)) for q in (2.5, 97.5)],
    }
    for k in PAIRED_METRICS
  }


def markdown(results: dict) -> list[str]:
  paired = results.get("paired_vs_reference")
  if not paired:
    return []
  lines = [
    f"### Paired differences vs {results['reference']} on the test split (bootstrap 95% interval)",
    "",
    "| method | Δacc | ΔNLL | ΔECE | ΔAUROC | ΔAURC‰ | ΔSAC@98 |",
    "|---|---|---|---|---|---|---|",
  ]
  for name, d in paired.items():
    cells = []
    for k in PAIRED_METRICS:
      scale, digits = (1e3, 2) if k == "aurc" else (1.0, 4)
      lo, hi = d[k]["ci95"]
      cells.append(
        f"{d[k]['diff'] * scale:+.{digits}f} [{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]"
      )
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines
