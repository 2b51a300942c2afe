"""Logits of trained members on every evaluation split, computed once.

All members (large model, sidekicks, ensemble members, soups) go through one
fused jitted forward per batch (`duo.make_fused_forward`), so each split is
read once and every member's logits come out of the same XLA program. The
result is a `LogitsBank`: split name -> labels and [m, N, C] logits, the only
input the post-hoc methods (temperatures, duos, ensembles) need.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Iterable, Sequence

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from duojax import data
from duojax.core import duo
from duojax.data.sources import fixed_size
from duojax.errors import ConfigError, DataError, InputError
from duojax.eval.members import Member, check_members_agree, with_inputs
from duojax.parallel import sharding


@dataclasses.dataclass
class LogitsBank:
  """Per split: labels [N] and logits [m, N, C] in `member_names` order."""

  member_names: tuple[str, ...]
  labels: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  logits: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # Member 0's pre-logit features [N, D] per split, when collected with them.
  features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # Every model member's features [N, D_i] per split (in `member_names` order,
  # logits-file members having none), when collected with with_features="all".
  member_features: dict[str, list[np.ndarray]] = dataclasses.field(default_factory=dict)

  def member(self, split: str, name: str) -> np.ndarray:
    return self.logits[split][self.member_names.index(name)]

  def stack(self, split: str, names: Sequence[str]) -> np.ndarray:
    return self.logits[split][[self.member_names.index(n) for n in names]]

  def add_member(self, name: str, logits_by_split: dict[str, np.ndarray]) -> None:
    """Appends a derived member (e.g. MC-dropout averages) to every split."""
    if set(logits_by_split) != set(self.logits):
      raise InputError(f"member {name!r} needs logits for splits {sorted(self.logits)}")
    self.member_names = (*self.member_names, name)
    for split, logits in logits_by_split.items():
      self.logits[split] = np.concatenate([self.logits[split], logits[None]], axis=0)


def _to_host(x) -> np.ndarray:
  if jax.process_count() > 1:  # global arrays span hosts: gather the rows
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def split_logits(
  forward: Callable,
  states,
  batches: Iterable[dict],
  *,
  desc: str = "",
  total: int | None = None,
  with_features: bool | str = False,
):
  """Runs the fused forward over masked batches.

  Returns (logits [m, N, C], labels [N]), plus member 0's features [N, D]
  when `with_features` (the forward must have been built with them), or
  every member's ([N, D_i] each, a list) when it is "all".
  """
  logits, labels, features = [], [], []
  for batch in tqdm.tqdm(
    batches, desc=desc, total=total, leave=False, mininterval=2.0, disable=jax.process_index() != 0
  ):
    out = forward(states, batch["image"])
    mask = _to_host(batch["mask"])
    if with_features:
      out, feats = out
      if with_features == "all":  # a member whose features are not [B, D] gets None
        host = [_to_host(f) for f in feats]
        features.append([f[mask] if f.ndim == 2 and len(f) == len(mask) else None for f in host])
      else:
        features.append(_to_host(feats)[mask])
    logits.append(_to_host(out)[:, mask])
    labels.append(_to_host(batch["label"])[mask])
  if not logits:
    raise DataError(f"split {desc!r} is empty")
  result = (np.concatenate(logits, axis=1), np.concatenate(labels))
  if with_features == "all":
    merged = [None if any(p is None for p in f) else np.concatenate(f) for f in zip(*features)]
    return (*result, merged)
  return (*result, np.concatenate(features)) if with_features else result


def preprocessing(members: Sequence[Member], dataset: data.Dataset) -> tuple[Callable, ...]:
  """Each member's device-side input preparation (`data.prepare` with its
  `InputSpec`, cutting its crop from the batch `dataset` delivers); members
  with one spec share one callable, so the fused forward prepares their
  input once."""
  # Images stored at the size read are delivered whole: no crop to correct.
  source_crop = None if fixed_size(dataset.test) else dataset.test.crop_fraction
  by_spec = {}
  return tuple(
    by_spec.setdefault(
      m.inputs, functools.partial(data.prepare, spec=m.inputs, source_crop=source_crop)
    )
    for m in members
  )


def collect(
  members: Sequence[Member],
  dataset: data.Dataset,
  splits: dict[str, data.Split],
  *,
  mesh,
  batch_size: int,
  with_features: bool | str = False,
  forward=None,
) -> LogitsBank:
  """Logits of every member on every split (one fused forward per batch).

  Batches are uint8 at the splits' size; each member's resize and
  normalisation run inside the fused forward. `with_features` also keeps
  member 0's pre-logit features in `bank.features` ("all": every member's,
  in `bank.member_features` too). `forward`: a
  `duo.make_fused_forward` of these members' graphdefs and preprocessing, for
  a caller that scores many models of one architecture (the greedy soup's
  candidates) and would otherwise compile the same program for each.
  Members whose checkpoints predate per-model inputs take `dataset`'s statistics.
  """
  check_members_agree(members)
  members = [with_inputs(m, dataset) for m in members]
  # Members that are one model object (a greedy soup that kept every ingredient
  # is the uniform soup) run once; their rows of the bank are copies.
  models = {}  # id -> (row among the unique models, model)
  rows = [models.setdefault(id(m.model), (len(models), m.model))[0] for m in members]
  unique = [model for _, model in models.values()]
  first_member = {}
  for member, row in zip(members, rows):
    first_member.setdefault(row, member)
  graphdefs, states = duo.split_members(unique)
  if forward is None:
    forward = duo.make_fused_forward(
      graphdefs,
      mesh=mesh,
      with_features=with_features,
      preprocess=preprocessing([first_member[row] for row in range(len(unique))], dataset),
    )
  states = jax.device_put(states, sharding.replicated(mesh))
  bank = LogitsBank(tuple(m.name for m in members))
  for name, split in splits.items():
    batches = data.eval_batches(
      split, global_batch_size=batch_size, sharding=sharding.batch_sharding(mesh)
    )
    out = split_logits(
      forward,
      states,
      batches,
      desc=name,
      total=-(-len(split) // batch_size),
      with_features=with_features,
    )
    logits = out[0] if len(unique) == len(members) else out[0][rows]
    bank.logits[name], bank.labels[name] = logits, out[1]
    if with_features == "all":
      bank.member_features[name] = [out[2][row] for row in rows]
      bank.features[name] = out[2][rows[0]]
    elif with_features:
      bank.features[name] = out[2]
  return bank


def with_files(bank: LogitsBank, files: dict, splits: Iterable[str]) -> LogitsBank:
  """`bank` (possibly of no members) with the logits-file members appended.

  `files`: member name -> `logits_files.LogitsFile`, already checked to hold
  the same rows as the bank's members. Splits are `splits`' names; labels
  come from the bank, else from the first file (OOD rows get label 0).
  """
  if not files:
    return bank
  out = LogitsBank((*bank.member_names, *files))
  first = next(iter(files.values()))
  for split in splits:
    stack = [f.logits[split] for f in files.values()]
    if split in bank.logits:
      if any(z.shape != bank.logits[split].shape[1:] for z in stack):
        raise ConfigError(
          f"the logits files' {split} logits are {[z.shape for z in stack]}, "
          f"the models' {bank.logits[split].shape[1:]}: not the same rows and "
          "classes"
        )
      out.labels[split] = bank.labels[split]
      out.logits[split] = np.concatenate([bank.logits[split], np.stack(stack)])
    else:
      out.labels[split] = (
        first.labels[split] if split in first.labels else np.zeros(len(stack[0]), np.int32)
      )
      out.logits[split] = np.stack(stack)
  out.features = bank.features
  out.member_features = {
    split: [*feats, *(None for _ in files)] for split, feats in bank.member_features.items()
  }
  return out
