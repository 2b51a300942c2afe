"""duojax.metrics against sklearn and against plain float64 loops."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import logsumexp, softmax
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score, roc_curve

from duojax.core import metrics

SAC_TARGETS = (90, 95, 98, 99)
RANKING_KEYS = ("auroc", "aurc", "eaurc", "augrc", *(f"sac{t}" for t in SAC_TARGETS))
PROPERTY_SETTINGS = settings(max_examples=25, deadline=None)
# Every test draws its shapes from these few, so that the jitted functions
# compile a handful of times only (compiling dominates the run time).
SIZES = st.sampled_from([1, 17, 64])
CLASSES = st.sampled_from([2, 5])


# ----------------------------------------------------------------------------
# References: written plainly, in float64, one loop per definition.


def reference_ece(confidence, correct, num_bins=15):
  """Bin b holds (b/15, (b+1)/15]; edges in float32 like the confidences."""
  edges = (np.arange(num_bins + 1) / num_bins).astype(np.float32)
  total = 0.0
  for b in range(num_bins):
    in_bin = (confidence > edges[b]) & (confidence <= edges[b + 1])
    if b == 0:
      in_bin |= confidence == 0
    if in_bin.any():
      gap = abs(correct[in_bin].mean() - confidence[in_bin].astype(np.float64).mean())
      total += in_bin.sum() / len(confidence) * gap
  return total


def reference_error_counts(correct, confidence):
  """Errors among the k most confident, k = 1..N, interpolated in tie groups."""
  errors = ~correct
  ordered = np.sort(confidence)[::-1]
  counts = []
  for k in range(1, len(confidence) + 1):
    level = ordered[k - 1]
    above, at_or_above = confidence > level, confidence >= level
    start, end = above.sum(), at_or_above.sum()
    errors_start, errors_end = errors[above].sum(), errors[at_or_above].sum()
    counts.append(errors_start + (k - start) / (end - start) * (errors_end - errors_start))
  return np.array(counts)


def reference_selective(correct, confidence):
  n = len(confidence)
  counts = reference_error_counts(correct, confidence)
  k = np.arange(1, n + 1)
  aurc = np.mean(counts / k)
  num_errors = (~correct).sum()
  ideal = np.array([max(0, j - (n - num_errors)) for j in k])
  out = {"aurc": aurc, "eaurc": aurc - np.mean(ideal / k), "augrc": np.mean(counts) / n}
  ordered = np.sort(confidence)[::-1]
  for t in SAC_TARGETS:
    best = 0.0
    for j in k:
      ends_group = j == (confidence >= ordered[j - 1]).sum()
      if ends_group and counts[j - 1] / j <= 1 - t / 100 + 1e-9:
        best = j / n
    out[f"sac{t}"] = best
  return out


def reference_evaluate(logits, labels, confidence):
  probs = softmax(logits.astype(np.float64), axis=-1)
  correct = logits.argmax(-1) == labels  # probs can tie where float32 logits do not
  onehot = np.eye(logits.shape[1])[labels]
  out = {
    "acc": correct.mean(),
    "nll": log_loss(labels, probs, labels=np.arange(logits.shape[1])),
    "brier": np.mean(np.sum((probs - onehot) ** 2, axis=-1)),
    "ece": reference_ece(confidence, correct),
    "auroc": (roc_auc_score(correct, confidence) if 0 < correct.sum() < len(correct) else np.nan),
  }
  out.update(reference_selective(correct, confidence))
  return out


def reference_fpr95(conf_in, conf_out):
  """The definition: τ = the largest score with TPR(τ) ≥ 0.95; FPR(τ)."""
  scores = np.concatenate([conf_in, conf_out])
  tau = max(s for s in scores if np.mean(conf_in >= s) >= 0.95)
  return np.mean(conf_out >= tau)


def make_problem(rng, n, c, decimals=None):
  """Logits with ~70% accuracy; MSP confidences, rounded to create ties."""
  logits = (rng.normal(size=(n, c)) * rng.uniform(0.5, 4.0)).astype(np.float32)
  labels = np.where(rng.random(n) < 0.7, logits.argmax(-1), rng.integers(0, c, n))
  confidence = softmax(logits.astype(np.float64), axis=-1).max(-1)
  if decimals is not None:
    confidence = np.round(confidence, decimals)
  return logits, labels, confidence.astype(np.float32)


def assert_scores_close(ours, reference, keys=None, atol=2e-5):
  for key in keys or reference:
    np.testing.assert_allclose(ours[key], reference[key], rtol=1e-5, atol=atol, err_msg=key)


# ----------------------------------------------------------------------------
# evaluate() against the references.


@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("n,c", [(300, 5), (64, 2)])
def test_evaluate_matches_references(n, c, decimals):
  rng = np.random.default_rng(n + c + (decimals or 0))
  logits, labels, confidence = make_problem(rng, n, c, decimals)
  ours = metrics.evaluate(logits, labels, confidence)
  assert list(ours) == list(metrics.METRIC_NAMES)
  assert all(type(v) is float for v in ours.values())
  assert_scores_close(ours, reference_evaluate(logits, labels, confidence))


def test_evaluate_defaults_to_msp():
  rng = np.random.default_rng(0)
  logits, labels, _ = make_problem(rng, 300, 5)
  msp = np.asarray(metrics.confidence_scores(logits)["msp"])
  assert_scores_close(metrics.evaluate(logits, labels), metrics.evaluate(logits, labels, msp))
  assert_scores_close(metrics.evaluate(logits, labels), reference_evaluate(logits, labels, msp))


def test_ece_bin_edges_are_left_open():
  # b/15 itself belongs to bin b − 1; 0 belongs to bin 0.
  confidence = np.array([0.0, 1 / 15, 2 / 15, 0.2, 1.0, 0.5], np.float32)
  correct = np.array([True, False, True, True, False, True])
  labels = np.zeros(6, int)
  logits = np.where(correct[:, None], [[1.0, 0.0]], [[0.0, 1.0]]).astype(np.float32)
  ours = metrics.evaluate(logits, labels, confidence)
  np.testing.assert_allclose(ours["ece"], reference_ece(confidence, correct), atol=1e-6)
  diagram = metrics.reliability_diagram(confidence, correct)
  assert np.asarray(diagram["count"]).tolist() == [2, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]


def test_accuracy_breaks_argmax_ties_by_first_class():
  rng = np.random.default_rng(1)
  logits = rng.integers(0, 3, size=(300, 5)).astype(np.float32)  # many tied maxima
  labels = rng.integers(0, 5, 300)
  ours = metrics.evaluate(logits, labels)
  assert ours["acc"] == pytest.approx(np.mean(logits.argmax(-1) == labels), abs=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, np.float64])
def test_any_float_dtype(dtype):
  rng = np.random.default_rng(2)
  logits, labels, _ = make_problem(rng, 64, 5)
  cast = (logits * 3).astype(dtype)  # coarse dtypes create tied maxima too
  expected = metrics.evaluate(cast.astype(np.float32), labels)
  assert_scores_close(metrics.evaluate(cast, labels), expected)
  if dtype != np.float64:  # jax arrays hold float64 only with x64 enabled
    assert_scores_close(metrics.evaluate(jnp.asarray(cast), labels), expected)


def test_extreme_logits_are_stable():
  logits = np.array(
    [[1000.0, 0.0], [0.0, 1000.0], [30.0, 0.0], [-1e30, 5.0], [-3e38, 3e38], [1e-30, 0.0]],
    np.float32,
  )
  labels = np.array([1, 1, 0, 1, 1, 1])
  ours = metrics.evaluate(logits, labels)
  expected_nll = (1000.0 + 0.0 + np.log1p(np.exp(-30.0)) + 0.0 + 0.0 + np.log(2.0)) / 6
  np.testing.assert_allclose(ours["nll"], expected_nll, rtol=1e-6)
  np.testing.assert_allclose(ours["brier"], (2.0 + 0.5) / 6, atol=1e-6)
  assert ours["acc"] == pytest.approx(4 / 6)


def test_all_correct():
  logits = np.eye(2, dtype=np.float32)[[0, 1, 1, 0, 0, 1]] * 5
  labels = np.array([0, 1, 1, 0, 0, 1])
  ours = metrics.evaluate(logits, labels, np.array([0.9, 0.8, 0.8, 0.5, 0.5, 0.1], np.float32))
  assert np.isnan(ours["auroc"]) and ours["acc"] == 1.0
  assert ours["aurc"] == ours["eaurc"] == ours["augrc"] == 0.0
  assert all(ours[f"sac{t}"] == 1.0 for t in SAC_TARGETS)


def test_all_wrong():
  n = 6
  logits = np.eye(2, dtype=np.float32)[[0, 1, 1, 0, 0, 1]]
  labels = np.array([1, 0, 0, 1, 1, 0])
  ours = metrics.evaluate(logits, labels, np.linspace(0.2, 0.7, n).astype(np.float32))
  assert np.isnan(ours["auroc"]) and ours["acc"] == 0.0
  assert ours["aurc"] == pytest.approx(1.0) and ours["eaurc"] == pytest.approx(0.0, abs=1e-7)
  assert ours["augrc"] == pytest.approx((n + 1) / (2 * n))
  assert all(ours[f"sac{t}"] == 0.0 for t in SAC_TARGETS)


@pytest.mark.parametrize("label", [0, 1])
def test_single_sample(label):
  logits = np.array([[2.0, 0.0]], np.float32)
  ours = metrics.evaluate(logits, np.array([label]))
  right = label == 0
  assert np.isnan(ours["auroc"])
  assert ours["acc"] == float(right) and ours["aurc"] == float(not right)
  assert ours["eaurc"] == 0.0
  assert ours["sac99"] == float(right)
  msp = np.asarray(metrics.confidence_scores(logits)["msp"])
  assert_scores_close(ours, reference_evaluate(logits, np.array([label]), msp))


def test_interpolation_is_the_mean_over_tie_orders():
  # AURC and AUGRC with linear interpolation inside tie groups equal the
  # average of the plain (no-tie) definitions over every order of the ties.
  confidence = np.array([0.9, 0.6, 0.6, 0.6, 0.3, 0.3], np.float32)
  correct = np.array([True, False, True, False, True, False])
  n = len(confidence)
  aurcs, augrcs = [], []
  for order in itertools.permutations(range(n)):
    order = np.array(order)
    ranked = order[np.argsort(-confidence[order], kind="stable")]
    errors_at_k = np.cumsum(~correct[ranked])
    aurcs.append(np.mean(errors_at_k / np.arange(1, n + 1)))
    augrcs.append(np.mean(errors_at_k) / n)
  labels = np.where(correct, 0, 1)
  ours = metrics.evaluate(np.tile([[1.0, 0.0]], (n, 1)).astype(np.float32), labels, confidence)
  assert ours["aurc"] == pytest.approx(np.mean(aurcs), abs=1e-6)
  assert ours["augrc"] == pytest.approx(np.mean(augrcs), abs=1e-6)
  # A threshold accepts whole tie groups: coverage 1/6 has risk 0, coverage
  # 4/6 has risk 1/2, so no coverage beyond 1/6 reaches 90% accuracy.
  assert ours["sac90"] == pytest.approx(1 / 6)


def test_risk_coverage_curve_matches_reference():
  rng = np.random.default_rng(3)
  _, _, confidence = make_problem(rng, 300, 5, decimals=1)
  correct = rng.random(300) < 0.8
  coverage, risk = metrics.risk_coverage_curve(correct, confidence)
  k = np.arange(1, 301)
  np.testing.assert_allclose(coverage, k / 300, rtol=1e-6)
  np.testing.assert_allclose(risk, reference_error_counts(correct, confidence) / k, atol=1e-6)
  labels = np.where(correct, 0, 1)
  logits = np.tile([[1.0, 0.0]], (300, 1)).astype(np.float32)
  aurc = metrics.evaluate(logits, labels, confidence)["aurc"]
  assert float(np.mean(risk)) == pytest.approx(aurc, abs=1e-6)


@pytest.mark.parametrize("from_logits", [True, False])
def test_reliability_diagram(from_logits):
  rng = np.random.default_rng(4)
  logits, labels, _ = make_problem(rng, 300, 5)
  probs = softmax(logits.astype(np.float64), axis=-1)
  confidence, correct = probs.max(-1).astype(np.float32), probs.argmax(-1) == labels
  scores = logits if from_logits else probs.astype(np.float32)
  diagram = {
    k: np.asarray(v)
    for k, v in metrics.reliability_diagram(scores, labels, from_logits=from_logits).items()
  }
  from_confidence = metrics.reliability_diagram(confidence, correct)
  edges = (np.arange(16) / 15).astype(np.float32)
  for b in range(15):
    in_bin = (confidence > edges[b]) & (confidence <= edges[b + 1])
    assert diagram["count"][b] == in_bin.sum() == from_confidence["count"][b]
    if in_bin.any():
      np.testing.assert_allclose(diagram["confidence"][b], confidence[in_bin].mean(), atol=1e-5)
      np.testing.assert_allclose(diagram["accuracy"][b], correct[in_bin].mean(), atol=1e-6)
    else:
      assert np.isnan(diagram["confidence"][b]) and np.isnan(diagram["accuracy"][b])
  filled = diagram["count"] > 0
  ece = np.sum(
    diagram["count"][filled]
    / 300
    * np.abs(diagram["accuracy"][filled] - diagram["confidence"][filled])
  )
  assert ece == pytest.approx(metrics.evaluate(logits, labels, confidence)["ece"], abs=1e-5)


def test_confidence_scores():
  rng = np.random.default_rng(5)
  logits, _, _ = make_problem(rng, 64, 5)
  scores = metrics.confidence_scores(logits)
  probs = softmax(logits.astype(np.float64), axis=-1)
  np.testing.assert_allclose(scores["msp"], probs.max(-1), rtol=1e-5)
  np.testing.assert_allclose(scores["neg_entropy"], np.sum(probs * np.log(probs), -1), atol=1e-5)
  np.testing.assert_allclose(scores["energy"], logsumexp(logits.astype(np.float64), -1), rtol=1e-6)
  np.testing.assert_array_equal(scores["max_logit"], logits.astype(np.float32).max(-1))


# ----------------------------------------------------------------------------
# ood() against sklearn.


def sklearn_ood(conf_in, conf_out):
  y = np.r_[np.ones(len(conf_in)), np.zeros(len(conf_out))]
  s = np.r_[conf_in, conf_out].astype(np.float64)
  fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
  return {
    "auroc": roc_auc_score(y, s),
    "aupr": average_precision_score(y, s),
    "fpr95": fpr[np.argmax(tpr >= 0.95)],
  }


@pytest.mark.parametrize("decimals", [None, 1, 2])
@pytest.mark.parametrize("n_in,n_out", [(300, 64), (17, 5), (1, 3)])
def test_ood_matches_sklearn(n_in, n_out, decimals):
  rng = np.random.default_rng(n_in + n_out + (decimals or 0))
  conf_in = rng.beta(5, 2, n_in)
  conf_out = rng.beta(2, 3, n_out)
  if decimals is not None:
    conf_in, conf_out = np.round(conf_in, decimals), np.round(conf_out, decimals)
  conf_in, conf_out = conf_in.astype(np.float32), conf_out.astype(np.float32)
  ours = metrics.ood(conf_in, conf_out)
  assert list(ours) == ["auroc", "aupr", "fpr95"]
  reference = sklearn_ood(conf_in, conf_out)
  assert_scores_close(ours, reference, atol=1e-5)
  assert reference["fpr95"] == reference_fpr95(conf_in, conf_out)


def test_ood_edge_cases():
  separated = metrics.ood(np.array([0.8]), np.array([0.1, 0.2, 0.3]))
  assert separated == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
  same = metrics.ood(np.full(1, 0.5), np.full(3, 0.5))
  assert same["auroc"] == 0.5 and same["fpr95"] == 1.0
  assert same["aupr"] == pytest.approx(0.25)
  # Any real scores work (energy is unbounded); higher = in-distribution.
  reversed_ = metrics.ood(np.array([-50.0]), np.array([10.0, 20.0, -60.0]))
  assert reversed_["auroc"] == pytest.approx(1 / 3) and reversed_["fpr95"] == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------
# Properties.


@st.composite
def problems(draw, decimals=st.sampled_from([None, 1, 2])):
  n, c = draw(SIZES), draw(CLASSES)
  # No subnormals: XLA on CPU flushes them to zero (so argmax of [0, 7e-45]
  # is 0 under jit and 1 in numpy), a property of the hardware mode, not of
  # the metrics.
  logits = draw(
    hnp.arrays(np.float32, (n, c), elements=st.floats(-30, 30, width=32, allow_subnormal=False))
  )
  labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
  confidence = draw(
    hnp.arrays(np.float32, n, elements=st.floats(0, 1, width=32, allow_subnormal=False))
  )
  rounding = draw(decimals)
  if rounding is not None:
    confidence = np.round(confidence, rounding).astype(np.float32)
  return logits, labels, confidence


@PROPERTY_SETTINGS
@given(problems())
def test_ranges(problem):
  logits, labels, confidence = problem
  for scores in (metrics.evaluate(logits, labels, confidence), metrics.evaluate(logits, labels)):
    for key in ("acc", "ece", "aurc", "augrc", *(f"sac{t}" for t in SAC_TARGETS)):
      assert 0.0 <= scores[key] <= 1.0, key
    assert np.isnan(scores["auroc"]) or 0.0 <= scores["auroc"] <= 1.0
    assert scores["nll"] >= 0.0 and 0.0 <= scores["brier"] <= 2.0 + 1e-6
    assert -1e-6 <= scores["eaurc"] <= scores["aurc"] + 1e-6


@PROPERTY_SETTINGS
@given(problems(), st.sampled_from(["cube", "mean_square", "sqrt"]))
def test_invariant_under_monotone_transforms(problem, transform):
  logits, labels, _ = problem
  rng = np.random.default_rng(len(labels))
  # A grid of 1/1000 keeps distinct values distinct after each transform.
  grid = rng.integers(0, 1001, len(labels)) / 1000
  transformed = {"cube": grid**3, "mean_square": (grid + grid**2) / 2, "sqrt": np.sqrt(grid)}[
    transform
  ]
  grid, transformed = grid.astype(np.float32), transformed.astype(np.float32)
  assert len(np.unique(transformed)) == len(np.unique(grid))
  before = metrics.evaluate(logits, labels, grid)
  after = metrics.evaluate(logits, labels, transformed)
  for key in RANKING_KEYS:
    np.testing.assert_allclose(after[key], before[key], rtol=0, atol=1e-7, err_msg=key)


@PROPERTY_SETTINGS
@given(problems(), st.randoms(use_true_random=False))
def test_permutation_invariance(problem, random):
  logits, labels, confidence = problem
  order = np.array(random.sample(range(len(labels)), len(labels)))
  for conf in (confidence, None):
    before = metrics.evaluate(logits, labels, conf)
    after = metrics.evaluate(logits[order], labels[order], None if conf is None else conf[order])
    assert_scores_close(after, before, atol=1e-6)


@PROPERTY_SETTINGS
@given(problems(decimals=st.just(1)))
def test_evaluate_matches_references_with_hypothesis(problem):
  logits, labels, confidence = problem
  keys = (
    "acc",
    "brier",
    "ece",
    "auroc",
    "aurc",
    "eaurc",
    "augrc",
    *(f"sac{t}" for t in SAC_TARGETS),
  )
  ours = metrics.evaluate(logits, labels, confidence)
  reference = reference_evaluate(logits, labels, confidence)
  if np.isnan(reference["auroc"]):
    assert np.isnan(ours["auroc"])
    keys = tuple(k for k in keys if k != "auroc")
  assert_scores_close(ours, reference, keys)


@PROPERTY_SETTINGS
@given(problems(), st.booleans(), st.integers(0, 2**32 - 1))
def test_accumulator_equals_whole_array(problem, give_confidence, seed):
  logits, labels, confidence = problem
  n, c = logits.shape
  rng = np.random.default_rng(seed)
  batch_size = 8
  accumulator = metrics.MetricsAccumulator()
  start = 0
  while start < n:
    rows = min(rng.integers(0, batch_size + 1), n - start)  # 0 = a batch of padding
    # Padding rows hold garbage that must be ignored, not validated.
    batch_logits = np.full((batch_size, c), np.nan, np.float32)
    batch_labels = np.full(batch_size, -1)
    batch_confidence = np.full(batch_size, 7.0, np.float32)
    slots = np.sort(rng.choice(batch_size, rows, replace=False))
    batch_logits[slots] = logits[start : start + rows]
    batch_labels[slots] = labels[start : start + rows]
    batch_confidence[slots] = confidence[start : start + rows]
    mask = np.zeros(batch_size, bool)
    mask[slots] = True
    accumulator.update(
      batch_logits, batch_labels, batch_confidence if give_confidence else None, mask=mask
    )
    start += rows
  whole = metrics.evaluate(logits, labels, confidence if give_confidence else None)
  result = accumulator.result()
  assert list(result) == list(whole)
  assert_scores_close(result, whole, atol=1e-6)


def test_accumulator_without_mask_and_reset():
  rng = np.random.default_rng(6)
  logits, labels, confidence = make_problem(rng, 64, 5, decimals=1)
  accumulator = metrics.MetricsAccumulator()
  for i in range(0, 64, 8):
    accumulator.update(jnp.asarray(logits[i : i + 8]), labels[i : i + 8], confidence[i : i + 8])
  assert_scores_close(accumulator.result(), metrics.evaluate(logits, labels, confidence), atol=1e-6)
  accumulator.reset()
  with pytest.raises(ValueError, match="no samples"):
    accumulator.result()


# ----------------------------------------------------------------------------
# Validation: one-line ValueErrors that name the problem.


def _good():
  rng = np.random.default_rng(7)
  logits, labels, confidence = make_problem(rng, 17, 5)
  return logits, labels, confidence


def _with(array, index, value):
  array = np.array(array)
  array[index] = value
  return array


BAD_EVALUATE_INPUTS = {
  "nan logits": (
    lambda l, y, c: (_with(l, ([0, 3], [1, 2]), np.nan), y, c),
    "logits have 2 non-finite values",
  ),
  "inf logits": (
    lambda l, y, c: (_with(l, ([0, 3, 4], [1, 2, 0]), [np.inf, -np.inf, np.inf]), y, c),
    "logits have 3 non-finite values",
  ),
  "1-D logits": (lambda l, y, c: (l[:, 0], y, c), "logits must be 2-D"),
  "3-D logits": (lambda l, y, c: (l[None], y, c), "logits must be 2-D"),
  "no rows": (lambda l, y, c: (l[:0], y[:0], c[:0]), "logits are empty"),
  "no classes": (lambda l, y, c: (l[:, :0], y, c), "logits are empty"),
  "labels shape": (lambda l, y, c: (l, y[:-1], c), "labels shape"),
  "labels 2-D": (lambda l, y, c: (l, y[:, None], c), "labels shape"),
  "labels too big": (
    lambda l, y, c: (l, _with(y, [1, 2], 5), c),
    r"labels have 2 values outside \[0, 5\)",
  ),
  "labels negative": (lambda l, y, c: (l, _with(y, 0, -1), c), "labels have 1 values outside"),
  "float labels": (lambda l, y, c: (l, y.astype(np.float32), c), "labels must be integers"),
  "confidence shape": (lambda l, y, c: (l, y, c[:-1]), "confidence shape"),
  "confidence range": (
    lambda l, y, c: (l, y, _with(c, [0, 1, 2], [1.5, -0.1, np.nan])),
    r"confidence has 3 values outside \[0, 1\]",
  ),
}


@pytest.mark.parametrize("case", BAD_EVALUATE_INPUTS)
def test_evaluate_rejects_bad_inputs(case):
  corrupt, message = BAD_EVALUATE_INPUTS[case]
  with pytest.raises(ValueError, match=message) as error:
    metrics.evaluate(*corrupt(*_good()))
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("case", ["nan logits", "labels too big", "confidence range"])
def test_accumulator_rejects_bad_inputs(case):
  corrupt, message = BAD_EVALUATE_INPUTS[case]
  with pytest.raises(ValueError, match=message):
    metrics.MetricsAccumulator().update(*corrupt(*_good()))


def test_accumulator_rejects_bad_batches():
  logits, labels, _ = _good()
  accumulator = metrics.MetricsAccumulator()
  with pytest.raises(ValueError, match="mask shape"):
    accumulator.update(logits, labels, mask=np.ones(3, bool))
  accumulator.update(logits, labels)
  with pytest.raises(ValueError, match="classes"):
    accumulator.update(logits[:, :4], np.minimum(labels, 3))
  with pytest.raises(ValueError, match="no samples"):
    empty = metrics.MetricsAccumulator()
    empty.update(logits, labels, mask=np.zeros(len(labels), bool))
    empty.result()


def test_other_functions_reject_bad_inputs():
  with pytest.raises(ValueError, match="conf_in must be a non-empty 1-D"):
    metrics.ood(np.array([]), np.array([0.5]))
  with pytest.raises(ValueError, match="conf_out has 1 non-finite"):
    metrics.ood(np.array([0.5]), np.array([0.5, np.nan]))
  with pytest.raises(ValueError, match="logits have 1 non-finite"):
    metrics.confidence_scores(np.array([[0.0, np.inf]], np.float32))
  with pytest.raises(ValueError, match="confidence shape"):
    metrics.risk_coverage_curve(np.array([True, False]), np.array([0.5]))
  with pytest.raises(ValueError, match="correct must be a non-empty 1-D"):
    metrics.risk_coverage_curve(np.array([]), np.array([]))
  with pytest.raises(ValueError, match="confidence has 1 values outside"):
    metrics.reliability_diagram(np.array([0.5, 2.0]), np.array([True, False]))


# ----------------------------------------------------------------------------
# evaluate_resamples: evaluate() on each resample, vectorised.


@pytest.mark.parametrize("decimals", [None, 1])
def test_evaluate_resamples_equals_evaluate_on_each_resample(decimals):
  rng = np.random.default_rng(3)
  logits, labels, confidence = make_problem(rng, 120, 5, decimals)
  rows = rng.integers(0, 120, (7, 90))  # resamples may be smaller than the split
  resampled = metrics.evaluate_resamples(logits, labels, confidence, rows=rows)
  assert list(resampled) == list(metrics.METRIC_NAMES)
  for r, idx in enumerate(rows):
    one = metrics.evaluate(logits[idx], labels[idx], confidence[idx])
    assert_scores_close({k: v[r] for k, v in resampled.items()}, one)
    assert_scores_close(
      {k: v[r] for k, v in resampled.items()},
      reference_evaluate(logits[idx], labels[idx], confidence[idx]),
    )


def test_evaluate_resamples_chunks_and_names(monkeypatch):
  rng = np.random.default_rng(4)
  logits, labels, _ = make_problem(rng, 64, 2)
  rows = rng.integers(0, 64, (9, 64))
  whole = metrics.evaluate_resamples(logits, labels, rows=rows, names=("nll", "aurc"))
  assert list(whole) == ["nll", "aurc"] and whole["nll"].shape == (9,)
  monkeypatch.setattr(metrics, "RESAMPLE_CHUNK_SAMPLES", 4 * 64)  # chunks of 4, 4 and 1
  chunked = metrics.evaluate_resamples(logits, labels, rows=rows, names=("nll", "aurc"))
  for name in whole:
    np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-6)
  with pytest.raises(ValueError, match="rows must index the 64 samples"):
    metrics.evaluate_resamples(logits, labels, rows=rows + 1)
  with pytest.raises(ValueError, match="rows must be a non-empty 2-D integer array"):
    metrics.evaluate_resamples(logits, labels, rows=rows[0])
