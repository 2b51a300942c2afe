"""The methods section: every method scored on test, the OOD set and the shifts.

For each method (fitted on val by `EvalInputs.fitted`): the metrics suite on
the clean test split, OOD detection against the OOD split by the method's
own confidence, −entropy, energy and max logit, and accuracy/AUROC/AURC on
every corrupted copy of the test split with their mean. Headline methods and
the reference (large+TS) also get their risk–coverage and reliability curves
(kept in memory for the plots, never in results.json). OOD scores of the
large model's features (Mahalanobis: `duojax.eval.feature_ood`) depend on no
method's logits: they are scored once, beside the large model's own scores.

Results keys: "methods", "reference", "large_flops", and with an OOD set and
feature scores "feature_ood".
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np
import tqdm

from duojax.core import metrics
from duojax.eval import methods as methods_lib
from duojax.eval import plots
from duojax.eval.inputs import LARGE, OOD, TEST, EvalInputs
from duojax.eval.render import fmt

REFERENCE = "large+TS"
# How the OOD table names the scores of `_ood_scores` and of `feature_ood`.
OOD_SCORE_NAMES = {
  "msp": "max softmax",
  "neg_entropy": "−entropy",
  "energy": "energy",
  "max_logit": "max logit",
  "mahalanobis": "Mahalanobis (pre-logit features)",
}
SHIFT_METRICS = ("acc", "auroc", "aurc")


def _floats(d: dict) -> dict:
  return {k: float(v) for k, v in d.items()}


def build(inputs: EvalInputs, results: dict) -> dict:
  """Scores of every method on every split, and the curves for the plots."""
  del results
  bank, large = inputs.bank, inputs.large
  labels = bank.labels[TEST]
  shift_splits = [s for s in bank.logits if "/" in s]
  rows, curves = {}, {}
  for method in tqdm.tqdm(
    inputs.methods, desc="methods", leave=False, mininterval=2.0, disable=jax.process_index() != 0
  ):
    fitted = inputs.fitted(method)
    logits, confidence = inputs.outputs(method, TEST)
    flops = methods_lib.method_flops(method, inputs.member_flops)
    entry = {
      "label": method.label,
      "kind": method.kind,
      "members": list(method.members),
      "flops": flops,
      "relative_flops": flops / inputs.member_flops[large],
      # A per-input duo's object stays in memory; its summary arrays go in the file.
      "fitted": {k: np.asarray(v).round(6).tolist() for k, v in fitted.items() if k != "duo"},
      "test": _floats(metrics.evaluate(logits, labels, confidence)),
    }
    if OOD in bank.logits:
      entry["ood"] = _ood_scores(logits, confidence, *inputs.outputs(method, OOD))
    shifted = {}
    for split in shift_splits:
      shift_logits, shift_confidence = inputs.outputs(method, split)
      scores = metrics.evaluate(shift_logits, bank.labels[split], shift_confidence)
      shifted[split] = {k: float(scores[k]) for k in SHIFT_METRICS}
    if shifted:
      entry["shifts"] = shifted
      entry["shift_mean"] = {
        k: float(np.mean([v[k] for v in shifted.values()])) for k in SHIFT_METRICS
      }
    rows[method.name] = entry
    if method.headline or method.name == REFERENCE:
      curves[method.name] = _curves(logits, confidence, labels)
  out = {
    "methods": rows,
    "reference": REFERENCE,
    "large_flops": inputs.member_flops[large],
    "_curves": curves,
  }
  if OOD in bank.logits and inputs.feature_scores:
    out["feature_ood"] = {
      name: {
        "member": large,
        **feature["fit"],
        **_floats(metrics.ood(feature["scores"][TEST], feature["scores"][OOD])),
      }
      for name, feature in inputs.feature_scores.items()
    }
  return out


def _ood_scores(logits, confidence, ood_logits, ood_confidence) -> dict:
  """OOD detection (in-distribution positive) by the method's MSP, −entropy, energy, max logit."""
  scores = {"msp": _floats(metrics.ood(confidence, ood_confidence))}
  inside, outside = metrics.confidence_scores(logits), metrics.confidence_scores(ood_logits)
  for name in ("neg_entropy", "energy", "max_logit"):
    scores[name] = _floats(metrics.ood(inside[name], outside[name]))
  return scores


def _curves(logits, confidence, labels) -> dict:
  correct = np.asarray(np.argmax(np.asarray(logits), -1)) == np.asarray(labels)
  coverage, risk = metrics.risk_coverage_curve(correct, confidence)
  diagram = metrics.reliability_diagram(confidence, correct)
  return {
    "coverage": np.asarray(coverage),
    "risk": np.asarray(risk),
    "reliability": {k: np.asarray(v) for k, v in diagram.items()},
  }


