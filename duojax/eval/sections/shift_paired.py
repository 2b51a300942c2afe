"""The shifts section: every shifted split ("kind/severity"), each method minus large+TS,
with intervals that hold for all the cells at once.

For each corrupted copy of the test images (`config.shifts`: corruptions ×
severities, the same images in every cell) and each method compared (the
duos, the sidekick and the 2-member ensemble, those the report has), the
differences ΔNLL and ΔAURC against large+TS: the difference on the cell's
rows, and a paired bootstrap over the images (`config.bootstrap` rounds; the
same resampled rows for every cell and method, seeded with `config.seed`).

Simultaneous intervals. With 20 or 75 cells, 95% intervals per cell would
leave several excluding zero by chance. Per method and metric, the max-|t|
bootstrap: with d_c the difference on cell c, d_c,b its value on resample b
and s_c the bootstrap standard deviation,

    T_b = max_c |d_c,b − d_c| / s_c,      q = the 95th percentile of T_b,

and the intervals d_c ± q·s_c cover every cell's true difference at once
with probability ≈ 95% (Romano & Wolf 2005): they are wider than per-cell
intervals by as much as the number and correlation of the cells require, no
more (a Bonferroni correction ignores that the cells share their images).

Reported per method: every cell, the worst cell (the largest ΔNLL and its
interval), the cells where it is worse than large+TS beyond the simultaneous
interval (lower bound > 0), and for the per-input duos two ratios to the
weighted duo: the share of its clean-test NLL gain over large+TS they keep,
and the smallest share they keep on the cells where the weighted duo is
better than large+TS beyond its interval.

Runs when the bank holds shifted splits and `config.bootstrap` > 0.
Results key: "shift_paired".
"""

from __future__ import annotations

import os

import numpy as np

from duojax.core import metrics
from duojax.eval import plots
from duojax.eval.inputs import EvalInputs
from duojax.eval.sections.methods import REFERENCE

READS = ("methods",)
COMPARED = (
  "duo (weighted)",
  "duo (dynamic)",
  "duo (entropy)",
  "duo (guarded)",
  "sidekick+TS",
  "ensemble m=2+TS",
)
METRICS = ("nll", "aurc")
LEVEL = 0.95


def enabled(config) -> bool:
  return bool(config.shifts) and config.bootstrap > 0


def _cells(inputs: EvalInputs) -> list[str]:
  """The shifted splits, by corruption then severity."""
  names = [s for s in inputs.bank.logits if "/" in s]
  return sorted(names, key=lambda s: (s.split("/")[0], int(s.split("/")[1])))


def _deltas(inputs: EvalInputs, method, cells, rows) -> dict:
  """{metric: (full [cells], resampled [cells, rounds])} of method − reference."""
  out = {k: ([], []) for k in METRICS}
  for cell in cells:
    labels = inputs.bank.labels[cell]
    scores = []
    for name in (method, REFERENCE):
      logits, confidence = inputs.outputs(inputs.method(name), cell)
      full = metrics.evaluate(logits, labels, confidence)
      resampled = metrics.evaluate_resamples(logits, labels, confidence, rows=rows, names=METRICS)
      scores.append((full, resampled))
    for k in METRICS:
      out[k][0].append(scores[0][0][k] - scores[1][0][k])
      out[k][1].append(scores[0][1][k] - scores[1][1][k])
  return {k: (np.asarray(full), np.asarray(res)) for k, (full, res) in out.items()}


def simultaneous(full: np.ndarray, resampled: np.ndarray, level: float = LEVEL):
  """(lower [cells], upper [cells], q): max-|t| bootstrap intervals of `full` that hold
  jointly over the cells (resampled: [cells, rounds])."""
  spread = resampled.std(axis=1, ddof=1)
  spread = np.where(spread > 0, spread, np.inf)  # a constant cell: no evidence either way
  t = np.abs(resampled - full[:, None]) / spread[:, None]
  t = np.where(np.isfinite(t), t, 0.0)
  q = float(np.quantile(t.max(axis=0), level))
  half = np.where(np.isfinite(spread), q * spread, 0.0)
  return full - half, full + half, q


def build(inputs: EvalInputs, results: dict) -> dict:
  names = {m.name for m in inputs.methods}
  cells = _cells(inputs)
  compared = [m for m in COMPARED if m in names]
  if REFERENCE not in names or not cells or not compared:
    return {}
  n = len(inputs.bank.labels[cells[0]])
  rng = np.random.default_rng(inputs.config.seed)
  rows = rng.integers(0, n, (inputs.config.bootstrap, n))
  section = {"cells": cells, "level": LEVEL, "rounds": int(len(rows)), "methods": {}}
  for method in compared:
    deltas = _deltas(inputs, method, cells, rows)
    entry = {}
    for k, (full, resampled) in deltas.items():
      lower, upper, q = simultaneous(full, resampled)
      entry[k] = {
        "diff": full.tolist(),
        "lower": lower.tolist(),
        "upper": upper.tolist(),
        "q": q,
        "worse": [c for c, lo in zip(cells, lower) if lo > 0],
        "better": [c for c, hi in zip(cells, upper) if hi < 0],
      }
    worst = int(np.argmax(deltas["nll"][0]))
    entry["worst_nll"] = {
      "cell": cells[worst],
      "diff": float(deltas["nll"][0][worst]),
      "interval": [entry["nll"]["lower"][worst], entry["nll"]["upper"][worst]],
    }
    section["methods"][method] = entry
  _gain_ratios(section, results)
  return {"shift_paired": section}


