"""Tensor names of the mobile families (MobileNetV2/V3, MNASNet, ShuffleNetV2) in each library.

These models are stacks of the same few modules (conv, BatchNorm, dense), so
a layout is a renaming: `module_entries` walks the duojax modules of a
model's state and asks a family's `rename(module)` for the file's module
prefix and the kind of conversion (a conv's OIHW <-> HWIO, a BatchNorm's
four tensors, a dense layer's transpose, or a dense layer the library writes
as a 1x1 conv with a bias: squeeze-excitation layers, timm's `conv_head`).

Layouts:
  * "torchvision": `features.N...` (MobileNetV2/V3), `layers.N...` (MNASNet),
    `conv1`, `stageN.M.branchK...`, `conv5`, `fc` (ShuffleNetV2);
  * "timm": `conv_stem`, `blocks.S.B.{conv_pw,conv_dw,se,conv_pwl}`,
    `conv_head`, `classifier` (MobileNetV3: `mobilenetv3_large_100`, ...);
  * "hf": `MobileNetV2ForImageClassification` (`mobilenet_v2.conv_stem...`,
    `mobilenet_v2.layer.N...`, `classifier`).

A model that cannot take a layout's weights exactly says so in one line:
timm's MobileNetV3 BatchNorms use eps 1e-5 (torchvision's 1e-3), Hugging
Face's MobileNetV2 TensorFlow's "same" padding and eps 1e-3.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from duojax.convert import layouts_regnet
from duojax.convert.entries import Entry, Rename, module_entries
from duojax.errors import WeightsMismatchError

# How a duojax module's tensors are written in a file.
KINDS = ("conv", "bn", "linear", "head", "conv_linear")


def _convbn(sub: str, prefix: str, conv_name: str = "0", bn_name: str = "1"):
  """(file prefix, kind) of a ConvBN's `conv` / `bn` module `sub`."""
  return (f"{prefix}.{conv_name}", "conv") if sub == "conv" else (f"{prefix}.{bn_name}", "bn")


# ----------------------------------------------------------------------------
# MobileNetV2, MobileNetV3, MNASNet (duojax's MobileNet).

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(expand|dw|se|project)\.(\w+)$")
_LAST_RE = re.compile(r"^last\.(conv|bn)$")


def _parts(model, k: int) -> list[str]:
  """Which sub-modules block k has, in order."""
  block = model.blocks[k]
  return [p for p in ("expand", "dw", "se", "project") if getattr(block, p) is not None]


def _torchvision_mobilenet(model) -> Rename:
  n = len(model.blocks)

  def rename(module):
    if module in ("stem_conv", "stem_bn"):
      return ("features.0.0", "conv") if module == "stem_conv" else ("features.0.1", "bn")
    if m := _LAST_RE.match(module):
      return _convbn(m.group(1), f"features.{n + 1}")
    if module == "pre_head":
      return "classifier.0", "linear"
    if module == "head":
      return ("classifier.3" if model.arch == "v3" else "classifier.1"), "head"
    m = _BLOCK_RE.match(module)
    if m is None:
      return None
    k, part, sub = int(m.group(1)), m.group(2), m.group(3)
    index = _parts(model, k).index(part)
    if model.arch == "v3":
      prefix = f"features.{k + 1}.block.{index}"
      return (f"{prefix}.{sub}", "conv_linear") if part == "se" else _convbn(sub, prefix)
    # MobileNetV2: the projection is a bare conv and BatchNorm at the end of `conv`.
    prefix = f"features.{k + 1}.conv"
    if part == "project":
      return (f"{prefix}.{index}", "conv") if sub == "conv" else (f"{prefix}.{index + 1}", "bn")
    return _convbn(sub, f"{prefix}.{index}")

  return rename


def _mnasnet_stacks(model) -> list[tuple[int, int]]:
  """(stack, index in stack) of each block after the first. A stack's blocks
  share their kernel and width and only its first is strided; neighbouring
  stacks differ in one of these (at small alphas two widths can round equal)."""
  out, stack, j, previous = [], 7, 0, None
  for block in list(model.blocks)[1:]:
    stride = block.dw.conv.strides
    stride = stride[0] if isinstance(stride, Sequence) else stride
    shape = (block.dw.conv.kernel_size, block.project.conv.out_features)
    if shape != previous or stride != 1:
      stack, j, previous = stack + 1, 0, shape
    else:
      j += 1
    out.append((stack, j))
  return out


