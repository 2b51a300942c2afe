"""The members an evaluation config names, of any kind, and the data set they read.

A member is given as one of

    DIR                                     a duojax training workdir
    pretrained:MODEL[@SIZE][:LAYOUT]:PATH   a PyTorch-layout safetensors file
                                            (`duojax.eval.pretrained_members`)
    logits:PATH                             its logits on val and test
                                            (`duojax.eval.logits_files`)

and members of different kinds mix in one evaluation. `check` fails on any
member that cannot load before anything runs. The data set is the one the
first workdir member was trained on, with its splits; with no workdir member
the evaluation config's data keys name it (`eval_config_lib.eval_data_config`),
which pretrained-file members need for their images.
"""

from __future__ import annotations

import os
from typing import Sequence

import ml_collections

from duojax import config_lib, data, eval_config_lib
from duojax.config_lib import split_list
from duojax.errors import ConfigError
from duojax.eval import logits_files
from duojax.eval import pretrained_members as pretrained
from duojax.eval.members import Member
from duojax.eval.members import load_member as load_workdir
from duojax.models import functional
from duojax.train import checkpoint

# Config keys whose members may be logits files, and those that may be pretrained files
# (the rest need what only a training workdir has: its training config and history).
LOGITS_KEYS = ("large", "sidekick", "ensemble")
PRETRAINED_KEYS = ("large", "sidekick", "ensemble", "sidekicks", "sidekick_pool")
# Config keys that name members, checked before any work.
MEMBER_KEYS = (
  "large",
  "sidekick",
  "sidekicks",
  "sidekick_pool",
  "ensemble",
  "soup_ingredients",
  "gatekeeper",
  "hydra",
  "hydra_ensemble",
)


def kind(spec: str) -> str:
  """ "logits", "pretrained" or "workdir"."""
  if logits_files.is_logits(spec):
    return "logits"
  return "pretrained" if pretrained.is_pretrained(spec) else "workdir"


def check(config: ml_collections.ConfigDict) -> None:
  """Fails (one line naming the config key) on a member that cannot load: a missing
  workdir or file, a kind its key does not take, a pretrained file that is not
  safetensors or not the model it says; and on data keys that cannot apply."""
  kinds = set()
  for key in MEMBER_KEYS:
    for spec in split_list(config[key]):
      kinds.add(kind(spec))
      if kind(spec) == "logits":
        if key not in LOGITS_KEYS:
          raise ValueError(
            f"config.{key}: {spec!r}: only {', '.join(LOGITS_KEYS)} may be logits files"
          )
        if not os.path.isfile(logits_files.path_of(spec)):
          raise ValueError(
            f"config.{key}: logits file {logits_files.path_of(spec)!r} does not exist"
          )
      elif kind(spec) == "pretrained":
        if key not in PRETRAINED_KEYS:
          raise ValueError(
            f"config.{key}: {spec!r}: only {', '.join(PRETRAINED_KEYS)} may be pretrained files"
          )
        try:
          parsed = pretrained.parse(spec)
        except ValueError as e:
          raise ValueError(f"config.{key}: {e}") from None
        if not os.path.isfile(parsed.path):
          raise ValueError(f"config.{key}: pretrained file {parsed.path!r} does not exist")
        pretrained.inspect(parsed, where=f"config.{key}")
      elif not os.path.isdir(os.path.expanduser(spec)):
        raise ValueError(f"config.{key}: workdir {spec!r} does not exist")
  if "pretrained" in kinds and "workdir" not in kinds and not config.dataset:
    raise ConfigError(
      "config.dataset is empty: with no training workdir among the members, "
      "it names the data set whose images the pretrained files read"
    )
  if config.dataset and kinds == {"logits"}:
    raise ConfigError(
      f"config.dataset={config.dataset!r}: every member is a logits file, "
      "which reads no images; leave it empty"
    )