def _gain_ratios(section: dict, results: dict) -> None:
  """Per-input duos' shares of the weighted duo's NLL gains over large+TS (in place)."""
  weighted = section["methods"].get("duo (weighted)")
  if weighted is None:
    return
  test = {name: r["test"]["nll"] for name, r in results.get("methods", {}).items()}
  reference = test.get(REFERENCE)
  helped = [i for i, c in enumerate(section["cells"]) if c in weighted["nll"]["better"]]
  for name, entry in section["methods"].items():
    if not name.startswith("duo (") or name == "duo (weighted)":
      continue
    clean_gain = None
    if reference is not None and name in test and "duo (weighted)" in test:
      gain = reference - test["duo (weighted)"]
      clean_gain = (reference - test[name]) / gain if gain > 0 else None
    kept = [entry["nll"]["diff"][i] / weighted["nll"]["diff"][i] for i in helped]
    entry["clean_gain_kept"] = clean_gain
    entry["shift_gain_kept_min"] = min(kept) if kept else None
    entry["shift_gain_cells"] = len(kept)


def _interval(entry: dict, k: str, i: int, scale: float, digits: int) -> str:
  d, lo, hi = (entry[k][key][i] * scale for key in ("diff", "lower", "upper"))
  mark = " ▲" if lo > 0 else (" ▼" if hi < 0 else "")
  return f"{d:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]{mark}"


def summary_markdown(results: dict) -> list[str]:
  """The section's title, what it shows, and one row per method (the README's part)."""
  section = results.get("shift_paired")
  if not section:
    return []
  methods = section["methods"]
  lines = [
    f"### Under shift: each method − {REFERENCE}, simultaneous {section['level']:.0%} intervals",
    "",
    f"Over all {len(section['cells'])} shifted cells at once (max-|t| bootstrap, "
    f"{section['rounds']} rounds over the images): ▲ worse than {REFERENCE} beyond the "
    "interval, ▼ better. Summary per method: its worst cell by ΔNLL, the cells where it is "
    "worse beyond the interval, and for the per-input duos the share of the weighted duo's "
    "NLL gain they keep (clean test; and the least over the cells where the weighted duo is "
    "better beyond its interval).",
    "",
    "| method | worst cell: ΔNLL [interval] | worse: NLL | worse: AURC | gain kept (clean) | "
    "gain kept (shift, min) |",
    "|---|---|---|---|---|---|",
  ]
  for name, e in methods.items():
    w = e["worst_nll"]
    clean, shift = e.get("clean_gain_kept"), e.get("shift_gain_kept_min")
    shift_text = "–" if shift is None else f"{shift:.0%} of {e['shift_gain_cells']} cells"
    lines.append(
      f"| {name} | {w['cell']}: {w['diff']:+.4f} [{w['interval'][0]:+.4f}, "
      f"{w['interval'][1]:+.4f}] | {len(e['nll']['worse'])} | {len(e['aurc']['worse'])} | "
      f"{'–' if clean is None else f'{clean:.0%}'} | "
      f"{shift_text} |"
    )
  return lines


def markdown(results: dict) -> list[str]:
  """The summary, then every cell's ΔNLL and ΔAURC with their intervals."""
  lines = summary_markdown(results)
  if not lines:
    return []
  section = results["shift_paired"]
  methods = section["methods"]
  for k, title, scale, digits in (("nll", "ΔNLL", 1.0, 4), ("aurc", "ΔAURC‰", 1e3, 2)):
    lines += ["", f"{title} per cell:", "", "| cell | " + " | ".join(methods) + " |"]
    lines.append("|---|" + "---|" * len(methods))
    for i, cell in enumerate(section["cells"]):
      cells = [_interval(e, k, i, scale, digits) for e in methods.values()]
      lines.append(f"| {cell} | " + " | ".join(cells) + " |")
  return lines


def write_plots(results: dict, out_dir: str) -> dict[str, str]:
  """ΔNLL with its simultaneous interval on the weighted duo's ten worst cells, per method."""
  section = results.get("shift_paired")
  if not section or "duo (weighted)" not in section["methods"]:
    return {}
  weighted = section["methods"]["duo (weighted)"]["nll"]["diff"]
  order = np.argsort(weighted)[::-1][:10]
  fig = plots.new_figure(max(6.0, 0.7 * len(order) + 2), 3.6)
  ax = fig.subplots()
  methods = [m for m in section["methods"] if m.startswith("duo (")]
  width = 0.8 / len(methods)
  for j, name in enumerate(methods):
    e = section["methods"][name]["nll"]
    x = np.arange(len(order)) + (j - (len(methods) - 1) / 2) * width
    d = np.asarray(e["diff"])[order]
    err = [d - np.asarray(e["lower"])[order], np.asarray(e["upper"])[order] - d]
    ax.errorbar(x, d, yerr=err, fmt="o", ms=3, capsize=2, label=name)
  ax.axhline(0.0, color="0.5", lw=0.8)
  ax.set_xticks(
    np.arange(len(order)), [section["cells"][i] for i in order], rotation=45, ha="right"
  )
  ax.set_ylabel(f"ΔNLL vs {REFERENCE}")
  ax.set_title("The weighted duo's worst shifted cells")
  ax.legend(frameon=False, fontsize=7)
  return {"shift_worst": plots.save_figure(fig, os.path.join(out_dir, "shift_worst.png"))}
