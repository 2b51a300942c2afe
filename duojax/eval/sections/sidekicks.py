"""The sidekicks section: which sidekick to pair with the large model, and k of them.

Choosing a sidekick. Every candidate c (the sidekick, the Gatekeeper
fine-tunes of the cascade section, the Hydra section's ViT, and the workdirs
in `config.sidekick_pool`) is paired with the large model L and the pair's
weights (w_L, w_c) are fit jointly on val, as the duo's are. The candidates are
ranked by that duo's validation NLL: the quantity the fit minimises, so a
candidate that cannot help gets w_c ≈ 0, its duo's NLL is the large model's
temperature-scaled NLL, and it ranks at the bottom. The chosen sidekick is the
best one within `config.sidekick_budget` (its FLOPs per image as a fraction of
L's; 0 for no limit). The table adds each candidate's cost, w_c, its duo's test
NLL and AURC, and the validation NLL gained per unit of extra FLOPs (relative
to L's): candidates whose FLOPs are unknown are ranked by NLL alone and marked.

k sidekicks. `config.sidekicks` lists more sidekicks; with them the methods
table gains the weighted duo of L and all k sidekicks (one fused forward, one
joint fit of k + 1 weights) and each extra sidekick's own pairwise duo.

Runs when there is a sidekick. Results key: "sidekicks".
"""

from __future__ import annotations

import math
import os

import numpy as np

from duojax.config_lib import split_list
from duojax.core import duo, metrics, temperature
from duojax.errors import ConfigError
from duojax.eval import member_specs
from duojax.eval.bank import LogitsBank
from duojax.eval.inputs import SIDEKICK, TEST, EvalInputs
from duojax.eval.members import Member
from duojax.eval.methods import FIT_SPLIT, Method
from duojax.eval.render import fmt

VIT = "ViT"  # the Hydra section's source ViT, a candidate when it is in the bank


MEMBER_KEYS = {"sidekicks": member_specs.MODELS, "sidekick_pool": member_specs.MODELS}


def defaults() -> dict:
  # More sidekicks: `sidekicks` (a comma list of workdirs or pretrained files)
  # joins `sidekick` in one weighted duo of the large model and k sidekicks;
  # this section ranks every candidate (the sidekick, the Gatekeeper
  # fine-tunes, the Hydra ViT, the members of `sidekick_pool`) by its duo's
  # validation NLL and picks the best within `sidekick_budget` (FLOPs as a
  # fraction of the large model's; 0: no limit).
  return {"sidekicks": "", "sidekick_pool": "", "sidekick_budget": 0.0}


def validate(config) -> None:
  if config.sidekick_budget < 0:
    raise ConfigError(
      f"config.sidekick_budget must be >= 0 (0: no limit), got {config.sidekick_budget}"
    )
  if (split_list(config.sidekicks) or split_list(config.sidekick_pool)) and not config.sidekick:
    raise ConfigError(
      "config.sidekicks / config.sidekick_pool need config.sidekick, which is empty"
    )


def enabled(config) -> bool:
  return bool(config.sidekick)


def _extra_names(config) -> list[str]:
  return [f"{SIDEKICK}#{i}" for i in range(2, len(split_list(config.sidekicks)) + 2)]


def _pool_names(config) -> list[str]:
  return [
    f"candidate {os.path.basename(os.path.normpath(w))}" for w in split_list(config.sidekick_pool)
  ]


def members(config, specs: dict, mesh) -> list[Member]:
  """The extra sidekicks (sidekick#2, ...) and the pool's candidates: workdirs or
  pretrained files."""
  names = _extra_names(config) + _pool_names(config)
  workdirs = specs["sidekicks"] + specs["sidekick_pool"]
  if len(set(names)) != len(names):
    raise ConfigError(
      "config.sidekick_pool: two candidates share a folder name: "
      f"{sorted(n for n in names if names.count(n) > 1)[0]!r}"
    )
  return [member_specs.load(name, w, mesh=mesh) for name, w in zip(names, workdirs)]


def methods(config, added: list[str]) -> list[Method]:
  """With k > 1 sidekicks: their joint duo, and each extra one's pairwise duo."""
  extra = [n for n in _extra_names(config) if n in added]
  if not extra:
    return []
  large = "large"
  return [
    Method(
      f"duo k={1 + len(extra)} (weighted)",
      "duo",
      (large, SIDEKICK, *extra),
      "weighted",
      label=f"large model + {1 + len(extra)} sidekicks, weights fit jointly on val",
      headline=True,
    ),
    *(
      Method(
        f"duo (weighted) with {name}",
        "duo",
        (large, name),
        "weighted",
        label=f"large model + {name}",
      )
      for name in extra
    ),
  ]


