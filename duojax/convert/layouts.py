"""Name and shape maps between duojax parameters and PyTorch checkpoint layouts.

A layout turns the flat names of a duojax model's state ("stages.0.1.conv2.
kernel", "blocks.3.attn.query.kernel", ...) into `Entry`s: which tensors of
the file hold which duojax arrays, and how to convert them both ways (convs
are OIHW in PyTorch and HWIO here, dense kernels are transposed, timm fuses
q/k/v into one matrix, duojax keeps heads as an axis).

Layouts:
  * "timm": timm's VisionTransformer (every variant: `layouts_vit`) and
    timm's ResNet, whose names are torchvision's;
  * "torchvision": torchvision's ResNet (`conv1`, `bn1`, `layer1.0.conv1`, ...,
    `fc`);
  * "hf": Hugging Face `ViTForImageClassification` (and the CLIP, DINOv2,
    DeiT and SigLIP towers: `layouts_vit`) and `ResNetForImageClassification`.
"""

from __future__ import annotations

import re
from typing import Sequence

from duojax.convert import (
  layouts_convnext,
  layouts_efficientnet,
  layouts_mobile,
  layouts_swin,
  layouts_vit,
)
from duojax.convert.entries import (  # noqa: F401 -- the family modules' pieces, here too
  Arrays,
  Entry,
  _bias,
  _conv,
  _dense,
  _fused_qkv,
  _linear,
  _norm,
  _same,
)

LAYOUTS = ("timm", "torchvision", "hf")


# ----------------------------------------------------------------------------
# ResNet.

_BLOCK_RE = re.compile(r"^stages\.(\d+)\.(\d+)\.")


def resnet_entries(names: Sequence[str], layout: str) -> list[Entry]:
  blocks = sorted(
    {m.groups() for m in map(_BLOCK_RE.match, names) if m}, key=lambda g: (int(g[0]), int(g[1]))
  )
  hf = layout == "hf"
  entries = []
  stem_conv = "resnet.embedder.embedder.convolution" if hf else "conv1"
  stem_bn = "resnet.embedder.embedder.normalization" if hf else "bn1"
  entries.append(Entry((f"{stem_conv}.weight",), ("stem_conv.kernel",), **_conv()))
  entries += _norm("stem_bn", stem_bn, batch=True)
  for stage, block in blocks:
    ours = f"stages.{stage}.{block}"
    conv_re = re.compile(rf"^{re.escape(ours)}\.conv(\d+)\.kernel$")
    convs = sorted(int(m.group(1)) for m in map(conv_re.match, names) if m)
    theirs = (
      f"resnet.encoder.stages.{stage}.layers.{block}" if hf else f"layer{int(stage) + 1}.{block}"
    )
    for k in convs:
      conv, bn = (
        (f"{theirs}.layer.{k - 1}.convolution", f"{theirs}.layer.{k - 1}.normalization")
        if hf
        else (f"{theirs}.conv{k}", f"{theirs}.bn{k}")
      )
      entries.append(Entry((f"{conv}.weight",), (f"{ours}.conv{k}.kernel",), **_conv()))
      entries += _norm(f"{ours}.bn{k}", bn, batch=True)
    if f"{ours}.shortcut.conv.kernel" in names:
      conv, bn = (
        (f"{theirs}.shortcut.convolution", f"{theirs}.shortcut.normalization")
        if hf
        else (f"{theirs}.downsample.0", f"{theirs}.downsample.1")
      )
      entries.append(Entry((f"{conv}.weight",), (f"{ours}.shortcut.conv.kernel",), **_conv()))
      entries += _norm(f"{ours}.shortcut.bn", bn, batch=True)
  entries += _linear("head", "classifier.1" if hf else "fc", kind="head")
  return entries


# ----------------------------------------------------------------------------
# ViT: every variant's layouts are in `layouts_vit` (`layouts_vit.entries`).


# Tensors a file may hold that carry nothing duojax needs.
IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


def detect(keys: Sequence[str]) -> str | None:
  """The layout whose names a file's keys use, or None."""
  keys = set(keys)
  if any(k.startswith(("vit.embeddings.", "resnet.embedder.")) for k in keys):
    return "hf"
  if "patch_embed.proj.weight" in keys:
    return "timm"
  if (found := layouts_vit.detect(keys)) is not None:  # CLIP, DINOv2, DeiT, SigLIP
    return found
  if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
    return "torchvision"
  for family in (layouts_swin, layouts_convnext, layouts_efficientnet, layouts_mobile):
    if (found := family.detect(keys)) is not None:
      return found
  return None
