"""The shift alarm: its statistic, its false-alarm and detection rates, its file and errors."""

import json
import math

import numpy as np
import pytest

from duojax.core import shift_alarm
from duojax.errors import ConfigError, FileError, InputError


def _population(rng, n, *, sidekick_noise=1.0, classes=10):
  """A large model and a weaker sidekick on `n` i.i.d. rows; a noisier sidekick is a shift
  under which the members disagree more."""
  signal = np.eye(classes)[rng.integers(0, classes, n)]
  large = 2.5 * signal + rng.normal(size=(n, classes))
  sidekick = 1.5 * signal + sidekick_noise * rng.normal(size=(n, classes))
  return [large.astype(np.float32), sidekick.astype(np.float32)]


def _reference_rows(large, sidekick, t_large, t_sidekick):
  rows = []
  for zl, zs in zip(np.asarray(large, np.float64), np.asarray(sidekick, np.float64)):
    pl = np.exp(zl / t_large) / np.exp(zl / t_large).sum()
    ps = np.exp(zs / t_sidekick) / np.exp(zs / t_sidekick).sum()
    rows.append([float(np.argmax(zl) != np.argmax(zs)), pl.max() - ps.max()])
  return np.array(rows)


def test_the_statistic_matches_a_plain_numpy_reference():
  rng = np.random.default_rng(0)
  val, batch = _population(rng, 40, classes=5), _population(rng, 7, classes=5)
  alarm = shift_alarm.fit_shift_alarm(
    val, batch_size=7, resamples=99, temperatures=(1.5, 0.8), seed=3
  )
  rows = _reference_rows(*val, 1.5, 0.8)
  np.testing.assert_allclose(alarm.rows, rows, rtol=1e-12, atol=1e-12)
  mean, spread = rows.mean(axis=0), rows.std(axis=0)
  batch_rows = _reference_rows(*batch, 1.5, 0.8)
  np.testing.assert_allclose(alarm.statistics(batch), batch_rows, rtol=1e-12, atol=1e-12)
  z = (batch_rows.mean(axis=0) - mean) / (spread * math.sqrt(1 / 7 + 1 / 40))
  assert alarm.statistic(batch_rows) == pytest.approx(np.abs(z).max(), rel=1e-12)
  alarmed, p = alarm.check(batch)
  assert p == pytest.approx((1 + np.sum(alarm.null >= np.abs(z).max())) / 100)
  assert alarmed == (p <= 0.05)
  # The null: batch means of 7 resampled rows against resampled references, standardised alike.
  assert alarm.null.shape == (99,) and alarm.reference_means.shape == (99, 2)
  assert np.all(alarm.null >= 0)
  # A constant statistic (members that never disagree) is scaled by 1, not divided by 0.
  same = shift_alarm.fit_shift_alarm([val[0], val[0]], batch_size=5, resamples=99)
  assert np.all(np.isfinite(same.null)) and same.check([batch[0], batch[0]])[1] > 0.05


def test_false_alarms_on_clean_batches_stay_within_alpha():
  # 20 validation sets of 2000 rows, 100 fresh batches of 200 each: n/N = 0.1, where a
  # null that ignored the validation mean's own noise would alarm on about 6%.
  rng = np.random.default_rng(1)
  alarms = batches = 0
  for seed in range(20):
    alarm = shift_alarm.fit_shift_alarm(_population(rng, 2000), batch_size=200, seed=seed)
    rows = alarm.statistics(_population(rng, 100 * 200))
    p = alarm.p_values(rows, np.arange(100 * 200).reshape(100, 200))
    alarms, batches = alarms + int(np.sum(p <= 0.05)), batches + len(p)
  rate = alarms / batches
  assert rate <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / batches), rate
  assert rate >= 0.02, rate  # not bought by an alarm that never fires


def test_batches_where_the_members_disagree_more_are_detected():
  rng = np.random.default_rng(2)
  alarm = shift_alarm.fit_shift_alarm(_population(rng, 2000), batch_size=200)
  rows = alarm.statistics(_population(rng, 200 * 200, sidekick_noise=1.6))
  p = alarm.p_values(rows, np.arange(200 * 200).reshape(200, 200))
  assert np.mean(p <= 0.05) >= 0.9
  assert rows[:, 0].mean() > alarm.mean[0]  # they do disagree more


def test_the_fit_is_determined_by_its_seed_and_any_batch_size_works():
  rng = np.random.default_rng(3)
  val, batch = _population(rng, 300), _population(rng, 37)
  a = shift_alarm.fit_shift_alarm(val, batch_size=50, resamples=199, seed=4)
  b = shift_alarm.fit_shift_alarm(np.stack(val), batch_size=50, resamples=199, seed=4)
  c = shift_alarm.fit_shift_alarm(val, batch_size=50, resamples=199, seed=5)
  np.testing.assert_array_equal(a.null, b.null)
  np.testing.assert_array_equal(a.reference_means, b.reference_means)
  assert not np.array_equal(a.null, c.null)
  assert a.check(batch) == b.check(batch)
  # Another size: a null drawn for it, reproducibly; the fitted size gets the stored one.
  assert a.null_for(50) is a.null
  np.testing.assert_array_equal(a.null_for(37), b.null_for(37))
  assert not np.array_equal(a.null_for(37), a.null)
  alarmed, p = a.check(batch)
  assert isinstance(alarmed, bool) and 1 / 200 <= p <= 1
  assert a.check([z[:1] for z in batch])[1] > 0  # one input is a batch too