def _torchvision_mnasnet(model) -> Rename:
  stacks = _mnasnet_stacks(model)
  last = stacks[-1][0] + 1
  # torchvision's MNASNet is one flat Sequential: conv, BN, ReLU, repeated.
  first = {"stem_conv": "0", "stem_bn": "1", "blocks.0.dw.conv": "3", "blocks.0.dw.bn": "4"}
  first.update({"blocks.0.project.conv": "6", "blocks.0.project.bn": "7"})
  first.update({"last.conv": str(last), "last.bn": str(last + 1)})
  inner = {"expand": ("0", "1"), "dw": ("3", "4"), "project": ("6", "7")}

  def rename(module):
    if module in first:
      return f"layers.{first[module]}", "bn" if module.endswith("bn") else "conv"
    if module == "head":
      return "classifier.1", "head"
    m = _BLOCK_RE.match(module)
    if m is None or m.group(2) not in inner:
      return None
    stack, j = stacks[int(m.group(1)) - 1]
    conv_index, bn_index = inner[m.group(2)]
    return _convbn(m.group(3), f"layers.{stack}.{j}.layers", conv_index, bn_index)

  return rename


def _timm_stages(model) -> list[tuple[int, int]]:
  """(stage, index) of each block in timm's MobileNetV3: a new stage at each
  stride-2 block and at each change of width (timm's architecture strings)."""
  out, stage, j, width = [], 0, 0, None
  for k, block in enumerate(model.blocks):
    stride = block.dw.conv.strides
    stride = stride[0] if isinstance(stride, Sequence) else stride
    if k > 0 and (stride != 1 or block.project.conv.out_features != width):
      stage, j = stage + 1, 0
    elif k > 0:
      j += 1
    width = block.project.conv.out_features
    out.append((stage, j))
  return out


def _timm_mobilenet_v3(model) -> Rename:
  stages = _timm_stages(model)
  last = f"blocks.{stages[-1][0] + 1}.0"

  def rename(module):
    if module in ("stem_conv", "stem_bn"):
      return ("conv_stem", "conv") if module == "stem_conv" else ("bn1", "bn")
    if m := _LAST_RE.match(module):
      return _convbn(m.group(1), last, "conv", "bn1")
    if module == "pre_head":
      return "conv_head", "conv_linear"
    if module == "head":
      return "classifier", "head"
    m = _BLOCK_RE.match(module)
    if m is None:
      return None
    k, part, sub = int(m.group(1)), m.group(2), m.group(3)
    stage, j = stages[k]
    prefix = f"blocks.{stage}.{j}"
    if part == "se":
      return f"{prefix}.se.{'conv_reduce' if sub == 'fc1' else 'conv_expand'}", "conv_linear"
    if model.blocks[k].expand is None:  # timm's DepthwiseSeparableConv
      names = {"dw": ("conv_dw", "bn1"), "project": ("conv_pw", "bn2")}
    else:
      names = {
        "expand": ("conv_pw", "bn1"),
        "dw": ("conv_dw", "bn2"),
        "project": ("conv_pwl", "bn3"),
      }
    conv, bn = names[part]
    return (f"{prefix}.{conv}", "conv") if sub == "conv" else (f"{prefix}.{bn}", "bn")

  return rename


