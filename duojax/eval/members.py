"""The trained models an evaluation compares: restored, checked, and their cost.

A `Member` is one model the logits bank runs: restored from a training
workdir (`load_member`), or built from others (the soups). Members must see
the same data set and predict the same label set (`check_members_agree`);
each takes the images at its own size and normalisation (`Member.inputs`,
from its checkpoint), made so on the device inside the fused forward.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from flax import nnx

from duojax import data
from duojax.core import soups
from duojax.models import functional
from duojax.parallel import sharding
from duojax.train import checkpoint


@dataclasses.dataclass
class Member:
  """A trained model to evaluate, with its cost."""

  name: str
  model: nnx.Module
  meta: dict
  flops: float = float("nan")  # forward FLOPs per image (XLA cost analysis)

  @property
  def inputs(self) -> data.InputSpec:
    """Its input size and normalisation (`with_inputs` fills in older checkpoints')."""
    return data.InputSpec.from_meta(self.meta["input"])


def input_size(member: Member) -> int:
  """The side `member` takes its images at."""
  return int(member.meta.get("input", {}).get("image_size", member.meta["image_shape"][0]))


def with_inputs(members: Sequence[Member], dataset: data.Dataset) -> None:
  """Gives members whose checkpoints predate per-model inputs the data set's
  statistics, which is what they were trained with."""
  for member in members:
    if "input" not in member.meta:
      spec = data.InputSpec(
        input_size(member),
        tuple(float(v) for v in dataset.mean),
        tuple(float(v) for v in dataset.std),
        "data set",
      )
      member.meta = {**member.meta, "input": spec.as_meta()}


def load_member(name: str, workdir: str, *, mesh=None) -> Member:
  """A trained model, replicated over `mesh` when given (needed across hosts)."""
  model, meta = checkpoint.load_model(
    workdir, sharding=None if mesh is None else sharding.replicated(mesh)
  )
  graphdef, params, batch_stats = functional.split_model(model)
  flops = functional.flops_per_image(graphdef, params, batch_stats, tuple(meta["image_shape"]))
  return Member(name, model, meta, flops)


def check_members_agree(members: Sequence[Member]) -> None:
  """All members must read the same data set and predict the same label set.

  Their input sizes may differ: each member's images are resized to its own.
  """
  first = members[0]
  channels = lambda m: m.meta["image_shape"][2]
  for member in members[1:]:
    for key, value in (
      ("num_classes", lambda m: m.meta.get("num_classes")),
      ("dataset", lambda m: m.meta.get("dataset")),
      ("image channels", channels),
    ):
      if value(member) != value(first):
        raise ValueError(
          f"members disagree on {key}: {first.name!r} has {value(first)!r}, "
          f"{member.name!r} has {value(member)!r}"
        )


def soup_members(
  workdirs: Sequence[str], large: Member, val_accuracy: Callable[[Member], float], *, mesh=None
) -> list[Member]:
  """Uniform and greedy soups of the fine-tunes in `workdirs` (of `large`).

  `val_accuracy(member)` scores a candidate soup for the greedy recipe
  (`core.soups.greedy`); both soups cost what the large model costs.
  """
  ingredients = [load_member(f"ingredient#{i}", w, mesh=mesh) for i, w in enumerate(workdirs)]
  check_members_agree([large, *ingredients])
  models = [m.model for m in ingredients]
  uniform = soups.average(models)
  score = lambda model: val_accuracy(Member("candidate", model, large.meta))
  greedy, kept = soups.greedy(models, score)
  if kept == list(range(len(models))):
    greedy = uniform  # the same average: one model, so its logits are computed once
  return [
    Member("soup (uniform)", uniform, large.meta, large.flops),
    Member("soup (greedy)", greedy, large.meta, large.flops),
  ]
