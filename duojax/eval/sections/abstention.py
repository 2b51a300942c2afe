"""The abstention section: confidence thresholds with a guaranteed selective risk
(Selection with Guaranteed Risk, `duojax.core.selective`).

For large+TS, the weighted duo and the temperature-scaled 2-member ensemble
(those the bank holds), fitted on val as in the methods table, and each target
risk r of `config.abstention_risks`: the threshold on the max softmax
probability that SGR picks on the validation rows (selective risk ≤ r with
probability ≥ 1 − `config.abstention_delta`), the validation coverage, and the
test coverage and test selective risk of accepting confidence ≥ threshold. A
higher coverage at the same r is the better confidence ranking. An r that the
validation rows cannot guarantee is reported with the reason instead of numbers.

The temperatures and duo weights are fit on the same validation rows the
threshold is chosen on, as every other table's are: for one model a temperature
rescales every row's logits alike, which leaves the ranking of confidences
nearly unchanged, so the fit spends little of the rows' independence.

Runs when `config.abstention_risks` is set. Results key: "abstention".
"""

from __future__ import annotations

import math

import numpy as np

from duojax.config_lib import split_list
from duojax.core import selective
from duojax.errors import ConfigError, InputError
from duojax.eval.inputs import TEST, EvalInputs
from duojax.eval.methods import FIT_SPLIT

MODELS = ("large+TS", "duo (weighted)", "ensemble m=2+TS")


def defaults() -> dict:
  # Target selective risks r (comma list; "" for none) and the probability δ
  # that the validation rows let a threshold's true risk exceed r.
  return {"abstention_risks": "0.01,0.02,0.05", "abstention_delta": 0.05}


def _risks(config) -> list[float]:
  try:
    return [float(r) for r in split_list(config.abstention_risks)]
  except ValueError:
    return [-1.0]


def validate(config) -> None:
  if not all(0 < r < 1 for r in _risks(config)):
    raise ConfigError(
      f"config.abstention_risks must be numbers in (0, 1), got {config.abstention_risks!r}"
    )
  delta = config.abstention_delta
  if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
    raise ConfigError(f"config.abstention_delta must be a number in (0, 1), got {delta!r}")


def enabled(config) -> bool:
  return bool(split_list(config.abstention_risks))


def _confidence_correct(inputs: EvalInputs, method, split: str) -> tuple[np.ndarray, np.ndarray]:
  logits, confidence = inputs.outputs(method, split)  # fitted on val once, shared with methods
  correct = np.asarray(logits).argmax(-1) == inputs.bank.labels[split]
  return np.asarray(confidence, np.float64), correct


def _cell(val, test, risk: float, delta: float) -> dict:
  try:
    chosen = selective.guaranteed_threshold(*val, risk=risk, delta=delta)
  except InputError as error:
    return {"reason": str(error)}
  test_risk, test_coverage = selective.selective_risk_coverage(*test, chosen.threshold)
  return {
    "threshold": chosen.threshold,
    "bound": chosen.bound,
    "val_coverage": chosen.coverage,
    "test_coverage": test_coverage,
    "test_risk": None if math.isnan(test_risk) else test_risk,
  }


def build(inputs: EvalInputs, results: dict) -> dict:
  del results
  config, bank = inputs.config, inputs.bank
  risks, delta = _risks(config), float(config.abstention_delta)
  names = [m.name for m in inputs.methods]
  out = {
    "risks": risks,
    "delta": delta,
    "val_rows": int(len(bank.labels[FIT_SPLIT])),
    "smallest_reachable_risk": selective.smallest_reachable_risk(
      len(bank.labels[FIT_SPLIT]), delta
    ),
    "models": {},
  }
  for name in (n for n in MODELS if n in names):
    method = inputs.method(name)
    val = _confidence_correct(inputs, method, FIT_SPLIT)
    test = _confidence_correct(inputs, method, TEST)
    out["models"][name] = {f"{r:g}": _cell(val, test, r, delta) for r in risks}
  return {"abstention": out}


def markdown(results: dict) -> list[str]:
  if "abstention" not in results:
    return []
  section = results["abstention"]
  levels = [f"{r:g}" for r in section["risks"]]
  lines = [
    "### Abstention with a guaranteed risk (test split)",
    "",
    f"Selection with Guaranteed Risk: on the {section['val_rows']} validation rows, the "
    "threshold on the max softmax probability of largest coverage whose binomial bound on "
    f"the selective risk (the error rate among accepted images) is at most r, so that the "
    f"true risk is ≤ r with probability ≥ {1 - section['delta']:g} (δ split over the binary "
    "search's tests). Each cell: threshold / validation coverage / test coverage / test "
    "selective risk; higher coverage at the same r is the better confidence. With these "
    f"rows no model of distinct confidences reaches r below "
    f"{section['smallest_reachable_risk']:.4g}; an r the "
    "rows cannot guarantee shows – and the reason below the table.",
    "",
    "| model | " + " | ".join(f"r = {level}" for level in levels) + " |",
    "|---|" + "---|" * len(levels),
  ]
  reasons = []
  for name, entry in section["models"].items():
    cells = []
    for level in levels:
      cell = entry[level]
      if "reason" in cell:
        cells.append("–")
        reasons.append(f"- {name}, r = {level}: {cell['reason']}")
        continue
      test_risk = "–" if cell["test_risk"] is None else f"{cell['test_risk']:.4f}"
      cells.append(
        f"{cell['threshold']:.4f} / {cell['val_coverage']:.3f} / {cell['test_coverage']:.3f}"
        f" / {test_risk}"
      )
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  if reasons:
    lines += ["", *reasons]
  return lines
