"""Abstention with a guaranteed risk (duojax/core/selective.py, the abstention section).

The guarantee is checked by simulation on a distribution whose selective risk
is known in closed form: confidence c ~ U(0, 1) and P(wrong | c) = a(1 − c)², so
accepting c ≥ t has risk R(t) = ∫_t^1 a(1 − c)² dc / (1 − t) = a(1 − t)²/3.
"""

import math
import pathlib
import re

import numpy as np
import pytest
from helpers import synthetic_eval_inputs
from scipy import stats

import duojax
from duojax import errors
from duojax.core import selective
from duojax.eval.sections import abstention as section


def _draw(rng, rows, a=0.6):
  confidence = rng.random(rows)
  correct = rng.random(rows) >= a * (1 - confidence) ** 2
  return confidence, correct


def test_the_true_risk_exceeds_r_at_most_a_fraction_delta_of_the_time():
  rng = np.random.default_rng(0)
  a, risk, delta, draws = 0.6, 0.1, 0.1, 500
  exceeded = chosen = 0
  for _ in range(draws):
    try:
      selection = selective.guaranteed_threshold(*_draw(rng, 300, a), risk=risk, delta=delta)
    except errors.InputError:
      continue
    chosen += 1
    exceeded += a * (1 - selection.threshold) ** 2 / 3 > risk
    assert selection.bound <= risk
  assert chosen >= 0.6 * draws  # not vacuous: most draws pick a threshold (none: no risk)
  assert exceeded / draws <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)


def _reference(confidence, correct, risk, delta):
  """SGR written plainly: scipy's binomial CDF, a pass when P[Bin(n, r) ≤ k] ≤ δ/K."""
  c, ok = np.asarray(confidence, float), np.asarray(correct, bool)
  ordered = np.sort(c)[::-1]
  tests = math.ceil(math.log2(len(c) + 1))
  lo, hi, best = 0, len(c) + 1, None
  while hi - lo > 1:
    j = (lo + hi) // 2
    accept = c >= ordered[j - 1]
    if stats.binom.cdf(np.sum(~ok[accept]), accept.sum(), risk) <= delta / tests:
      lo, best = j, ordered[j - 1]
    else:
      hi = j
  return best


@pytest.mark.parametrize("rows, risk, delta, seed", [(50, 0.2, 0.1, 1), (400, 0.08, 0.05, 2)])
def test_the_threshold_matches_a_plain_scipy_reference(rows, risk, delta, seed):
  rng = np.random.default_rng(seed)
  for _ in range(20):
    confidence, correct = _draw(rng, rows)
    confidence = np.round(confidence, 2)  # ties: a threshold accepts every row equal to it
    expected = _reference(confidence, correct, risk, delta)
    if expected is None:
      with pytest.raises(errors.InputError):
        selective.guaranteed_threshold(confidence, correct, risk=risk, delta=delta)
      continue
    selection = selective.guaranteed_threshold(confidence, correct, risk=risk, delta=delta)
    assert selection.threshold == expected
    accept = confidence >= expected
    assert selection.accepted == accept.sum() and selection.coverage == accept.mean()
    assert selection.errors == np.sum(~correct[accept])
    tail = stats.beta.ppf(
      1 - delta / selection.tests, selection.errors + 1, selection.accepted - selection.errors
    )
    assert selection.bound == pytest.approx(
      tail if selection.errors < selection.accepted else 1.0, abs=1e-12
    )


@pytest.mark.parametrize(
  "n, k, delta", [(1, 0, 0.5), (100, 3, 0.01), (1000, 50, 1e-4), (7, 6, 0.9)]
)
def test_the_tail_inversion_is_the_clopper_pearson_limit(n, k, delta):
  bound = selective.binomial_tail_bound(n, k, delta)
  assert bound == pytest.approx(stats.beta.ppf(1 - delta, k + 1, n - k), abs=1e-12)
  assert stats.binom.cdf(k, n, bound) <= delta + 1e-12
  assert selective.binomial_tail_bound(5, 5, 0.05) == 1.0


def test_an_unreachable_risk_names_the_smallest_reachable_one():
  rows, delta = 100, 0.05
  smallest = selective.smallest_reachable_risk(rows, delta)
  assert smallest == pytest.approx(1 - (delta / 7) ** (1 / 50), abs=1e-12)
  perfect = (np.linspace(0, 1, rows), np.ones(rows, bool))
  with pytest.raises(errors.InputError) as error:
    selective.guaranteed_threshold(*perfect, risk=0.999 * smallest, delta=delta)
  assert f"any 100 rows can reach at delta=0.05 is {smallest:.4g}" in str(error.value)
  assert "\n" not in str(error.value)
  # Honest: every row right, r just above r_min is reached (the top half accepted, then all).
  selection = selective.guaranteed_threshold(*perfect, risk=1.001 * smallest, delta=delta)
  assert selection.coverage == 1.0 and selection.bound <= 1.001 * smallest


