"""Name and shape maps between duojax parameters and PyTorch checkpoint layouts.

A layout turns the flat names of a duojax model's state ("stages.0.1.conv2.
kernel", "blocks.3.attn.query.kernel", ...) into `Entry`s: which tensors of
the file hold which duojax arrays, and how to convert them both ways (convs
are OIHW in PyTorch and HWIO here, dense kernels are transposed, timm fuses
q/k/v into one matrix, duojax keeps heads as an axis).

Layouts:
  * "timm": timm's VisionTransformer (`vit_*_patch*_*`, CLIP-style with
    `norm_pre` when the model has `pre_norm=True`) and timm's ResNet, whose
    names are torchvision's;
  * "torchvision": torchvision's ResNet (`conv1`, `bn1`, `layer1.0.conv1`, ...,
    `fc`);
  * "hf": Hugging Face `ViTForImageClassification` and
    `ResNetForImageClassification`.
"""

from __future__ import annotations

import re
from typing import Sequence

from duojax.convert import layouts_convnext, layouts_efficientnet, layouts_mobile
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
from duojax.errors import ConfigError

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
# ViT.

_VIT_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")


def vit_entries(names: Sequence[str], layout: str, *, hf_modules: str = "hub") -> list[Entry]:
  """`hf_modules`: "hub" names (`encoder.layer.N.attention.attention.query`, those of the
  files on the Hugging Face hub, which every transformers version loads) or "v5"
  (`layers.N.attention.q_proj`, what transformers 5 itself names the modules)."""
  if layout == "torchvision":
    raise ConfigError("layout 'torchvision' holds ResNets only; ViT layouts: timm, hf")
  depth = 1 + max(int(m.group(1)) for m in map(_VIT_BLOCK_RE.match, names) if m)
  hf = layout == "hf"
  if hf and "norm_pre.scale" in names:
    raise ConfigError("Hugging Face ViTs have no pre-norm: build the model with pre_norm=False")
  entries = []
  patch = "vit.embeddings.patch_embeddings.projection" if hf else "patch_embed.proj"
  entries.append(Entry((f"{patch}.weight",), ("patch_embed.kernel",), **_conv()))
  if "patch_embed.bias" in names:  # CLIP-style encoders have none (patch_bias=False)
    entries.append(Entry((f"{patch}.bias",), ("patch_embed.bias",), **_same()))
  if "cls_token" in names:
    entries.append(
      Entry(("vit.embeddings.cls_token" if hf else "cls_token",), ("cls_token",), **_same())
    )
  entries.append(
    Entry(
      ("vit.embeddings.position_embeddings" if hf else "pos_embed",),
      ("pos_embedding",),
      **_same("posemb"),
    )
  )
  if "norm_pre.scale" in names:
    entries += _norm("norm_pre", "norm_pre", batch=False)
  for i in range(depth):
    ours = f"blocks.{i}"
    if hf:
      v5 = hf_modules == "v5"
      theirs = f"vit.layers.{i}" if v5 else f"vit.encoder.layer.{i}"
      entries += _norm(f"{ours}.norm1", f"{theirs}.layernorm_before", batch=False)
      for proj in ("query", "key", "value"):
        name = f"attention.{proj[0]}_proj" if v5 else f"attention.attention.{proj}"
        entries += _linear(f"{ours}.attn.{proj}", f"{theirs}.{name}")
      out = "attention.o_proj" if v5 else "attention.output.dense"
      entries += _linear(f"{ours}.attn.out", f"{theirs}.{out}", n_in=2)
      entries += _norm(f"{ours}.norm2", f"{theirs}.layernorm_after", batch=False)
      entries += _linear(
        f"{ours}.mlp.fc1", f"{theirs}.mlp.fc1" if v5 else f"{theirs}.intermediate.dense"
      )
      entries += _linear(f"{ours}.mlp.fc2", f"{theirs}.mlp.fc2" if v5 else f"{theirs}.output.dense")
    else:
      entries += _norm(f"{ours}.norm1", f"{ours}.norm1", batch=False)
      entries.append(
        Entry(
          (f"{ours}.attn.qkv.weight", f"{ours}.attn.qkv.bias"),
          tuple(
            f"{ours}.attn.{p}.{leaf}"
            for leaf in ("kernel", "bias")
            for p in ("query", "key", "value")
          ),
          **_fused_qkv(),
        )
      )
      entries += _linear(f"{ours}.attn.out", f"{ours}.attn.proj", n_in=2)
      entries += _norm(f"{ours}.norm2", f"{ours}.norm2", batch=False)
      entries += _linear(f"{ours}.mlp.fc1", f"{ours}.mlp.fc1")
      entries += _linear(f"{ours}.mlp.fc2", f"{ours}.mlp.fc2")
  entries += _norm("norm", "vit.layernorm" if hf else "norm", batch=False)
  entries += _linear("head", "classifier" if hf else "head", kind="head")
  return entries


# Tensors a file may hold that carry nothing duojax needs.
IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


def detect(keys: Sequence[str]) -> str | None:
  """The layout whose names a file's keys use, or None."""
  keys = set(keys)
  if any(k.startswith(("vit.embeddings.", "resnet.embedder.")) for k in keys):
    return "hf"
  if "patch_embed.proj.weight" in keys:
    return "timm"
  if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
    return "torchvision"
  for family in (layouts_convnext, layouts_efficientnet, layouts_mobile):
    if (found := family.detect(keys)) is not None:
      return found
  return None
