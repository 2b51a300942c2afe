"""The cascade section of evaluate.py's results: Gatekeeper gates and the duo cascade.

For the untuned sidekick and every Gatekeeper-tuned one (configs/gatekeeper.py):
  * how well its confidence gates a cascade into the large model: small-model
    accuracy and correctness AUROC, deferral performance s_d (1 = ideal gate,
    0 = random) and the overlap s_o of its confidence on right vs wrong
    answers (lower is better);
  * two cascades swept over the deferral ratio r: the Gatekeeper cascade (the
    large model answers the deferred inputs) and the duo cascade (the duo
    w_L·z_L + w_S·z_S answers them, reusing the sidekick's logits), scored
    against expected FLOPs per image (the sidekick always, the large model on
    the deferred fraction);
  * the smallest r at which the duo cascade's AURC reaches the always-on
    duo's, and what that costs.

Temperatures and duo weights are fit on val, the gate used for the summary is
the sidekick with the best s_d on val, and every score is on test.

Runs when `config.cascade` is set and there is a sidekick; `config.gatekeeper`
lists the Gatekeeper fine-tunes. Results key: "cascade".
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from duojax import cascade
from duojax.config_lib import split_list
from duojax.core import duo, metrics, temperature
from duojax.errors import ConfigError
from duojax.eval import member_specs, plots
from duojax.eval.bank import LogitsBank
from duojax.eval.inputs import TEST, EvalInputs
from duojax.eval.members import WORKDIR, Member
from duojax.eval.methods import FIT_SPLIT
from duojax.eval.render import fmt

TABLE_RATIOS = (0.1, 0.2, 0.3, 0.5)
SWEEP_RATIOS = tuple(np.round(np.linspace(0.0, 1.0, 51), 4))
SCORES = ("acc", "nll", "auroc", "aurc", "sac98")


MEMBER_KEYS = {"gatekeeper": (WORKDIR,)}


def defaults() -> dict:
  # Cascades (needs a sidekick): the untuned sidekick and the Gatekeeper
  # fine-tunes in `gatekeeper` (workdirs) as gates into the large model and the duo.
  return {"cascade": False, "gatekeeper": ""}


def validate(config) -> None:
  if split_list(config.gatekeeper) and not config.sidekick:
    raise ConfigError(
      "config.gatekeeper: Gatekeeper sidekicks are compared with the untuned "
      "config.sidekick, which is empty"
    )


def enabled(config) -> bool:
  return bool(config.cascade and config.sidekick)


def members(config, specs: dict, mesh) -> list[Member]:
  del config
  return gatekeeper_members(specs["gatekeeper"], mesh)


def gatekeeper_members(specs, mesh) -> list[Member]:
  """Gatekeeper-tuned sidekicks, named by their alpha ("gatekeeper α=0.3")."""
  loaded = []
  for spec in specs:
    member = member_specs.load("gatekeeper", spec, mesh=mesh)
    train_config = member.meta["config"]
    if train_config["loss"] != "gatekeeper":
      raise ConfigError(
        f"config.gatekeeper: {spec.text!r} was trained with "
        f"loss={train_config['loss']!r}, not 'gatekeeper'"
      )
    name = f"gatekeeper α={float(train_config['gatekeeper_alpha']):g}"
    taken = {m.name for m in loaded}
    name = name if name not in taken else f"{name} #{len(loaded) + 1}"
    loaded.append(dataclasses.replace(member, name=name))
  return loaded


def build(inputs: EvalInputs, results: dict) -> dict:
  del results
  return {
    "cascade": build_cascade(
      inputs.bank,
      large=inputs.large,
      sidekicks=(inputs.sidekick, *inputs.added["cascade"]),
      member_flops=inputs.member_flops,
      solver=inputs.config.solver,
    )
  }


def build_cascade(
  bank: LogitsBank, *, large: str, sidekicks, member_flops: dict, solver: str = "jaxopt"
) -> dict:
  """The cascade results (JSON-able; curves for the plots under "_curves")."""
  y_val, y_test = bank.labels[FIT_SPLIT], bank.labels[TEST]

  def fit(members):
    return np.asarray(temperature.fit_temperatures(list(members), y_val, solver=solver))

  large_val, large_test = bank.member(FIT_SPLIT, large), bank.member(TEST, large)
  large_ts = large_test * fit([large_val])[0]
  flops_large = member_flops[large]
  out = {
    "large": _scores(large_ts, y_test, flops_large, flops_large),
    "deferral": {},
    "by_sidekick": {},
    "_curves": {"deferral": {}, "sweeps": {}},
  }
  for name in sidekicks:
    small_val, small_test = bank.member(FIT_SPLIT, name), bank.member(TEST, name)
    report = cascade.deferral_report(small_test, large_test, y_test)
    val_report = cascade.deferral_report(small_val, large_val, y_val)
    out["deferral"][name] = {
      **{k: report[k] for k in ("acc_small", "acc_large", "auroc_small", "s_d", "s_o")},
      "val_s_d": val_report["s_d"],
    }
    out["_curves"]["deferral"][name] = report["curve"]

    weights = fit([large_val, small_val])
    duo_logits = np.asarray(duo.combine(np.stack([large_test, small_test]), weights))
    small_ts = small_test * fit([small_val])[0]
    flops_small = member_flops[name]
    sweep = {
      kind: cascade.cascade_sweep(
        small_ts,
        answer,
        y_test,
        ratios=SWEEP_RATIOS,
        flops_small=flops_small,
        flops_answer_extra=flops_large,
      )
      for kind, answer in (("duo_cascade", duo_logits), ("gatekeeper_cascade", large_ts))
    }
    always_on = _scores(duo_logits, y_test, flops_small + flops_large, flops_large)
    matched = [row for row in sweep["duo_cascade"] if row["aurc"] <= always_on["aurc"]]
    first = min(matched, key=lambda row: row["ratio"])  # r = 1 is the duo itself
    out["by_sidekick"][name] = {
      "duo_weights": weights.round(6).tolist(),
      "duo": always_on,
      "ratio_at_duo_aurc": float(first["ratio"]),
      "relative_flops_at_duo_aurc": float(first["flops"] / flops_large),
      **{
        kind: [_row(r, flops_large) for r in rows if _near(r["target_ratio"], TABLE_RATIOS)]
        for kind, rows in sweep.items()
      },
    }
    out["_curves"]["sweeps"][name] = {
      kind: {
        "relative_flops": [r["flops"] / flops_large for r in rows],
        "aurc": [r["aurc"] for r in rows],
        "acc": [r["acc"] for r in rows],
      }
      for kind, rows in sweep.items()
    }

  gate = max(sidekicks, key=lambda n: _finite_or(out["deferral"][n]["val_s_d"], -np.inf))
  chosen = out["by_sidekick"][gate]
  out["duo_cascade"] = {
    "sidekick": gate,
    "ratio_at_duo_aurc": chosen["ratio_at_duo_aurc"],
    "relative_flops_at_duo_aurc": chosen["relative_flops_at_duo_aurc"],
    "duo_relative_flops": chosen["duo"]["relative_flops"],
    "duo_aurc": chosen["duo"]["aurc"],
  }
  return out


def _scores(logits, labels, flops, flops_large) -> dict:
  scores = metrics.evaluate(logits, labels, duo.msp_confidence(logits))
  return {
    **{k: float(scores[k]) for k in SCORES},
    "flops": float(flops),
    "relative_flops": float(flops / flops_large),
  }


def _row(row: dict, flops_large: float) -> dict:
  return {
    "ratio": float(row["ratio"]),
    "relative_flops": float(row["flops"] / flops_large),
    **{k: float(row[k]) for k in SCORES},
  }


def _near(value, targets) -> bool:
  return any(abs(float(value) - t) < 1e-6 for t in targets)


def _finite_or(x, default):
  return x if x is not None and np.isfinite(x) else default


def markdown(results: dict) -> list[str]:
  """The cascade tables as Markdown lines."""
  if "cascade" not in results:
    return []
  section = results["cascade"]
  gate = section["duo_cascade"]["sidekick"]
  lines = [
    "### Cascades (test split)",
    "",
    "Gate quality of each sidekick (deferral into the large model): s_d = 1 for an "
    "ideal gate, 0 for a random one; s_o = overlap of the confidence densities of its "
    "right and wrong answers (lower is better). The last two columns: the smallest "
    "deferral ratio at which the duo cascade reaches the always-on duo's AURC, and "
    "its FLOPs per image relative to the large model.",
    "",
    "| sidekick | acc | AUROC | s_d | s_o | s_d (val) | duo cascade r at duo AURC | FLOPs ×large |",
    "|---|---|---|---|---|---|---|---|",
  ]
  for name, d in section["deferral"].items():
    b = section["by_sidekick"][name]
    lines.append(
      f"| {name} | {fmt(d['acc_small'])} | {fmt(d['auroc_small'])} | "
      f"{fmt(d['s_d'], digits=3)} | {fmt(d['s_o'], digits=3)} | "
      f"{fmt(d['val_s_d'], digits=3)} | {b['ratio_at_duo_aurc']:.2f} | "
      f"{b['relative_flops_at_duo_aurc']:.3f} |"
    )
  chosen = section["by_sidekick"][gate]
  large, always_on = section["large"], chosen["duo"]
  lines += [
    "",
    f"Cascades gated by {gate} (best s_d on val), against the large model alone "
    "(temperature-scaled) and the always-on duo:",
    "",
    "| answer on deferred inputs | r | FLOPs ×large | acc | NLL | AUROC | AURC‰ | SAC@98 |",
    "|---|---|---|---|---|---|---|---|",
  ]

  def row(label, r, s):
    return (
      f"| {label} | {r} | {s['relative_flops']:.3f} | {fmt(s['acc'])} | "
      f"{fmt(s['nll'])} | {fmt(s['auroc'])} | {fmt(s['aurc'], 1e3, 2)} | "
      f"{fmt(s['sac98'])} |"
    )

  lines.append(row("large model alone", "–", large))
  lines.append(row("always-on duo", "–", always_on))
  for kind, label in (
    ("gatekeeper_cascade", "large model (Gatekeeper cascade)"),
    ("duo_cascade", "duo (duo cascade)"),
  ):
    lines += [row(label, f"{s['ratio']:.2f}", s) for s in chosen[kind]]
  summary = section["duo_cascade"]
  lines += [
    "",
    f"The duo cascade reaches the always-on duo's AURC at deferral ratio "
    f"{summary['ratio_at_duo_aurc']:.2f}, for "
    f"{summary['relative_flops_at_duo_aurc']:.3f}× the large model's FLOPs per image "
    f"(the always-on duo: {summary['duo_relative_flops']:.3f}×).",
  ]
  return lines


def write_plots(results: dict, out_dir: str) -> dict[str, str]:
  """Deferral curves of every gate and both cascades' cost curves; returns their paths."""
  section = results.get("cascade")
  if not section or "_curves" not in section:
    return {}
  curves, paths = section["_curves"], {}
  paths["deferral"] = plots.deferral_curves(
    curves["deferral"], os.path.join(out_dir, "deferral_curves.png")
  )
  gate = section["duo_cascade"]["sidekick"]
  sweeps, chosen = curves["sweeps"][gate], section["by_sidekick"][gate]
  for key, label in (("aurc", "AURC (test)"), ("acc", "accuracy (test)")):
    paths[f"cascade_{key}"] = plots.cost_curves(
      {
        "duo cascade": (sweeps["duo_cascade"]["relative_flops"], sweeps["duo_cascade"][key]),
        "Gatekeeper cascade": (
          sweeps["gatekeeper_cascade"]["relative_flops"],
          sweeps["gatekeeper_cascade"][key],
        ),
      },
      {
        "large model (TS)": (1.0, section["large"][key]),
        "always-on duo": (chosen["duo"]["relative_flops"], chosen["duo"][key]),
      },
      os.path.join(out_dir, f"cascade_{key}.png"),
      x_label="expected FLOPs per image (× large model)",
      y_label=label,
      title=f"Cascades gated by {gate}: {label} vs cost",
    )
  return paths
