"""What `evaluate.py --config` runs: check -> members -> logits bank -> sections.

1. check the config and parse every member it names (`member_specs`), so a
   member that cannot load fails before any work;
2. load the members, of every kind (`members.Member`): the large model, the
   sidekick and the extra ensemble members, plus the members each listed
   section adds (Gatekeeper sidekicks, Hydra models); read the data set
   their images come from (`data_spec`) and check they agree on it;
3. derive the members built from others (the soups), compute every member's
   logits ONCE per split (val, test, the OOD set, corrupted test sets) with
   one fused jitted forward per batch, and the large model's MC-dropout
   average and Mahalanobis OOD score from its features (`feature_ood`);
   what the members cannot give (a logits file has no weights, features or
   images) is skipped, and the report says why;
4. run the sections the config lists (`duojax.eval.sections`), each fitting
   on val only through the shared `EvalInputs`, and gather their results.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from duojax.config_lib import split_list
from duojax.core import duo
from duojax.eval import bank as bank_lib
from duojax.eval import bundle_output, data_spec, feature_ood, member_specs, schema
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
  listed = sections_lib.load(split_list(config.sections))
  return [s for s in listed if sections_lib.is_enabled(s, config)]


def run(config, *, bundle_dir: str | None = None) -> dict:
  """The full results dict of evaluation `config` (see `schema.base_eval_config`).

  `bundle_dir`: where to write the fitted duo as a bundle (`bundle_output`) when
  `config.bundle` is set; None writes none (a library caller's runs write no files).
  """
  config = schema.complete_eval_config(config)
  schema.validate_eval(config)
  sections = active_sections(config)
  specs = member_specs.parse_config(config)  # every member loads: fail now, not after an hour
  t_start, clock = time.perf_counter(), PhaseClock()
  mesh = sharding.make_mesh(config.num_devices)
  members, added = _load_members(config, specs, sections, mesh)
  skipped = {}  # what could not run, and why
  dataset, splits, members = _read_data(config, members, skipped)
  clock.end("members_and_data")
  large = members[0]  # `_load_members` puts it first, `_read_data` keeps the order
  soups = _soups(config, specs, large, dataset, mesh, skipped)
  clock.end("soups")
  mc_dropout = config.mc_dropout_samples > 0 and _can(
    large, "features to drop out", "MC dropout", skipped
  )
  mahalanobis = config.mahalanobis_train_rows != 0 and "ood" in splits
  mahalanobis = mahalanobis and _can(large, "features to fit", "Mahalanobis", skipped)
  members = _models_first(members[:1] + members[1:] + soups)
  # The dynamic duo reads every member's features; MC dropout and Mahalanobis the large model's.
  dynamic = "dynamic" in split_list(config.per_input_duos) and bool(config.sidekick)
  with_features = "all" if dynamic else bool(mc_dropout or mahalanobis)
  bank = _logits_bank(config, members, dataset, splits, mesh, with_features)
  member_flops = {m.name: m.flops for m in members}
  extra_singles = [m.name for m in soups]
  if mc_dropout:
    extra_singles.append(_add_mc_dropout(config, large, bank, member_flops))
  clock.end("logits")
  feature_scores = {}
  if mahalanobis:  # one more forward, of the large model alone, over the training rows
    feature_scores = feature_ood.mahalanobis_scores(
      large,
      dataset,
      bank.features,
      max_rows=config.mahalanobis_train_rows,
      seed=config.seed,
      mesh=mesh,
      batch_size=config.batch_size,
      skipped=skipped,
    )
    clock.end("mahalanobis")
  inputs = EvalInputs(
    config=config,
    bank=bank,
    members={m.name: m for m in members},
    member_flops=member_flops,
    methods=_methods(config, sections, added, extra_singles),
    added=added,
    mesh=mesh,
    feature_scores=feature_scores,
  )
  results = {}
  for section in sections:
    results.update(section.build(inputs, results))
    clock.end(f"section {sections_lib.name(section)}")
  if bundle_dir is not None and config.bundle:
    bundle_output.write(inputs, dataset, bundle_dir)
    clock.end("bundle")
  return _with_report_notes(results, config, members, bank, skipped, t_start, clock)


def _can(large: members_lib.Member, what: str, method: str, skipped: dict) -> bool:
  """Whether the large model gives `what`; if not, `method` is skipped, saying why."""
  reason = members_lib.why_not(large, what)
  if reason:
    skipped[method] = reason
  return reason is None


def _models_first(members: list) -> list:
  """Model members in their order, then the logits files: the bank's row order."""
  return [m for m in members if m.gives_images] + [m for m in members if not m.gives_images]


def _load_members(config, specs: dict, sections, mesh) -> tuple[list, dict[str, list[str]]]:
  """The core members (the large model first) and each section's, by section name."""
  named = [(LARGE, specs["large"][0])] + [(SIDEKICK, s) for s in specs["sidekick"]]
  named += [(f"large#{i}", s) for i, s in enumerate(specs["ensemble"], start=2)]
  members = [member_specs.load(name, spec, mesh=mesh) for name, spec in named]
  added = {}
  for section in sections:
    extra = sections_lib.added_members(section, config, specs, mesh)
    added[sections_lib.name(section)] = [m.name for m in extra]
    members += extra
  return members, added


def _read_data(config, members: list, skipped: dict) -> tuple:
  """(the model members' data set or None, the splits every member can give,
  the members checked against it and given their inputs)."""
  models = [m for m in members if m.gives_images]
  stored = [m for m in members if not m.gives_images]
  dataset, splits = None, {}
  if models:
    found = data_spec.data_of(config, models)
    models = data_spec.adopt_dataset(models, found)
    members_lib.check_members_agree(models)
    dataset, models = data_spec.load_eval_data(found, models)
    splits = data_spec.eval_splits(config, found, dataset, images_only=not stored, skipped=skipped)
  if stored:
    data_spec.check_stored(stored, dataset)
    splits = data_spec.stored_splits(config, stored, splits, skipped)
  by_name = {m.name: m for m in models + stored}
  return dataset, splits, [by_name[m.name] for m in members]


def _soups(config, specs: dict, large, dataset, mesh, skipped: dict) -> list:
  """The uniform and greedy soups of `config.soup_ingredients`, when the large
  model is one trained here (else skipped, saying why)."""
  if not specs["soup_ingredients"]:
    return []
  reason = members_lib.why_not(large, "weights to average", trained_here=True)
  if reason:
    skipped["soups"] = reason
    return []
  # One program for every candidate soup: they share the large model's graphdef.
  forward = duo.make_fused_forward(
    duo.split_members([large.model])[0],
    mesh=mesh,
    preprocess=bank_lib.preprocessing([large], dataset),
  )

  def val_accuracy(member):
    val = bank_lib.collect(
      [member],
      dataset,
      {"val": dataset.val},
      mesh=mesh,
      batch_size=config.batch_size,
      forward=forward,
    )
    return float(np.mean(val.logits["val"][0].argmax(-1) == val.labels["val"]))

  workdirs = [spec.path for spec in specs["soup_ingredients"]]
  return members_lib.soup_members(workdirs, large, val_accuracy, mesh=mesh)


def _logits_bank(config, members, dataset, splits, mesh, with_features: bool | str):
  """Every member's logits on every split: the models' by one fused forward
  per batch (with the large model's features when asked), the files' as stored."""
  models = [m for m in members if m.gives_images]
  bank = bank_lib.LogitsBank(())
  if models:
    images = {k: v for k, v in splits.items() if v is not None}
    bank = bank_lib.collect(
      models, dataset, images, mesh=mesh, batch_size=config.batch_size, with_features=with_features
    )
  files = {m.name: m.stored for m in members if not m.gives_images}
  return bank_lib.with_files(bank, files, splits)


def _add_mc_dropout(config, large, bank, member_flops: dict) -> str:
  """The large model's MC-dropout average, appended to the bank; its name."""
  name = f"MC dropout K={config.mc_dropout_samples}"
  logits = mc_dropout_logits(
    large.model.head,
    bank.features,
    rate=config.mc_dropout_rate,
    num_samples=config.mc_dropout_samples,
    seed=config.seed,
  )
  bank.add_member(name, logits)
  kernel = np.shape(large.model.head.kernel[...])
  member_flops[name] = large.flops + config.mc_dropout_samples * 2 * kernel[0] * kernel[1]
  return name


def _methods(config, sections, added: dict, extra_singles: list) -> list:
  """The standard methods the members allow, then each section's."""
  ensemble = [LARGE] + [f"large#{i}" for i in range(2, len(split_list(config.ensemble)) + 2)]
  methods = methods_lib.standard_methods(
    large=LARGE,
    sidekick=SIDEKICK if config.sidekick else None,
    ensemble=tuple(ensemble),
    extra_singles=tuple(extra_singles),
    per_input=tuple(split_list(config.per_input_duos)),
  )
  for section in sections:
    methods += sections_lib.added_methods(section, config, added[sections_lib.name(section)])
  return methods


def _with_report_notes(results, config, members, bank, skipped, t_start, clock) -> dict:
  """`results` with what the report says of the run: members, skips, splits, time."""
  results["members"] = {m.name: member_specs.summary(m) for m in members}
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
