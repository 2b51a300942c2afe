"""The Hydra section of `evaluate.py`: pruned-head ensembles against their peers.

A Hydra ensemble (`duojax.hydra`) is compared on the same splits with
  * the ViT it was pruned from, alone and temperature-scaled;
  * a deep ensemble of M independently trained full ViTs (what Hydra
    imitates at about the cost of one network);
  * the ViT paired with the sidekick as a weighted duo (the other cheap route
    to uncertainty);
and each of these rows carries its cost: parameters, forward FLOPs per
image and the measured wall time of its jitted forward on one batch.

Runs when `config.hydra` lists member workdirs (configs/hydra_member.py);
`config.hydra_vit` names the ViT they were pruned from ("" = their
prune_from), `config.hydra_ensemble` extra full ViTs, `config.hydra_mlp` the
merge modes. Its rows are scored by the methods section, which must come
first in `config.sections`. Results key: "hydra".
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from duojax import hydra
from duojax.config_lib import split_list
from duojax.core import duo
from duojax.errors import ConfigError
from duojax.eval import member_specs
from duojax.eval.inputs import SIDEKICK, EvalInputs
from duojax.eval.members import (
  DERIVED,
  WORKDIR,
  Member,
  check_members_agree,
  load_workdir_member,
  model_flops,
)
from duojax.eval.methods import Method
from duojax.eval.render import fmt
from duojax.models import functional
from duojax.parallel import sharding
from duojax.train.loop import HYDRA_HEADS_FILE

VIT = "ViT"


def hydra_name(num_members: int, mlp: str) -> str:
  return f"Hydra M={num_members}" + ("" if mlp == "grouped" else " (avg MLP)")


def _vit_names(config) -> tuple[str, ...]:
  extra = split_list(config.hydra_ensemble)
  return (VIT, *(f"{VIT}#{i}" for i in range(2, len(extra) + 2)))


def _merged_names(config) -> list[str]:
  count = len(split_list(config.hydra))
  return [hydra_name(count, mlp) for mlp in split_list(config.hydra_mlp)]


READS = ("methods",)
MEMBER_KEYS = {"hydra": (WORKDIR,), "hydra_vit": (WORKDIR,), "hydra_ensemble": (WORKDIR,)}


def defaults() -> dict:
  # Hydra ensembles: member workdirs (configs/hydra_member.py), the ViT they
  # were pruned from ("" = their prune_from), extra full ViTs for the deep
  # ensemble they are compared with, and the merge modes ("grouped": exact;
  # "average": one shared MLP per layer, cheaper).
  return {"hydra": "", "hydra_vit": "", "hydra_ensemble": "", "hydra_mlp": "grouped"}


def validate(config) -> None:
  modes = split_list(config.hydra_mlp)
  if not modes or set(modes) - set(hydra.MLP_MODES):
    raise ConfigError(
      f"config.hydra_mlp={config.hydra_mlp!r}; valid: a comma list of {', '.join(hydra.MLP_MODES)}"
    )


def enabled(config) -> bool:
  return bool(split_list(config.hydra))


def members(config, specs: dict, mesh) -> list[Member]:
  """The source ViT, the extra full ViTs and one merged model per MLP mode."""
  workdirs = [spec.path for spec in specs["hydra"]]
  parts = [
    member_specs.load(f"Hydra member {j}", s, mesh=mesh) for j, s in enumerate(specs["hydra"])
  ]
  for workdir, part in zip(workdirs, parts):
    if not part.meta["config"]["prune_from"]:
      raise ConfigError(
        f"config.hydra: {workdir!r} is not a pruned Hydra member (train it "
        "with configs/hydra_member.py)"
      )
  sources = {_pruned_from(w, p.meta) for w, p in zip(workdirs, parts)}
  given = specs["hydra_vit"]
  source = given[0].path if given else _pruned_from(workdirs[0], parts[0].meta)
  if not os.path.isdir(source):
    raise ConfigError(f"config.hydra_vit: workdir {source!r} does not exist")
  if len(sources) > 1 or os.path.abspath(source) not in sources:
    raise ConfigError(
      f"config.hydra: the members were pruned from {sorted(sources)}, "
      f"not all from the ViT {source!r}"
    )
  vits = [load_workdir_member(_vit_names(config)[0], source, mesh=mesh)] + [
    member_specs.load(name, spec, mesh=mesh)
    for name, spec in zip(_vit_names(config)[1:], specs["hydra_ensemble"])
  ]
  check_members_agree([*vits, *parts])
  merged = []
  for name, mlp in zip(_merged_names(config), split_list(config.hydra_mlp)):
    model = hydra.merge([p.model for p in parts], mlp=mlp)
    flops = model_flops(model, parts[0].meta["image_shape"])
    merged.append(Member(name, model, parts[0].meta, flops, DERIVED))
  return [*vits, *merged]


def _pruned_from(workdir: str, meta: dict) -> str:
  """The absolute path of the ViT a member was pruned from.

  Its training recorded it, absolute, in its heads file; the config's
  `prune_from` may be relative to wherever training ran, not to this process.
  """
  try:
    with open(os.path.join(workdir, HYDRA_HEADS_FILE)) as f:
      return json.load(f)["prune_from"]
  except (OSError, ValueError, KeyError):
    return os.path.abspath(meta["config"]["prune_from"])


def methods(config, added: list[str]) -> list[Method]:
  """Hydra rows and the rows they are compared with."""
  del added
  vit_names = _vit_names(config)
  rows = [
    Method(VIT, "single", (VIT,), label="the ViT the members were pruned from"),
    Method(f"{VIT}+TS", "ts", (VIT,), label="ViT, temperature-scaled"),
  ]
  if len(vit_names) > 1:
    m = len(vit_names)
    rows += [
      Method(
        f"{VIT} ensemble m={m}", "ensemble", vit_names, label=f"deep ensemble of {m} full ViTs"
      ),
      Method(
        f"{VIT} ensemble m={m}+TS",
        "ensemble_ts",
        vit_names,
        label=f"deep ensemble of {m} full ViTs, temperature-scaled",
      ),
    ]
  for name in _merged_names(config):
    rows += [
      Method(name, "single", (name,), label="mean of member probabilities"),
      Method(f"{name}+TS", "ts", (name,), label="Hydra, temperature-scaled"),
    ]
  if config.sidekick:
    rows.append(
      Method(
        f"{VIT} duo (weighted)",
        "duo",
        (VIT, SIDEKICK),
        "weighted",
        label="ViT + sidekick, weights fit jointly on val",
      )
    )
  return rows


def forward_seconds(models, image_shape, *, batch_size: int, mesh, repeats: int = 5) -> float:
  """Median wall time of one jitted fused forward of `models` on one batch."""
  graphdefs, states = duo.split_members(models)
  forward = duo.make_fused_forward(graphdefs, mesh=mesh)
  states = jax.device_put(states, sharding.replicated(mesh))
  images = jax.device_put(
    np.random.default_rng(0).normal(size=(batch_size, *image_shape)).astype(np.float32),
    sharding.batch_sharding(mesh),
  )
  forward(states, images).block_until_ready()  # compile outside the clock
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    forward(states, images).block_until_ready()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def build(inputs: EvalInputs, results: dict, repeats: int = 5) -> dict:
  """Cost and quality of every Hydra-section row, from the methods section's scores."""
  if "methods" not in results:
    raise ConfigError(
      "config.sections: 'hydra' reads the scores of 'methods', which must come first"
    )
  config = inputs.config
  merged = inputs.members[_merged_names(config)[0]]
  image_shape = tuple(merged.meta["image_shape"])
  rows, seconds = {}, {}
  for method in methods(config, inputs.added["hydra"]):
    models = [inputs.members[name].model for name in method.members]
    entry = results["methods"][method.name]
    params = sum(functional.count_params(functional.split_model(m)[1]) for m in models)
    # One timing per forward: a temperature-scaled row runs its plain row's forward.
    if method.members not in seconds:
      seconds[method.members] = forward_seconds(
        models, image_shape, batch_size=config.batch_size, mesh=inputs.mesh, repeats=repeats
      )
    rows[method.name] = {
      "params": params,
      "flops": entry["flops"],
      "seconds_per_batch": seconds[method.members],
      "test": entry["test"],
      "ood": entry.get("ood", {}).get("msp", {}),
    }
  return {
    "hydra": {
      "rows": rows,
      "members": len(split_list(config.hydra)),
      "keep": merged.meta["config"]["prune_keep"],
      "source": config.hydra_vit or _pruned_from(split_list(config.hydra)[0], merged.meta),
      "batch_size": config.batch_size,
    }
  }


