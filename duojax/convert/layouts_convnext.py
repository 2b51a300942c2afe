"""ConvNeXt tensor names in torchvision, timm and Hugging Face files.

duojax's names (`duojax.models.convnext`) against each library's:

    duojax                        torchvision              timm                   Hugging Face
    stem_conv / stem_norm         features.0.0 / .1        stem.0 / stem.1        convnext.embeddings.
                                                                                  patch_embeddings / layernorm
    stages.i.downsample_norm      features.{2i}.0          stages.i.downsample.0  convnext.encoder.stages.i.
    stages.i.downsample_conv      features.{2i}.1          stages.i.downsample.1    downsampling_layer.0 / .1
    stages.i.blocks.j.dwconv      features.{2i+1}.j.       stages.i.blocks.j.     ….stages.i.layers.j.
                     .norm          block.0 / .2             conv_dw / norm         dwconv / layernorm
                     .fc1 / .fc2    block.3 / .5             mlp.fc1 / mlp.fc2      pwconv1 / pwconv2
                     .gamma         layer_scale [C, 1, 1]    gamma [C]              layer_scale_parameter [C]
    head_norm / head              classifier.0 / .2        head.norm / head.fc    convnext.layernorm / classifier

(downsampling from the second stage on: i ≥ 1.) The 1×1 convs are linear layers in
all three, so their weights are [out, in] matrices; only torchvision keeps the
layer scale as a [C, 1, 1] tensor.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from duojax.convert.entries import Entry, _bias, _conv, _linear, _norm, _same

_BLOCK_RE = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")


def _conv_bias(ours: str, theirs: str) -> list[Entry]:
  return [
    Entry((f"{theirs}.weight",), (f"{ours}.kernel",), **_conv()),
    Entry((f"{theirs}.bias",), (f"{ours}.bias",), **_bias()),
  ]


def _layer_scale(ours: str, theirs: str, torchvision: bool) -> Entry:
  if not torchvision:
    return Entry((theirs,), (ours,), **_same())
  return Entry(
    (theirs,),
    (ours,),
    to_duojax=lambda a, s: [np.asarray(a[0]).reshape(s[0])],
    to_file=lambda a: [np.asarray(a[0]).reshape(-1, 1, 1)],
  )


def _names(layout: str, i: int, j: int | None = None) -> dict[str, str]:
  """The library's prefixes for stage i (downsampling) or its block j."""
  if layout == "torchvision":
    if j is None:
      return {"downsample_norm": f"features.{2 * i}.0", "downsample_conv": f"features.{2 * i}.1"}
    block = f"features.{2 * i + 1}.{j}"
    return {
      "dwconv": f"{block}.block.0",
      "norm": f"{block}.block.2",
      "fc1": f"{block}.block.3",
      "fc2": f"{block}.block.5",
      "gamma": f"{block}.layer_scale",
    }
  if layout == "timm":
    if j is None:
      return {
        "downsample_norm": f"stages.{i}.downsample.0",
        "downsample_conv": f"stages.{i}.downsample.1",
      }
    block = f"stages.{i}.blocks.{j}"
    return {
      "dwconv": f"{block}.conv_dw",
      "norm": f"{block}.norm",
      "fc1": f"{block}.mlp.fc1",
      "fc2": f"{block}.mlp.fc2",
      "gamma": f"{block}.gamma",
    }
  stage = f"convnext.encoder.stages.{i}"
  if j is None:
    return {
      "downsample_norm": f"{stage}.downsampling_layer.0",
      "downsample_conv": f"{stage}.downsampling_layer.1",
    }
  block = f"{stage}.layers.{j}"
  return {
    "dwconv": f"{block}.dwconv",
    "norm": f"{block}.layernorm",
    "fc1": f"{block}.pwconv1",
    "fc2": f"{block}.pwconv2",
    "gamma": f"{block}.layer_scale_parameter",
  }


_ENDS = {
  "torchvision": ("features.0.0", "features.0.1", "classifier.0", "classifier.2"),
  "timm": ("stem.0", "stem.1", "head.norm", "head.fc"),
  "hf": (
    "convnext.embeddings.patch_embeddings",
    "convnext.embeddings.layernorm",
    "convnext.layernorm",
    "classifier",
  ),
}


def entries(names: Sequence[str], layout: str) -> list[Entry]:
  """The entries of a duojax ConvNeXt whose flat state names are `names`."""
  blocks = sorted(
    {tuple(map(int, m.groups())) for m in map(_BLOCK_RE.match, names) if m},
  )
  stem_conv, stem_norm, head_norm, head = _ENDS[layout]
  out = _conv_bias("stem_conv", stem_conv) + _norm("stem_norm", stem_norm, batch=False)
  for i in sorted({i for i, _ in blocks}):
    if f"stages.{i}.downsample_conv.kernel" in names:
      theirs = _names(layout, i)
      out += _norm(f"stages.{i}.downsample_norm", theirs["downsample_norm"], batch=False)
      out += _conv_bias(f"stages.{i}.downsample_conv", theirs["downsample_conv"])
    for j in sorted(j for s, j in blocks if s == i):
      ours, theirs = f"stages.{i}.blocks.{j}", _names(layout, i, j)
      out += _conv_bias(f"{ours}.dwconv", theirs["dwconv"])
      out += _norm(f"{ours}.norm", theirs["norm"], batch=False)
      out += _linear(f"{ours}.fc1", theirs["fc1"]) + _linear(f"{ours}.fc2", theirs["fc2"])
      out.append(_layer_scale(f"{ours}.gamma", theirs["gamma"], layout == "torchvision"))
  out += _norm("head_norm", head_norm, batch=False)
  return out + _linear("head", head, kind="head")


def detect(keys) -> str | None:
  """The layout of a ConvNeXt file, from its tensor names; None if it holds none."""
  if any(k.startswith("convnext.") for k in keys):
    return "hf"
  if "stem.0.weight" in keys and any(k.endswith(".conv_dw.weight") for k in keys):
    return "timm"
  if "features.0.0.weight" in keys and any(k.endswith(".layer_scale") for k in keys):
    return "torchvision"
  return None
