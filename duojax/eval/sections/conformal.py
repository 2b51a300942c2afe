"""The conformal section: prediction sets with guaranteed coverage, from each model's
probabilities (split conformal prediction, `duojax.core.conformal`).

The validation split is cut in two halves by a seeded permutation: the
temperatures and duo weights of this section are fit on the first, the
conformal threshold is calibrated on the second, and the sets are scored on
test. (The other tables keep their fits on all of val; the coverage guarantee
needs calibration rows the fit has not seen.) For large+TS, the weighted duo
and the temperature-scaled 2-member ensemble (those the bank holds), each score
in `config.conformal_methods` (LAC, APS, RAPS) and each 1 − α of
`config.conformal_alphas`: the empirical test coverage, the mean set size and
the distribution of set sizes (plotted at the first α). Smaller sets at the
same coverage are the better uncertainty.

Runs when `config.conformal_alphas` is set. Results key: "conformal".
"""

from __future__ import annotations

import os

import jax
import numpy as np

from duojax.config_lib import split_list
from duojax.core import conformal, duo, temperature
from duojax.errors import ConfigError, DataError
from duojax.eval import plots
from duojax.eval.inputs import TEST, EvalInputs
from duojax.eval.methods import FIT_SPLIT, log_mean_softmax

MODELS = ("large+TS", "duo (weighted)", "ensemble m=2+TS")
_SPLIT_STREAM = 7  # the seed stream of the val permutation (others use 0-3)


def defaults() -> dict:
  # Target miscoverages α (comma list; "" for none) and the scores (lac, aps,
  # raps), calibrated on half of val.
  return {"conformal_alphas": "0.1,0.05,0.01", "conformal_methods": "lac,raps"}


def validate(config) -> None:
  try:
    alphas = [float(a) for a in split_list(config.conformal_alphas)]
  except ValueError:
    alphas = [-1.0]
  if not all(0 < a < 1 for a in alphas):
    raise ConfigError(
      f"config.conformal_alphas must be numbers in (0, 1), got {config.conformal_alphas!r}"
    )
  kinds = split_list(config.conformal_methods)
  if set(kinds) - set(conformal.METHODS) or not (kinds or not alphas):
    raise ConfigError(
      f"config.conformal_methods={config.conformal_methods!r}; valid: a comma list of "
      f"{', '.join(conformal.METHODS)}"
    )


def enabled(config) -> bool:
  return bool(split_list(config.conformal_alphas))


def _logits(method, bank, split: str) -> np.ndarray:
  """The unscaled logits [N, C] (or [m, N, C] for a duo) a model's fit starts from."""
  stack = bank.stack(split, method.members)
  if method.kind == "ensemble_ts":
    return np.asarray(log_mean_softmax(stack))[None]
  return stack if method.kind == "duo" else stack[:1]


def build(inputs: EvalInputs, results: dict) -> dict:
  del results
  config, bank = inputs.config, inputs.bank
  alphas = [float(a) for a in split_list(config.conformal_alphas)]
  kinds = split_list(config.conformal_methods)
  y_val, y_test = bank.labels[FIT_SPLIT], bank.labels[TEST]
  order = np.random.default_rng([config.seed, _SPLIT_STREAM]).permutation(len(y_val))
  fit_rows, cal_rows = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2 :])
  if len(fit_rows) < 1 or len(cal_rows) < 1:
    raise DataError(f"the conformal section needs at least 2 validation rows, got {len(y_val)}")
  names = [m.name for m in inputs.methods]
  out = {
    "alphas": alphas,
    "methods": kinds,
    "fit_rows": int(len(fit_rows)),
    "calibration_rows": int(len(cal_rows)),
    "models": {},
  }
  for name in (n for n in MODELS if n in names):
    method = inputs.method(name)
    val, test = _logits(method, bank, FIT_SPLIT), _logits(method, bank, TEST)
    weights = np.asarray(
      temperature.fit_temperatures(list(val[:, fit_rows]), y_val[fit_rows], solver=config.solver)
    )
    probs = {
      split: np.asarray(jax.nn.softmax(duo.combine(z, weights), axis=-1), np.float64)
      for split, z in (("cal", val[:, cal_rows]), ("test", test))
    }
    entry = {}
    for kind in kinds:
      for alpha in alphas:
        predictor = conformal.calibrate(
          probs["cal"], y_val[cal_rows], alpha=alpha, method=kind, seed=config.seed
        )
        sets = predictor.sets(probs["test"], seed=config.seed)
        sizes = conformal.set_sizes(sets)
        entry[f"{kind}@{1 - alpha:g}"] = {
          "coverage": conformal.coverage(sets, y_test),
          "mean_size": float(sizes.mean()),
          "size_counts": np.bincount(sizes, minlength=sets.shape[1] + 1).tolist(),
          "threshold": float(predictor.threshold),
        }
    out["models"][name] = entry
  return {"conformal": out}


def markdown(results: dict) -> list[str]:
  if "conformal" not in results:
    return []
  section = results["conformal"]
  levels = [f"{1 - a:g}" for a in section["alphas"]]
  lines = [
    "### Conformal prediction sets (test split)",
    "",
    f"Split conformal: temperatures and duo weights fit on {section['fit_rows']} "
    f"validation rows, the threshold calibrated on the other "
    f"{section['calibration_rows']}. Each cell: empirical coverage / mean set size "
    "(smaller sets at the target coverage are better).",
    "",
    "| model | score | " + " | ".join(f"1−α = {level}" for level in levels) + " |",
    "|---|---|" + "---|" * len(levels),
  ]
  for name, entry in section["models"].items():
    for kind in section["methods"]:
      cells = [entry[f"{kind}@{level}"] for level in levels]
      lines.append(
        f"| {name} | {kind.upper()} | "
        + " | ".join(f"{c['coverage']:.4f} / {c['mean_size']:.2f}" for c in cells)
        + " |"
      )
  return lines


def write_plots(results: dict, out_dir: str) -> dict[str, str]:
  """Set-size distributions at the first 1 − α, one panel per score."""
  section = results.get("conformal")
  if not section or not section["models"]:
    return {}
  level = f"{1 - section['alphas'][0]:g}"
  kinds = section["methods"]
  fig = plots.new_figure(4.2 * len(kinds), 3.2)
  axes = fig.subplots(1, len(kinds), squeeze=False)[0]
  models = list(section["models"])
  width = 0.8 / len(models)
  for ax, kind in zip(axes, kinds):
    for i, name in enumerate(models):
      counts = np.asarray(section["models"][name][f"{kind}@{level}"]["size_counts"], float)
      sizes = np.arange(len(counts))
      ax.bar(sizes + (i - (len(models) - 1) / 2) * width, counts / counts.sum(), width, label=name)
    ax.set_xlabel("set size")
    ax.set_title(f"{kind.upper()}, 1−α = {level}")
  axes[0].set_ylabel("fraction of test images")
  axes[-1].legend(frameon=False)
  return {
    "conformal_set_sizes": plots.save_figure(fig, os.path.join(out_dir, "conformal_set_sizes.png"))
  }
