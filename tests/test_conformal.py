"""Split conformal sets: coverage over many splits, a reference from the papers, edge cases."""

import decimal
import math
import pathlib
import re
import subprocess
import sys
import types

import numpy as np
import pytest
from scipy import stats

from duojax.core import conformal

C = 10
N_CAL, N_TEST, SPLITS = 500, 500, 200
ALPHAS = (0.1, 0.05)
# (method, randomized): the three scores, APS and RAPS both ways.
CONFIGS = (("lac", None), ("aps", True), ("aps", False), ("raps", True), ("raps", False))
CONTINUOUS = (("lac", None), ("aps", True), ("raps", True))


def _softmax(z):
  e = np.exp(z - z.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def _synthetic(rng, n, c=C):
  """Labels drawn from a "true" model softmax(u) (Gumbel-max); the classifier
  sees u through noise and is overconfident, softmax(1.5 (u + 0.7 ε))."""
  true = 2.0 * rng.standard_normal((n, c))
  labels = np.argmax(true + rng.gumbel(size=(n, c)), axis=1)
  return _softmax(1.5 * (true + 0.7 * rng.standard_normal((n, c)))), labels


def _k(n, alpha):
  return math.ceil((n + 1) * (1 - decimal.Decimal(str(alpha))))


# --- Coverage over random splits.


@pytest.fixture(scope="module")
def split_coverages():
  """{(method, randomized, alpha): coverage of each of SPLITS fresh splits}."""
  rng = np.random.default_rng(0)
  out = {(m, r, a): [] for m, r in CONFIGS for a in ALPHAS}
  for split in range(SPLITS):
    probs, labels = _synthetic(rng, N_CAL + N_TEST)
    for (method, randomized, alpha), found in out.items():
      predictor = conformal.calibrate(
        probs[:N_CAL], labels[:N_CAL], alpha=alpha, method=method, randomized=randomized, seed=split
      )
      found.append(conformal.coverage(predictor.sets(probs[N_CAL:]), labels[N_CAL:]))
  return {key: np.array(value) for key, value in out.items()}


def _beta_binomial(alpha):
  """Test-set coverage count of one split when scores have no ties: the
  coverage given the calibration split is Beta(k, n + 1 − k), each test row
  covered independently with that probability."""
  k = _k(N_CAL, alpha)
  return stats.betabinom(N_TEST, k, N_CAL + 1 - k)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("method,randomized", CONFIGS)
def test_coverage_at_least_one_minus_alpha(split_coverages, method, randomized, alpha):
  found = split_coverages[method, randomized, alpha]
  law = _beta_binomial(alpha)
  mc_tolerance = 4 * math.sqrt(law.var() / SPLITS) / N_TEST  # 4 sd of the mean over splits
  assert found.mean() >= 1 - alpha - mc_tolerance
  # Splits below 1 − α: at most as many as the tie-free law predicts (ties only add coverage).
  needed = _k(N_TEST - 1, alpha)  # ⌈N_TEST (1 − α)⌉ rows covered
  below = law.cdf(needed - 1)
  assert np.mean(np.round(found * N_TEST) < needed) <= below + 4 * math.sqrt(
    below * (1 - below) / SPLITS
  )


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("method,randomized", CONTINUOUS)
def test_continuous_scores_cover_exactly_as_the_beta_law_says(
  split_coverages, method, randomized, alpha
):
  found = split_coverages[method, randomized, alpha]
  law = _beta_binomial(alpha)
  mc_tolerance = 4 * math.sqrt(law.var() / SPLITS) / N_TEST
  assert found.mean() <= 1 - alpha + 1 / (N_CAL + 1) + mc_tolerance
  # The whole distribution over splits, not only its mean: a Kolmogorov–Smirnov
  # distance under the 0.1% critical value (conservative for a discrete law).
  counts = np.sort(np.round(found * N_TEST))
  empirical = np.searchsorted(counts, np.arange(N_TEST + 1), side="right") / SPLITS
  assert np.max(np.abs(empirical - law.cdf(np.arange(N_TEST + 1)))) <= 1.95 / math.sqrt(SPLITS)


def test_randomisation_removes_the_overcoverage_of_tied_scores():
  """Every row has the same probabilities: the non-randomised APS score takes
  three values, so q̂ sits on an atom and sets over-cover; U spreads the atom."""
  rng, p = np.random.default_rng(1), np.array([0.5, 0.3, 0.2])
  found = {True: [], False: []}
  for split in range(100):
    labels = rng.choice(3, size=400, p=p)
    probs = np.tile(p, (400, 1))
    for randomized in found:
      predictor = conformal.calibrate(
        probs[:200], labels[:200], alpha=0.1, method="aps", randomized=randomized, seed=split
      )
      found[randomized].append(conformal.coverage(predictor.sets(probs[200:]), labels[200:]))
  assert np.mean(found[False]) == 1.0  # q̂ = 1: the full set, whatever the split
  assert 0.88 <= np.mean(found[True]) <= 0.9 + 1 / 201 + 0.01


# --- A reference written from the papers' definitions, row by row.


def _reference_score(p, y, method, u=1.0, lam=0.0, k_reg=0):
  if method == "lac":
    return 1.0 - p[y]
  order = sorted(range(len(p)), key=lambda c: (-p[c], c))  # descending, ties by index
  rank = order.index(y) + 1
  above = 0.0
  for c in order[: rank - 1]:
    above += p[c]
  score = above + u * p[y]
  if method == "raps":
    score += lam * max(0, rank - k_reg)
  return score


def _reference_threshold(cal_scores, alpha):
  k = _k(len(cal_scores), alpha)
  return math.inf if k > len(cal_scores) else sorted(cal_scores)[k - 1]


@pytest.mark.parametrize(
  "method,randomized,lam,k_reg",
  [
    ("lac", None, None, None),
    ("aps", True, None, None),
    ("aps", False, None, None),
    ("raps", True, None, None),
    ("raps", False, None, None),  # the defaults, 0.01 and 5
    ("raps", True, 0.1, 1),
    ("raps", False, 0.1, 1),
    ("raps", True, 0.5, 3),
    ("raps", False, 0.0, 2),
  ],
)
def test_matches_the_reference(method, randomized, lam, k_reg):
  probs, labels = _synthetic(np.random.default_rng(2), 150)
  probs[:20] = np.round(probs[:20], 1)  # rows with ties
  probs[:20] /= probs[:20].sum(axis=1, keepdims=True)
  cal, test, seed, alpha = slice(0, 100), slice(100, 150), 3, 0.1
  predictor = conformal.calibrate(
    probs[cal],
    labels[cal],
    alpha=alpha,
    method=method,
    randomized=randomized,
    lam=lam,
    k_reg=k_reg,
    seed=seed,
  )
  randomized = predictor.randomized
  lam, k_reg = (predictor.lam, predictor.k_reg) if method == "raps" else (0.0, 0)
  # The documented streams: calibration [seed, 0], sets [seed, 1].
  u_cal = np.random.default_rng([seed, 0]).random(100) if randomized else np.ones(100)
  u_test = np.random.default_rng([seed, 1]).random(50) if randomized else np.ones(50)
  ref_cal = [
    _reference_score(p, y, method, u, lam, k_reg) for p, y, u in zip(probs[cal], labels[cal], u_cal)
  ]
  ref_test = np.array(
    [
      [_reference_score(p, y, method, u, lam, k_reg) for y in range(C)]
      for p, u in zip(probs[test], u_test)
    ]
  )
  threshold = _reference_threshold(ref_cal, alpha)
  assert predictor.threshold == threshold  # bit-identical: same additions in the same order
  np.testing.assert_array_equal(predictor.scores(probs[test]), ref_test)
  np.testing.assert_array_equal(
    conformal.scores(
      probs[cal],
      method,
      labels=labels[cal],
      uniforms=u_cal if randomized else None,
      lam=predictor.lam,
      k_reg=predictor.k_reg,
    ),
    ref_cal,
  )
  sets = predictor.sets(probs[test])
  np.testing.assert_array_equal(sets, ref_test <= threshold)
  np.testing.assert_array_equal(conformal.set_sizes(sets), (ref_test <= threshold).sum(axis=1))
  if method != "lac":  # APS/RAPS scores rise with the rank: every set is a top-k list
    ranked = np.take_along_axis(sets, np.argsort(-probs[test], axis=1, kind="stable"), axis=1)
    assert np.all(ranked[:, :-1] >= ranked[:, 1:])


# --- Edge cases.


@pytest.mark.parametrize("method", conformal.METHODS)
def test_alpha_below_one_over_n_plus_one_gives_full_sets(method):
  probs, labels = _synthetic(np.random.default_rng(4), 30)
  predictor = conformal.calibrate(probs[:10], labels[:10], alpha=0.05, method=method)
  assert predictor.threshold == math.inf  # k = ⌈11 · 0.95⌉ = 11 > n = 10
  assert predictor.sets(probs[10:]).all()


def test_alpha_half_on_three_rows():
  probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
  labels = np.array([0, 1, 2])
  test = np.array([[0.4, 0.35, 0.25]])
  # k = ⌈4 · 0.5⌉ = 2. LAC scores 0.3, 0.7, 0.7; APS (U = 1) 0.7, 0.8, 0.9.
  lac = conformal.calibrate(probs, labels, alpha=0.5, method="lac")
  assert lac.threshold == pytest.approx(0.7) and lac.num_calibration == 3
  np.testing.assert_array_equal(lac.sets(test), [[True, True, False]])  # 1 − p: .6 .65 .75
  aps = conformal.calibrate(probs, labels, alpha=0.5, method="aps", randomized=False)
  assert aps.threshold == pytest.approx(0.8)
  np.testing.assert_array_equal(aps.sets(test), [[True, True, False]])  # .4 .75 1.0


def test_ties_are_broken_by_class_index():
  probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.3, 0.4, 0.3, 0.0]])
  aps = conformal.scores(probs, "aps")
  np.testing.assert_allclose(aps, [[0.25, 0.5, 0.75, 1.0], [0.7, 0.4, 1.0, 1.0]])
  raps = conformal.scores(probs, "raps", lam=0.1, k_reg=1)
  np.testing.assert_allclose(raps, [[0.25, 0.6, 0.95, 1.3], [0.8, 0.4, 1.2, 1.3]])