def _hf_mobilenet_v2(model) -> Rename:
  base = "mobilenet_v2"
  hf_parts = {"expand": "expand_1x1", "dw": "conv_3x3", "project": "reduce_1x1"}

  def layer(prefix, sub):
    return (f"{prefix}.convolution", "conv") if sub == "conv" else (f"{prefix}.normalization", "bn")

  def rename(module):
    if module in ("stem_conv", "stem_bn"):
      return layer(f"{base}.conv_stem.first_conv", "conv" if module == "stem_conv" else "bn")
    if m := _LAST_RE.match(module):
      return layer(f"{base}.conv_1x1", m.group(1))
    if module == "head":
      return "classifier", "head"
    m = _BLOCK_RE.match(module)
    if m is None or m.group(2) == "se":
      return None
    k = int(m.group(1))
    # Hugging Face's stem holds the first block (no expansion) after the stem conv.
    prefix = f"{base}.conv_stem" if k == 0 else f"{base}.layer.{k - 1}"
    return layer(f"{prefix}.{hf_parts[m.group(2)]}", m.group(3))

  return rename


def mobilenet_entries(model, names: Sequence[str], layout: str) -> list[Entry]:
  """Entries of a duojax MobileNet (V2, V3 or MNASNet) in `layout`."""
  word = {"v2": "MobileNetV2", "v3": "MobileNetV3", "mnasnet": "MNASNet"}[model.arch]
  if layout == "torchvision":
    mnasnet = model.arch == "mnasnet"
    rename = _torchvision_mnasnet(model) if mnasnet else _torchvision_mobilenet(model)
  elif layout == "timm" and model.arch == "v3":
    if model.bn_eps != 1e-5:
      raise WeightsMismatchError(
        f"timm's MobileNetV3 BatchNorms use eps 1e-5, the model {model.bn_eps:g}: "
        "build it with bn_eps=1e-5"
      )
    rename = _timm_mobilenet_v3(model)
  elif layout == "hf" and model.arch == "v2":
    if model.padding != "same" or model.bn_eps != 1e-3:
      raise WeightsMismatchError(
        "Hugging Face's MobileNetV2 uses TensorFlow padding and BatchNorm eps 1e-3: "
        "build the model with padding='same', bn_eps=1e-3"
      )
    rename = _hf_mobilenet_v2(model)
  else:
    have = {"v2": "torchvision, hf", "v3": "torchvision, timm", "mnasnet": "torchvision"}
    raise WeightsMismatchError(f"no {layout} layout for {word}; layouts: {have[model.arch]}")
  if layout != "hf" and model.padding != "torch":
    raise WeightsMismatchError(
      f"{layout}'s {word} pads as PyTorch does: build the model with padding='torch'"
    )
  return module_entries(names, rename)


# ----------------------------------------------------------------------------
# ShuffleNetV2.

_UNIT_RE = re.compile(r"^stages\.(\d+)\.(\d+)\.(branch[12])\.(\d+)\.(conv|bn)$")


def shufflenet_entries(model, names: Sequence[str], layout: str) -> list[Entry]:
  """Entries of a duojax ShuffleNetV2 in torchvision's layout (the only library with one)."""
  if layout != "torchvision":
    raise WeightsMismatchError(f"no {layout} layout for ShuffleNetV2; layouts: torchvision")
  # torchvision's branches are flat Sequentials: (conv, BN[, ReLU]) per step.
  steps = {"branch1": ((0, 1), (2, 3)), "branch2": ((0, 1), (3, 4), (5, 6))}

  def rename(module):
    fixed = {"stem_conv": ("conv1.0", "conv"), "stem_bn": ("conv1.1", "bn")}
    fixed.update({"last.conv": ("conv5.0", "conv"), "last.bn": ("conv5.1", "bn")})
    fixed["head"] = ("fc", "head")
    if module in fixed:
      return fixed[module]
    m = _UNIT_RE.match(module)
    if m is None:
      return None
    stage, unit, branch, step, sub = m.groups()
    conv, bn = steps[branch][int(step)]
    prefix = f"stage{int(stage) + 2}.{unit}.{branch}"
    return (f"{prefix}.{conv}", "conv") if sub == "conv" else (f"{prefix}.{bn}", "bn")

  return module_entries(names, rename)


# ----------------------------------------------------------------------------
# Families: which a model is, which a file holds, the entries and the layout.

WORDS = {
  "regnet": "a RegNet",
  "mobilenet_v2": "a MobileNetV2",
  "mobilenet_v3": "a MobileNetV3",
  "mnasnet": "an MNASNet",
  "shufflenet": "a ShuffleNetV2",
}