def build(inputs: EvalInputs, results: dict) -> dict:
  del results
  bank = inputs.bank
  candidates = [
    SIDEKICK,
    *inputs.added.get("cascade", []),
    *([VIT] if VIT in bank.member_names else []),
    *_extra_names(inputs.config),
    *_pool_names(inputs.config),
  ]
  candidates = [c for c in dict.fromkeys(candidates) if c in bank.member_names]
  return {
    "sidekicks": rank_sidekicks(
      bank,
      large=inputs.large,
      candidates=candidates,
      member_flops=inputs.member_flops,
      budget=float(inputs.config.sidekick_budget),
      solver=inputs.config.solver,
    )
  }


def rank_sidekicks(
  bank: LogitsBank,
  *,
  large: str,
  candidates,
  member_flops: dict,
  budget: float = 0.0,
  solver: str = "jaxopt",
) -> dict:
  """Each candidate's duo with `large`, ranked by validation NLL (see the module doc)."""
  y_val, y_test = bank.labels[FIT_SPLIT], bank.labels[TEST]
  large_val, large_test = bank.member(FIT_SPLIT, large), bank.member(TEST, large)
  t_large = np.asarray(temperature.fit_temperatures([large_val], y_val, solver=solver))
  reference = float(temperature.nll(t_large, [large_val], y_val))
  flops_large = member_flops.get(large, float("nan"))
  rows = {}
  for name in candidates:
    val = [large_val, bank.member(FIT_SPLIT, name)]
    weights = np.asarray(temperature.fit_temperatures(val, y_val, solver=solver))
    test_logits = duo.combine(np.stack([large_test, bank.member(TEST, name)]), weights)
    scores = metrics.evaluate(test_logits, y_test, duo.msp_confidence(test_logits))
    relative = member_flops.get(name, float("nan")) / flops_large
    val_nll = float(temperature.nll(weights, val, y_val))
    rows[name] = {
      "relative_flops": relative if math.isfinite(relative) else None,
      "w_large": float(weights[0]),
      "w_sidekick": float(weights[1]),
      "val_nll": val_nll,
      "test_nll": float(scores["nll"]),
      "test_aurc": float(scores["aurc"]),
      "val_nll_gain_per_flop": (
        (reference - val_nll) / relative if math.isfinite(relative) and relative > 0 else None
      ),
    }
  order = sorted(rows, key=lambda n: rows[n]["val_nll"])
  within = [
    n
    for n in order
    if budget <= 0 or rows[n]["relative_flops"] is None or rows[n]["relative_flops"] <= budget
  ]
  return {
    "reference_val_nll": reference,
    "budget": budget,
    "ranking": order,
    "chosen": within[0] if within else None,
    "rows": rows,
  }


def markdown(results: dict) -> list[str]:
  if "sidekicks" not in results:
    return []
  section = results["sidekicks"]
  budget = (
    f"within {section['budget']:.0%} of the large model's FLOPs"
    if section["budget"] > 0
    else "with no FLOPs budget"
  )
  lines = [
    "### Choosing the sidekick (each candidate's duo with the large model)",
    "",
    "Weights fit jointly on val; ranked by the duo's validation NLL (the large model "
    f"alone, temperature-scaled: {fmt(section['reference_val_nll'])}). Chosen "
    f"{budget}: **{section['chosen']}**. Gain per FLOP: validation NLL gained per unit "
    "of the candidate's FLOPs relative to the large model's (– where its FLOPs are "
    "unknown: ranked by NLL alone). AURC in thousandths.",
    "",
    "| rank | candidate | FLOPs ×large | w_L | w_S | val NLL | test NLL | test AURC‰ | "
    "gain per FLOP |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for rank, name in enumerate(section["ranking"], start=1):
    r = section["rows"][name]
    flops = "–" if r["relative_flops"] is None else f"{r['relative_flops']:.3f}"
    gain = "–" if r["val_nll_gain_per_flop"] is None else f"{r['val_nll_gain_per_flop']:.4f}"
    lines.append(
      f"| {rank} | {name} | {flops} | {r['w_large']:.3f} | {r['w_sidekick']:.3f} | "
      f"{fmt(r['val_nll'])} | {fmt(r['test_nll'])} | {1000 * r['test_aurc']:.2f} | "
      f"{gain} |"
    )
  return lines