def load(name: str, spec: str, *, mesh=None) -> Member:
  """The member `spec` names (a workdir or a pretrained file; not a logits file)."""
  if pretrained.is_pretrained(spec):
    return pretrained.load_member(name, spec, mesh=mesh)
  return load_workdir(name, spec, mesh=mesh)


def summary(member: Member) -> dict:
  """What results.json says of a model member: its model, cost and where it came from."""
  row = {
    "model_name": member.meta["model_name"],
    "flops": member.flops,
    "params": functional.count_params(functional.split_model(member.model)[1]),
    "step": member.meta.get("step"),
  }
  if pretrained.is_pretrained_member(member):  # and the preprocessing its library used
    row["pretrained"] = {**member.meta["pretrained"], "input": member.meta["input"]}
  return row


def data_source(
  config: ml_collections.ConfigDict,
  members: Sequence[Member],
) -> tuple[ml_collections.ConfigDict, Member | None]:
  """(a training config naming the evaluation's data set, the workdir member it is that
  member's; None: the evaluation config's own data keys).

  A workdir member's data set and splits are the ones it was trained on; the
  evaluation's data keys then stay unset (`dataset` may repeat its name).
  """
  source = next((m for m in members if not pretrained.is_pretrained_member(m)), None)
  if source is None:
    return eval_config_lib.eval_data_config(config), None
  train_config = config_lib.complete_config(source.meta["config"])
  defaults = eval_config_lib.base_eval_config()
  for key in eval_config_lib.EVAL_DATA_KEYS:
    if config[key] != defaults[key] and not (
      key == "dataset" and config[key] == train_config.dataset
    ):
      raise ConfigError(
        f"config.{key}={config[key]!r}: the data set is the one member {source.name!r} was "
        f"trained on ({train_config.dataset}, with its splits); leave the data keys unset"
      )
  return train_config, source


def adopt_dataset(members: Sequence[Member], name: str) -> None:
  """Pretrained-file members read the evaluation's data set `name`: their meta says so."""
  for member in members:
    if pretrained.is_pretrained_member(member):
      member.meta = {**member.meta, "dataset": name}


def _check_file_fits(member: Member, dataset_name: str, num_classes: int, channels: int):
  """A pretrained file's head and stem against the data set's classes and channels."""
  path = member.meta["pretrained"]["path"]
  if member.meta["num_classes"] != num_classes:
    raise ValueError(
      f"member {member.name!r}: {path!r} has a {member.meta['num_classes']}-"
      f"class head, the data set {dataset_name} has {num_classes} classes"
    )
  if member.meta["image_shape"][2] != channels:
    raise ValueError(
      f"member {member.name!r}: {path!r} takes "
      f"{member.meta['image_shape'][2]}-channel images, the data set "
      f"{dataset_name} has {channels}-channel ones"
    )


def check_files_fit_source(members: Sequence[Member], source: Member | None) -> None:
  """Pretrained files beside a workdir `source` fit its data set's classes and channels.

  Checked before the members are compared with each other, so a mismatch
  names the file and the data set rather than two members' numbers.
  """
  if source is None:
    return
  for member in members:
    if pretrained.is_pretrained_member(member):
      _check_file_fits(
        member,
        source.meta.get("dataset"),
        source.meta["num_classes"],
        source.meta["image_shape"][2],
      )


def check_fits_data(
  members: Sequence[Member], source: Member | None, dataset: data.Dataset
) -> None:
  """Every model member predicts the data set's classes from images of its channels.

  The workdir `source` is checked as training checks a checkpoint; pretrained
  files by their head and stem (one line naming both numbers).
  """
  if source is not None:
    checkpoint.check_fits_data(
      source.meta, dataset.image_shape, dataset.num_classes, where=source.name, same_size=False
    )
  for member in members:
    if pretrained.is_pretrained_member(member):
      _check_file_fits(member, dataset.name, dataset.num_classes, dataset.image_shape[2])
