"""Load PyTorch-layout safetensors checkpoints into duojax models, and export back.

    model = models.get_model("vit_b16", 10, rngs=0)
    info = load_pretrained(model, "vit_base_patch16_224.safetensors", head="fresh")
    export_pretrained(model, "finetuned.safetensors", layout="timm")

Loading checks every tensor: names the layout expects but the file lacks,
names the file holds that the layout does not use, and shapes that do not
fit are all reported in one error. Two mismatches are fine-tuning routine and
have their own handling: a classifier head for another class count (kept
freshly initialised with `head="fresh"`, big_vision's `dont_load`), and ViT
position embeddings for another token grid (resampled bilinearly).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from duojax.convert import (
  layouts,
  layouts_convnext,
  layouts_efficientnet,
  layouts_mobile,
  layouts_swin,
  layouts_vit,
  safetensors_io,
)
from duojax.errors import WeightsMismatchError
from duojax.models import convnext, efficientnet, resnet, swin, vit, vit_posemb

HEAD_MODES = ("load", "fresh")


def _key_name(key) -> str:
  return str(getattr(key, "key", getattr(key, "idx", key)))


def flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
  """Parameters and batch statistics by dotted name ("stages.0.1.conv1.kernel")."""
  pure = nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))
  leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
  return {".".join(_key_name(k) for k in path): np.asarray(v) for path, v in leaves}


def _set_flat(model: nnx.Module, values: dict[str, np.ndarray]) -> None:
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  pure = nnx.to_pure_dict(state)

  def replace(path, leaf):
    name = ".".join(_key_name(k) for k in path)
    if name not in values:
      return leaf
    return jax.numpy.asarray(values[name], dtype=leaf.dtype)

  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(replace, pure))
  nnx.update(model, state)


def _family(model: nnx.Module) -> str:
  if isinstance(model, resnet.ResNet):
    return "resnet"
  if isinstance(model, vit.VisionTransformer):
    return "vit"
  if isinstance(model, convnext.ConvNeXt):
    return "convnext"
  if isinstance(model, efficientnet.EfficientNet):
    return "efficientnet"
  if isinstance(model, swin.SwinV2):
    return "swin"
  if (found := layouts_mobile.family(model)) is not None:
    return found
  raise WeightsMismatchError(
    f"{getattr(model, 'name', type(model).__name__)}: only ResNets and ViTs load "
    "PyTorch-layout checkpoints"
  )


def entries_for(model: nnx.Module, layout: str, file_keys=(), names=None) -> list[layouts.Entry]:
  """The layout's entries for `model`; `file_keys` picks among a layout's spellings.

  `names`: the model's flat state names, when the caller already has them.
  """
  if layout not in layouts.LAYOUTS:
    raise WeightsMismatchError(
      f"unknown layout {layout!r}; valid: {', '.join(layouts.LAYOUTS)}, auto"
    )
  names = list(flat_state(model) if names is None else names)
  try:
    if _family(model) == "resnet":
      return layouts.resnet_entries(names, layout)
    if _family(model) == "convnext":
      return layouts_convnext.entries(names, layout)
    if _family(model) == "swin":
      return layouts_swin.entries(model, names, layout)
    if _family(model) == "efficientnet":
      return layouts_efficientnet.entries(names, layout, padding=model.padding)
    if (found := layouts_mobile.entries(model, names, layout)) is not None:
      return found
    return layouts_vit.entries(model, names, layout, file_keys)
  except ValueError as e:
    raise WeightsMismatchError(f"{model.name}: {e}") from None


def resample_posemb(posemb: np.ndarray, grid_hw: tuple[int, int], num_prefix: int) -> np.ndarray:
  """[1, prefix + n*n, D] position embeddings resized (bilinear) to a gh x gw grid.

  The `num_prefix` leading tokens (the class token) are kept as they are; the
  variants' bicubic resamplings are `duojax.models.vit_posemb.resample`'s other methods.
  """
  return vit_posemb.resample(posemb, grid_hw, num_prefix, "bilinear")


def _shorten(items: list[str], limit: int = 4) -> str:
  shown = ", ".join(items[:limit])
  return shown + (f", … ({len(items) - limit} more)" if len(items) > limit else "")


def _check_family(path: str, model, keys) -> None:
  family = _family(model)
  looks_vit = any(
    k.endswith(("patch_embed.proj.weight", "patch_embeddings.projection.weight")) for k in keys
  )
  looks_resnet = any(
    k in ("conv1.weight", "resnet.embedder.embedder.convolution.weight") for k in keys
  )
  if family == "vit" and looks_resnet and not looks_vit:
    raise WeightsMismatchError(f"{path!r} holds a ResNet, but the model {model.name} is a ViT")
  if family == "resnet" and looks_vit and not looks_resnet:
    raise WeightsMismatchError(f"{path!r} holds a ViT, but the model {model.name} is a ResNet")
  _check_conv_family(path, model, family, keys, looks_vit, looks_resnet)
  if family == "vit" and (looks_vit or layouts_vit.detect(keys)):
    layouts_vit.check_variant(path, model, keys)


_CONV_FAMILIES = {
  **layouts_mobile.CONV_FAMILIES,  # first: EfficientNet's detector takes MobileNetV3 files too
  "convnext": ("a ConvNeXt", layouts_convnext.detect),
  "efficientnet": ("an EfficientNet", layouts_efficientnet.detect),
  "swin": ("a Swin-V2", layouts_swin.detect),
}
_FAMILY_WORDS = {
  "vit": "a ViT",
  "resnet": "a ResNet",
  **{f: w for f, (w, _) in _CONV_FAMILIES.items()},
}


def _check_conv_family(path, model, family, keys, looks_vit, looks_resnet) -> None:
  """One line for a ConvNeXt or EfficientNet file into another family's model, or back."""
  held = [f for f, (_, detect) in _CONV_FAMILIES.items() if detect(keys) is not None]
  held += ["vit"] * (looks_vit and not held) + ["resnet"] * (looks_resnet and not held)
  if held and family not in held and (family in _CONV_FAMILIES or held[0] in _CONV_FAMILIES):
    raise WeightsMismatchError(
      f"{path!r} holds {_FAMILY_WORDS[held[0]]}, but the model {model.name} is "
      f"{_FAMILY_WORDS[family]}"
    )


