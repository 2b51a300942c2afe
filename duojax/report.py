"""Results of every method: metrics, OOD, shifts, paired bootstrap, tables, plots.

`build_results` turns a `LogitsBank` and a list of methods into one JSON-able
dict; `markdown` renders its tables; `write` puts results.json, results.md and
the PNG plots in an output directory, each file written whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from duojax import cascade_report, files, hydra_report, metrics, methods as methods_lib, plots
from duojax.evaluation import LogitsBank

TEST, OOD = "test", "ood"
REFERENCE = "large+TS"
PAIRED_METRICS = ("acc", "nll", "ece", "auroc", "aurc", "sac98")
SHIFT_METRICS = ("acc", "auroc", "aurc")


def _floats(d: dict) -> dict:
  return {k: float(v) for k, v in d.items()}


def _shift_splits(bank: LogitsBank) -> list[str]:
  return [s for s in bank.logits if "/" in s]


def build_results(bank: LogitsBank, method_list, member_flops: dict[str, float], *,
                  large: str, solver: str = "jaxopt", bootstrap: int = 200,
                  seed: int = 0, mesh=None) -> dict:
  """Fits every method on val and scores it on test, OOD and shifted test sets.

  `mesh`: fit the temperatures on validation logits split over its devices.
  """
  results = {"methods": {}, "reference": REFERENCE, "large_flops": member_flops[large]}
  outputs = {}
  for method in tqdm.tqdm(method_list, desc="methods", leave=False, mininterval=2.0,
                          disable=jax.process_index() != 0):
    fitted = methods_lib.fit(method, bank, solver=solver, mesh=mesh)
    logits, confidence = methods_lib.apply(method, fitted, bank, TEST)
    outputs[method.name] = (logits, confidence)
    flops = methods_lib.method_flops(method, member_flops)
    entry = {"label": method.label, "kind": method.kind, "members": list(method.members),
             "flops": flops, "relative_flops": flops / member_flops[large],
             "fitted": {k: np.asarray(v).round(6).tolist() for k, v in fitted.items()},
             "test": _floats(metrics.evaluate(logits, bank.labels[TEST], confidence))}
    if OOD in bank.logits:
      ood_logits, ood_confidence = methods_lib.apply(method, fitted, bank, OOD)
      entry["ood"] = _ood_scores(logits, confidence, ood_logits, ood_confidence)
    shifted = {}
    for split in _shift_splits(bank):
      shift_logits, shift_confidence = methods_lib.apply(method, fitted, bank, split)
      scores = metrics.evaluate(shift_logits, bank.labels[split], shift_confidence)
      shifted[split] = {k: float(scores[k]) for k in SHIFT_METRICS}
    if shifted:
      entry["shifts"] = shifted
      entry["shift_mean"] = {k: float(np.mean([v[k] for v in shifted.values()]))
                             for k in SHIFT_METRICS}
    results["methods"][method.name] = entry
  if REFERENCE in outputs and bootstrap > 0:
    results["paired_vs_reference"] = {
        name: _paired_bootstrap(outputs[name], outputs[REFERENCE], bank.labels[TEST],
                                bootstrap, seed)
        for name in outputs if name != REFERENCE and _is_headline(name)}
  results["_curves"] = {name: _curves(out, bank.labels[TEST]) for name, out in outputs.items()
                        if _is_headline(name) or name == REFERENCE}
  return results


def _is_headline(name: str) -> bool:
  """Methods compared against the reference with confidence intervals."""
  lowered = name.lower()
  return lowered.startswith(("duo", "ensemble m=2", "sidekick")) or "soup" in lowered or \
      "dropout" in lowered


def _ood_scores(logits, confidence, ood_logits, ood_confidence) -> dict:
  """OOD detection (in-distribution positive) by the method's MSP, −entropy, energy."""
  scores = {"msp": _floats(metrics.ood(confidence, ood_confidence))}
  inside, outside = metrics.confidence_scores(logits), metrics.confidence_scores(ood_logits)
  for name in ("neg_entropy", "energy"):
    scores[name] = _floats(metrics.ood(inside[name], outside[name]))
  return scores


def _paired_bootstrap(output, reference, labels, rounds: int, seed: int) -> dict:
  """Method − reference on the same resamples of the test set: mean and 95% interval."""
  rng = np.random.default_rng(seed)
  n = len(labels)
  labels = jnp.asarray(labels)
  diffs = {k: [] for k in PAIRED_METRICS}
  for _ in range(rounds):
    idx = jnp.asarray(rng.integers(0, n, n))
    ours = metrics.evaluate(output[0][idx], labels[idx], output[1][idx])
    theirs = metrics.evaluate(reference[0][idx], labels[idx], reference[1][idx])
    for k in PAIRED_METRICS:
      diffs[k].append(float(ours[k]) - float(theirs[k]))
  full_ours = metrics.evaluate(output[0], labels, output[1])
  full_theirs = metrics.evaluate(reference[0], labels, reference[1])
  return {k: {"diff": float(full_ours[k]) - float(full_theirs[k]),
              "ci95": [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]}
          for k, v in diffs.items()}


