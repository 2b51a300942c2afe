"""The data set an evaluation reads, described by a small typed value.

The data set is the one the first workdir member was trained on, with its
splits; with no workdir member the evaluation config's data keys name it
(pretrained-file members need it for their images; logits files read none).
`data_of` gives that `data.DatasetSpec` (with the member it came from);
`load_eval_data` reads it at the side and widest crop the members need
(`host_view`) and checks every member against it, and `eval_splits` adds the
OOD set and the corrupted test sets the config asks for.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import ml_collections
import numpy as np

from duojax import config_lib, data
from duojax.config_lib import split_list
from duojax.errors import ConfigError
from duojax.eval import logits_files, schema
from duojax.eval import splits as splits_lib
from duojax.eval.members import PRETRAINED, WORKDIR, Member, input_view, with_inputs
from duojax.train import checkpoint


@dataclasses.dataclass(frozen=True)
class EvalData:
  """The evaluation's data set (`data.DatasetSpec`) and the workdir member
  whose training named it (None: the evaluation config's own data keys)."""

  spec: data.DatasetSpec
  source: Member | None = None


def data_of(config: ml_collections.ConfigDict, members: Sequence[Member]) -> EvalData:
  """The data set of model `members`: the first workdir member's, else the config's.

  A workdir member's data set and splits are the ones it was trained on; the
  evaluation's data keys then stay unset (`dataset` may repeat its name).
  """
  source = next((m for m in members if m.kind == WORKDIR), None)
  if source is None:
    return EvalData(data.DatasetSpec.from_config(schema.eval_data_config(config)))
  trained = config_lib.complete_config(source.meta["config"])
  defaults = schema.base_eval_config()
  for key in schema.EVAL_DATA_KEYS:
    if config[key] != defaults[key] and not (key == "dataset" and config[key] == trained.dataset):
      raise ConfigError(
        f"config.{key}={config[key]!r}: the data set is the one member {source.name!r} was "
        f"trained on ({trained.dataset}, with its splits); leave the data keys unset"
      )
  return EvalData(data.DatasetSpec.from_config(trained, config.data_dir), source)


def _check_file_fits(member: Member, dataset_name: str, num_classes: int, channels: int):
  """A pretrained file's head and stem against the data set's classes and channels."""
  path = member.meta["pretrained"]["path"]
  if member.num_classes != num_classes:
    raise ConfigError(
      f"member {member.name!r}: {path!r} has a {member.num_classes}-class head, the data set "
      f"{dataset_name} has {num_classes} classes"
    )
  if member.meta["image_shape"][2] != channels:
    raise ConfigError(
      f"member {member.name!r}: {path!r} takes {member.meta['image_shape'][2]}-channel images, "
      f"the data set {dataset_name} has {channels}-channel ones"
    )


def adopt_dataset(members: Sequence[Member], eval_data: EvalData) -> list[Member]:
  """`members`, the pretrained files among them reading the data set `eval_data`
  (checked, when a workdir member names it, against its classes and
  channels first, so a mismatch names the file and the data set rather than
  two members' numbers)."""
  adopted = []
  for member in members:
    if member.kind == PRETRAINED:
      if eval_data.source is not None:
        source = eval_data.source.meta
        _check_file_fits(
          member, source.get("dataset"), source["num_classes"], source["image_shape"][2]
        )
      member = dataclasses.replace(member, meta={**member.meta, "dataset": eval_data.spec.name})
    adopted.append(member)
  return adopted


def host_view(views: Sequence[tuple[int, float, str]]) -> tuple[int, float, str]:
  """(side, crop fraction, filter) the host reads the images at for members
  that take them at `views` (each's side, crop and filter, `input_view`).

  The crop is the widest, c = max cᵢ: member i's own crop is then the centre
  cᵢ / c of the batch (`data.prepare` cuts it on the device), which spans
  S·cᵢ / c of a side S; so S = max ⌈sᵢ·c / cᵢ⌉ lets no member enlarge its
  crop. With one crop among the members (every checkpoint written before
  members had their own), that is the largest side, read as before. The
  filter is that of the member that sets S, the first of them.
  """
  crop = max(c for _, c, _ in views)
  needs = [math.ceil(side * crop / c - 1e-9) for side, c, _ in views]
  side = max(needs)
  return side, crop, views[needs.index(side)][2]


def load_eval_data(
  eval_data: EvalData, members: Sequence[Member]
) -> tuple[data.Dataset, list[Member]]:
  """The data set at the side and crop `host_view` gives (each member cuts
  and resizes the batch to its own), and `members` checked against it and
  given their inputs (the crop and filter the evaluation's data keys give,
  where a member's meta does not say them).

  The workdir source is checked as training checks a checkpoint; pretrained
  files by their head and stem (one line naming both numbers).
  """
  spec = eval_data.spec
  default = dict(crop_fraction=spec.crop_fraction, interpolation=spec.interpolation)
  views = [input_view(m, **default) for m in members]
  side, crop, interpolation = host_view(views)
  dataset = dataclasses.replace(spec, crop_fraction=crop, interpolation=interpolation).load(side)
  if eval_data.source is not None:
    checkpoint.check_fits_data(
      eval_data.source.meta,
      dataset.image_shape,
      dataset.num_classes,
      where=eval_data.source.name,
      same_size=False,
    )
  for member in members:
    if member.kind == PRETRAINED:
      _check_file_fits(member, dataset.name, dataset.num_classes, dataset.image_shape[2])
  return dataset, [with_inputs(m, dataset, **default) for m in members]


def eval_splits(
  config, eval_data: EvalData, dataset: data.Dataset, *, images_only: bool, skipped: dict
) -> dict[str, data.Split]:
  """val, test, the OOD set and the corrupted test sets the config asks for.

  `images_only`: every member reads images (none is a logits file), which
  corrupting the test images needs; else said in `skipped`.
  """
  splits = {"val": dataset.val, "test": dataset.test}
  if config.ood:
    splits["ood"] = splits_lib.ood_split(config.ood, dataset, eval_data.spec.data_dir)
  kinds = split_list(config.shifts)
  if kinds and not images_only:
    skipped["shifts"] = "a member is a logits file: no images to corrupt"
  elif kinds:
    splits.update(
      splits_lib.shifted_splits(
        dataset.test,
        kinds=kinds,
        severities=tuple(int(s) for s in split_list(str(config.shift_severities))),
        max_images=config.shift_max_images,
        seed=config.seed,
      )
    )
  return splits


def check_stored(stored: Sequence[Member], dataset: data.Dataset | None) -> None:
  """Logits-file members hold the data set's classes and rows (its labels, in
  order), or, without model members, the same rows as each other."""
  files = {m.name: m.stored for m in stored}
  if dataset is not None:
    wrong = {n: f.num_classes for n, f in files.items() if f.num_classes != dataset.num_classes}
    if wrong:
      raise ConfigError(
        f"logits files with other class counts than the data set's {dataset.num_classes}: {wrong}"
      )
  labels = None
  if dataset is not None:
    labels = {
      name: data.read_examples(split, np.arange(len(split)))[1]
      for name, split in (("val", dataset.val), ("test", dataset.test))
    }
  logits_files.check_rows_agree(files, labels=labels)


def stored_splits(config, stored: Sequence[Member], splits: dict, skipped: dict) -> dict:
  """The splits every member can give, with logits files among them: val,
  test, and OOD where each file has it (split name -> images, or None)."""
  names = {"val": None, "test": None, **splits}
  without_ood = [m.name for m in stored if "ood" not in m.stored.logits]
  if without_ood and (config.ood or len(without_ood) < len(stored)):
    skipped["OOD"] = f"logits file of {without_ood[0]!r} has no ood_logits"
    names.pop("ood", None)
  elif not without_ood and "ood" not in names:
    if splits:  # model members read images, the files' OOD rows are not theirs
      skipped["OOD"] = "the logits files' ood_logits need config.ood for the model members"
    else:
      names["ood"] = None
  return names