def test_quantile_index_is_exact_for_decimal_alphas():
  assert conformal.quantile_index(9, 0.7) == 3  # (1 − 0.7) · 10 is 3.0000000000000004 in floats
  assert conformal.quantile_index(99, 0.1) == 90
  assert conformal.quantile_index(10, 0.05) == 11


def test_lac_sets_grow_as_alpha_falls():
  probs, labels = _synthetic(np.random.default_rng(5), 600)
  sets = [
    conformal.calibrate(probs[:300], labels[:300], alpha=a).sets(probs[300:])
    for a in (0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01, 0.001)
  ]
  for larger_alpha, smaller_alpha in zip(sets, sets[1:]):
    assert np.all(smaller_alpha >= larger_alpha)  # every set contains the previous one
  assert sets[-1].all()  # α = 0.001 < 1/301


def test_draws_are_reproducible_and_seeded():
  probs, labels = _synthetic(np.random.default_rng(6), 400)
  first = conformal.calibrate(probs[:200], labels[:200], method="raps", seed=7)
  again = conformal.calibrate(probs[:200], labels[:200], method="raps", seed=7)
  other = conformal.calibrate(probs[:200], labels[:200], method="raps", seed=8)
  assert first == again and first.threshold != other.threshold
  np.testing.assert_array_equal(first.sets(probs[200:]), again.sets(probs[200:]))
  assert not np.array_equal(first.scores(probs[200:]), first.scores(probs[200:], seed=8))
  np.testing.assert_array_equal(first.scores(probs[200:], seed=8), other.scores(probs[200:]))


