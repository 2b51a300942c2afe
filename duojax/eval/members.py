"""The members an evaluation compares, of every kind, behind one interface.

A `Member` is one row of the logits bank: a model restored from a training
workdir or built from a pretrained file (it gives logits and pre-logit
features on any images), a logits file (logits on its stored splits only),
or a model derived from others (the soups, Hydra's merged models). Whatever
its kind, it has a name, a cost (forward FLOPs per image, NaN when unknown)
and, for models, its input spec; `gives_images` and `stored` say what it can
give, and the evaluation derives from them what cannot run and why
(`why_not`). Model members must see the same data set and predict the same
label set (`check_members_agree`); each takes the images at its own size and
normalisation, made so on the device inside the fused forward.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

from flax import nnx

from duojax import data
from duojax.core import soups
from duojax.errors import ConfigError
from duojax.eval import logits_files
from duojax.models import functional
from duojax.parallel import sharding
from duojax.train import checkpoint

# Member kinds: how the config names them (`member_specs`), plus "derived".
WORKDIR, PRETRAINED, LOGITS, DERIVED = "workdir", "pretrained", "logits", "derived"


@dataclasses.dataclass(frozen=True)
class Member:
  """One member of the evaluation: a model, or the logits a file stores.

  Attributes:
    name: its name in the bank and the report.
    model: the NNX model; None for a logits file.
    meta: what its checkpoint or file records (read only: members are
      replaced, never changed in place): model name, class count, image
      shape, data set, training step and config, "input" (size and
      normalisation), "pretrained" (file and layout).
    flops: forward FLOPs per image (XLA's count; NaN: unknown).
    kind: WORKDIR, PRETRAINED, LOGITS or DERIVED.
    stored: a logits file's logits per split.
  """

  name: str
  model: nnx.Module | None
  meta: dict
  flops: float = float("nan")
  kind: str = WORKDIR
  stored: logits_files.LogitsFile | None = None

  @property
  def gives_images(self) -> bool:
    """Whether it computes logits (and pre-logit features) on any images."""
    return self.model is not None

  @property
  def inputs(self) -> data.InputSpec:
    """Its input size and normalisation (`with_inputs` fills in older checkpoints')."""
    return data.InputSpec.from_meta(self.meta["input"])

  @property
  def num_classes(self) -> int:
    return int(self.meta["num_classes"])


def why_not(large: Member, what: str, *, trained_here: bool = False) -> str | None:
  """Why the large model `large` cannot give `what` ("weights to average",
  "features to fit", ...), for the report's "skipped" line; None if it can.

  `trained_here`: `what` needs a large model trained by duojax (soups average
  its fine-tunes), not one from a pretrained file.
  """
  if not large.gives_images:
    return f"the large model is a logits file: no {what}"
  if trained_here and large.kind == PRETRAINED:
    return (
      "the large model is a pretrained file: soups average fine-tunes of a large model trained here"
    )
  return None


def input_size(member: Member) -> int:
  """The side `member` takes its images at."""
  return int(member.meta.get("input", {}).get("image_size", member.meta["image_shape"][0]))


def input_view(member: Member, crop_fraction: float, interpolation: str) -> tuple[int, float, str]:
  """(side, crop fraction, filter) `member` takes its images at; where its
  meta does not say the crop or filter, `crop_fraction` and `interpolation`."""
  have = member.meta.get("input", {})
  crop = float(have.get("crop_fraction", crop_fraction))
  return input_size(member), crop, str(have.get("interpolation", interpolation))


def with_inputs(
  member: Member,
  dataset: data.Dataset,
  *,
  crop_fraction: float | None = None,
  interpolation: str | None = None,
) -> Member:
  """`member`, its input spec complete: the data set's statistics if its
  checkpoint predates per-model inputs (what it was trained with) or its
  file's library's do not apply (a pretrained file of other than RGB
  images); the crop and filter, where its meta does not say them,
  `crop_fraction` and `interpolation` (default: the data set's test split's)."""
  if not member.gives_images:
    return member
  crop = dataset.test.crop_fraction if crop_fraction is None else crop_fraction
  interpolation = interpolation or dataset.test.interpolation
  view = {"crop_fraction": crop, "interpolation": interpolation}
  if "input" in member.meta:
    if view.keys() <= member.meta["input"].keys():
      return member
    spec = {**view, **member.meta["input"]}
  else:
    spec = data.InputSpec(
      input_size(member),
      tuple(float(v) for v in dataset.mean),
      tuple(float(v) for v in dataset.std),
      "data set",
      crop,
      interpolation,
    ).as_meta()
  return dataclasses.replace(member, meta={**member.meta, "input": spec})


def load_workdir_member(name: str, workdir: str, *, mesh=None) -> Member:
  """A model trained here, replicated over `mesh` when given (needed across hosts)."""
  model, meta = checkpoint.load_model(
    workdir, sharding=None if mesh is None else sharding.replicated(mesh)
  )
  return Member(name, model, meta, model_flops(model, meta["image_shape"]))


def model_flops(model: nnx.Module, image_shape) -> float:
  """Forward FLOPs per image of `model` on images of `image_shape` (H, W, C)."""
  graphdef, params, batch_stats = functional.split_model(model)
  return functional.flops_per_image(graphdef, params, batch_stats, tuple(image_shape))


def check_members_agree(members: Sequence[Member]) -> None:
  """All model members must read the same data set and predict the same label set.

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
        raise ConfigError(
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
  ingredients = [
    load_workdir_member(f"ingredient#{i}", w, mesh=mesh) for i, w in enumerate(workdirs)
  ]
  check_members_agree([large, *ingredients])
  models = [m.model for m in ingredients]
  uniform = soups.average(models)
  score = lambda model: val_accuracy(Member("candidate", model, large.meta))
  greedy, kept = soups.greedy(models, score)
  if kept == list(range(len(models))):
    greedy = uniform  # the same average: one model, so its logits are computed once
  return [
    Member("soup (uniform)", uniform, large.meta, large.flops, DERIVED),
    Member("soup (greedy)", greedy, large.meta, large.flops, DERIVED),
  ]