def load_pretrained(
  model: nnx.Module, path: str, layout: str = "auto", *, head: str = "load"
) -> dict[str, Any]:
  """Loads `path` into `model` in place; returns what was done.

  `head="fresh"` keeps the model's own (freshly initialised) classifier head,
  for a task with other classes; with "load" a head of another class count is
  an error. Nothing in `model` changes unless every tensor fits.
  """
  if head not in HEAD_MODES:
    raise WeightsMismatchError(f"unknown head mode {head!r}; valid: {', '.join(HEAD_MODES)}")
  tensors, _ = safetensors_io.read(path)
  _check_family(path, model, tensors)
  if layout == "auto":
    layout = layouts.detect(list(tensors))
    if layout is None:
      raise WeightsMismatchError(
        f"cannot tell the layout of {path!r} from its tensor names (e.g. "
        f"{_shorten(sorted(tensors), 3)}); pass one of {', '.join(layouts.LAYOUTS)}"
      )
  current = flat_state(model)
  missing, misshaped, used = [], [], set()
  new_values, info = {}, {"layout": layout, "fresh_head": head == "fresh", "resampled_posemb": None}
  entries = entries_for(model, layout, list(tensors), names=list(current))
  for entry in entries:
    if entry.kind == "head" and head == "fresh":
      used.update(entry.file_keys)
      continue
    absent = [k for k in entry.file_keys if k not in tensors]
    if absent:
      missing += absent
      continue
    used.update(entry.file_keys)
    shapes = [current[p].shape for p in entry.paths]
    arrays = [np.asarray(tensors[k], np.float32) for k in entry.file_keys]
    try:
      converted = entry.to_duojax(arrays, shapes)
    except ValueError:
      # PyTorch heads are [classes, features]; other features are a mis-shaped tensor.
      if entry.kind == "head" and arrays[0].shape[0] != shapes[0][-1]:
        raise WeightsMismatchError(
          f"{path!r} has a {arrays[0].shape[0]}-class head but the model has "
          f"{shapes[0][-1]} classes; keep a fresh head with head='fresh' "
          "(--config.init_head=fresh)"
        ) from None
      misshaped.append(
        f"{'+'.join(entry.file_keys)} {[a.shape for a in arrays]} for {[tuple(s) for s in shapes]}"
      )
      continue
    for p, value, shape in zip(entry.paths, converted, shapes):
      if value.shape == shape:
        new_values[p] = value
      elif entry.kind == "posemb" and value.shape[-1] == shape[-1]:
        new_values[p] = layouts_vit.resample_posemb(model, value, layout)
        info["resampled_posemb"] = (tuple(value.shape), tuple(shape))
      else:
        misshaped.append(f"{'+'.join(entry.file_keys)} -> {p} {value.shape} vs model {shape}")
  unexpected = sorted(
    k
    for k in tensors
    if k not in used and not layouts.IGNORED.search(k) and not layouts_vit.IGNORED.search(k)
  )
  if head == "load" and any(k in missing for e in entries if e.kind == "head" for k in e.file_keys):
    raise WeightsMismatchError(
      f"{path!r} holds no classifier head for layout {layout}; load with head='fresh' "
      "(--config.init_head=fresh)"
      + (f"; also missing: {_shorten(missing)}" if len(missing) > 2 else "")
    )
  if missing or unexpected or misshaped:
    parts = [
      f"{name} {len(items)}: {_shorten(items)}"
      for name, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", misshaped),
      )
      if items
    ]
    raise WeightsMismatchError(
      f"{path!r} does not fit {model.name} in layout {layout}: " + "; ".join(parts)
    )
  _set_flat(model, new_values)
  info["loaded_tensors"] = len(used)
  return info


def export_pretrained(model: nnx.Module, path: str, layout: str) -> None:
  """Writes `model` as a safetensors file in `layout` (loadable by that library)."""
  current = flat_state(model)
  tensors = {}
  for entry in entries_for(model, layout, names=list(current)):
    for key, value in zip(entry.file_keys, entry.to_file([current[p] for p in entry.paths])):
      integer = np.issubdtype(np.asarray(value).dtype, np.integer)  # (torchvision's Swin index)
      tensors[key] = np.ascontiguousarray(value, dtype=None if integer else np.float32)
      if key.endswith(".running_mean"):
        # PyTorch's BatchNorm state has this counter; strict loaders want it.
        tensors[key[: -len("running_mean")] + "num_batches_tracked"] = np.zeros((), np.int64)
  safetensors_io.write(
    path,
    tensors,
    {"format": "pt", "producer": "duojax", "model_name": model.name, "layout": layout},
  )
