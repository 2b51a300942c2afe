"""What `evaluate.py --config` runs: members -> logits bank -> methods -> report.

1. restore the large model, the sidekick, extra ensemble members and soup
   ingredients from their training workdirs (and check they agree on data,
   classes and image shape);
2. build the soups (uniform, greedy on val accuracy);
3. compute every member's logits ONCE per split (val, test, MNIST as OOD,
   corrupted test sets) with one fused jitted forward per batch, plus the
   large model's MC-dropout average;
4. fit every method on val only, score it everywhere, write the report.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from duojax import (cascade_report, checkpoint, data, evaluation, hydra_report,
                    methods as methods_lib, report, sharding, shifts, soups, temperature,
                    train_lib)

LARGE, SIDEKICK = "large", "sidekick"


def _list(value: str) -> list[str]:
  return [v.strip() for v in value.split(",") if v.strip()]


def _check_workdirs(config) -> None:
  """Fail before any work if a workdir is missing (one line, names it)."""
  for key in ("large", "sidekick", "ensemble", "soup_ingredients", "gatekeeper", "hydra",
              "hydra_ensemble"):
    for workdir in _list(config.get(key, "")):
      if not os.path.isdir(os.path.expanduser(workdir)):
        raise ValueError(f"config.{key}: workdir {workdir!r} does not exist")
  if not config.large:
    raise ValueError("config.large must name the large model's training workdir")
  if config.solver not in temperature.SOLVERS:
    raise ValueError(f"config.solver={config.solver!r}; valid: {', '.join(temperature.SOLVERS)}")
  if config.batch_size <= 0:
    raise ValueError(f"config.batch_size must be > 0, got {config.batch_size}")
  if config.get("gatekeeper") and not config.sidekick:
    raise ValueError("config.gatekeeper: Gatekeeper sidekicks are compared with the untuned "
                     "config.sidekick, which is empty")


def run(config) -> dict:
  """Computes the full results dict of `config` (see configs/demo_eval.py)."""
  _check_workdirs(config)
  t_start = time.perf_counter()
  mesh = sharding.make_mesh(config.num_devices)
  members = [evaluation.load_member(LARGE, config.large, mesh=mesh)]
  if config.sidekick:
    members.append(evaluation.load_member(SIDEKICK, config.sidekick, mesh=mesh))
  ensemble = [LARGE]
  for i, workdir in enumerate(_list(config.ensemble), start=2):
    members.append(evaluation.load_member(f"large#{i}", workdir, mesh=mesh))
    ensemble.append(f"large#{i}")
  gatekeepers = _gatekeeper_members(_list(config.get("gatekeeper", "")), mesh)
  members += gatekeepers
  hydra_loaded = hydra_report.load(config, mesh) if config.get("hydra", "") else None
  if hydra_loaded:
    members += [*hydra_loaded["vits"], *hydra_loaded["merged"]]
  evaluation.check_members_agree(members)

  meta = members[0].meta
  train_config = meta["config"]
  dataset = data.load_dataset(train_config["dataset"],
                              os.path.expanduser(config.data_dir or train_config["data_dir"]),
                              val_size=train_config["val_size"],
                              split_seed=train_config["split_seed"])
  checkpoint.check_fits_data(meta, dataset.image_shape, dataset.num_classes,
                             where=config.large)
  splits = {"val": dataset.val, "test": dataset.test}
  if config.ood:
    splits["ood"] = _ood_split(config.ood, dataset)
  kinds = _list(config.shifts)
  if kinds:
    unknown = set(kinds) - set(shifts.SHIFTS)
    if unknown:
      raise ValueError(f"config.shifts has unknown {sorted(unknown)}; valid: "
                       f"{', '.join(shifts.SHIFTS)}")
    splits.update(evaluation.shifted_splits(dataset.test, kinds=kinds,
                                            max_images=config.shift_max_images,
                                            seed=config.seed))

  extra_singles = []
  ingredients = _list(config.soup_ingredients)
  if ingredients:
    members += _soups(ingredients, members[0], dataset, mesh, config.batch_size)
    extra_singles += ["soup (uniform)", "soup (greedy)"]

  mc_dropout = config.mc_dropout_samples > 0
  bank = evaluation.collect(members, dataset, splits, mesh=mesh, batch_size=config.batch_size,
                            with_features=mc_dropout)
  member_flops = {m.name: m.flops for m in members}
  if mc_dropout:
    name = f"MC dropout K={config.mc_dropout_samples}"
    bank.add_member(name, evaluation.mc_dropout_logits(
        members[0].model.head, bank.features, rate=config.mc_dropout_rate,
        num_samples=config.mc_dropout_samples, seed=config.seed))
    kernel = np.shape(members[0].model.head.kernel[...])
    member_flops[name] = members[0].flops + config.mc_dropout_samples * 2 * kernel[0] * kernel[1]
    extra_singles.append(name)

  method_list = methods_lib.standard_methods(
      large=LARGE, sidekick=SIDEKICK if config.sidekick else None, ensemble=tuple(ensemble),
      extra_singles=tuple(extra_singles))
  hydra_methods = []
  if hydra_loaded:
    hydra_methods = hydra_report.methods(hydra_loaded, SIDEKICK if config.sidekick else None)
    method_list += hydra_methods
  results = report.build_results(bank, method_list, member_flops, large=LARGE,
                                 solver=config.solver, bootstrap=config.bootstrap,
                                 seed=config.seed, mesh=mesh)
  if config.get("cascade", False) and config.sidekick:
    results["cascade"] = cascade_report.build_cascade(
        bank, large=LARGE, sidekicks=(SIDEKICK, *(m.name for m in gatekeepers)),
        member_flops=member_flops, solver=config.solver)
  if hydra_loaded:
    results["hydra"] = hydra_report.build(results, hydra_loaded, hydra_methods,
                                          {m.name: m for m in members},
                                          batch_size=config.batch_size, mesh=mesh)
  results["members"] = {
      m.name: {"model_name": m.meta["model_name"], "flops": m.flops,
               "params": train_lib.count_params(train_lib.split_model(m.model)[1]),
               "step": m.meta.get("step")} for m in members}
  results["splits"] = {name: int(len(bank.labels[name])) for name in bank.labels}
  results["seconds"] = round(time.perf_counter() - t_start, 1)
  results["devices"] = f"{jax.device_count()} × {jax.devices()[0].device_kind}"
  return results


def _gatekeeper_members(workdirs, mesh) -> list[evaluation.Member]:
  """Gatekeeper-tuned sidekicks, named by their alpha ("gatekeeper α=0.3")."""
  members = []
  for workdir in workdirs:
    member = evaluation.load_member("gatekeeper", workdir, mesh=mesh)
    train_config = member.meta["config"]
    if train_config.get("loss") != "gatekeeper":
      raise ValueError(f"config.gatekeeper: {workdir!r} was trained with loss="
                       f"{train_config.get('loss', 'ce')!r}, not 'gatekeeper'")
    name = f"gatekeeper α={float(train_config['gatekeeper_alpha']):g}"
    taken = {m.name for m in members}
    member.name = name if name not in taken else f"{name} #{len(members) + 1}"
    members.append(member)
  return members


def _ood_split(name: str, dataset: data.Dataset) -> data.Split:
  if name != "mnist":
    raise ValueError(f"config.ood={name!r}; the embedded OOD set is 'mnist' ('' for none)")
  images, labels = data.load_mnist_ood("test")
  if tuple(images.shape[1:]) != tuple(dataset.image_shape):
    raise ValueError(f"OOD set {name!r} has images {images.shape[1:]}, the models take "
                     f"{tuple(dataset.image_shape)}")
  return evaluation.array_split(images, labels)


def _soups(workdirs, large: evaluation.Member, dataset, mesh, batch_size):
  """Uniform and greedy soups of fine-tunes, scored by validation accuracy."""
  ingredients = [evaluation.load_member(f"ingredient#{i}", w, mesh=mesh)
                 for i, w in enumerate(workdirs)]
  evaluation.check_members_agree([large, *ingredients])

  def val_accuracy(model):
    member = evaluation.Member("candidate", model, large.meta)
    bank = evaluation.collect([member], dataset, {"val": dataset.val}, mesh=mesh,
                              batch_size=batch_size)
    return float(np.mean(bank.logits["val"][0].argmax(-1) == bank.labels["val"]))

  models = [m.model for m in ingredients]
  uniform = soups.average(models)
  greedy, _ = soups.greedy(models, val_accuracy)
  return [evaluation.Member("soup (uniform)", uniform, large.meta, large.flops),
          evaluation.Member("soup (greedy)", greedy, large.meta, large.flops)]