def test_save_and_load_round_trip(tmp_path):
  rng = np.random.default_rng(4)
  alarm = shift_alarm.fit_shift_alarm(
    _population(rng, 200), batch_size=30, resamples=99, temperatures=(1.2, 0.9)
  )
  path = tmp_path / "alarm.json"
  alarm.save(path)
  loaded = shift_alarm.load_shift_alarm(path)
  for field in ("alpha", "batch_size", "seed", "temperatures", "num_classes"):
    assert getattr(loaded, field) == getattr(alarm, field)
  for field in ("rows", "reference_means", "null"):
    np.testing.assert_array_equal(getattr(loaded, field), getattr(alarm, field))
  batch = _population(rng, 30, sidekick_noise=2.0)
  assert loaded.check(batch) == alarm.check(batch)


def _one_line_file_error(path, match):
  with pytest.raises(FileError, match=match) as error:
    shift_alarm.load_shift_alarm(path)
  assert "\n" not in str(error.value)


def test_damaged_foreign_and_missing_files_are_one_line_errors(tmp_path):
  alarm = shift_alarm.fit_shift_alarm(
    _population(np.random.default_rng(5), 50), batch_size=10, resamples=99
  )
  good = tmp_path / "alarm.json"
  alarm.save(good)
  record = json.loads(good.read_text())
  _one_line_file_error(tmp_path / "missing.json", "cannot read shift alarm file")
  (tmp_path / "cut.json").write_text(good.read_text()[:100])
  _one_line_file_error(tmp_path / "cut.json", "cannot read shift alarm file")
  (tmp_path / "duo.json").write_text(json.dumps({"format": "duojax.duo", "version": 1}))
  _one_line_file_error(tmp_path / "duo.json", "is not a shift alarm file")
  cases = {
    "version": ({**record, "version": 2}, "version 2"),
    "rows": ({**record, "rows": [[0.0, 1.0], [0.5]]}, '"rows"'),
    "nan": ({**record, "null": [float("nan")] * 99}, '"null"'),
    "count": ({**record, "null": record["null"][:-1]}, "different numbers of resamples"),
    "alpha": ({**record, "alpha": 1.5}, "alpha must be in"),
    "temperatures": ({**record, "temperatures": [1.0, -1.0]}, "temperatures"),
    "statistics": ({**record, "statistics": ["disagreement"]}, '"statistics"'),
  }
  for name, (bad, match) in cases.items():
    (tmp_path / f"{name}.json").write_text(json.dumps(bad))
    _one_line_file_error(tmp_path / f"{name}.json", match)


def test_bad_inputs_and_options_are_one_line_errors():
  rng = np.random.default_rng(6)
  val = _population(rng, 50)
  alarm = shift_alarm.fit_shift_alarm(val, batch_size=10, resamples=99)
  bad_inputs = {
    "takes two members": [val[0]],
    "list of two": val[0],
    "got 3": [*val, val[0]],
    "differ": [val[0], val[1][:, :5]],
    "2-D": [val[0][0], val[1][0]],
    "non-finite": [np.full_like(val[0], np.nan), val[1]],
    "empty": [val[0][:0], val[1][:0]],
    "real numbers": [val[0].astype(str), val[1]],
  }
  for match, logits in bad_inputs.items():
    with pytest.raises(InputError, match=match) as error:
      shift_alarm.fit_shift_alarm(logits, batch_size=10, resamples=99)
    assert "\n" not in str(error.value)
  with pytest.raises(InputError, match="fit on 10"):
    alarm.check([val[0][:, :5], val[1][:, :5]])
  with pytest.raises(InputError, match="at least 2 validation rows"):
    shift_alarm.fit_shift_alarm([z[:1] for z in val], resamples=99)
  bad_options = {
    "alpha must be in": {"alpha": 0.0},
    "alpha must be a number": {"alpha": "0.05"},
    "batch_size must be": {"batch_size": 0},
    "cannot reach alpha": {"resamples": 10},
    "seed must be": {"seed": -1},
    "temperatures must be two finite": {"temperatures": (1.0, 0.0)},
  }
  for match, options in bad_options.items():
    with pytest.raises(ConfigError, match=match):
      shift_alarm.fit_shift_alarm(val, **{"resamples": 99, **options})


# --- The report section.


