"""duojax.cascade: the Gatekeeper loss, deferral analysis and cascades, against
plain numpy references and properties that must hold."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats
from scipy.special import log_softmax

from duojax import cascade
from duojax.cascade import deferral
from duojax.core import metrics


def _loss_batch():
  """6 rows, 4 classes: rows 0, 2, 5 predicted right, rows 1, 3, 4 wrong."""
  logits = np.array(
    [
      [2.0, 0.5, -1.0, 0.1],
      [0.3, 1.7, 0.2, -0.4],
      [-0.5, 0.1, 3.0, 0.4],
      [1.1, 1.0, 0.9, 0.8],
      [0.0, -2.0, 0.5, 4.0],
      [0.2, 0.1, 0.0, 0.9],
    ],
    np.float32,
  )
  labels = np.array([0, 0, 2, 3, 1, 3])
  return logits, labels


def _reference_loss(logits, labels, alpha):
  log_probs = log_softmax(logits.astype(np.float64), axis=-1)
  num, num_classes = logits.shape
  total = 0.0
  for i in range(num):
    if np.argmax(logits[i]) == labels[i]:
      total += alpha * -log_probs[i, labels[i]]
    else:
      total += (1 - alpha) * (np.sum(np.exp(log_probs[i]) * log_probs[i]) + np.log(num_classes))
  return total / num


def _loss_with_constant_split(logits, labels, alpha, correct):
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  cross_entropy = -log_probs[jnp.arange(logits.shape[0]), labels]
  kl_uniform = jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1) + jnp.log(logits.shape[1])
  return jnp.mean(jnp.where(correct, alpha * cross_entropy, (1 - alpha) * kl_uniform))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gatekeeper_loss_matches_numpy_and_its_gradient_ignores_the_split(alpha):
  logits, labels = _loss_batch()
  loss = cascade.gatekeeper_loss(logits, labels, alpha)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, _reference_loss(logits, labels, alpha), rtol=1e-5)
  correct = np.argmax(logits, -1) == labels
  assert correct.tolist() == [True, False, True, False, False, True]
  grad = jax.grad(cascade.gatekeeper_loss)(jnp.asarray(logits), labels, alpha)
  expected = jax.grad(_loss_with_constant_split)(jnp.asarray(logits), labels, alpha, correct)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-7)
  if alpha == 0.0:  # only the KL term: nothing pulls on correct rows
    np.testing.assert_array_equal(grad[correct], 0.0)
    assert np.all(np.abs(grad[~correct]).sum(-1) > 0)
  if alpha == 1.0:  # only the CE term: nothing pulls on wrong rows
    np.testing.assert_array_equal(grad[~correct], 0.0)
    assert np.all(np.abs(grad[correct]).sum(-1) > 0)


def test_gatekeeper_loss_ignores_padding_rows_and_traces_alpha():
  logits, labels = _loss_batch()
  padded = np.concatenate([logits, np.full((3, 4), np.nan, np.float32)])
  padded_labels = np.concatenate([labels, [-1, 7, 0]])
  mask = np.arange(9) < 6
  loss = lambda z, a: cascade.gatekeeper_loss(z, padded_labels, a, mask=mask)
  value, grad = jax.jit(jax.value_and_grad(loss))(jnp.asarray(padded), 0.3)
  np.testing.assert_allclose(value, cascade.gatekeeper_loss(logits, labels, 0.3), rtol=1e-6)
  np.testing.assert_allclose(
    grad[:6],
    jax.grad(cascade.gatekeeper_loss)(jnp.asarray(logits), labels, 0.3),
    rtol=1e-6,
    atol=1e-8,
  )
  np.testing.assert_array_equal(grad[6:], 0.0)


def _synthetic_gate(num, acc_small, seed, quality):
  """correct_small with accuracy ~acc_small, the large model right wherever
  the small one is wrong (and on a share of the rest), and a confidence that
  ranks errors low (quality 1), randomly (0) or high (−1)."""
  rng = np.random.default_rng(seed)
  correct_small = rng.random(num) < acc_small
  correct_large = ~correct_small | (rng.random(num) < 0.9)
  noise = rng.random(num)
  confidence = {
    1: 0.5 * correct_small + 0.4 * noise,
    0: noise,
    -1: 0.5 * ~correct_small + 0.4 * noise,
  }[quality]
  return confidence, correct_small, correct_large


def _s_d(confidence, correct_small, correct_large):
  curve = cascade.deferral_curve(confidence, correct_small, correct_large)
  return cascade.deferral_performance(curve, correct_small.mean(), correct_large.mean())


def test_deferral_performance_is_one_for_an_ideal_gate_zero_for_random_negative_for_anti():
  # The ideal line assumes the large model ends up right everywhere the small
  # one is (and more): with acc_L = 1 the ideal gate traces it exactly.
  confidence, correct_small, _ = _synthetic_gate(500, 0.7, seed=0, quality=1)
  assert _s_d(confidence, correct_small, np.ones(500, bool)) == pytest.approx(1.0, abs=1e-5)
  assert abs(_s_d(*_synthetic_gate(20_000, 0.6, seed=1, quality=0))) < 0.05
  assert _s_d(*_synthetic_gate(2_000, 0.6, seed=2, quality=-1)) < -0.5


def test_deferral_curve_runs_from_small_to_large_and_defers_ties_together():
  confidence, correct_small, correct_large = _synthetic_gate(300, 0.7, seed=3, quality=1)
  curve = cascade.deferral_curve(confidence, correct_small, correct_large)
  assert (curve["ratio"][0], curve["ratio"][-1]) == (0.0, 1.0)
  assert np.all(np.diff(curve["ratio"]) > 0)
  np.testing.assert_allclose(
    curve["accuracy"][[0, -1]], [correct_small.mean(), correct_large.mean()], rtol=1e-6
  )
  # Each point defers exactly the inputs below its threshold.
  for ratio, accuracy, threshold in zip(curve["ratio"], curve["accuracy"], curve["threshold"]):
    deferred = confidence.astype(np.float32) < threshold
    assert deferred.mean() == pytest.approx(ratio)
    assert np.where(deferred, correct_large, correct_small).mean() == pytest.approx(accuracy)

  tied = cascade.deferral_curve(
    [0.9, 0.5, 0.1, 0.5], [True, False, True, True], [True, True, False, True]
  )
  np.testing.assert_array_equal(tied["ratio"], [0.0, 0.25, 0.75, 1.0])
  np.testing.assert_array_equal(tied["accuracy"], [0.75, 0.5, 0.75, 0.75])
  np.testing.assert_array_equal(tied["threshold"], np.float32([0.1, 0.5, 0.9, np.inf]))


def test_random_and_ideal_lines():
  ratio = np.array([0.0, 0.15, 0.3, 0.6, 1.0])
  np.testing.assert_allclose(
    cascade.random_deferral(ratio, 0.7, 0.9), [0.7, 0.73, 0.76, 0.82, 0.9], rtol=1e-6
  )
  np.testing.assert_allclose(
    cascade.ideal_deferral(ratio, 0.7, 0.9), [0.7, 0.8, 0.9, 0.9, 0.9], rtol=1e-6
  )
  np.testing.assert_allclose(
    cascade.ideal_deferral(ratio, 1.0, 0.9), [1.0, 0.9, 0.9, 0.9, 0.9], rtol=1e-6
  )
  # No gain to normalise by when the large model is no better.
  curve = {"ratio": np.array([0.0, 1.0]), "accuracy": np.array([0.8, 0.7])}
  assert math.isnan(cascade.deferral_performance(curve, 0.8, 0.7))
  assert math.isnan(cascade.deferral_performance(curve, 0.8, 0.8))


def test_kde_matches_scipy_and_chunks_do_not_change_it(monkeypatch):
  data = np.random.default_rng(4).beta(5, 2, size=700)
  points = np.linspace(0.0, 1.0, 101)
  np.testing.assert_allclose(
    deferral._gaussian_kde(data, points), stats.gaussian_kde(data)(points), rtol=1e-6
  )
  whole = deferral._gaussian_kde(data, points)
  monkeypatch.setattr(deferral, "_KDE_CHUNK_ELEMENTS", 1000)  # 9 rows of data a chunk
  np.testing.assert_allclose(deferral._gaussian_kde(data, points), whole, rtol=1e-12)


def test_distributional_overlap():
  rng = np.random.default_rng(5)
  same = np.concatenate([rng.beta(8, 2, 4000), rng.beta(8, 2, 4000)])
  correct = np.arange(8000) < 4000
  assert cascade.distributional_overlap(same, correct) > 0.95
  apart = np.concatenate([rng.normal(0.9, 0.02, 4000), rng.normal(0.3, 0.02, 4000)])
  assert cascade.distributional_overlap(apart, correct) < 0.05
  assert math.isnan(cascade.distributional_overlap([0.9, 0.8, 0.3], [True, True, False]))


def _logits(num=400, num_classes=5, seed=6):
  """A weak small model and a strong large one on the same labels."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num)
  onehot = np.eye(num_classes)[labels]
  small = rng.normal(size=(num, num_classes)) * 1.5 + 1.2 * onehot
  large = rng.normal(size=(num, num_classes)) + 3.0 * onehot
  return small.astype(np.float32), large.astype(np.float32), labels