def markdown(results: dict) -> list[str]:
  """The Hydra table: cost next to quality."""
  if "hydra" not in results:
    return []
  section = results["hydra"]
  vit = section["rows"][VIT]
  lines = [
    f"### Hydra ensembles (M = {section['members']} members, "
    f"{section['keep']:.0%} of the heads each)",
    "",
    "Cost relative to the single ViT: parameters, forward FLOPs per image, and the "
    f"median wall time of one jitted forward on a batch of {section['batch_size']}. "
    "AURC in thousandths; "
    + (f"OOD = {results['ood_set']}, by MSP." if results.get("ood_set") else "no OOD set.")
    + "",
    "",
    "| method | params ×ViT | FLOPs ×ViT | time ×ViT | acc | NLL | ECE | AUROC | "
    "AURC‰ | SAC@98 | OOD AUROC | OOD FPR95 |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for name, r in section["rows"].items():
    t, o = r["test"], r["ood"]
    lines.append(
      f"| {name} | {r['params'] / vit['params']:.2f} | {r['flops'] / vit['flops']:.2f} | "
      f"{r['seconds_per_batch'] / vit['seconds_per_batch']:.2f} | {fmt(t['acc'])} | "
      f"{fmt(t['nll'])} | {fmt(t['ece'])} | {fmt(t['auroc'])} | "
      f"{fmt(t['aurc'], 1e3, 2)} | {fmt(t['sac98'])} | {fmt(o.get('auroc'))} | "
      f"{fmt(o.get('fpr95'))} |"
    )
  lines += [
    "",
    f"The single ViT: {vit['params']:,} parameters, {vit['flops'] / 1e6:.1f} "
    f"MFLOPs/image, {vit['seconds_per_batch'] * 1e3:.1f} ms per batch.",
  ]
  return lines
