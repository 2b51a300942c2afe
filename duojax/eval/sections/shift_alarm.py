"""The shift alarm section: how often the alarm fires on clean and on shifted batches
(`duojax.core.shift_alarm`).

The alarm is fitted on the validation split's large-model and sidekick logits,
with each member's own temperature (fitted on val, as for large+TS), for
batches of `config.shift_alarm_batch` inputs at level `config.shift_alarm_alpha`.
It then checks `config.shift_alarm_batches` batches per split, each of
min(batch, rows of the split) rows drawn with replacement from that split
(seeded with `config.seed`): resampled clean test batches give its
false-alarm rate, resampled batches of each shifted split ("kind/severity")
its detection rate. Each rate has its 95% Clopper-Pearson interval over the
batches. That interval is the resampling error given the split; a test split
of its own is one draw of the population, and its mean disagreement and gap
are off by about their spread/√rows, which moves every batch alike, so the
clean rate can sit further from α than the interval says on small test
splits. So the section also re-splits: `config.shift_alarm_resplits` times, the
validation and test rows are pooled, shuffled and cut again into a calibration
part as large as val and a held-out rest; an alarm fitted on the first checks
the disjoint batches the second holds. Each such batch is a fresh i.i.d.
sample, with no offset shared with the others, and averaged over the
re-splits the rate estimates the false-alarm rate over the draw of the
validation set as well, the quantity α bounds, if val and test rows are
exchangeable. Each shifted cell also gets the weighted duo's NLL minus large+TS's
on the whole split: cells where it is positive, those where the fixed duo
weights hurt, are the ones the alarm is for.

Runs with a sidekick and shifted splits (`config.shifts`). Results key:
"shift_alarm".
"""

from __future__ import annotations

import numpy as np

from duojax.config_lib import split_list
from duojax.core import selective, temperature
from duojax.core import shift_alarm as alarm_lib
from duojax.errors import ConfigError
from duojax.eval.inputs import LARGE, SIDEKICK, TEST, EvalInputs
from duojax.eval.methods import FIT_SPLIT

DUO, REFERENCE = "duo (weighted)", "large+TS"
_BATCH_STREAM = 8  # the seed stream of the resampled batches (conformal uses 7)
_RESPLIT_STREAM = 9  # and of the re-splits of val ∪ test


def defaults() -> dict:
  # The alarm's level α (its false-alarm rate in distribution), the batch size
  # it is calibrated and checked at, the resampled batches checked per split
  # (clean test and each shifted one) and its bootstrap resamples B.
  return {
    "shift_alarm_alpha": 0.05,
    "shift_alarm_batch": 500,
    "shift_alarm_batches": 1000,
    "shift_alarm_resamples": 1999,
    "shift_alarm_resplits": 20,  # 0: no re-split estimate of the false-alarm rate
  }