# --- One-line errors.


def _errors():
  probs, labels = _synthetic(np.random.default_rng(7), 20)
  nan, negative, unnormalised = probs.copy(), probs.copy(), probs.copy()
  nan[3, 2] = np.nan
  negative[1, :2] = [-0.1, negative[1, 0] + negative[1, 1] + 0.1]
  unnormalised[5] *= 1.1
  cal = lambda **kw: conformal.calibrate(**{"probs": probs, "labels": labels, **kw})
  predictor = cal()
  return [
    (lambda: cal(alpha=0.0), "alpha must be in"),
    (lambda: cal(alpha=1.0), "alpha must be in"),
    (lambda: cal(alpha=1.5), "alpha must be in"),
    (lambda: cal(alpha=float("nan")), "alpha must be in"),
    (lambda: cal(alpha="0.1"), "alpha must be a number"),
    (lambda: cal(probs=probs[:0], labels=labels[:0]), "empty"),
    (lambda: cal(probs=nan), "1 non-finite"),
    (lambda: cal(probs=negative), "1 negative"),
    (lambda: cal(probs=unnormalised), "1 rows whose sum is not 1"),
    (lambda: cal(labels=np.where(labels == labels[0], C, labels)), "outside \\[0, 10\\)"),
    (lambda: cal(labels=np.full(20, -1)), "20 values outside"),
    (lambda: cal(labels=labels.astype(float)), "labels must be integers"),
    (lambda: cal(labels=labels[:-1]), "labels shape \\(19,\\) does not match the 20 rows"),
    (lambda: cal(probs=probs[0]), "must be 2-D"),
    (
      lambda: predictor.sets(probs[:, :5] / probs[:, :5].sum(axis=1, keepdims=True)),
      "probs have 5 classes; the predictor was calibrated on 10",
    ),
    (lambda: cal(method="thr"), "unknown method 'thr'"),
    (lambda: cal(method="lac", randomized=True), "randomized=True applies to"),
    (lambda: cal(method="aps", lam=0.1), "RAPS parameters"),
    (lambda: cal(method="raps", lam=-1.0), "lam must be"),
    (lambda: cal(method="raps", k_reg=1.5), "k_reg must be"),
    (lambda: cal(seed=-1), "seed must be"),
    (lambda: conformal.coverage(predictor.sets(probs), labels[:3]), "rows of sets"),
    (lambda: conformal.set_sizes(probs), "sets must be a bool"),
  ]


