"""What `evaluate.py --config` runs: members -> logits bank -> sections.

1. restore the large model, the sidekick and the extra ensemble members from
   their training workdirs or pretrained files (logits files join the bank
   as they are; `member_specs`), plus the members each listed section adds
   (Gatekeeper sidekicks, Hydra models), and check they agree on data,
   classes and image shape;
2. build the soups (uniform, greedy on val accuracy);
3. compute every member's logits ONCE per split (val, test, the OOD set,
   corrupted test sets) with one fused jitted forward per batch, plus the
   large model's MC-dropout average and its Mahalanobis OOD score (class
   means and covariance of its features on training rows: `feature_ood`);
4. run the sections the config lists (`duojax.eval.sections`), each fitting
   on val only through the shared `EvalInputs`, and gather their results.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from duojax import data, eval_config_lib
from duojax.config_lib import split_list
from duojax.core import duo
from duojax.eval import bank as bank_lib
from duojax.eval import feature_ood, logits_files, member_specs, pretrained_members
from duojax.eval import members as members_lib
from duojax.eval import methods as methods_lib
from duojax.eval import sections as sections_lib
from duojax.eval import splits as splits_lib
from duojax.eval.inputs import LARGE, SIDEKICK, EvalInputs
from duojax.eval.mc_dropout import mc_dropout_logits
from duojax.parallel import sharding
from duojax.timing import PhaseClock


def active_sections(config) -> list:
  """The section modules `config.sections` lists whose inputs the config gives."""
  return [
    s for s in sections_lib.load(split_list(config.sections)) if sections_lib.is_enabled(s, config)
  ]


def run(config) -> dict:
  """The full results dict of evaluation `config` (see `eval_config_lib.base_eval_config`)."""
  config = eval_config_lib.complete_eval_config(config)
  eval_config_lib.validate_eval(config)
  sections = active_sections(config)
  member_specs.check(config)  # every member loads: fail now, not after an hour
  t_start, clock = time.perf_counter(), PhaseClock()
  mesh = sharding.make_mesh(config.num_devices)
  specs = [(LARGE, config.large)] + ([(SIDEKICK, config.sidekick)] if config.sidekick else [])
  ensemble = [LARGE] + [f"large#{i}" for i in range(2, len(split_list(config.ensemble)) + 2)]
  specs += list(zip(ensemble[1:], split_list(config.ensemble)))
  files = {name: logits_files.load(spec) for name, spec in specs if logits_files.is_logits(spec)}
  members = [
    member_specs.load(name, spec, mesh=mesh)
    for name, spec in specs
    if not logits_files.is_logits(spec)
  ]
  added = {}
  for section in sections:
    extra = sections_lib.added_members(section, config, mesh)
    added[sections_lib.name(section)] = [m.name for m in extra]
    members += extra
  skipped = {}  # what could not run, and why (members given as files)
  dataset, splits = None, {}
  if members:
    data_config, source = member_specs.data_source(config, members)
    member_specs.adopt_dataset(members, data_config.dataset)
    member_specs.check_files_fit_source(members, source)
    members_lib.check_members_agree(members)
    dataset, splits = _data_and_splits(
      config, members, data_config, source, skipped, with_files=bool(files)
    )
  if files and dataset is not None:
    wrong = {n: f.num_classes for n, f in files.items() if f.num_classes != dataset.num_classes}
    if wrong:
      raise ValueError(
        f"logits files with other class counts than the data set's {dataset.num_classes}: {wrong}"
      )
  if files:
    logits_files.check_rows_agree(
      files,
      labels=None
      if dataset is None
      else {
        name: data.read_examples(split, np.arange(len(split)))[1]
        for name, split in (("val", dataset.val), ("test", dataset.test))
      },
    )
    splits = _splits_with_files(config, files, splits, skipped)
  clock.end("members_and_data")
  extra_singles = []
  ingredients = split_list(config.soup_ingredients)
  large_model = LARGE not in files
  trained_large = large_model and not pretrained_members.is_pretrained_member(members[0])
  if ingredients and not trained_large:
    skipped["soups"] = (
      "the large model is a logits file: no weights to average"
      if not large_model
      else "the large model is a pretrained file: soups average "
      "fine-tunes of a large model trained here"
    )
  if ingredients and trained_large:
    # One program for every candidate soup: they share the large model's graphdef.
    soup_forward = duo.make_fused_forward(
      duo.split_members([members[0].model])[0],
      mesh=mesh,
      preprocess=bank_lib.preprocessing(members[:1]),
    )

    def val_accuracy(member):
      val = bank_lib.collect(
        [member],
        dataset,
        {"val": dataset.val},
        mesh=mesh,
        batch_size=config.batch_size,
        forward=soup_forward,
      )
      return float(np.mean(val.logits["val"][0].argmax(-1) == val.labels["val"]))

    members += members_lib.soup_members(ingredients, members[0], val_accuracy, mesh=mesh)
    extra_singles += ["soup (uniform)", "soup (greedy)"]

  clock.end("soups")
  mc_dropout = config.mc_dropout_samples > 0 and large_model
  if config.mc_dropout_samples > 0 and not large_model:
    skipped["MC dropout"] = "the large model is a logits file: no features to drop out"
  # The Mahalanobis OOD score reads the large model's features: test and OOD from this pass.
  mahalanobis = config.mahalanobis_train_rows != 0 and "ood" in splits
  if mahalanobis and not large_model:
    skipped["Mahalanobis"] = "the large model is a logits file: no features to fit"
  mahalanobis = mahalanobis and large_model
  bank = bank_lib.LogitsBank(())
  if members:
    bank = bank_lib.collect(
      members,
      dataset,
      {k: v for k, v in splits.items() if v is not None},
      mesh=mesh,
      batch_size=config.batch_size,
      with_features=mc_dropout or mahalanobis,
    )
  bank = bank_lib.with_files(bank, files, splits)
  member_flops = {
    **{m.name: m.flops for m in members},
    **{name: f.flops for name, f in files.items()},
  }
  if mc_dropout:
    name = f"MC dropout K={config.mc_dropout_samples}"
    bank.add_member(
      name,
      mc_dropout_logits(
        members[0].model.head,
        bank.features,
        rate=config.mc_dropout_rate,
        num_samples=config.mc_dropout_samples,
        seed=config.seed,
      ),
    )
    kernel = np.shape(members[0].model.head.kernel[...])
    member_flops[name] = members[0].flops + config.mc_dropout_samples * 2 * kernel[0] * kernel[1]
    extra_singles.append(name)

  clock.end("logits")
  feature_scores = {}
  if mahalanobis:  # one more forward, of the large model alone, over the training rows
    feature_scores = feature_ood.mahalanobis_scores(
      members[0],
      dataset,
      bank.features,
      max_rows=config.mahalanobis_train_rows,
      seed=config.seed,
      mesh=mesh,
      batch_size=config.batch_size,
      skipped=skipped,
    )
    clock.end("mahalanobis")
  method_list = methods_lib.standard_methods(
    large=LARGE,
    sidekick=SIDEKICK if config.sidekick else None,
    ensemble=tuple(ensemble),
    extra_singles=tuple(extra_singles),
  )
  for section in sections:
    method_list += sections_lib.added_methods(section, config, added[sections_lib.name(section)])
  inputs = EvalInputs(
    config=config,
    bank=bank,
    members={m.name: m for m in members},
    member_flops=member_flops,
    methods=method_list,
    added=added,
    mesh=mesh,
    feature_scores=feature_scores,
  )
  results = {}
  for section in sections:
    results.update(section.build(inputs, results))
    clock.end(f"section {sections_lib.name(section)}")
  results["members"] = {
    **{m.name: member_specs.summary(m) for m in members},
    **{name: {"logits_file": f.path, "flops": f.flops} for name, f in files.items()},
  }
  results["skipped"] = skipped
  results["splits"] = {name: int(len(bank.labels[name])) for name in bank.labels}
  results["ood_set"] = (
    None
    if "ood" not in bank.labels
    else splits_lib.ood_caption(config.ood)
    if config.ood
    else "the logits files' ood_logits"
  )
  # Wall seconds in all and per phase; the sections' include the temperature
  # fits and method outputs they are the first to ask for (cached after).
  results["seconds"] = {"total": round(time.perf_counter() - t_start, 1), **clock.rounded()}
  results["devices"] = f"{jax.device_count()} × {jax.devices()[0].device_kind}"
  return results


def _data_and_splits(config, members, train_config, source, skipped: dict, *, with_files: bool):
  """The model members' data set (at the largest member's size) and its splits.

  `train_config` names it, the data keys of workdir member `source` or of the
  evaluation config (`member_specs.data_source`).
  """
  # One batch at the largest member's size; each member resizes it to its own.
  train_config.model.image_size = max(members_lib.input_size(m) for m in members)
  dataset = data.load_dataset_of(train_config, config.data_dir)
  member_specs.check_fits_data(members, source, dataset)
  members_lib.with_inputs(members, dataset)
  splits = {"val": dataset.val, "test": dataset.test}
  if config.ood:
    splits["ood"] = splits_lib.ood_split(
      config.ood, dataset, os.path.expanduser(config.data_dir or train_config.data_dir)
    )
  kinds = split_list(config.shifts)
  if kinds and with_files:
    skipped["shifts"] = "a member is a logits file: no images to corrupt"
  elif kinds:
    splits.update(
      splits_lib.shifted_splits(
        dataset.test, kinds=kinds, max_images=config.shift_max_images, seed=config.seed
      )
    )
  return dataset, splits


def _splits_with_files(config, files, splits: dict, skipped: dict) -> dict:
  """The splits every member can give: val, test, and OOD where each file has it."""
  names = {"val": None, "test": None, **{k: v for k, v in splits.items()}}
  without_ood = [n for n, f in files.items() if "ood" not in f.logits]
  if without_ood and (config.ood or len(without_ood) < len(files)):
    skipped["OOD"] = f"logits file of {without_ood[0]!r} has no ood_logits"
    names.pop("ood", None)
  elif not without_ood and "ood" not in names:
    if splits:  # model members read images, the files' OOD rows are not theirs
      skipped["OOD"] = "the logits files' ood_logits need config.ood for the model members"
    else:
      names["ood"] = None
  return names
