"""The members an evaluation config names, parsed once into typed values.

A member is given as one of

    DIR                                     a duojax training workdir
    pretrained:MODEL[@SIZE][:LAYOUT]:PATH   a PyTorch-layout safetensors file
                                            (`duojax.eval.pretrained_members`)
    logits:PATH                             its logits on val and test
                                            (`duojax.eval.logits_files`)

and members of different kinds mix in one evaluation. The keys that name
members are the core ones below and those each section declares
(`MEMBER_KEYS` of `duojax.eval.sections.*`), each with the kinds it takes.
`parse_config` turns every one of them into `MemberSpec`s when the config
loads and fails, one line naming the key, on any member that cannot load
(missing, of a kind its key does not take, a pretrained file that is not
safetensors or not the model it says) before anything runs; `load` then
gives the `Member` a spec names.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import ml_collections

from duojax.config_lib import split_list
from duojax.errors import ConfigError
from duojax.eval import logits_files
from duojax.eval import pretrained_members as pretrained
from duojax.eval import sections as sections_lib
from duojax.eval.members import LOGITS, PRETRAINED, WORKDIR, Member, load_workdir_member
from duojax.models import functional

ANY = (WORKDIR, PRETRAINED, LOGITS)
MODELS = (WORKDIR, PRETRAINED)
# The core keys that name members (the sections declare theirs).
MEMBER_KEYS = {"large": ANY, "sidekick": ANY, "ensemble": ANY, "soup_ingredients": (WORKDIR,)}
_WHAT = {LOGITS: "logits files", PRETRAINED: "pretrained files"}


@dataclasses.dataclass(frozen=True)
class MemberSpec:
  """A member as a config key names it.

  Attributes:
    key: the config key ("large", "gatekeeper", ...).
    text: the member as the config spells it.
    kind: WORKDIR, PRETRAINED or LOGITS.
    path: the workdir, safetensors file or .npz file (with ~ expanded).
    pretrained: the parsed `pretrained:` spec, for PRETRAINED.
  """

  key: str
  text: str
  kind: str
  path: str
  pretrained: pretrained.PretrainedSpec | None = None


def kind(text: str) -> str:
  """WORKDIR, PRETRAINED or LOGITS: how `text` names a member."""
  if logits_files.is_logits(text):
    return LOGITS
  return PRETRAINED if pretrained.is_pretrained(text) else WORKDIR


def member_keys(sections: Sequence) -> dict[str, tuple[str, ...]]:
  """Every config key that names members, with the kinds it takes: the core
  keys, then each section's (`sections`: every section module)."""
  keys = dict(MEMBER_KEYS)
  for section in sections:
    keys.update(sections_lib.member_keys(section))
  return keys


def parse(text: str, *, key: str, keys: dict[str, tuple[str, ...]]) -> MemberSpec:
  """The member `text` of config key `key`, checked to exist and to be a kind
  the key takes (`keys`: `member_keys`); ConfigError (one line) otherwise."""
  found = kind(text)
  if found not in keys[key]:
    takers = [k for k, kinds in keys.items() if found in kinds]
    raise ConfigError(f"config.{key}: {text!r}: only {', '.join(takers)} may be {_WHAT[found]}")
  if found == LOGITS:
    path = logits_files.path_of(text)
    if not os.path.isfile(path):
      raise ConfigError(f"config.{key}: logits file {path!r} does not exist")
    return MemberSpec(key, text, found, path)
  if found == PRETRAINED:
    try:
      spec = pretrained.parse(text)
    except ValueError as e:
      raise ConfigError(f"config.{key}: {e}") from None
    if not os.path.isfile(spec.path):
      raise ConfigError(f"config.{key}: pretrained file {spec.path!r} does not exist")
    pretrained.inspect(spec, where=f"config.{key}")
    return MemberSpec(key, text, found, spec.path, spec)
  if not os.path.isdir(os.path.expanduser(text)):
    raise ConfigError(f"config.{key}: workdir {text!r} does not exist")
  return MemberSpec(key, text, found, os.path.expanduser(text))


def parse_config(config: ml_collections.ConfigDict) -> dict[str, list[MemberSpec]]:
  """{member key: its members, parsed and checked}, for every key that names
  members; and the data keys checked against the members' kinds."""
  keys = member_keys(sections_lib.load(sections_lib.available()))
  specs = {key: [parse(t, key=key, keys=keys) for t in split_list(config[key])] for key in keys}
  kinds = {spec.kind for found in specs.values() for spec in found}
  if PRETRAINED in kinds and WORKDIR not in kinds and not config.dataset:
    raise ConfigError(
      "config.dataset is empty: with no training workdir among the members, "
      "it names the data set whose images the pretrained files read"
    )
  if config.dataset and kinds == {LOGITS}:
    raise ConfigError(
      f"config.dataset={config.dataset!r}: every member is a logits file, "
      "which reads no images; leave it empty"
    )
  return specs


def load(name: str, spec: MemberSpec, *, mesh=None) -> Member:
  """The member `spec` names, of any kind; models replicated over `mesh`."""
  if spec.kind == LOGITS:
    stored = logits_files.load(spec.text)
    meta = {"num_classes": stored.num_classes, "logits_file": stored.path}
    return Member(name, None, meta, stored.flops, LOGITS, stored)
  if spec.kind == PRETRAINED:
    return pretrained.load_pretrained_member(name, spec.pretrained, mesh=mesh)
  return load_workdir_member(name, spec.path, mesh=mesh)


def summary(member: Member) -> dict:
  """What results.json says of a member: its model, cost and where it came from."""
  if member.kind == LOGITS:
    return {"logits_file": member.stored.path, "flops": member.flops}
  row = {
    "model_name": member.meta["model_name"],
    "flops": member.flops,
    "params": functional.count_params(functional.split_model(member.model)[1]),
    "step": member.meta.get("step"),
  }
  if member.kind == PRETRAINED:  # and the preprocessing its library used
    row["pretrained"] = {**member.meta["pretrained"], "input": member.meta["input"]}
  return row
