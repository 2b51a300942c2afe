"""Tensor names of RegNetX / RegNetY in torchvision, timm and Hugging Face files.

duojax's RegNet block has modules a, b, [se], c and proj (the shortcut's 1x1
conv), as torchvision's `BottleneckTransform` does:

  duojax                 torchvision                          timm                   Hugging Face
  stem_conv, stem_bn     stem.0, stem.1                       stem.conv, stem.bn     regnet.embedder.embedder.{convolution,normalization}
  stages.i.j.a           trunk_output.block{i+1}.             s{i+1}.b{j+1}.conv1    regnet.encoder.stages.i.layers.j.layer.0
                           block{i+1}-{j}.f.a
  stages.i.j.b           ....f.b                              ....conv2              ....layer.1
  stages.i.j.se.fc1/fc2  ....f.se.fc1/fc2                     ....se.fc1/fc2         ....layer.2.attention.0/2
  stages.i.j.c           ....f.c                              ....conv3              ....layer.3 (RegNetX: layer.2)
  stages.i.j.proj        ....proj                             ....downsample         ....shortcut
  head                   fc                                   head.fc                classifier.1

Hugging Face's RegNets must downsample in their first stage
(`downsample_in_first_stage=True`, its default and its checkpoints'), as
torchvision's and timm's do.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from duojax.convert.entries import Entry, module_entries

_RE = re.compile(r"^stages\.(\d+)\.(\d+)\.(a|b|c|proj|se)\.(conv|bn|fc1|fc2)$")
_TIMM = {"a": "conv1", "b": "conv2", "c": "conv3", "proj": "downsample", "se": "se"}


def regnet_entries(names: Sequence[str], layout: str) -> list[Entry]:
  """Entries of a duojax RegNet (its flat state `names`) in `layout`."""
  has_se = any(".se." in n for n in names)

  def rename(module):
    hf = layout == "hf"
    if module in ("stem_conv", "stem_bn"):
      sub = module.removeprefix("stem_")
      if hf:
        prefix = "regnet.embedder.embedder"
        return (
          (f"{prefix}.convolution", "conv") if sub == "conv" else (f"{prefix}.normalization", "bn")
        )
      if layout == "timm":
        return f"stem.{sub}", sub
      return ("stem.0", "conv") if sub == "conv" else ("stem.1", "bn")
    if module == "head":
      return {"hf": "classifier.1", "timm": "head.fc"}.get(layout, "fc"), "head"
    m = _RE.match(module)
    if m is None:
      return None
    i, j, part, sub = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
    if part == "se":
      if hf:
        prefix = f"regnet.encoder.stages.{i}.layers.{j}.layer.2.attention"
        return f"{prefix}.{0 if sub == 'fc1' else 2}", "conv_linear"
      block = f"s{i + 1}.b{j + 1}" if layout == "timm" else _tv_block(i, j) + ".f"
      return f"{block}.se.{sub}", "conv_linear"
    if hf:
      block = f"regnet.encoder.stages.{i}.layers.{j}"
      index = {"a": 0, "b": 1, "c": 3 if has_se else 2}
      prefix = f"{block}.shortcut" if part == "proj" else f"{block}.layer.{index[part]}"
      return (
        (f"{prefix}.convolution", "conv") if sub == "conv" else (f"{prefix}.normalization", "bn")
      )
    if layout == "timm":
      return f"s{i + 1}.b{j + 1}.{_TIMM[part]}.{sub}", sub
    prefix = _tv_block(i, j) + ("" if part == "proj" else ".f") + f".{part}"
    return (f"{prefix}.0", "conv") if sub == "conv" else (f"{prefix}.1", "bn")

  return module_entries(names, rename)


def _tv_block(i: int, j: int) -> str:
  return f"trunk_output.block{i + 1}.block{i + 1}-{j}"
