"""EfficientNet and EfficientNetV2 tensor names in torchvision, timm and Hugging Face files.

duojax's blocks (`duojax.models.efficientnet`) are `stages.i.j`, with convs
`expand_conv`, `dw_conv`, `project_conv` (MBConv) or `fused_conv`,
`project_conv` (Fused-MBConv), each followed by its BatchNorm (`*_bn`), and
`se.reduce` / `se.expand` (1×1 convs with bias). The libraries name them:

  * torchvision: `features.0` (stem), `features.{i+1}.j.block.k` with k counting
    the block's layers in order (expansion if any, depthwise, SE as `fc1`/`fc2`,
    projection), each conv+BN pair as `.0`/`.1`; `features.{n+1}` the head
    conv, `classifier.1` the linear head;
  * timm: `conv_stem`/`bn1`, `blocks.i.j` with `conv_pw`/`bn1`, `conv_dw`/`bn2`,
    `se.conv_reduce`/`se.conv_expand`, `conv_pwl`/`bn3` (MBConv; at expansion 1
    `conv_dw`/`bn1`, `conv_pw`/`bn2`), `conv_exp`/`bn1`, `conv_pwl`/`bn2`
    (Fused-MBConv; at expansion 1 `conv`/`bn1`), `conv_head`/`bn2`, `classifier`;
  * Hugging Face (B0–B7 only): `efficientnet.embeddings.convolution`/`batchnorm`,
    blocks numbered through the network, `efficientnet.encoder.blocks.k.`
    `expansion.expand_conv`/`expand_bn`, `depthwise_conv.depthwise_conv`/
    `depthwise_norm`, `squeeze_excite.reduce`/`expand`, `projection.project_conv`/
    `project_bn`; `efficientnet.encoder.top_conv`/`top_bn`, `classifier`.

The names do not say how a file pads: Hugging Face's EfficientNets (ported
from TensorFlow) always pad "same", with BatchNorm eps 1e-3, and so do timm's
`tf_` models; `file_overrides` gives the model options such a file needs.
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

from duojax.convert.entries import Entry, _bias, _conv, _linear, _norm
from duojax.errors import WeightsMismatchError
from duojax.models import efficientnet

_BLOCK_RE = re.compile(r"^stages\.(\d+)\.(\d+)\.")
# What TensorFlow's ports need (Hugging Face's, timm's `tf_*`).
TF_OVERRIDES = {"padding": "same", "bn_eps": 1e-3}


def _pair(ours: str, conv: str, bn: str) -> list[Entry]:
  """A bias-free conv and its BatchNorm."""
  return [Entry((f"{conv}.weight",), (f"{ours}_conv.kernel",), **_conv())] + _norm(
    f"{ours}_bn", bn, batch=True
  )


def _conv_bias(ours: str, theirs: str) -> list[Entry]:
  return [
    Entry((f"{theirs}.weight",), (f"{ours}.kernel",), **_conv()),
    Entry((f"{theirs}.bias",), (f"{ours}.bias",), **_bias()),
  ]


def _block(names, ours: str, theirs: str, layout: str) -> list[Entry]:
  """One block's entries; which layers it has is read from the duojax names."""
  has = lambda layer: f"{ours}.{layer}.kernel" in names
  out = []
  if has("fused_conv"):  # Fused-MBConv
    if layout == "hf":
      raise WeightsMismatchError(
        "Hugging Face's EfficientNet has no Fused-MBConv (EfficientNetV2) blocks"
      )
    if layout == "torchvision":
      out += _pair(f"{ours}.fused", f"{theirs}.block.0.0", f"{theirs}.block.0.1")
      if has("project_conv"):
        out += _pair(f"{ours}.project", f"{theirs}.block.1.0", f"{theirs}.block.1.1")
    elif has("project_conv"):
      out += _pair(f"{ours}.fused", f"{theirs}.conv_exp", f"{theirs}.bn1")
      out += _pair(f"{ours}.project", f"{theirs}.conv_pwl", f"{theirs}.bn2")
    else:
      out += _pair(f"{ours}.fused", f"{theirs}.conv", f"{theirs}.bn1")
    return out
  expand = has("expand_conv")
  if layout == "torchvision":
    k = 0
    if expand:
      out += _pair(f"{ours}.expand", f"{theirs}.block.0.0", f"{theirs}.block.0.1")
      k = 1
    out += _pair(f"{ours}.dw", f"{theirs}.block.{k}.0", f"{theirs}.block.{k}.1")
    se, project = f"{theirs}.block.{k + 1}.fc1", f"{theirs}.block.{k + 1}.fc2"
    out += _conv_bias(f"{ours}.se.reduce", se) + _conv_bias(f"{ours}.se.expand", project)
    return out + _pair(f"{ours}.project", f"{theirs}.block.{k + 2}.0", f"{theirs}.block.{k + 2}.1")
  if layout == "hf":
    if expand:
      out += _pair(
        f"{ours}.expand", f"{theirs}.expansion.expand_conv", f"{theirs}.expansion.expand_bn"
      )
    out += _pair(
      f"{ours}.dw",
      f"{theirs}.depthwise_conv.depthwise_conv",
      f"{theirs}.depthwise_conv.depthwise_norm",
    )
    out += _conv_bias(f"{ours}.se.reduce", f"{theirs}.squeeze_excite.reduce")
    out += _conv_bias(f"{ours}.se.expand", f"{theirs}.squeeze_excite.expand")
    return out + _pair(
      f"{ours}.project", f"{theirs}.projection.project_conv", f"{theirs}.projection.project_bn"
    )
  if expand:  # timm's InvertedResidual
    out += _pair(f"{ours}.expand", f"{theirs}.conv_pw", f"{theirs}.bn1")
    out += _pair(f"{ours}.dw", f"{theirs}.conv_dw", f"{theirs}.bn2")
    pw, pw_bn = f"{theirs}.conv_pwl", f"{theirs}.bn3"
  else:  # timm's DepthwiseSeparableConv
    out += _pair(f"{ours}.dw", f"{theirs}.conv_dw", f"{theirs}.bn1")
    pw, pw_bn = f"{theirs}.conv_pw", f"{theirs}.bn2"
  out += _conv_bias(f"{ours}.se.reduce", f"{theirs}.se.conv_reduce")
  out += _conv_bias(f"{ours}.se.expand", f"{theirs}.se.conv_expand")
  return out + _pair(f"{ours}.project", pw, pw_bn)


