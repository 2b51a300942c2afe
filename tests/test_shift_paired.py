"""The shifts section: each method minus large+TS on every shifted cell, with intervals
that hold over all the cells at once."""

import numpy as np
from helpers import synthetic_eval_inputs

from duojax.eval.methods import standard_methods
from duojax.eval.sections import shift_paired as section


def _inputs(n=1500, seed=0):
  """Synthetic members plus shifted cells: "harm/s" breaks the sidekick (confidently
  wrong on 15·s% of the rows), "help/s" makes the large model noisy."""
  inputs = synthetic_eval_inputs(n, seed, shifts="x", bootstrap=100)
  rng = np.random.default_rng(seed + 1)
  labels = rng.integers(0, 8, n)
  signal = np.eye(8)[labels]
  for severity in (1, 2, 3):
    noise = [rng.normal(size=(n, 8)) for _ in range(3)]
    clean = [2.5 * signal + 1.2 * noise[0], 1.5 * signal + noise[1], 2.5 * signal + 1.2 * noise[2]]
    harmed = [z.copy() for z in clean]
    broken = rng.uniform(size=n) < 0.15 * severity
    wrong = np.eye(8)[(labels + rng.integers(1, 8, n)) % 8]
    harmed[1][broken] = 6.0 * wrong[broken] + noise[1][broken]
    helped = [z.copy() for z in clean]
    helped[0] = 2.5 * signal + (1.2 + 0.8 * severity) * noise[0]
    for kind, stack in (("harm", harmed), ("help", helped)):
      inputs.bank.logits[f"{kind}/{severity}"] = np.stack(stack).astype(np.float32)
      inputs.bank.labels[f"{kind}/{severity}"] = labels
  inputs.methods[:] = standard_methods(
    large="large", sidekick="sidekick", ensemble=("large", "large#2"), per_input=("guarded",)
  )
  return inputs


def test_the_section_finds_where_the_duo_hurts_and_the_guard_does_not(tmp_path):
  inputs = _inputs()
  results = {"methods": {m.name: {"test": {"nll": 0.0}} for m in inputs.methods}}
  for name in ("large+TS", "duo (weighted)", "duo (guarded)"):
    logits, confidence = inputs.outputs(inputs.method(name), "test")
    from duojax.core import metrics

    results["methods"][name]["test"]["nll"] = metrics.evaluate(
      logits, inputs.bank.labels["test"], confidence
    )["nll"]
  out = section.build(inputs, results)["shift_paired"]
  assert out["cells"] == ["harm/1", "harm/2", "harm/3", "help/1", "help/2", "help/3"]
  weighted, guarded = out["methods"]["duo (weighted)"], out["methods"]["duo (guarded)"]
  assert {"harm/2", "harm/3"} <= set(weighted["nll"]["worse"])
  assert weighted["worst_nll"]["cell"] == "harm/3"
  assert {"help/2", "help/3"} <= set(weighted["nll"]["better"])
  # The guard sends the rows where both members are sure of different classes to
  # large+TS; the broken rows whose large model is unsure keep the mixture's bound.
  assert guarded["worst_nll"]["diff"] < 0.6 * weighted["worst_nll"]["diff"]
  assert guarded["shift_gain_kept_min"] >= 0.5 and guarded["clean_gain_kept"] > 0.5
  # The joint intervals are wider than one cell's 95% interval.
  assert weighted["nll"]["q"] > 1.96
  lines = section.markdown({"shift_paired": out})
  assert lines[0].startswith("### Under shift") and any("| harm/3 |" in line for line in lines)
  assert section.write_plots({"shift_paired": out}, str(tmp_path)) == {
    "shift_worst": str(tmp_path / "shift_worst.png")
  }


def test_simultaneous_intervals_cover_every_cell_at_once():
  # 12 correlated cells whose estimates are means of shared rows; truth 0 everywhere.
  rng = np.random.default_rng(0)
  misses, trials, n = 0, 200, 300
  mixing = rng.normal(size=(12, 4))
  for _ in range(trials):
    rows = rng.normal(size=(n, 4)) @ mixing.T + rng.normal(size=(n, 12))
    full = rows.mean(0)
    resampled = np.stack([rows[rng.integers(0, n, n)].mean(0) for _ in range(200)], axis=1)
    lower, upper, q = section.simultaneous(full, resampled)
    misses += not ((lower <= 0) & (upper >= 0)).all()
    assert 1.96 < q < 3.5
  # Joint coverage 95%: at most ~5% of the trials miss any cell (binomial slack).
  assert misses / trials < 0.05 + 3 * np.sqrt(0.05 * 0.95 / trials)


def test_shift_severities_are_checked():
  import pytest

  from duojax.errors import ConfigError
  from duojax.eval import schema

  config = schema.base_eval_config()
  config.large, config.shift_severities = "x", "1,6"
  with pytest.raises(ConfigError, match="shift_severities"):
    schema.validate_eval(config)
