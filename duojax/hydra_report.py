"""The Hydra section of `evaluate.py`: pruned-head ensembles against their peers.

A Hydra ensemble (`duojax.hydra`) is compared on the same splits with
  * the ViT it was pruned from, alone and temperature-scaled;
  * a deep ensemble of M independently trained full ViTs (what Hydra
    imitates at about the cost of one network);
  * the ViT paired with the sidekick as a weighted duo (the other cheap route
    to uncertainty);
and each of these rows carries its cost: parameters, XLA forward FLOPs per
image and the measured wall time of its jitted forward on one batch.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from duojax import duo, evaluation, hydra, sharding, train_lib
from duojax.methods import Method

VIT = "ViT"


def _list(value: str) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()]


def hydra_name(num_members: int, mlp: str) -> str:
  return f"Hydra M={num_members}" + ("" if mlp == "grouped" else " (avg MLP)")


def load(config, mesh) -> dict:
  """The ViT, the extra full ViTs and the merged Hydra models of `config`.

  config.hydra lists the member workdirs (trained with configs/hydra_member.py),
  config.hydra_vit the ViT they were pruned from ("" = the first member's
  prune_from), config.hydra_ensemble extra full ViTs for the deep ensemble,
  config.hydra_mlp the merge modes ("grouped", "average").
  """
  workdirs = _list(config.hydra)
  parts = [evaluation.load_member(f"Hydra member {j}", w, mesh=mesh)
           for j, w in enumerate(workdirs)]
  for workdir, part in zip(workdirs, parts):
    if not part.meta["config"].get("prune_from"):
      raise ValueError(f"config.hydra: {workdir!r} is not a pruned Hydra member (train it "
                       "with configs/hydra_member.py)")
  sources = {os.path.abspath(p.meta["config"]["prune_from"]) for p in parts}
  source = config.get("hydra_vit", "") or parts[0].meta["config"]["prune_from"]
  if not os.path.isdir(source):
    raise ValueError(f"config.hydra_vit: workdir {source!r} does not exist")
  if len(sources) > 1 or os.path.abspath(source) not in sources:
    raise ValueError(f"config.hydra: the members were pruned from {sorted(sources)}, "
                     f"not all from the ViT {source!r}")
  vits = [evaluation.load_member(VIT, source, mesh=mesh)]
  for i, workdir in enumerate(_list(config.get("hydra_ensemble", "")), start=2):
    vits.append(evaluation.load_member(f"{VIT}#{i}", workdir, mesh=mesh))
  evaluation.check_members_agree([*vits, *parts])
  mlps = _list(config.get("hydra_mlp", "grouped")) or ["grouped"]
  merged = []
  for mlp in mlps:
    model = hydra.merge([p.model for p in parts], mlp=mlp)
    graphdef, params, batch_stats = train_lib.split_model(model)
    flops = train_lib.flops_per_image(graphdef, params, batch_stats,
                                      tuple(parts[0].meta["image_shape"]))
    merged.append(evaluation.Member(hydra_name(len(parts), mlp), model, parts[0].meta, flops))
  return {"vits": vits, "parts": parts, "merged": merged, "keep": parts[0].meta["config"]
          ["prune_keep"], "source": source}


def methods(loaded: dict, sidekick: str | None) -> list[Method]:
  """Hydra rows and the rows they are compared with."""
  vit_names = tuple(m.name for m in loaded["vits"])
  rows = [Method(VIT, "single", (VIT,), label="the ViT the members were pruned from"),
          Method(f"{VIT}+TS", "ts", (VIT,), label="ViT, temperature-scaled")]
  if len(vit_names) > 1:
    m = len(vit_names)
    rows += [Method(f"{VIT} ensemble m={m}", "ensemble", vit_names,
                    label=f"deep ensemble of {m} full ViTs"),
             Method(f"{VIT} ensemble m={m}+TS", "ensemble_ts", vit_names,
                    label=f"deep ensemble of {m} full ViTs, temperature-scaled")]
  for member in loaded["merged"]:
    rows += [Method(member.name, "single", (member.name,), label="mean of member probabilities"),
             Method(f"{member.name}+TS", "ts", (member.name,), label="Hydra, temperature-scaled")]
  if sidekick is not None:
    rows.append(Method(f"{VIT} duo (weighted)", "duo", (VIT, sidekick), "weighted",
                       label="ViT + sidekick, weights fit jointly on val"))
  return rows


def forward_seconds(models, image_shape, *, batch_size: int, mesh, repeats: int = 5) -> float:
  """Median wall time of one jitted fused forward of `models` on one batch."""
  graphdefs, states = duo.split_members(models)
  forward = duo.make_fused_forward(graphdefs, mesh=mesh)
  states = jax.device_put(states, sharding.replicated(mesh))
  images = jax.device_put(
      np.random.default_rng(0).normal(size=(batch_size, *image_shape)).astype(np.float32),
      sharding.batch_sharding(mesh))
  forward(states, images).block_until_ready()  # compile outside the clock
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    forward(states, images).block_until_ready()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def build(results: dict, loaded: dict, method_list, members_by_name: dict, *, batch_size: int,
          mesh, repeats: int = 5) -> dict:
  """Cost and quality of every Hydra-section row, from the scored `results`."""
  image_shape = tuple(loaded["parts"][0].meta["image_shape"])
  rows = {}
  for method in method_list:
    models = [members_by_name[name].model for name in method.members]
    entry = results["methods"][method.name]
    params = sum(train_lib.count_params(train_lib.split_model(m)[1]) for m in models)
    if method.kind in ("ts", "ensemble_ts"):  # same forward as the row without TS
      seconds = rows[method.name[:-len("+TS")]]["seconds_per_batch"]
    else:
      seconds = forward_seconds(models, image_shape, batch_size=batch_size, mesh=mesh,
                                repeats=repeats)
    rows[method.name] = {"params": params, "flops": entry["flops"],
                         "seconds_per_batch": seconds, "test": entry["test"],
                         "ood": entry.get("ood", {}).get("msp", {})}
  return {"rows": rows, "members": len(loaded["parts"]), "keep": loaded["keep"],
          "source": loaded["source"], "batch_size": batch_size}


def _fmt(x, scale=1.0, digits=4):
  return "–" if x is None or not np.isfinite(x) else f"{x * scale:.{digits}f}"


def markdown(section: dict) -> list[str]:
  """The Hydra table: cost next to quality."""
  vit = section["rows"][VIT]
  lines = [f"### Hydra ensembles (M = {section['members']} members, "
           f"{section['keep']:.0%} of the heads each)", "",
           "Cost relative to the single ViT: parameters, XLA forward FLOPs per image, and the "
           f"median wall time of one jitted forward on a batch of {section['batch_size']}. "
           "AURC in thousandths; OOD = MNIST, by MSP.", "",
           "| method | params ×ViT | FLOPs ×ViT | time ×ViT | acc | NLL | ECE | AUROC | "
           "AURC‰ | SAC@98 | OOD AUROC | OOD FPR95 |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in section["rows"].items():
    t, o = r["test"], r["ood"]
    lines.append(
        f"| {name} | {r['params'] / vit['params']:.2f} | {r['flops'] / vit['flops']:.2f} | "
        f"{r['seconds_per_batch'] / vit['seconds_per_batch']:.2f} | {_fmt(t['acc'])} | "
        f"{_fmt(t['nll'])} | {_fmt(t['ece'])} | {_fmt(t['auroc'])} | "
        f"{_fmt(t['aurc'], 1e3, 2)} | {_fmt(t['sac98'])} | {_fmt(o.get('auroc'))} | "
        f"{_fmt(o.get('fpr95'))} |")
  lines += ["", f"The single ViT: {vit['params']:,} parameters, {vit['flops'] / 1e6:.1f} "
            f"MFLOPs/image, {vit['seconds_per_batch'] * 1e3:.1f} ms per batch."]
  return lines
