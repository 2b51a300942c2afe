"""The trained models an evaluation compares: restored, checked, and their cost.

A `Member` is one model the logits bank runs: restored from a training
workdir (`load_member`), or built from others (the soups). Members must see
the same images and predict the same label set (`check_members_agree`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from flax import nnx

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


def load_member(name: str, workdir: str, *, mesh=None) -> Member:
  """A trained model, replicated over `mesh` when given (needed across hosts)."""
  model, meta = checkpoint.load_model(
      workdir, sharding=None if mesh is None else sharding.replicated(mesh))
  graphdef, params, batch_stats = functional.split_model(model)
  flops = functional.flops_per_image(graphdef, params, batch_stats, tuple(meta["image_shape"]))
  return Member(name, model, meta, flops)


def check_members_agree(members: Sequence[Member]) -> None:
  """All members must see the same images and predict the same label set."""
  first = members[0]
  for member in members[1:]:
    for key in ("num_classes", "image_shape", "dataset"):
      if member.meta.get(key) != first.meta.get(key):
        raise ValueError(
            f"members disagree on {key}: {first.name!r} has {first.meta.get(key)!r}, "
            f"{member.name!r} has {member.meta.get(key)!r}")


def soup_members(workdirs: Sequence[str], large: Member, val_accuracy: Callable[[Member], float],
                 *, mesh=None) -> list[Member]:
  """Uniform and greedy soups of the fine-tunes in `workdirs` (of `large`).

  `val_accuracy(member)` scores a candidate soup for the greedy recipe
  (`core.soups.greedy`); both soups cost what the large model costs.
  """
  ingredients = [load_member(f"ingredient#{i}", w, mesh=mesh)
                 for i, w in enumerate(workdirs)]
  check_members_agree([large, *ingredients])
  models = [m.model for m in ingredients]
  uniform = soups.average(models)
  score = lambda model: val_accuracy(Member("candidate", model, large.meta))
  greedy, kept = soups.greedy(models, score)
  if kept == list(range(len(models))):
    greedy = uniform  # the same average: one model, so its logits are computed once
  return [Member("soup (uniform)", uniform, large.meta, large.flops),
          Member("soup (greedy)", greedy, large.meta, large.flops)]