def _curves(output, labels) -> dict:
  logits, confidence = output
  correct = np.asarray(jnp.argmax(logits, -1)) == np.asarray(labels)
  coverage, risk = metrics.risk_coverage_curve(correct, confidence)
  diagram = metrics.reliability_diagram(confidence, correct)
  return {"coverage": np.asarray(coverage), "risk": np.asarray(risk),
          "reliability": {k: np.asarray(v) for k, v in diagram.items()}}


# ----------------------------------------------------------------------------
# Rendering.


def _fmt(x, scale=1.0, digits=4):
  return "–" if x is None or not np.isfinite(x) else f"{x * scale:.{digits}f}"


def markdown(results: dict) -> str:
  """The results tables as GitHub Markdown."""
  rows = results["methods"]
  lines = ["| method | FLOPs ×large | acc | NLL | Brier | ECE | AUROC | AURC‰ | E-AURC‰ | "
           "AUGRC‰ | SAC@95 | SAC@98 | OOD AUROC | OOD FPR95 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    t, o = r["test"], r.get("ood", {}).get("msp", {})
    lines.append(
        f"| {name} | {r['relative_flops']:.3f} | {_fmt(t['acc'])} | {_fmt(t['nll'])} | "
        f"{_fmt(t['brier'])} | {_fmt(t['ece'])} | {_fmt(t['auroc'])} | "
        f"{_fmt(t['aurc'], 1e3, 2)} | {_fmt(t['eaurc'], 1e3, 2)} | {_fmt(t['augrc'], 1e3, 2)} | "
        f"{_fmt(t['sac95'])} | {_fmt(t['sac98'])} | {_fmt(o.get('auroc'))} | "
        f"{_fmt(o.get('fpr95'))} |")
  out = ["### Test split (clean)", "",
         f"Large model: {results['large_flops'] / 1e6:.1f} MFLOPs/image (XLA cost analysis). "
         "AURC, E-AURC, AUGRC in thousandths; OOD = MNIST test vs the test split, by MSP.",
         "", *lines]
  if any("shift_mean" in r for r in rows.values()):
    out += ["", "### Shifted test sets (mean over 4 corruptions × 5 severities)", "",
            "| method | acc | AUROC | AURC‰ |", "|---|---|---|---|"]
    for name, r in rows.items():
      s = r.get("shift_mean")
      if s:
        out.append(f"| {name} | {_fmt(s['acc'])} | {_fmt(s['auroc'])} | "
                   f"{_fmt(s['aurc'], 1e3, 2)} |")
  paired = results.get("paired_vs_reference")
  if paired:
    out += ["", f"### Paired differences vs {results['reference']} on the test split "
            "(bootstrap 95% interval)", "",
            "| method | Δacc | ΔNLL | ΔECE | ΔAUROC | ΔAURC‰ | ΔSAC@98 |",
            "|---|---|---|---|---|---|---|"]
    for name, d in paired.items():
      cells = []
      for k in PAIRED_METRICS:
        scale, digits = (1e3, 2) if k == "aurc" else (1.0, 4)
        lo, hi = d[k]["ci95"]
        cells.append(f"{d[k]['diff'] * scale:+.{digits}f} "
                     f"[{lo * scale:+.{digits}f}, {hi * scale:+.{digits}f}]")
      out.append(f"| {name} | " + " | ".join(cells) + " |")
  fitted = {n: r["fitted"]["weights"] for n, r in rows.items()
            if r["kind"] == "duo" and "weights" in r["fitted"]}
  if fitted:
    name, w = next(iter(fitted.items()))
    out += ["", f"Duo weights fit on val: w_L = {w[0]:.4f}, w_S = {w[1]:.4f}."]
  if "cascade" in results:
    out += ["", *cascade_report.markdown(results["cascade"])]
  if "hydra" in results:
    out += ["", *hydra_report.markdown(results["hydra"])]
  return "\n".join(out) + "\n"


def write(results: dict, out_dir: str) -> dict[str, str]:
  """results.json, results.md and the plots in `out_dir`; returns their paths.

  Each file is written whole or not at all. If writing fails (a full disk)
  and `out_dir` did not exist before, the folders made for it are removed
  again, so a failed run leaves no partial result set behind.
  """
  new_top = None  # the outermost folder this call creates, if any
  folder = os.path.abspath(out_dir)
  while not os.path.exists(folder):
    new_top, folder = folder, os.path.dirname(folder)
  try:
    return _write_files(results, out_dir)
  except BaseException:
    if new_top is not None:
      shutil.rmtree(new_top, ignore_errors=True)
    raise


def _write_files(results: dict, out_dir: str) -> dict[str, str]:
  os.makedirs(out_dir, exist_ok=True)
  curves = results.pop("_curves", {})
  cascade_curves = results.get("cascade", {}).pop("_curves", None)
  paths = {"json": os.path.join(out_dir, "results.json"),
           "markdown": os.path.join(out_dir, "results.md")}
  files.write_atomically(paths["json"], json.dumps(results, indent=2))
  files.write_atomically(paths["markdown"], markdown(results))
  if curves:
    paths["risk_coverage"] = plots.risk_coverage(
        {n: (c["coverage"], c["risk"]) for n, c in curves.items()},
        os.path.join(out_dir, "risk_coverage.png"), title="Risk–coverage (test)")
    paths["reliability"] = plots.reliability(
        {n: {**c["reliability"], "ece": results["methods"][n]["test"]["ece"]}
         for n, c in curves.items()}, os.path.join(out_dir, "reliability.png"))
  rows = results["methods"]
  gflops = {n: r["flops"] / 1e9 for n, r in rows.items()}
  for key, label, lower in (("aurc", "AURC (test)", True), ("sac98", "SAC@98 (test)", False)):
    paths[f"pareto_{key}"] = plots.pareto(
        {n: (gflops[n], r["test"][key]) for n, r in rows.items()},
        os.path.join(out_dir, f"pareto_{key}.png"), y_label=label, lower_is_better=lower,
        title=f"Cost vs {label}")
  shifted = [n for n, r in rows.items() if "shifts" in r]
  if shifted:
    kinds = sorted({s.split("/")[0] for s in rows[shifted[0]]["shifts"]})
    for key, label in (("acc", "accuracy"), ("aurc", "AURC")):
      series = {kind: {n: [rows[n]["test"][key]] + [
          rows[n]["shifts"][f"{kind}/{sev}"][key] for sev in range(1, 6)
          if f"{kind}/{sev}" in rows[n]["shifts"]] for n in shifted if _is_headline(n)
          or n == REFERENCE} for kind in kinds}
      paths[f"shift_{key}"] = plots.shift_curves(
          series, os.path.join(out_dir, f"shift_{key}.png"), metric_label=label,
          title=f"{label} under distribution shift")
  if cascade_curves:
    paths["deferral"] = plots.deferral_curves(cascade_curves["deferral"],
                                              os.path.join(out_dir, "deferral_curves.png"))
    gate = results["cascade"]["duo_cascade"]["sidekick"]
    sweeps, cascade = cascade_curves["sweeps"][gate], results["cascade"]
    for key, label in (("aurc", "AURC (test)"), ("acc", "accuracy (test)")):
      paths[f"cascade_{key}"] = plots.cost_curves(
          {"duo cascade": (sweeps["duo_cascade"]["relative_flops"], sweeps["duo_cascade"][key]),
           "Gatekeeper cascade": (sweeps["gatekeeper_cascade"]["relative_flops"],
                                  sweeps["gatekeeper_cascade"][key])},
          {"large model (TS)": (1.0, cascade["large"][key]),
           "always-on duo": (cascade["by_sidekick"][gate]["duo"]["relative_flops"],
                             cascade["by_sidekick"][gate]["duo"][key])},
          os.path.join(out_dir, f"cascade_{key}.png"),
          x_label="expected FLOPs per image (× large model)", y_label=label,
          title=f"Cascades gated by {gate}: {label} vs cost")
  return paths


README_START = "<!-- results:start (written by `make demo`; do not edit by hand) -->"
README_END = "<!-- results:end -->"


def embed_in_readme(results_md: str, readme: str, *, header: str = "") -> None:
  """Replaces the README's text between the results markers with `results_md`."""
  with open(readme) as f:
    text = f.read()
  if README_START not in text or README_END not in text:
    raise ValueError(f"{readme} has no results markers ({README_START!r} ... {README_END!r})")
  with open(results_md) as f:
    table = f.read()
  before, rest = text.split(README_START, 1)
  _, after = rest.split(README_END, 1)
  files.write_atomically(readme, f"{before}{README_START}\n{header}{table}{README_END}{after}")


if __name__ == "__main__":
  import sys
  if len(sys.argv) != 4 or sys.argv[1] != "--embed":
    sys.exit("usage: python -m duojax.report --embed RESULTS_MD README_MD")
  embed_in_readme(sys.argv[2], sys.argv[3])
