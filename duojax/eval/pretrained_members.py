"""Members given as PyTorch-layout safetensors files: `pretrained:MODEL[@SIZE][:LAYOUT]:PATH`.

A model trained elsewhere (timm, torchvision, Hugging Face) is evaluated as the
duojax model MODEL holding the file's weights, loaded by the converter
(`duojax.convert.load_pretrained`: LAYOUT is timm, torchvision or hf, else
told from the tensor names), with that library's preprocessing:

  * its images' side is SIZE, else a ViT's own (its file's position-embedding
    grid times the patch), else the model's nominal 224;
  * their normalisation is the file library's for the model family
    (`data.pretrained_stats`: timm and Hugging Face ViTs and Hugging Face
    MobileNetV2s 0.5 / 0.5, the convolutional families ImageNet's; a Hugging
    Face `preprocessor_config.json` beside the file wins); a file of other
    than RGB images takes the data set's statistics, as training does;
  * the model options its weights need beyond their names are taken from
    the file (Hugging Face's MobileNetV2 and EfficientNet, and timm's `tf_`
    EfficientNets by the `config.json` beside them: TensorFlow's padding and
    BatchNorm eps; timm's MobileNetV3: BatchNorm eps 1e-5);
  * their crop and resize filter are what a `preprocessor_config.json` or a
    timm `config.json` beside the file says (`data.pretrained_view`: timm's
    `crop_pct` and `interpolation`), else for a torchvision file those of
    torchvision's weights of the model (`data.preprocess.TORCHVISION_INPUTS`); what they
    do not say, the evaluation config's `crop_fraction` and `interpolation` give.

Its class count and image channels are the file's (its head and its stem), so
the evaluation can check them against the data set's. `inspect` reads only the
file's header, for checks before any work; `load_pretrained_member` reads
the weights.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
from flax import nnx

from duojax import data, models
from duojax.convert import file_options, layouts, safetensors_io
from duojax.convert import pretrained as convert
from duojax.errors import ConfigError, WeightsMismatchError
from duojax.eval.members import PRETRAINED, Member, model_flops
from duojax.models import vit
from duojax.parallel import sharding

PREFIX = "pretrained:"
FORM = "pretrained:MODEL[@SIZE]:PATH or pretrained:MODEL[@SIZE]:LAYOUT:PATH"


@dataclasses.dataclass(frozen=True)
class PretrainedSpec:
  """A parsed `pretrained:` member: duojax model name, layout ("auto": detected), file."""

  model_name: str
  layout: str
  path: str
  image_size: int | None = None  # None: the file's (ViTs) or the model's nominal side


def is_pretrained(spec: str) -> bool:
  return spec.startswith(PREFIX)


def parse(spec: str) -> PretrainedSpec:
  """The parts of a `pretrained:` member spec; ConfigError (one line) if malformed.

  A path may hold colons: only a first part after MODEL that is a layout name
  is taken as the layout.
  """
  model, _, rest = spec[len(PREFIX) :].partition(":")
  first, sep, after = rest.partition(":")
  layout, path = (first, after) if sep and first in (*layouts.LAYOUTS, "auto") else ("auto", rest)
  name, at, size = model.partition("@")
  if not name or not path:
    raise ConfigError(f"member {spec!r} is not {FORM}")
  if at and not (size.isdigit() and int(size) > 0):
    raise ConfigError(
      f"member {spec!r}: @{size} must be the image side in pixels, a positive integer"
    )
  return PretrainedSpec(name, layout, os.path.expanduser(path), int(size) if at else None)


def inspect(spec: PretrainedSpec, *, where: str) -> tuple[str, int, dict]:
  """(layout, class count, `get_model` overrides) of `spec`, from its file's header alone.

  Raises a one-line error (prefixed by `where`) for a file that is missing or
  not safetensors, an unknown model or layout, or a file that does not hold
  this model in this layout (tensors it lacks, a head or stem of no shape).
  """
  shapes = safetensors_io.read_shapes(spec.path)
  layout = spec.layout if spec.layout != "auto" else layouts.detect(list(shapes))
  if layout is None:
    raise WeightsMismatchError(
      f"{where}: cannot tell the layout of {spec.path!r} from its tensor names; name it: "
      f"pretrained:{spec.model_name}:LAYOUT:PATH with LAYOUT one of "
      f"{', '.join(layouts.LAYOUTS)}"
    )
  size = {} if spec.image_size is None else {"image_size": spec.image_size}
  # What the weights need beyond their names (Hugging Face's TensorFlow padding, ...).
  size.update(file_options.file_overrides(spec.model_name, spec.path, layout, shapes))
  try:
    # Shapes only: the entries and sizes of the model, no weights made.
    model = nnx.eval_shape(lambda: models.get_model(spec.model_name, 1, rngs=0, **size))
    entries = convert.entries_for(model, layout, list(shapes))
  except ValueError as e:
    raise type(e)(f"{where}: {e}") from None
  missing = [k for entry in entries for k in entry.file_keys if k not in shapes]
  if missing:
    raise WeightsMismatchError(
      f"{where}: {spec.path!r} does not hold a {model.name} in layout {layout}: it lacks "
      f"{len(missing)} of its tensors ({', '.join(missing[:3])}"
      f"{', …' if len(missing) > 3 else ''})"
    )
  by_path = {entry.paths[0]: entry for entry in entries}
  head = shapes[by_path["head.kernel"].file_keys[0]]  # PyTorch [classes, features]
  stem = shapes[(by_path.get("stem_conv.kernel") or by_path["patch_embed.kernel"]).file_keys[0]]
  if len(head) != 2 or len(stem) != 4 or min(*head, stem[1]) < 1:
    raise WeightsMismatchError(
      f"{where}: {spec.path!r} has a head of shape {head} and a stem of shape {stem}; "
      "expected [classes, features] and [out, channels, height, width]"
    )
  side = spec.image_size or _nominal_size(model, entries, shapes)
  return layout, int(head[0]), {**size, "image_size": side, "in_channels": int(stem[1])}


def _nominal_size(model, entries, shapes) -> int:
  """A ViT's side from its file's token grid (a 384-px file is 384 px); else the model's.

  The file's position embeddings cover the grid plus the prefix tokens that carry one:
  the class token, a distilled model's second token, none for SigLIP; a layout may embed
  a prefix the model does not (Hugging Face's DINOv2 with registers), so the first
  prefix count that leaves a square grid wins, the model's own first."""
  if isinstance(model, vit.VisionTransformer):
    posemb = next(shapes[e.file_keys[-1]] for e in entries if e.kind == "posemb")
    tokens = posemb[-2] if len(posemb) == 3 else 0
    for prefix in dict.fromkeys((model.num_embedded_prefix, 1, 2, 0)):
      side = math.isqrt(max(tokens - prefix, 0))
      if side > 0 and side * side == tokens - prefix:
        return side * model.patch_size
  return int(model.image_size[0])


def load_pretrained_member(
  name: str, spec: PretrainedSpec, *, where: str | None = None, mesh=None
) -> Member:
  """The member `spec` names, its weights loaded, replicated over `mesh` when given.

  Its meta carries what the evaluation reads of a member (model name, class
  count, image shape, input size and normalisation) and "pretrained" (the
  file and layout); "dataset" is None until the evaluation names the one it
  reads (`data_spec.adopt_dataset`), and there is no training "config".
  """
  where = where or f"member {name!r}"
  layout, num_classes, overrides = inspect(spec, where=where)
  model = models.get_model(spec.model_name, num_classes, rngs=0, **overrides)
  convert.load_pretrained(model, spec.path, layout)
  family = models.family_name(model.name)
  mean, std, source = data.pretrained_stats(layout, family, spec.path, model.name)
  view, view_file = data.pretrained_view(spec.path, layout, model.name)
  side, channels = overrides["image_size"], overrides["in_channels"]
  inputs = data.InputSpec(side, tuple(mean), tuple(std), source, **view)
  if len(mean) == channels:
    try:
      inputs.check(channels)
    except ValueError as e:
      beside = f" (from the {view_file} beside it)" if view_file else ""
      raise WeightsMismatchError(f"{where}: {spec.path!r}: {e}{beside}") from None
  flops = model_flops(model, (side, side, channels))
  if mesh is not None:
    nnx.update(model, jax.device_put(nnx.state(model), sharding.replicated(mesh)))
  meta = {
    "model_name": model.name,
    "model_overrides": overrides,
    "num_classes": num_classes,
    "image_shape": [side, side, channels],
    "dataset": None,
    "step": None,
    "pretrained": {"path": os.path.abspath(spec.path), "layout": layout},
  }
  if len(mean) == channels:
    # Keys the files do not say are left out: the evaluation fills them from
    # its config (`members.with_inputs`).
    unsaid = {"crop_fraction", "interpolation"} - set(view)
    meta["input"] = {k: v for k, v in inputs.as_meta().items() if k not in unsaid}
  # else the libraries' statistics (RGB) do not apply: the evaluation gives it
  # the data set's (`members.with_inputs`), as training does such a file.
  return Member(name, model, meta, flops, PRETRAINED)