def markdown(results: dict) -> list[str]:
  """The clean test table, the duo's fitted weights and the shifted-test table."""
  rows = results["methods"]
  ood = results.get("ood_set")
  cost = (
    f"Large model: {results['large_flops'] / 1e6:.1f} MFLOPs/image (2 × multiply-adds). "
    if math.isfinite(results["large_flops"])
    else "Large model: FLOPs unknown (a logits file without flops_per_image). "
  )
  lines = [
    "### Test split (clean)",
    "",
    cost
    + "AURC, E-AURC, AUGRC in thousandths; "
    + (f"OOD = {ood} vs the test split, by MSP." if ood else "no OOD set."),
    "",
    "| method | FLOPs ×large | acc | NLL | Brier | ECE | AUROC | AURC‰ | E-AURC‰ | "
    "AUGRC‰ | SAC@95 | SAC@98 | OOD AUROC | OOD FPR95 |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in rows.items():
    t, o = r["test"], r.get("ood", {}).get("msp", {})
    lines.append(
      f"| {name} | {fmt(r['relative_flops'], digits=3)} | {fmt(t['acc'])} | {fmt(t['nll'])} | "
      f"{fmt(t['brier'])} | {fmt(t['ece'])} | {fmt(t['auroc'])} | "
      f"{fmt(t['aurc'], 1e3, 2)} | {fmt(t['eaurc'], 1e3, 2)} | {fmt(t['augrc'], 1e3, 2)} | "
      f"{fmt(t['sac95'])} | {fmt(t['sac98'])} | {fmt(o.get('auroc'))} | "
      f"{fmt(o.get('fpr95'))} |"
    )
  duo_weights = [
    r["fitted"]["weights"] for r in rows.values() if r["kind"] == "duo" and "weights" in r["fitted"]
  ]
  if duo_weights:
    w = duo_weights[0]
    lines += ["", f"Duo weights fit on val: w_L = {w[0]:.4f}, w_S = {w[1]:.4f}."]
  if results.get("feature_ood"):
    lines += [""] + _ood_table(results)
  if any("shift_mean" in r for r in rows.values()):
    kinds = {s.split("/")[0] for r in rows.values() for s in r.get("shifts", {})}
    severities = {s.split("/")[1] for r in rows.values() for s in r.get("shifts", {})}
    lines += [
      "",
      f"### Shifted test sets (mean over {len(kinds)} corruptions × {len(severities)} severities)",
      "",
      "| method | acc | AUROC | AURC‰ |",
      "|---|---|---|---|",
    ]
    for name, r in rows.items():
      s = r.get("shift_mean")
      if s:
        lines.append(f"| {name} | {fmt(s['acc'])} | {fmt(s['auroc'])} | {fmt(s['aurc'], 1e3, 2)} |")
  return lines


def _ood_table(results: dict) -> list[str]:
  """The large model's OOD scores by its logits and by its features, one row each."""
  own = results["methods"].get(LARGE, {}).get("ood", {})
  features = results["feature_ood"]
  fits = " ".join(
    f"{OOD_SCORE_NAMES.get(name, name)}: class means and shared covariance (rank "
    f"{f['rank']} of {f['dim']}) of its features on {f['train_rows']} training rows."
    for name, f in features.items()
  )
  lines = [
    "### OOD detection by the large model's scores",
    "",
    f"OOD = {results.get('ood_set')} vs the test split; the large model alone. {fits} "
    "Feature scores read no logits: they are large+TS's too.",
    "",
    "| score | AUROC | AUPR | FPR95 |",
    "|---|---|---|---|",
  ]
  for name, r in {**own, **features}.items():
    lines.append(
      f"| {OOD_SCORE_NAMES.get(name, name)} | {fmt(r['auroc'])} | {fmt(r['aupr'])} | "
      f"{fmt(r['fpr95'])} |"
    )
  return lines


def write_plots(results: dict, out_dir: str) -> dict[str, str]:
  """Risk–coverage, reliability, cost-vs-quality and shift plots; returns their paths."""
  rows, curves = results["methods"], results.get("_curves", {})
  paths = {}
  if curves:
    paths["risk_coverage"] = plots.risk_coverage(
      {n: (c["coverage"], c["risk"]) for n, c in curves.items()},
      os.path.join(out_dir, "risk_coverage.png"),
      title="Risk–coverage (test)",
      reference=results["reference"] if results.get("reference") in curves else None,
    )
    paths["reliability"] = plots.reliability(
      {n: {**c["reliability"], "ece": rows[n]["test"]["ece"]} for n, c in curves.items()},
      os.path.join(out_dir, "reliability.png"),
    )
  gflops = {n: r["flops"] / 1e9 for n, r in rows.items()}
  for key, label, lower in (("aurc", "AURC (test)", True), ("sac98", "SAC@98 (test)", False)):
    paths[f"pareto_{key}"] = plots.pareto(
      {n: (gflops[n], r["test"][key]) for n, r in rows.items()},
      os.path.join(out_dir, f"pareto_{key}.png"),
      y_label=label,
      lower_is_better=lower,
      title=f"Cost vs {label}",
    )
  shifted = [n for n, r in rows.items() if "shifts" in r and n in curves]
  if shifted:
    kinds = sorted({s.split("/")[0] for s in rows[shifted[0]]["shifts"]})
    for key, label in (("acc", "accuracy"), ("aurc", "AURC")):
      series = {
        kind: {
          n: [rows[n]["test"][key]]
          + [
            value[key]
            for split, value in sorted(
              rows[n]["shifts"].items(), key=lambda kv: int(kv[0].split("/")[1])
            )
            if split.split("/")[0] == kind
          ]
          for n in shifted
        }
        for kind in kinds
      }
      paths[f"shift_{key}"] = plots.shift_curves(
        series,
        os.path.join(out_dir, f"shift_{key}.png"),
        metric_label=label,
        title=f"{label} under distribution shift",
        severities=sorted({int(s.split("/")[1]) for s in rows[shifted[0]]["shifts"]}),
      )
  return paths
