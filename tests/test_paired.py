"""The paired bootstrap section against a plain loop over resamples."""

import numpy as np
import pytest

from duojax.core import metrics
from duojax.eval.sections import paired


def _output(rng, logits_noise, labels):
  logits = np.eye(5, dtype=np.float32)[labels] * 2 + rng.normal(0, logits_noise, (len(labels), 5))
  logits = logits.astype(np.float32)
  return logits, np.asarray(metrics.confidence_scores(logits)["msp"])


def test_paired_differences_match_a_loop_over_resamples():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 300)
  ours, theirs = _output(rng, 1.0, labels), _output(rng, 1.5, labels)
  rows = paired.resample_rows(300, rounds=40, seed=7)
  # The rows are the draws of one generator, one round after another.
  again = np.random.default_rng(7)
  again.integers(0, 300, 300)
  np.testing.assert_array_equal(rows[1], again.integers(0, 300, 300))
  got = paired.paired_differences(
    paired._scores(ours, labels, rows), paired._scores(theirs, labels, rows)
  )
  diffs = {k: [] for k in paired.PAIRED_METRICS}
  for idx in rows:
    a = metrics.evaluate(ours[0][idx], labels[idx], ours[1][idx])
    b = metrics.evaluate(theirs[0][idx], labels[idx], theirs[1][idx])
    for k in diffs:
      diffs[k].append(a[k] - b[k])
  full_a = metrics.evaluate(ours[0], labels, ours[1])
  full_b = metrics.evaluate(theirs[0], labels, theirs[1])
  for k in paired.PAIRED_METRICS:
    assert got[k]["diff"] == pytest.approx(full_a[k] - full_b[k], abs=1e-6)
    np.testing.assert_allclose(got[k]["ci95"], np.nanpercentile(diffs[k], [2.5, 97.5]), atol=1e-5)
    assert got[k]["ci95"][0] <= got[k]["ci95"][1]


def test_a_method_against_itself_differs_by_zero():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 5, 200)
  output = _output(rng, 1.0, labels)
  rows = paired.resample_rows(200, rounds=10, seed=0)
  same = paired._scores(output, labels, rows)
  for d in paired.paired_differences(same, same).values():
    assert d["diff"] == 0 and d["ci95"] == [0.0, 0.0]