@pytest.mark.parametrize("case", range(len(_errors())))
def test_bad_input_is_a_one_line_error(case):
  call, match = _errors()[case]
  with pytest.raises(ValueError, match=match) as error:
    call()
  assert "\n" not in str(error.value)


def test_the_documented_example_runs(capsys):
  page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
  text = page.read_text()
  section = text[text.index("## Conformal prediction sets") :]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  exec(compile(code, "docs/evaluation.md", "exec"), {})
  coverage, mean_size = map(float, capsys.readouterr().out.split())
  assert coverage >= 0.85 and 1 <= mean_size < 10


def test_duojax_conformal_is_the_core_module_under_the_top_level():
  import duojax.conformal
  from duojax import conformal as top

  assert top is duojax.conformal
  public = {
    name
    for name, value in vars(conformal).items()
    if not name.startswith("_")
    and not isinstance(value, types.ModuleType)
    and getattr(value, "__module__", conformal.__name__) == conformal.__name__
  }
  public.discard("annotations")  # `from __future__ import annotations`
  assert set(top.__all__) == public
  assert all(getattr(top, name) is getattr(conformal, name) for name in public)

  rng = np.random.default_rng(3)
  logits = 2.0 * rng.standard_normal((300, 6))
  probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  labels = rng.integers(0, 6, 300)
  for method in conformal.METHODS:
    ours = top.calibrate(probs[:200], labels[:200], alpha=0.2, method=method, seed=1)
    core = conformal.calibrate(probs[:200], labels[:200], alpha=0.2, method=method, seed=1)
    assert ours == core
    np.testing.assert_array_equal(ours.sets(probs[200:]), core.sets(probs[200:]))


def test_duojax_conformal_resolves_after_a_plain_import_duojax():
  code = "import duojax; print(duojax.conformal.calibrate.__module__)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "duojax.core.conformal"