_ENDS = {
  # stem conv, stem BN, head conv, head BN, classifier (torchvision's head conv: below)
  "torchvision": ("features.0.0", "features.0.1", None, None, "classifier.1"),
  "timm": ("conv_stem", "bn1", "conv_head", "bn2", "classifier"),
  "hf": (
    "efficientnet.embeddings.convolution",
    "efficientnet.embeddings.batchnorm",
    "efficientnet.encoder.top_conv",
    "efficientnet.encoder.top_bn",
    "classifier",
  ),
}


def entries(names: Sequence[str], layout: str, padding: str = "same") -> list[Entry]:
  """The entries of a duojax EfficientNet whose flat state names are `names`;
  `padding` is the model's, refused for a Hugging Face file unless "same"."""
  if layout == "hf" and padding != "same":
    raise WeightsMismatchError(
      "Hugging Face's EfficientNets pad as TensorFlow does: build the model with "
      "padding='same', bn_eps=1e-3"
    )
  blocks = sorted({tuple(map(int, m.groups())) for m in map(_BLOCK_RE.match, names) if m})
  num_stages = 1 + max(i for i, _ in blocks)
  stem_conv, stem_bn, head_conv, head_bn, head = _ENDS[layout]
  if layout == "torchvision":
    head_conv, head_bn = f"features.{num_stages + 1}.0", f"features.{num_stages + 1}.1"
  out = _pair("stem", stem_conv, stem_bn)
  for k, (i, j) in enumerate(blocks):
    theirs = {
      "torchvision": f"features.{i + 1}.{j}",
      "timm": f"blocks.{i}.{j}",
      "hf": f"efficientnet.encoder.blocks.{k}",
    }[layout]
    out += _block(names, f"stages.{i}.{j}", theirs, layout)
  out += _pair("head", head_conv, head_bn)
  return out + _linear("head", head, kind="head")


def detect(keys) -> str | None:
  """The layout of an EfficientNet file, from its tensor names; None if it holds none."""
  if any(k.startswith("efficientnet.") for k in keys):
    return "hf"
  if "conv_stem.weight" in keys and any(k.startswith("blocks.") for k in keys):
    return "timm"
  if "features.0.0.weight" in keys and any(".block." in k for k in keys):
    return "torchvision"
  return None


def file_overrides(model_name: str, layout: str, path: str) -> dict:
  """Model options an EfficientNet file's weights need beyond its names: TensorFlow's
  padding and BatchNorm eps for Hugging Face's files, and for timm's `tf_*` models (told
  by the `architecture` of a timm `config.json` beside the file); {} for other models."""
  if model_name not in efficientnet.CONFIGS:
    return {}
  if layout == "hf":
    return dict(TF_OVERRIDES)
  if layout == "timm":
    try:
      with open(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")) as f:
        config = json.load(f)
    except (OSError, ValueError):
      return {}
    arch = config.get("architecture", "") if isinstance(config, dict) else ""
    if isinstance(arch, str) and arch.startswith("tf_"):
      return dict(TF_OVERRIDES)
  return {}