def test_cascade_outputs_at_the_extreme_thresholds():
  small, large, labels = _logits()
  logits, confidence, deferred = cascade.cascade_outputs(small, large, 0.0)
  assert not deferred.any()
  assert (
    metrics.evaluate(logits, labels, confidence)["acc"] == metrics.evaluate(small, labels)["acc"]
  )
  logits, confidence, deferred = cascade.cascade_outputs(small, large, math.inf)
  assert deferred.all()
  assert (
    metrics.evaluate(logits, labels, confidence)["acc"] == metrics.evaluate(large, labels)["acc"]
  )
  # In between: deferred rows answered (and scored) by the large model.
  msp_small = np.asarray(jax.nn.softmax(small).max(-1))
  threshold = float(np.median(msp_small))
  logits, confidence, deferred = cascade.cascade_outputs(small, large, threshold)
  np.testing.assert_array_equal(deferred, msp_small < threshold)
  np.testing.assert_array_equal(logits, np.where(deferred[:, None], large, small))
  np.testing.assert_allclose(confidence, jax.nn.softmax(logits).max(-1), rtol=1e-6)


def test_threshold_for_ratio():
  confidence = np.linspace(0.2, 1.0, 50)
  for ratio in (0.0, 0.1, 0.5, 1.0):
    threshold = cascade.threshold_for_ratio(confidence, ratio)
    assert np.mean(confidence.astype(np.float32) < threshold) == ratio
  assert cascade.threshold_for_ratio(confidence, 1.0) == math.inf
  # A tie group cannot be split: its nearer end wins.
  tied = [0.1, 0.5, 0.5, 0.5, 0.9]
  assert cascade.threshold_for_ratio(tied, 0.3) == pytest.approx(0.5)  # 1 deferred, not 4
  assert cascade.threshold_for_ratio(tied, 0.7) == pytest.approx(0.9)  # 4 deferred, not 1


