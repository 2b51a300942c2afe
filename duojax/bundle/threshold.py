"""The bundle's default abstention threshold, chosen on validation rows.

A row is accepted when its confidence is at least the threshold t, and
abstained on below it. With `duojax.core.selective` present, t is its
`guaranteed_threshold` at risk 0.05 with probability 1 − 0.05 (a bound on the
accepted rows' error rate); where that risk is out of reach, or the module is
absent, t is the lowest confidence whose accepted rows are at least 95%
correct on validation: sorting confidences c_(1) ≥ c_(2) ≥ …, the largest k
with (1/k) Σ_{j≤k} correct_(j) ≥ 0.95, cut only between distinct confidences
(rows tied at t are all accepted). No such k: t is just above every
confidence, and the bundle abstains on everything.
"""

from __future__ import annotations

import importlib

import numpy as np

from duojax.errors import InputError

RISK, DELTA, ACCURACY = 0.05, 0.05, 0.95
EMPIRICAL = "95% validation accuracy among accepted rows (confidence >= threshold)"


def default_threshold(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, str]:
  """(threshold, the rule that chose it, in words)."""
  try:
    selective = importlib.import_module("duojax.core.selective")
  except ImportError:
    selective = None
  if selective is not None:
    try:
      found = selective.guaranteed_threshold(confidence, correct, RISK, DELTA)
      return float(found.threshold), (
        f"guaranteed_threshold(risk={RISK}, delta={DELTA}) of duojax.core.selective"
      )
    except InputError:  # the risk is out of reach on these rows: the empirical rule
      pass
  return empirical_threshold(confidence, correct), EMPIRICAL


def empirical_threshold(confidence, correct, accuracy: float = ACCURACY) -> float:
  """The lowest t whose accepted rows (confidence ≥ t) are ≥ `accuracy` correct."""
  confidence = np.asarray(confidence, np.float32)
  correct = np.asarray(correct, bool)
  order = np.argsort(-confidence, kind="stable")
  c, ok = confidence[order], correct[order]
  running = np.cumsum(ok) / np.arange(1, len(ok) + 1)
  # Only the last row of a run of equal confidences is a place to cut.
  ends = np.append(c[1:] != c[:-1], True)
  good = np.nonzero(ends & (running >= accuracy))[0]
  if not good.size:
    return float(np.nextafter(c[0], np.float32(np.inf)))
  return float(c[good[-1]])