@pytest.mark.parametrize(
  "args, kind, message",
  [
    (([0.5, np.nan], [True, False], 0.1), errors.InputError, "non-finite"),
    (([0.5, 0.6], [True], 0.1), errors.InputError, "correct has shape (1,)"),
    (([0.5, 0.6], [2, 0], 0.1), errors.InputError, "correct must be booleans"),
    (([], [], 0.1), errors.InputError, "non-empty 1-D"),
    (([0.5, 0.6], [True, True], 1.5), errors.ConfigError, "risk must be in (0, 1)"),
  ],
)
def test_bad_inputs_are_one_line_errors(args, kind, message):
  with pytest.raises(kind) as error:
    selective.guaranteed_threshold(*args)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_the_public_api_takes_a_duos_confidence():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 5, 4000)
  members = [
    (s * np.eye(5)[labels] + rng.normal(size=(4000, 5))).astype(np.float32) for s in (2.0, 1.5)
  ]
  val, test = slice(0, 2000), slice(2000, None)
  duo = duojax.fit_duo([z[val] for z in members], labels[val])
  correct = duo.predict([z[val] for z in members]) == labels[val]
  chosen = duojax.guaranteed_threshold(duo.confidence([z[val] for z in members]), correct, 0.05)
  assert isinstance(chosen, duojax.Selection) and 0 < chosen.coverage < 1
  test_correct = duo.predict([z[test] for z in members]) == labels[test]
  risk, coverage = selective.selective_risk_coverage(
    duo.confidence([z[test] for z in members]), test_correct, chosen.threshold
  )
  assert risk <= 0.05 + 0.02 and abs(coverage - chosen.coverage) < 0.05
  assert math.isnan(selective.selective_risk_coverage([0.1], [True], 0.5)[0])


def _inputs(n=2000, seed=0, risks="0.001,0.05,0.2"):
  return synthetic_eval_inputs(n, seed, abstention_risks=risks)


def test_the_section_reports_every_model_and_marks_unreachable_risks():
  results = section.build(_inputs(), {})
  models = results["abstention"]["models"]
  assert list(models) == ["large+TS", "duo (weighted)", "ensemble m=2+TS"]
  for entry in models.values():
    assert (
      "the smallest risk any 2000 rows" in entry["0.001"]["reason"]
    )  # 2000 rows: r_min ≈ 0.0054
    for level in ("0.05", "0.2"):
      cell = entry[level]
      assert cell["bound"] <= float(level) and 0 < cell["val_coverage"] <= 1
      assert cell["test_risk"] <= float(level) + 0.03  # 2000 test rows
      assert abs(cell["test_coverage"] - cell["val_coverage"]) < 0.06
    assert entry["0.2"]["val_coverage"] >= entry["0.05"]["val_coverage"]
  lines = section.markdown(results)
  assert lines[0] == "### Abstention with a guaranteed risk (test split)"
  row = next(line for line in lines if line.startswith("| duo (weighted) |"))
  assert row.count("|") == 5 and "| – |" in row
  assert any(line.startswith("- duo (weighted), r = 0.001: no threshold") for line in lines)
  assert section.markdown({}) == []


def test_the_documented_example_runs(capsys):
  page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
  text = page.read_text()
  code = re.search(
    r"```python\n(.*?)```", text[text.index("## Abstention with a guaranteed risk") :], re.S
  ).group(1)
  exec(compile(code, "docs/evaluation.md", "exec"), {})
  threshold, val_coverage, test_coverage, test_risk = map(float, capsys.readouterr().out.split())
  assert 0 < threshold < 1 and val_coverage > 0.8 and test_risk <= 0.02
  assert f"# {threshold:.3f} {val_coverage:.3f} {test_coverage:.3f} {test_risk:.4f}" in code


def test_the_named_floor_counts_the_rows_tied_at_the_median():
  # Every confidence equal: the first test accepts all 100 rows, not the top 50.
  tied = (np.full(100, 0.9), np.ones(100, bool))
  floor = selective.binomial_tail_bound(100, 0, 0.05 / 7)
  assert floor < selective.smallest_reachable_risk(100, 0.05)
  with pytest.raises(errors.InputError, match=f"is {floor:.4g}$"):
    selective.guaranteed_threshold(*tied, risk=0.999 * floor)
  assert selective.guaranteed_threshold(*tied, risk=1.001 * floor).coverage == 1.0