def test_cascade_sweep_ends_are_the_two_models_and_flops_grow():
  small, large, labels = _logits()
  rows = cascade.cascade_sweep(
    small,
    large,
    labels,
    ratios=[0.0, 0.25, 0.5, 0.75, 1.0],
    flops_small=1e6,
    flops_answer_extra=1e8,
  )
  assert rows[0] == {
    "target_ratio": 0.0,
    "threshold": rows[0]["threshold"],
    "ratio": 0.0,
    **metrics.evaluate(small, labels),
    "flops": 1e6,
  }
  assert rows[-1] == {
    "target_ratio": 1.0,
    "threshold": math.inf,
    "ratio": 1.0,
    **metrics.evaluate(large, labels),
    "flops": 1e6 + 1e8,
  }
  flops = [row["flops"] for row in rows]
  assert flops == sorted(flops) and len(set(flops)) == len(flops)
  for row in rows:
    assert row["ratio"] == pytest.approx(row["target_ratio"], abs=0.01)
    assert {"acc", "nll", "auroc", "aurc", "sac98"} <= row.keys()
  # A better large model: deferring more helps.
  assert rows[-1]["acc"] > rows[2]["acc"] > rows[0]["acc"]


def test_deferral_report():
  small, large, labels = _logits()
  report = cascade.deferral_report(small, large, labels)
  assert report["acc_small"] == metrics.evaluate(small, labels)["acc"]
  assert report["acc_large"] == metrics.evaluate(large, labels)["acc"]
  assert report["auroc_small"] == metrics.evaluate(small, labels)["auroc"]
  curve = report["curve"]
  assert curve.keys() == {"ratio", "accuracy", "threshold", "random", "ideal"}
  assert all(len(v) == len(curve["ratio"]) for v in curve.values())
  np.testing.assert_allclose(
    curve["accuracy"][[0, -1]], [report["acc_small"], report["acc_large"]], rtol=1e-6
  )
  assert np.all(curve["ideal"] >= curve["random"] - 1e-6)
  # The MSP of a model with signal gates better than random, short of ideal.
  assert 0.0 < report["s_d"] < 1.0
  assert 0.0 < report["s_o"] < 1.0


def test_bad_inputs_raise_one_line_errors():
  logits, labels = _loss_batch()
  small, large, int_labels = _logits(num=20)
  cases = [
    (lambda: cascade.gatekeeper_loss(logits, labels, 1.5), "alpha must be in"),
    (lambda: cascade.gatekeeper_loss(logits, labels, -0.1), "alpha must be in"),
    (lambda: cascade.gatekeeper_loss(logits, labels[:5], 0.5), "labels shape"),
    (lambda: cascade.gatekeeper_loss(logits, labels, 0.5, mask=[True] * 5), "mask shape"),
    (lambda: cascade.gatekeeper_loss(logits[0], labels, 0.5), "logits must be"),
    (lambda: cascade.deferral_curve([0.1, 0.2], [True], [True, False]), "correct_small shape"),
    (lambda: cascade.deferral_curve([0.1, np.nan], [1, 0], [1, 1]), "non-finite"),
    (lambda: cascade.cascade_outputs(small, large[:10], 0.5), "answer_logits shape"),
    (lambda: cascade.deferral_report(small, large[:, :3], int_labels), "large_logits shape"),
    (lambda: cascade.threshold_for_ratio([0.1, 0.2], 1.2), "ratio must be in"),
    (lambda: cascade.distributional_overlap([0.1, 0.2], [True]), "correct shape"),
    (
      lambda: cascade.cascade_sweep(
        small, large, int_labels, ratios=[0.5], flops_small=-1, flops_answer_extra=1
      ),
      "flops must be",
    ),
  ]
  for call, message in cases:
    with pytest.raises(ValueError, match=message) as error:
      call()
    assert "\n" not in str(error.value)
