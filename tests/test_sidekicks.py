"""The sidekicks section: ranking candidate sidekicks, and duos of k sidekicks."""

import numpy as np
import pytest

from duojax.eval import methods as methods_lib
from duojax.eval.bank import LogitsBank
from duojax.eval.sections import sidekicks


def _bank(n=800, seed=0):
  """A large model, a useful sidekick, a weaker one and pure noise, on val and test."""
  rng = np.random.default_rng(seed)
  bank = LogitsBank(("large", "sidekick", "weak", "noise"))
  for split in ("val", "test"):
    labels = rng.integers(0, 6, n)
    signal = np.eye(6)[labels]
    shared = rng.normal(size=(n, 6))  # errors the sidekicks do not share
    members = [
      3 * signal + 1.5 * shared,
      2 * signal + rng.normal(size=(n, 6)),
      0.7 * signal + rng.normal(size=(n, 6)),
      rng.normal(size=(n, 6)),
    ]
    bank.logits[split] = np.stack(members).astype(np.float32)
    bank.labels[split] = labels
  return bank


FLOPS = {"large": 100.0, "sidekick": 10.0, "weak": 2.0, "noise": 1.0}


def test_a_useless_candidate_ranks_last_with_no_weight():
  result = sidekicks.rank_sidekicks(
    _bank(), large="large", candidates=["noise", "weak", "sidekick"], member_flops=FLOPS
  )
  assert result["ranking"] == ["sidekick", "weak", "noise"]
  assert result["chosen"] == "sidekick"
  noise = result["rows"]["noise"]
  # Pure noise gets next to no weight (what is left is fitting noise on 800 rows).
  assert abs(noise["w_sidekick"]) < 0.1 < result["rows"]["sidekick"]["w_sidekick"]
  assert noise["val_nll"] == pytest.approx(result["reference_val_nll"], abs=2e-3)
  assert result["rows"]["sidekick"]["val_nll_gain_per_flop"] > 0


def test_the_budget_picks_the_best_candidate_that_fits_and_unknown_flops_are_marked():
  flops = {**FLOPS, "weak": float("nan")}
  result = sidekicks.rank_sidekicks(
    _bank(),
    large="large",
    candidates=["sidekick", "weak", "noise"],
    member_flops=flops,
    budget=0.05,
  )
  assert result["chosen"] == "weak"  # the sidekick costs 10% > 5%; weak's cost is unknown
  assert result["rows"]["weak"]["relative_flops"] is None
  assert result["rows"]["weak"]["val_nll_gain_per_flop"] is None
  lines = sidekicks.markdown({"sidekicks": result})
  assert any("| weak | – |" in line for line in lines)


def test_one_sidekick_gives_no_extra_methods_and_k_sidekicks_one_joint_duo():
  class Config:
    sidekicks = "a,b"

  assert sidekicks.methods(type("C", (), {"sidekicks": ""}), []) == []
  added = ["sidekick#2", "sidekick#3"]
  methods = sidekicks.methods(Config, added)
  assert methods[0].members == ("large", "sidekick", "sidekick#2", "sidekick#3")
  assert [m.members for m in methods[1:]] == [("large", "sidekick#2"), ("large", "sidekick#3")]


def test_a_pairwise_duo_from_the_section_is_todays_duo_exactly():
  bank = _bank()
  today = methods_lib.Method("duo (weighted)", "duo", ("large", "sidekick"), "weighted")
  ranked = sidekicks.rank_sidekicks(
    bank, large="large", candidates=["sidekick"], member_flops=FLOPS
  )
  fitted = methods_lib.fit(today, bank)
  np.testing.assert_allclose(
    [ranked["rows"]["sidekick"]["w_large"], ranked["rows"]["sidekick"]["w_sidekick"]],
    fitted["weights"],
    rtol=1e-6,
  )
  three = methods_lib.Method("duo k=3", "duo", ("large", "sidekick", "weak"), "weighted")
  weights = methods_lib.fit(three, bank)["weights"]
  assert weights.shape == (3,) and weights[1] > weights[2] > 0