def _section_inputs(n=2000, seed=0, **overrides):
  from helpers import synthetic_eval_inputs

  config = {"sidekick": "sidekick", "shifts": "gaussian_noise", "shift_alarm_batch": 200}
  inputs = synthetic_eval_inputs(n, seed, **{**config, **overrides})
  rng = np.random.default_rng(seed + 100)
  for severity, noise in ((1, 1.1), (3, 2.5), (5, 4.0)):
    for kind, members in (("sidekick_noise", (1.0, noise, 1.0)), ("large_noise", (noise, 1, 1))):
      labels = rng.integers(0, 8, 500)
      signal = np.eye(8)[labels]
      inputs.bank.logits[f"{kind}/{severity}"] = np.stack(
        [
          scale * signal + spread * rng.normal(size=(500, 8))
          for scale, spread in zip((2.5, 1.5, 2.5), (1.2 * members[0], members[1], 1.2))
        ]
      ).astype(np.float32)
      inputs.bank.labels[f"{kind}/{severity}"] = labels
  return inputs


@pytest.fixture(scope="module")
def section_inputs():
  return _section_inputs(shift_alarm_batches=400)


def test_the_section_reports_false_alarms_detection_and_the_duo_cells(section_inputs):
  from duojax.eval.sections import shift_alarm as section

  inputs = section_inputs
  assert section.enabled(inputs.config)
  results = section.build(inputs, {})["shift_alarm"]
  clean = results["clean"]
  assert clean["batch_size"] == 200 and clean["batches"] == 400
  low, high = clean["ci95"]
  assert low <= clean["rate"] <= high and clean["rate"] <= 0.12, clean
  resplit = results["resplit"]  # 20 re-splits of val ∪ test, 10 disjoint batches each
  assert resplit["batches"] == 200 and resplit["calibration_rows"] == 2000
  assert resplit["rate"] <= 0.1, resplit
  shifts = results["shifts"]
  assert list(shifts)[:3] == ["large_noise/1", "large_noise/3", "large_noise/5"]
  for kind in ("large_noise", "sidekick_noise"):
    assert shifts[f"{kind}/5"]["rate"] >= 0.9 and shifts[f"{kind}/5"]["batch_size"] == 200
  # A sidekick far noisier than on val: the fixed weights hurt and the cell is marked.
  assert shifts["sidekick_noise/5"]["delta_nll"] > 0
  lines = section.markdown(results and {"shift_alarm": results})
  assert lines[0].startswith("### Shift alarm")
  assert any(line.startswith("| sidekick_noise/5 |") and "✗" in line for line in lines)
  assert section.build(inputs, {})["shift_alarm"] == results  # seeded


def test_the_section_needs_a_sidekick_and_shifts_and_checks_its_keys(section_inputs):
  import dataclasses

  from duojax.eval.bank import LogitsBank
  from duojax.eval.sections import shift_alarm as section

  inputs = section_inputs
  config = inputs.config.copy_and_resolve_references()
  config.shifts = ""
  assert not section.enabled(config)
  no_shifts = LogitsBank(
    inputs.bank.member_names, inputs.bank.labels, {"val": inputs.bank.logits["val"]}
  )
  assert section.build(dataclasses.replace(inputs, bank=no_shifts), {}) == {}
  no_sidekick = LogitsBank(("large", "other", "large#2"), inputs.bank.labels, inputs.bank.logits)
  assert section.build(dataclasses.replace(inputs, bank=no_sidekick), {}) == {}
  assert section.markdown({}) == []
  for key, value, match in (
    ("shift_alarm_alpha", 1.0, "shift_alarm_alpha"),
    ("shift_alarm_batch", 0, "shift_alarm_batch"),
    ("shift_alarm_batches", -1, "shift_alarm_batches"),
    ("shift_alarm_resplits", -1, "shift_alarm_resplits"),
    ("shift_alarm_resamples", 5, ">= 19"),
  ):
    config = inputs.config.copy_and_resolve_references()
    config[key] = value
    with pytest.raises(ConfigError, match=match):
      section.validate(config)


def test_the_documented_example_runs(capsys):
  import pathlib
  import re

  page = pathlib.Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"
  text = page.read_text()
  section = text[text.index("## A shift alarm for batches of deployment inputs") :]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  exec(compile(code, "docs/evaluation.md", "exec"), {})
  clean, shifted = map(float, capsys.readouterr().out.split())
  assert clean < 0.1 and shifted >= 0.9
  assert f"# {clean:.3f} {shifted:.3f}" in code


def test_a_null_for_another_batch_size_is_drawn_once_and_is_the_fresh_draw():
  rng = np.random.default_rng(3)
  logits = [rng.normal(size=(300, 4)), rng.normal(size=(300, 4))]
  alarm = shift_alarm.fit_shift_alarm(logits, batch_size=50, resamples=99)
  first = alarm.null_for(70)
  assert alarm.null_for(70) is first  # kept, not drawn again
  fresh = shift_alarm.fit_shift_alarm(logits, batch_size=50, resamples=99).null_for(70)
  np.testing.assert_array_equal(first, fresh)