def _integer(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate(config) -> None:
  alpha = config.shift_alarm_alpha
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
    raise ConfigError(f"config.shift_alarm_alpha must be a number in (0, 1), got {alpha!r}")
  for key, least in (
    ("shift_alarm_batch", 1),
    ("shift_alarm_batches", 1),
    ("shift_alarm_resplits", 0),
  ):
    if not _integer(config[key]) or config[key] < least:
      raise ConfigError(f"config.{key} must be an integer >= {least}, got {config[key]!r}")
  resamples, least = config.shift_alarm_resamples, int(np.ceil(1 / alpha)) - 1
  if not _integer(resamples) or resamples < least:
    raise ConfigError(
      f"config.shift_alarm_resamples must be an integer >= {least} (1/α − 1, for p-values "
      f"as small as α), got {resamples!r}"
    )


def enabled(config) -> bool:
  return bool(config.sidekick) and bool(split_list(config.shifts))


def _temperatures(inputs: EvalInputs) -> tuple[float, float]:
  """Each member's own temperature on val: the weighted duo's single fits when it
  has them, else fitted here."""
  names = [m.name for m in inputs.methods]
  if DUO in names and "single_weights" in inputs.fitted(inputs.method(DUO)):
    weights = np.asarray(inputs.fitted(inputs.method(DUO))["single_weights"], np.float64)
  else:
    labels = inputs.bank.labels[FIT_SPLIT]
    weights = np.array(
      [
        float(
          temperature.fit_temperatures(
            [inputs.bank.member(FIT_SPLIT, name)], labels, solver=inputs.config.solver
          )[0]
        )
        for name in (LARGE, SIDEKICK)
      ]
    )
  return alarm_lib.temperatures_from_weights(weights[:2])


def fit_alarm(inputs: EvalInputs) -> alarm_lib.ShiftAlarm:
  """The alarm of the large model and the sidekick, calibrated on val with the
  config's level, batch size and resamples (also what a bundle holds)."""
  config = inputs.config
  return alarm_lib.fit_shift_alarm(
    list(inputs.bank.stack(FIT_SPLIT, [LARGE, SIDEKICK])),
    batch_size=config.shift_alarm_batch,
    alpha=config.shift_alarm_alpha,
    resamples=config.shift_alarm_resamples,
    seed=config.seed,
    temperatures=_temperatures(inputs),
  )


def _rate(alarms: np.ndarray) -> dict:
  """The alarm rate over batches and its 95% Clopper-Pearson interval."""
  n, k = len(alarms), int(np.sum(alarms))
  low = 1.0 - selective.binomial_tail_bound(n, n - k, 0.025)
  return {
    "batches": n,
    "alarms": k,
    "rate": k / n,
    "ci95": [max(0.0, low), selective.binomial_tail_bound(n, k, 0.025)],
  }


def _cell(alarm, inputs: EvalInputs, split: str, index: int) -> dict:
  config = inputs.config
  rows = alarm.statistics(list(inputs.bank.stack(split, [LARGE, SIDEKICK])))
  size = min(config.shift_alarm_batch, len(rows))
  rng = np.random.default_rng([config.seed, _BATCH_STREAM, index])
  batches = rng.integers(0, len(rows), (config.shift_alarm_batches, size))
  p = alarm.p_values(rows, batches)
  mean = rows.mean(axis=0)
  return {
    "rows": len(rows),
    "batch_size": size,
    **_rate(p <= alarm.alpha),
    "median_p": float(np.median(p)),
    "disagreement": float(mean[0]),
    "confidence_gap": float(mean[1]),
  }


def _resplit(inputs: EvalInputs, temperatures) -> dict:
  """The false-alarm rate over re-splits of val ∪ test (module docstring)."""
  config, bank = inputs.config, inputs.bank
  pooled = np.concatenate(
    [bank.stack(split, [LARGE, SIDEKICK]) for split in (FIT_SPLIT, TEST)], axis=1
  )
  calibration = len(bank.labels[FIT_SPLIT])
  rounds = config.shift_alarm_resplits
  alarms = []
  for r in range(rounds):
    rng = np.random.default_rng([config.seed, _RESPLIT_STREAM, r])
    order = rng.permutation(pooled.shape[1])
    alarm = alarm_lib.fit_shift_alarm(
      list(pooled[:, order[:calibration]]),
      batch_size=config.shift_alarm_batch,
      alpha=config.shift_alarm_alpha,
      resamples=config.shift_alarm_resamples,
      seed=config.seed + r,
      temperatures=temperatures,
    )
    rows = alarm.statistics(list(pooled[:, order[calibration:]]))
    size = min(config.shift_alarm_batch, len(rows))
    batches = np.arange(len(rows) // size * size).reshape(-1, size)  # disjoint: fresh batches
    alarms.append(alarm.p_values(rows, batches) <= alarm.alpha)
  return {"resplits": rounds, "calibration_rows": calibration, **_rate(np.concatenate(alarms))}


def _nll(inputs: EvalInputs, name: str, split: str) -> float:
  """The method's mean NLL on the split (the methods table's, in float64)."""
  logits = np.asarray(inputs.outputs(inputs.method(name), split)[0], np.float64)
  top = logits.max(axis=1)
  log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
  labels = inputs.bank.labels[split]
  return float(np.mean(log_norm - logits[np.arange(len(labels)), labels]))


def build(inputs: EvalInputs, results: dict) -> dict:
  del results
  config, bank = inputs.config, inputs.bank
  shifted = [s for s in bank.logits if "/" in s]
  if inputs.sidekick is None or not shifted:
    return {}
  alarm = fit_alarm(inputs)
  temperatures = alarm.temperatures
  names = [m.name for m in inputs.methods]
  compare = DUO in names and REFERENCE in names
  out = {
    "alpha": alarm.alpha,
    "batch_size": alarm.batch_size,
    "resamples": int(len(alarm.null)),
    "val_rows": int(len(alarm.rows)),
    "temperatures": list(alarm.temperatures),
    "val": {"disagreement": float(alarm.mean[0]), "confidence_gap": float(alarm.mean[1])},
    "clean": _cell(alarm, inputs, TEST, 0),
    "shifts": {},
  }
  held_out = len(bank.labels[TEST])
  if config.shift_alarm_resplits:
    out["resplit"] = {**_resplit(inputs, temperatures), "held_out_rows": held_out}
  for index, split in enumerate(sorted(shifted, key=_split_order), start=1):
    cell = _cell(alarm, inputs, split, index)
    if compare:
      cell["delta_nll"] = _nll(inputs, DUO, split) - _nll(inputs, REFERENCE, split)
    out["shifts"][split] = cell
  return {"shift_alarm": out}


def _split_order(split: str):
  kind, _, severity = split.partition("/")
  return (kind, int(severity) if severity.isdigit() else 0, severity)


def _interval(cell: dict) -> str:
  low, high = cell["ci95"]
  return f"{cell['rate']:.3f} [{low:.3f}, {high:.3f}]"


def markdown(results: dict) -> list[str]:
  section = results.get("shift_alarm")
  if not section:
    return []
  clean, alpha = section["clean"], section["alpha"]
  lines = [
    "### Shift alarm (batches of the test split and of each shifted split)",
    "",
    f"The alarm (`duojax.fit_shift_alarm`) is fitted on the {section['val_rows']} validation "
    "rows: the large model's and the sidekick's disagreement rate and their temperature-"
    "scaled confidence gap over a batch, each standardised, the larger one tested against a "
    f"bootstrap of {section['resamples']} resampled batches and references; it fires when "
    f"p ≤ α = {alpha:g}. False alarms on {clean['batches']} clean test batches of "
    f"{clean['batch_size']} (drawn with replacement from {clean['rows']} rows): "
    f"{_interval(clean)} (95% interval over batches; the target is ≤ {alpha:g}; given this "
    "validation set and test split, whose own sampling offsets move every batch alike). "
    + _resplit_text(section)
    + f"Validation: disagreement {section['val']['disagreement']:.4f}, confidence gap "
    f"{section['val']['confidence_gap']:+.4f}.",
    "",
    "| shift | rows | batch | detection [95% interval] | disagreement | confidence gap | "
    "ΔNLL duo − large+TS |",
    "|---|---|---|---|---|---|---|",
  ]
  worse = {}
  for split, cell in section["shifts"].items():
    delta = cell.get("delta_nll")
    mark = "" if delta is None else f"{delta:+.4f}" + (" ✗" if delta > 0 else "")
    if delta is not None and delta > 0:
      worse[split] = cell["rate"]
    lines.append(
      f"| {split} | {cell['rows']} | {cell['batch_size']} | {_interval(cell)} | "
      f"{cell['disagreement']:.4f} | {cell['confidence_gap']:+.4f} | {mark} |"
    )
  if any("delta_nll" in c for c in section["shifts"].values()):
    lines += [
      "",
      "✗: the weighted duo's NLL is worse than large+TS's on that split, where an alarm "
      "matters most. " + (_summary(worse) if worse else "No shifted split has one."),
    ]
  return lines


def _resplit_text(section: dict) -> str:
  resplit = section.get("resplit")
  if not resplit:
    return ""
  return (
    f"Over {resplit['resplits']} re-splits of val ∪ test into {resplit['calibration_rows']} "
    f"calibration rows and {resplit['held_out_rows']} held-out ones: {_interval(resplit)} of "
    f"{resplit['batches']} disjoint held-out batches (the rate over validation sets too; its interval "
    "counts batches, not re-splits, so it is too narrow). "
  )


def _summary(worse: dict) -> str:
  """Detection over the ✗ cells, all of them and those of severity ≥ 3."""
  severe = [rate for split, rate in worse.items() if _split_order(split)[1] >= 3]
  text = (
    f"Detection over those {len(worse)} cells: lowest {min(worse.values()):.3f}, mean "
    f"{np.mean(list(worse.values())):.3f}"
  )
  if severe:
    text += f"; over the {len(severe)} of severity ≥ 3: lowest {min(severe):.3f}"
  return text + "."
