"""Properties of the metrics and of the temperature fit, on drawn inputs.

Each test states a property that must hold for every input the strategies
can draw (ties, degenerate splits, extreme logits included), not only for
hand-picked cases. Examples are derandomised, so every run tests the same
inputs, and are drawn from a few fixed shapes, since every new shape
compiles the jitted functions again.
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import optimize, special, stats

from duojax.core import metrics, temperature

SAC_KEYS = tuple(f"sac{t}" for t in metrics.SAC_TARGETS)
RANKING_KEYS = ("auroc", "aurc", "eaurc", "augrc", *SAC_KEYS)
EPS = 1e-6  # float32 sums of N ≤ 40 terms in [0, 1]


def _settings(max_examples: int):
  # derandomize: the same examples on every run (reproducible in CI); no
  # deadline, since the first example of each shape includes jit compiles.
  return settings(
    max_examples=max_examples,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
  )


# ----------------------------------------------------------------------------
# Strategies.

ROWS = st.sampled_from([1, 2, 9, 40])
CLASSES = st.sampled_from([2, 5])
MAX_ROWS = 40

# Quarter-integer logits tie often (argmax ties, equal rows); free floats
# reach large magnitudes and arbitrary gaps. Not subnormal ones: evaluate
# (like jnp.argmax on CPU) treats subnormal gaps as ties, numpy's argmax,
# which picks the labels below, does not.
LOGIT = st.one_of(
  st.integers(-40, 40).map(lambda k: k / 4), st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
)
# Confidences: the ends, the ECE bin edges b/15 and a coarse grid (ties),
# and free floats in [0, 1].
CONFIDENCE = st.one_of(
  st.sampled_from([0.0, 1.0]),
  st.integers(0, 15).map(lambda b: b / 15),
  st.integers(0, 10).map(lambda k: k / 10),
  st.floats(0, 1, width=32, allow_subnormal=False),
)


@st.composite
def classifier_outputs(draw, rows=ROWS, labels_mode=None, confidence_mode=None):
  """(logits [N, C] float32, labels [N], confidence [N] float32 or None, modes).

  labels_mode: "drawn", "all_correct" (label = argmax, first maximal class)
  or "all_wrong"; confidence_mode: "drawn", "constant" (one tie group) or
  "msp" (None: evaluate's default).
  """
  n, c = draw(rows), draw(CLASSES)
  logits = draw(hnp.arrays(np.float32, (n, c), elements=LOGIT))
  predicted = logits.argmax(-1)  # numpy also takes the first maximal class
  labels_mode = labels_mode or draw(st.sampled_from(["drawn", "all_correct", "all_wrong"]))
  if labels_mode == "drawn":
    labels = draw(hnp.arrays(np.int64, n, elements=st.integers(0, c - 1)))
  elif labels_mode == "all_correct":
    labels = predicted
  else:
    shift = draw(hnp.arrays(np.int64, n, elements=st.integers(1, c - 1)))
    labels = (predicted + shift) % c
  confidence_mode = confidence_mode or draw(st.sampled_from(["drawn", "constant", "msp"]))
  if confidence_mode == "drawn":
    confidence = draw(hnp.arrays(np.float32, n, elements=CONFIDENCE))
  elif confidence_mode == "constant":
    confidence = np.full(n, draw(CONFIDENCE), np.float32)
  else:
    confidence = None
  return logits, labels, confidence, (labels_mode, confidence_mode)


def _ood_sizes():
  # One set of sizes for both: swapping in and out then compiles nothing new.
  sizes = st.sampled_from([1, 3, 20])
  return st.tuples(sizes, sizes)


# Any finite real works as an OOD score (energy is unbounded).
OOD_SCORE = st.one_of(
  st.integers(-8, 8).map(float), st.floats(-1e6, 1e6, width=32, allow_subnormal=False)
)


@st.composite
def ood_scores(draw, elements=OOD_SCORE):
  n_in, n_out = draw(_ood_sizes())
  return (
    draw(hnp.arrays(np.float32, n_in, elements=elements)),
    draw(hnp.arrays(np.float32, n_out, elements=elements)),
  )


def _assert_same(actual: dict, expected: dict, keys, *, exact=(), rtol=1e-6, atol=EPS):
  for key in keys:
    if key in exact:
      np.testing.assert_array_equal(actual[key], expected[key], err_msg=key)
    else:
      np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=atol, err_msg=key)


# ----------------------------------------------------------------------------
# Ranges and the documented degenerate cases.


@_settings(max_examples=60)
@given(classifier_outputs())
def test_every_metric_stays_in_its_range(problem):
  """acc, ECE, AURC, AUGRC, SAC in [0, 1]; Brier in [0, 2]; NLL ≥ 0; E-AURC
  in [0, AURC]; AUROC in [0, 1], or NaN exactly when every prediction is
  right or every one is wrong. Plus the orderings the definitions imply:
  AUGRC ≤ AURC (dividing by N ≥ k), AUGRC ≤ 1 − acc (never more errors
  than there are), and SAC shrinks as the accuracy target grows."""
  logits, labels, confidence, _ = problem
  scores = metrics.evaluate(logits, labels, confidence)
  assert list(scores) == list(metrics.METRIC_NAMES)
  for key in ("acc", "ece", "aurc", "augrc", *SAC_KEYS):
    assert 0.0 <= scores[key] <= 1.0 + EPS, (key, scores[key])
  assert scores["nll"] >= 0.0
  assert 0.0 <= scores["brier"] <= 2.0 + EPS
  assert -EPS <= scores["eaurc"] <= scores["aurc"] + EPS
  assert scores["augrc"] <= scores["aurc"] + EPS
  assert scores["augrc"] <= 1.0 - scores["acc"] + EPS
  sacs = [scores[key] for key in SAC_KEYS]
  assert sacs == sorted(sacs, reverse=True), sacs
  mixed = 0.0 < scores["acc"] < 1.0
  assert np.isnan(scores["auroc"]) != mixed, scores
  if mixed:
    assert 0.0 <= scores["auroc"] <= 1.0


@_settings(max_examples=25)
@given(classifier_outputs(labels_mode="all_correct"))
def test_all_correct(problem):
  """Every prediction right: AUROC is NaN (documented), nothing to reject
  (AURC = E-AURC = AUGRC = 0) and every SAC target holds at full coverage."""
  logits, labels, confidence, _ = problem
  scores = metrics.evaluate(logits, labels, confidence)
  assert np.isnan(scores["auroc"])
  assert scores["acc"] == 1.0
  assert scores["aurc"] == scores["eaurc"] == scores["augrc"] == 0.0
  assert all(scores[key] == 1.0 for key in SAC_KEYS)


@_settings(max_examples=25)
@given(classifier_outputs(labels_mode="all_wrong"))
def test_all_wrong(problem):
  """Every prediction wrong: AUROC is NaN, risk is 1 at every coverage (AURC
  = 1, and the ideal order is no better, E-AURC = 0), AUGRC = mean_k k/N =
  (N + 1)/(2N), and no coverage reaches any SAC target."""
  logits, labels, confidence, _ = problem
  n = len(labels)
  scores = metrics.evaluate(logits, labels, confidence)
  assert np.isnan(scores["auroc"])
  assert scores["acc"] == 0.0
  assert math.isclose(scores["aurc"], 1.0, abs_tol=EPS)
  assert math.isclose(scores["eaurc"], 0.0, abs_tol=EPS)
  assert math.isclose(scores["augrc"], (n + 1) / (2 * n), abs_tol=EPS)
  assert all(scores[key] == 0.0 for key in SAC_KEYS)


@_settings(max_examples=30)
@given(classifier_outputs(labels_mode="drawn", confidence_mode="constant"))
def test_one_tie_group(problem):
  """All confidences equal form one tie group, whose error count is
  interpolated linearly (module docstring): risk is the error rate r at
  every coverage, so AURC = r and AUGRC = r (N + 1)/(2N); a threshold takes
  all or nothing, so SAC@t is 1 if 1 − r ≥ t else 0; the confidence cannot
  rank, so AUROC = 1/2 where defined; and all rows share one ECE bin, so
  ECE = |acc − confidence|."""
  logits, labels, confidence, _ = problem
  n = len(labels)
  scores = metrics.evaluate(logits, labels, confidence)
  error_rate = 1.0 - scores["acc"]
  assert math.isclose(scores["aurc"], error_rate, abs_tol=EPS)
  assert math.isclose(scores["augrc"], error_rate * (n + 1) / (2 * n), abs_tol=EPS)
  errors = int(round(error_rate * n))
  for t in metrics.SAC_TARGETS:
    # Exactly as documented: 100·errors ≤ (100 − t)·N, in integers.
    assert scores[f"sac{t}"] == float(100 * errors <= (100 - t) * n), t
  if 0 < errors < n:
    assert scores["auroc"] == 0.5
  assert math.isclose(scores["ece"], abs(scores["acc"] - float(confidence[0])), abs_tol=EPS)


@_settings(max_examples=40)
@given(ood_scores(), st.sampled_from(["drawn", "tied", "separated"]))
def test_ood_metrics_stay_in_range(scores, mode):
  """OOD AUROC, AUPR and FPR95 lie in [0, 1] for any finite scores; swapping
  in and out mirrors AUROC (1 − AUROC). One common score: AUROC = 1/2,
  FPR95 = 1 and AUPR = the positive rate. Every in score above every out
  score: AUROC = AUPR = 1, FPR95 = 0."""
  conf_in, conf_out = scores
  if mode == "tied":
    conf_out = np.full_like(conf_out, conf_in[0])
    conf_in = np.full_like(conf_in, conf_in[0])
  elif mode == "separated":
    # Below the smallest in score by at least 1 (exact at |x| ≤ 1e6 in float32).
    conf_out = (conf_in.min() - 1.0 - np.abs(conf_out)).astype(np.float32)
  result = metrics.ood(conf_in, conf_out)
  assert list(result) == list(metrics.OOD_METRIC_NAMES)
  assert 0.0 <= result["auroc"] <= 1.0 and 0.0 <= result["fpr95"] <= 1.0, result
  # AUPR is a float32 sum of (recall gain × precision) terms; rounding can
  # take a perfect ranking's 1 an ulp past it (in = [3, 2, 2, 1, 1, 1, 0],
  # out = [−1] gives 1.0000001).
  assert 0.0 < result["aupr"] <= 1.0 + EPS, result
  mirrored = metrics.ood(conf_out, conf_in)
  assert math.isclose(result["auroc"] + mirrored["auroc"], 1.0, abs_tol=EPS)
  if mode == "tied":
    assert result["auroc"] == 0.5 and result["fpr95"] == 1.0
    positive_rate = len(conf_in) / (len(conf_in) + len(conf_out))
    assert math.isclose(result["aupr"], positive_rate, abs_tol=EPS)
  elif mode == "separated":
    assert result["auroc"] == 1.0 and result["fpr95"] == 0.0, result
    assert math.isclose(result["aupr"], 1.0, abs_tol=EPS), result


# ----------------------------------------------------------------------------
# Invariance under strictly monotone transforms of the confidence.

# Increasing maps of [0, 1] into [0, 1] (evaluate's confidences must stay
# there), each with slope ≥ 1/2: values on the 1/1000 grid below stay ≥ 5e-4
# apart, far above float32 resolution, so no transform merges two values.
UNIT_TRANSFORMS = {
  "cubic": lambda x: (x**3 + x) / 2,
  "exp": lambda x: np.expm1(x) / np.expm1(1.0),
  "affine": lambda x: 0.25 + 0.5 * x,
}
# Increasing maps of the reals for OOD scores, which may be any finite reals.
REAL_TRANSFORMS = {
  "cubic": lambda x: x**3 + x,
  "exp": np.exp,
  "affine": lambda x: 3.0 * x - 7.0,
}


def _transformed(values: np.ndarray, transform) -> np.ndarray:
  """transform(values) in float64, cast to float32, after checking that the
  ranks (ties included) survived the cast, which the tests rely on."""
  out = transform(values.astype(np.float64)).astype(np.float32)
  assert np.array_equal(stats.rankdata(values, "min"), stats.rankdata(out, "min"))
  return out


@_settings(max_examples=40)
@given(
  classifier_outputs(confidence_mode="msp"), st.data(), st.sampled_from(sorted(UNIT_TRANSFORMS))
)
def test_ranking_metrics_see_only_the_order_of_the_confidence(problem, data, name):
  """AUROC, AURC, E-AURC, AUGRC and SAC depend on the order of the
  confidences only (ties included): a strictly increasing transform leaves
  them bit-identical, since the sorted arrays and every float operation after
  the sort are the same."""
  logits, labels, _, _ = problem
  # A 1/1000 grid: drawn values repeat (ties), and distinct ones stay distinct.
  grid = data.draw(hnp.arrays(np.int64, len(labels), elements=st.integers(0, 1000)))
  confidence = (grid / 1000).astype(np.float32)
  before = metrics.evaluate(logits, labels, confidence)
  after = metrics.evaluate(logits, labels, _transformed(confidence, UNIT_TRANSFORMS[name]))
  _assert_same(after, before, RANKING_KEYS, exact=RANKING_KEYS)


@_settings(max_examples=40)
@given(
  ood_scores(elements=st.integers(-1024, 1024).map(lambda k: k / 64)),
  st.sampled_from(sorted(REAL_TRANSFORMS)),
)
def test_ood_metrics_see_only_the_order_of_the_scores(scores, name):
  """OOD AUROC, AUPR and FPR95 are unchanged by a strictly increasing
  transform of the scores (applied to in and out alike)."""
  conf_in, conf_out = scores
  # Scores on a 1/64 grid in [−16, 16]: ties within and across the two sets,
  # and the transforms keep distinct values distinct in float32.
  both = _transformed(np.concatenate([conf_in, conf_out]), REAL_TRANSFORMS[name])
  before = metrics.ood(conf_in, conf_out)
  after = metrics.ood(both[: len(conf_in)], both[len(conf_in) :])
  _assert_same(after, before, metrics.OOD_METRIC_NAMES, exact=metrics.OOD_METRIC_NAMES)


# ----------------------------------------------------------------------------
# Invariance under permutations of the samples.


@_settings(max_examples=40)
@given(classifier_outputs(), st.data())
def test_permuting_the_samples_changes_no_metric(problem, data):
  """Every metric of evaluate is a function of the set of samples, not of
  their order: accuracy and SAC (ratios of integer counts) agree exactly,
  the others up to float32 summation order."""
  logits, labels, confidence, _ = problem
  order = np.array(data.draw(st.permutations(range(len(labels)))))
  before = metrics.evaluate(logits, labels, confidence)
  after = metrics.evaluate(
    logits[order], labels[order], None if confidence is None else confidence[order]
  )
  _assert_same(after, before, metrics.METRIC_NAMES, exact=("acc", *SAC_KEYS))


@_settings(max_examples=30)
@given(ood_scores(), st.data())
def test_permuting_ood_scores_changes_nothing(scores, data):
  """OOD metrics depend on the two sets of scores, not on their order; FPR95
  (a ratio of integer counts) agrees exactly."""
  conf_in, conf_out = scores
  order_in = np.array(data.draw(st.permutations(range(len(conf_in)))))
  order_out = np.array(data.draw(st.permutations(range(len(conf_out)))))
  before = metrics.ood(conf_in, conf_out)
  after = metrics.ood(conf_in[order_in], conf_out[order_out])
  _assert_same(after, before, metrics.OOD_METRIC_NAMES, exact=("fpr95",))


# ----------------------------------------------------------------------------
# Batches: the accumulator, and what is accumulable from per-batch results.

BATCH_ROWS = MAX_ROWS  # every batch is padded to this, so updates compile once per C


@_settings(max_examples=30)
@given(classifier_outputs(labels_mode="drawn"), st.data())
def test_accumulator_over_any_split_in_any_order_equals_the_whole_array(problem, data):
  """MetricsAccumulator over any split of the rows into batches (empty ones
  included), fed in any order, with masked padding holding garbage, gives
  evaluate on the whole array: exactly for accuracy and SAC, to float32
  rounding for the rest."""
  logits, labels, confidence, _ = problem
  n, c = logits.shape
  cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
  bounds = list(zip([0, *cuts], [*cuts, n]))
  bounds = [bounds[i] for i in data.draw(st.permutations(range(len(bounds))))]
  accumulator = metrics.MetricsAccumulator()
  for start, stop in bounds:
    rows = stop - start
    # Padding rows are NaN, out-of-range labels and confidences: all must be
    # ignored, not validated. The real rows go to drawn slots of the batch.
    slots = np.sort(data.draw(st.permutations(range(BATCH_ROWS)))[:rows]).astype(int)
    batch_logits = np.full((BATCH_ROWS, c), np.nan, np.float32)
    batch_labels = np.full(BATCH_ROWS, c + 3)
    batch_confidence = np.full(BATCH_ROWS, -2.0, np.float32)
    batch_logits[slots], batch_labels[slots] = logits[start:stop], labels[start:stop]
    if confidence is not None:
      batch_confidence[slots] = confidence[start:stop]
    mask = np.zeros(BATCH_ROWS, bool)
    mask[slots] = True
    accumulator.update(
      batch_logits, batch_labels, None if confidence is None else batch_confidence, mask=mask
    )
  whole = metrics.evaluate(logits, labels, confidence)
  result = accumulator.result()
  assert list(result) == list(whole)
  _assert_same(result, whole, metrics.METRIC_NAMES, exact=("acc", *SAC_KEYS))


CHUNK_ROWS = 40  # chunks of 7 or 16 rows, and their remainders of 5 and 8


@_settings(max_examples=20)
@given(classifier_outputs(rows=st.just(CHUNK_ROWS), labels_mode="drawn"), st.sampled_from([7, 16]))
def test_means_and_ece_accumulate_from_per_chunk_results(problem, chunk):
  """Without the accumulator: accuracy, NLL and Brier of the whole array are
  the row-weighted means of the chunks' evaluate results, and ECE is
  Σ_b |Σ_chunks n_b (acc_b − conf_b)| / N from the chunks' reliability
  diagrams (per-bin counts and means, i.e. per-bin sums)."""
  logits, labels, confidence, _ = problem
  n = len(labels)
  if confidence is None:
    confidence = np.asarray(metrics.confidence_scores(logits)["msp"])
  correct = logits.argmax(-1) == labels
  weighted = {"acc": 0.0, "nll": 0.0, "brier": 0.0}
  gap_sums = np.zeros(metrics.ECE_BINS)
  for start in range(0, n, chunk):
    stop = min(start + chunk, n)
    part = metrics.evaluate(logits[start:stop], labels[start:stop], confidence[start:stop])
    for key in weighted:
      weighted[key] += (stop - start) * part[key] / n
    diagram = metrics.reliability_diagram(confidence[start:stop], correct[start:stop])
    count = np.asarray(diagram["count"], np.float64)
    gaps = np.asarray(diagram["accuracy"], np.float64) - np.asarray(
      diagram["confidence"], np.float64
    )
    gap_sums += np.where(count > 0, count * gaps, 0.0)  # empty bins hold NaN means
  whole = metrics.evaluate(logits, labels, confidence)
  _assert_same(weighted, whole, weighted, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.sum(np.abs(gap_sums)) / n, whole["ece"], atol=1e-5)


# ----------------------------------------------------------------------------
# Temperature fit: optimality of the duo weights.


def _nll64(weights, members, labels) -> float:
  """The fitted objective in float64: mean NLL of softmax(Σ_i w_i z_i)."""
  z = np.einsum("m,mnc->nc", np.asarray(weights, np.float64), np.asarray(members, np.float64))
  return float(np.mean(special.logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def _best_single_nll64(logits, labels) -> float:
  """min over w of the NLL of softmax(w z) (convex in w), in float64. The
  bound |w| ≤ 100 is past the optimum of any non-separable split here; for
  a separable one (infimum at w → ±∞) it costs < e^(−25) per row, with
  margins ≥ 1/4 (FIT_LOGITS)."""
  fit = optimize.minimize_scalar(
    lambda w: _nll64([w], [logits], labels),
    bounds=(-100, 100),
    method="bounded",
    options={"xatol": 1e-10},
  )
  return float(fit.fun)


def _at_most(value, bound, what):
  # 1e-5 relative; the 1e-7 absolute floor is float32 resolution for NLLs
  # near 0 (separable splits, see _best_single_nll64).
  assert value <= bound * (1 + 1e-5) + 1e-7, (what, value, bound)


FIT_ROWS, FIT_CLASSES = 48, 4
# Quarter-integer logits: margins are 0 or ≥ 1/4, so even a separable split
# (infimum at w → ∞) comes within float32 resolution of it at moderate w,
# and a gradient tolerance is a fair stopping rule. The scale reaches logits
# of ±128, where exp(z − z_label) overflows and the objective takes its
# exact row-max path. Logits some hundred times larger are the subject of
# test_fit_of_very_large_logits_reaches_the_optimum.
FIT_LOGITS = st.tuples(
  st.sampled_from([1.0, 4.0, 16.0]),
  hnp.arrays(np.int8, (FIT_ROWS, FIT_CLASSES), elements=st.integers(-32, 32)),
).map(lambda scale_and_grid: (scale_and_grid[0] * scale_and_grid[1] / 4).astype(np.float32))


@_settings(max_examples=12)
@given(
  FIT_LOGITS,
  FIT_LOGITS,
  hnp.arrays(np.int64, FIT_ROWS, elements=st.integers(0, FIT_CLASSES - 1)),
  st.sampled_from(temperature.SOLVERS),
)
def test_fitted_duo_weights_beat_the_large_model_alone(large, small, labels, solver):
  """The duo's feasible set contains w = (1, 0) (the large model as trained)
  and w = (w_TS, 0) (the large model temperature-scaled), so the fitted
  weights are finite and their NLL is at most either, up to 1e-5 relative.
  Likewise the single-model fit beats T = 1 and matches the float64 best
  single temperature."""
  duo = temperature.fit_temperatures([large, small], labels, solver=solver)
  single = temperature.fit_temperatures([large], labels, solver=solver)
  assert duo.shape == (2,) and np.all(np.isfinite(duo)), duo
  assert single.shape == (1,) and np.all(np.isfinite(single)), single
  members = [large, small]
  duo_nll = _nll64(duo, members, labels)
  single_nll = _nll64(single, [large], labels)
  best_single = _best_single_nll64(large, labels)
  _at_most(single_nll, _nll64([1.0], [large], labels), "TS vs T = 1")
  _at_most(single_nll, best_single, "TS vs the float64 optimum")
  _at_most(duo_nll, _nll64([1.0, 0.0], members, labels), "duo vs w = (1, 0)")
  _at_most(duo_nll, _nll64([float(single[0]), 0.0], members, labels), "duo vs (w_TS, 0)")
  _at_most(duo_nll, best_single, "duo vs the float64 best single temperature")


@pytest.mark.parametrize("solver", ["jaxopt", "optax"])
def test_fit_of_very_large_logits_reaches_the_optimum(solver):
  """Logits 1000 times a calibrated model's: the optimum w ≈ 1/1000 is far
  below the start, where the softmax is one-hot on every row. The fit must
  still reach the float64 optimum (the start is only a start)."""
  rng = np.random.default_rng(0)
  calibrated = 2.0 * rng.standard_normal((FIT_ROWS, FIT_CLASSES))
  labels = np.argmax(calibrated + rng.gumbel(size=calibrated.shape), axis=1)
  logits = (1000 * calibrated).astype(np.float32)
  weights = temperature.fit_temperatures([logits], labels, solver=solver)
  assert np.all(np.isfinite(weights)), weights
  _at_most(
    _nll64(weights, [logits], labels),
    _best_single_nll64(logits, labels),
    "TS vs the float64 optimum",
  )


NOISE_ROWS, NOISE_CLASSES = 1000, 10


def _sandwich_standard_errors(weights, members, labels) -> np.ndarray:
  """Standard errors of the fitted weights, √diag(H⁻¹ J H⁻¹ / N).

  H = mean over rows of Cov_p(z_i, z_j) (the NLL's Hessian), J = mean of
  g gᵀ with g the per-row gradient E_p[z] − z_label. The sandwich holds
  whether or not the members are calibrated after scaling (H⁻¹ alone
  assumes they are).
  """
  stack = np.asarray(members, np.float64)
  rows = np.arange(len(labels))
  probs = special.softmax(np.einsum("m,mnc->nc", np.asarray(weights, np.float64), stack), axis=1)
  expected = np.einsum("nc,mnc->mn", probs, stack)
  centred = stack - expected[:, :, None]
  hessian = np.einsum("nc,inc,jnc->ij", probs, centred, centred) / len(labels)
  grads = expected - stack[:, rows, labels]
  outer = grads @ grads.T / len(labels)
  inverse = np.linalg.inv(hessian)
  return np.sqrt(np.diag(inverse @ outer @ inverse) / len(labels))


@_settings(max_examples=8)
@given(
  st.integers(0, 2**32 - 1),
  st.sampled_from([0.5, 1.0, 2.5]),
  st.sampled_from([0.3, 1.0, 3.0]),
  st.sampled_from(temperature.SOLVERS),
)
def test_pure_noise_sidekick_gets_a_small_weight(seed, overconfidence, noise_scale, solver):
  """A sidekick of pure noise, independent of the labels, has population
  weight exactly 0 (at w_S = 0 its gradient has mean 0, and the NLL is
  convex). So the fitted w_S is within 5 standard errors of 0 (sandwich
  estimate; a 5σ event has probability < 1e-6 per draw), whatever the
  large model's calibration and the noise's scale."""
  rng = np.random.default_rng(seed)
  true = 3.0 * rng.standard_normal((NOISE_ROWS, NOISE_CLASSES))
  labels = np.argmax(true + rng.gumbel(size=true.shape), axis=1)  # drawn from softmax(true)
  # A strong large model: the true logits, slightly noisy, mis-scaled.
  large = overconfidence * (true + 0.3 * rng.standard_normal(true.shape))
  noise = noise_scale * rng.standard_normal(true.shape)
  members = [large.astype(np.float32), noise.astype(np.float32)]
  duo = np.asarray(temperature.fit_temperatures(members, labels, solver=solver), np.float64)
  assert np.all(np.isfinite(duo)), duo
  standard_error = _sandwich_standard_errors(duo, members, labels)[1]
  assert abs(duo[1]) <= 5 * standard_error, (duo, standard_error)
  assert duo[0] > 0, duo  # the large model keeps its weight