def family(model) -> str | None:
  """The family of a duojax model, of those here; None for another."""
  from duojax.models import mobilenet, regnet, shufflenet

  if isinstance(model, regnet.RegNet):
    return "regnet"
  if isinstance(model, shufflenet.ShuffleNetV2):
    return "shufflenet"
  if isinstance(model, mobilenet.MobileNet):
    return {"v2": "mobilenet_v2", "v3": "mobilenet_v3", "mnasnet": "mnasnet"}[model.arch]
  return None


def entries(model, names: Sequence[str], layout: str) -> list[Entry] | None:
  """The layout's entries of a model of these families; None for another."""
  found = family(model)
  if found == "regnet":
    return layouts_regnet.regnet_entries(names, layout)
  if found == "shufflenet":
    return shufflenet_entries(model, names, layout)
  return None if found is None else mobilenet_entries(model, names, layout)


def file_family(keys) -> str | None:
  """The family a file of these tensor names holds, of those here; None for another."""
  keys = set(keys)
  if any(k.startswith(("trunk_output.", "s1.b1.", "regnet.")) for k in keys):
    return "regnet"
  if "stage2.0.branch2.0.weight" in keys:
    return "shufflenet"
  if "layers.0.weight" in keys and any(k.startswith("layers.8.0.layers.") for k in keys):
    return "mnasnet"
  if any(k.startswith("mobilenet_v2.") for k in keys) or "features.1.conv.0.0.weight" in keys:
    return "mobilenet_v2"
  if "features.0.0.weight" in keys and "classifier.3.weight" in keys:
    return "mobilenet_v3"
  if "conv_stem.weight" in keys and "conv_head.bias" in keys and "bn2.weight" not in keys:
    return "mobilenet_v3"  # timm's; its EfficientNets have a BatchNorm after conv_head
  return None


def file_overrides(model_name: str, layout: str, keys) -> dict:
  """`get_model` options a file's weights need beyond its names: Hugging Face's
  MobileNetV2 TensorFlow's padding and BatchNorm eps, timm's MobileNetV3 eps 1e-5,
  timm's (and pycls's, so Hugging Face's) own widths for the three RegNets where
  they are not torchvision's.
  `keys`: the file's tensor names, or {name: shape} (then RegNet widths are read)."""
  from duojax.models import mobilenet, regnet

  held = file_family(keys)
  if model_name in regnet.CONFIGS and layout in ("timm", "hf") and isinstance(keys, dict):
    # Each stage's output width: its first block's last conv (timm) or shortcut (hf).
    stage = "s{}.b1.conv3.conv.weight"
    if layout == "hf":
      stage = "regnet.encoder.stages.{}.layers.0.shortcut.convolution.weight"
    first = 1 if layout == "timm" else 0
    widths = [tuple(keys.get(stage.format(i + first), (0,)))[0] for i in range(4)]
    timm_widths = regnet.block_params(*regnet.CONFIGS[model_name][:5], rounding="timm")[0]
    if widths == timm_widths != regnet.block_params(*regnet.CONFIGS[model_name][:5])[0]:
      return {"rounding": "timm"}
  if model_name not in mobilenet.CONFIGS:
    return {}
  if layout == "hf" and held == "mobilenet_v2":
    return {"padding": "same", "bn_eps": 1e-3}
  if layout == "timm" and held == "mobilenet_v3":
    return {"bn_eps": 1e-5}
  return {}


def _detector(name: str):
  return lambda keys: detect(keys) if file_family(keys) == name else None


# family -> (its words, a detector of its files), as pretrained._CONV_FAMILIES has them.
CONV_FAMILIES = {name: (word, _detector(name)) for name, word in WORDS.items()}


def detect(keys) -> str | None:
  """The layout of a file of these families, or None."""
  keys = set(keys)
  if file_family(keys) is None:
    return None
  if any(k.startswith(("regnet.", "mobilenet_v2.")) for k in keys):
    return "hf"
  if "conv_stem.weight" in keys or "s1.b1.conv1.conv.weight" in keys:
    return "timm"
  return "torchvision"
