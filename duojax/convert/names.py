"""The names timm, torchvision and Hugging Face give the models duojax builds.

    names.duojax_name("vit_base_patch16_224.augreg_in21k")  # ("vit_b16", 224)
    names.duojax_name("microsoft/resnet-50")  # ("resnet50", 224)

`rows()` lists the published checkpoints each library names, with the duojax
model (`model=` in configs/imagenet_duo.py, `config.model_name`) and image
size (`size=`, `config.model.image_size`) that take their weights;
`markdown()` is docs/model_names.md, printed by `python -m duojax.convert
--names` (and written by it with `--out docs/model_names.md`).

The rows are made, not written out: from the model registry (ResNets with
the ImageNet stem in `resnet.CONFIGS`, ViT variants in `vit.VARIANTS`), each
library's naming rule, and the converter's layouts (one per library, named
as the library is; torchvision's holds ResNets only). What is listed by hand
is only which ViT (patch, resolution) pairs each library publishes.
The convolutional families' rows (`conv_rows`: ConvNeXt, EfficientNet, RegNet,
MobileNet, MNASNet, ShuffleNet, ResNeXt) come from their registries and each
library's numbering; torchvision's names for them are duojax's own.
"""

from __future__ import annotations

from typing import NamedTuple

from duojax.convert import layouts
from duojax.models import (
  convnext,
  efficientnet,
  mnasnet,
  mobilenet,
  regnet,
  resnet,
  resnext,
  shufflenet,
  swin,
  vit,
  vit_variants,
)

# The layouts' libraries, as the table names them.
LIBRARIES = {"timm": "timm", "torchvision": "torchvision", "hf": "Hugging Face"}
# timm's and Hugging Face's words for the ViT sizes; theirs have vit.VARIANTS'
# width, depth, MLP width and heads. (timm's "medium" ViTs pool by average
# with another head: not a layout duojax reads.)
SIZE_WORDS = {"Ti": "tiny", "S": "small", "B": "base", "L": "large", "H": "huge"}
# (variant, patch, resolution) of the plain ViTs each library publishes as
# image classifiers (timm: any pretrained tag; Hugging Face: google/'s
# ViTForImageClassification checkpoints). torchvision's ViTs are another layout.
PUBLISHED_VITS = {
  "timm": (
    ("Ti", 16, 224),
    ("Ti", 16, 384),
    ("S", 16, 224),
    ("S", 16, 384),
    ("S", 32, 224),
    ("S", 32, 384),
    ("S", 8, 224),
    ("B", 16, 224),
    ("B", 16, 384),
    ("B", 32, 224),
    ("B", 32, 384),
    ("B", 8, 224),
    ("L", 16, 224),
    ("L", 16, 384),
    ("L", 32, 224),
    ("L", 32, 384),
    ("H", 14, 224),
  ),
  "hf": (
    ("B", 16, 224),
    ("B", 16, 384),
    ("B", 32, 384),
    ("L", 16, 224),
    ("L", 16, 384),
    ("L", 32, 384),
  ),
}
RESNET_SIZE = 224  # every library's ImageNet ResNets
# The ViT variants' published towers (duojax.models.vit_variants): library -> (their
# name, duojax's, image size). Hugging Face's CLIP is OpenAI's, with QuickGELU; its
# DINOv2 backbones are bare `Dinov2Model`s (load with head=fresh).
_DINOV2_SIZES = (("s", "small"), ("b", "base"), ("l", "large"), ("g", "giant"))
PUBLISHED_VARIANTS = {
  "timm": (
    ("vit_base_patch16_clip_224", "vit_b16_clip", 224),
    ("vit_large_patch14_clip_224", "vit_l14_clip", 224),
    ("vit_base_patch16_clip_quickgelu_224", "vit_b16_clip_quickgelu", 224),
    ("vit_large_patch14_clip_quickgelu_224", "vit_l14_clip_quickgelu", 224),
    *((f"vit_{w}_patch14_dinov2", f"vit_{s}14_dinov2", 518) for s, w in _DINOV2_SIZES),
    *((f"vit_{w}_patch14_reg4_dinov2", f"vit_{s}14_dinov2_reg", 518) for s, w in _DINOV2_SIZES),
    *(
      (f"deit_{w}_distilled_patch16_224", f"deit_{s}16_distilled", 224)
      for s, w in (("ti", "tiny"), ("s", "small"), ("b", "base"))
    ),
    ("vit_base_patch16_siglip_224", "vit_b16_siglip", 224),
    ("vit_so400m_patch14_siglip_224", "vit_so400m14_siglip", 224),
  ),
  "hf": (
    ("openai/clip-vit-base-patch16", "vit_b16_clip_quickgelu", 224),
    ("openai/clip-vit-large-patch14", "vit_l14_clip_quickgelu", 224),
    *((f"facebook/dinov2-{w}", f"vit_{s}14_dinov2", 518) for s, w in _DINOV2_SIZES),
    *(
      (f"facebook/dinov2-with-registers-{w}", f"vit_{s}14_dinov2_reg", 518)
      for s, w in _DINOV2_SIZES
    ),
    *(
      (f"facebook/deit-{w}-distilled-patch16-224", f"deit_{s}16_distilled", 224)
      for s, w in (("ti", "tiny"), ("s", "small"), ("b", "base"))
    ),
    ("google/siglip-base-patch16-224", "vit_b16_siglip", 224),
    ("google/siglip-so400m-patch14-224", "vit_so400m14_siglip", 224),
  ),
}


class Row(NamedTuple):
  library: str  # a layout: "timm", "torchvision" or "hf"
  name: str  # the library's name
  model: str  # duojax's
  image_size: int


def _resnet_name(library: str, depth: int) -> str:
  return f"microsoft/resnet-{depth}" if library == "hf" else f"resnet{depth}"


def _vit_name(library: str, variant: str, patch: int, size: int) -> str:
  word = SIZE_WORDS[variant]
  if library == "hf":
    return f"google/vit-{word}-patch{patch}-{size}"
  return f"vit_{word}_patch{patch}_{size}"


def rows() -> list[Row]:
  """Every published name duojax takes weights from, ResNets first."""
  out = []
  for model, (_, _, _, stem) in resnet.CONFIGS.items():
    if stem != "imagenet":  # CIFAR-style stems: no library publishes them
      continue
    depth = int(model.removeprefix("resnet"))
    for library in layouts.LAYOUTS:
      out.append(Row(library, _resnet_name(library, depth), model, RESNET_SIZE))
  for library, published in PUBLISHED_VITS.items():
    for variant, patch, size in published:
      model = f"vit_{variant.lower()}{patch}"
      if vit.parse_name(model) != (variant, patch):  # kept in step with the registry
        raise AssertionError(f"{model} does not build ViT-{variant}/{patch}")
      out.append(Row(library, _vit_name(library, variant, patch, size), model, size))
  return out


def variant_rows() -> list[Row]:
  """The CLIP, DINOv2, DeiT and SigLIP towers' published names (docs/vit_variants.md)."""
  out = []
  for library, published in PUBLISHED_VARIANTS.items():
    for name, model, size in published:
      if model not in vit_variants.CONFIGS:  # kept in step with the registry
        raise AssertionError(f"{model} is not a duojax ViT variant")
      out.append(Row(library, name, model, size))
  return out


def swin_rows() -> list[Row]:
  """Swin-V2's published names (docs/swin.md): torchvision's are duojax's own; timm's
  and Hugging Face's window-8 and window-16 models at 256 px. Either file of a size
  loads into either name (`key_bias` is an unused tensor), so each maps to the name
  whose defaults are that library's."""
  out = []
  for size, word in (("t", "tiny"), ("s", "small"), ("b", "base")):
    model = f"swin_v2_{size}"
    out.append(Row("torchvision", model, model, 256))
    for window, name in ((8, model), (16, f"{model}_w16")):
      out.append(Row("timm", f"swinv2_{word}_window{window}_256", name, 256))
      out.append(Row("hf", f"microsoft/swinv2-{word}-patch4-window{window}-256", name, 256))
  return out


def all_rows() -> list[Row]:
  """Every family's rows."""
  return rows() + conv_rows() + variant_rows() + swin_rows()


def duojax_name(name: str) -> tuple[str, int] | None:
  """(duojax model, image size) of a timm, torchvision or Hugging Face name; None if
  none. A timm pretrained tag (`.augreg_in21k`) names weights of the same model."""
  if "/" not in name:
    name = name.split(".", 1)[0]
  found = {row.name: (row.model, row.image_size) for row in all_rows()}
  return found.get(name)


def markdown() -> str:
  """docs/model_names.md: one line per duojax model and image size."""
  table: dict[tuple[str, int], dict[str, list[str]]] = {}
  for row in all_rows():
    table.setdefault((row.model, row.image_size), {}).setdefault(row.library, []).append(row.name)
  order = lambda key: (not key[0].startswith("resnet"), _model_order(key[0]), key[1])
  header = " | ".join(LIBRARIES[library] for library in layouts.LAYOUTS)
  lines = [
    "# Model names in timm, torchvision and Hugging Face",
    "",
    "The duojax model that takes a published checkpoint's weights: give the duojax name as",
    "`model=` and the size as `size=` to `configs/imagenet_duo.py` (`--config.model_name`,",
    "`--config.model.image_size` in other configs), and the safetensors file as `weights=`;",
    "the layout is read from the file's tensor names. A timm pretrained tag",
    "(`vit_base_patch16_224.augreg2_in21k_ft_in1k`) names weights of the model its name does.",
    "",
    f"| duojax `model=` | `size=` | {header} |",
    "|---|---|" + "---|" * len(layouts.LAYOUTS),
  ]
  for model, size in sorted(table, key=order):
    names = table[(model, size)]
    cells = [
      ", ".join(f"`{n}`" for n in names[library]) if library in names else "–"
      for library in layouts.LAYOUTS
    ]
    lines.append(f"| `{model}` | {size} | " + " | ".join(cells) + " |")
  lines += [
    "",
    "The CLIP, DINOv2, DeiT and SigLIP towers: [vit_variants.md](vit_variants.md).",
    "Not listed, since their tensors are laid out otherwise: torchvision's ViTs (`vit_b_16`, …;",
    "timm's `vit_base_patch16_224` is the same architecture), timm's average-pooled",
    "(`*_gap_*`) and medium ViTs, and Hugging Face's `-in21k` ViTs (saved as a bare",
    "`ViTModel`, without a classifier).",
    "",
    "Generated from the model registry (`duojax/models`) and the converter's layouts",
    "(`duojax/convert/layouts.py`) by `python -m duojax.convert --names --out",
    "docs/model_names.md`; a test keeps this page equal to that command's output.",
  ]
  return "\n".join(lines) + "\n"


def _model_order(model: str) -> tuple:
  """ResNets by depth, ViTs by width (vit.VARIANTS' order) then patch."""
  if model in _CONV_MODELS:  # after the ViTs, in the registry's order
    return (len(vit.VARIANTS) + _CONV_MODELS.index(model),)
  if model.startswith("resnet"):
    return (int(model.removeprefix("resnet")),)
  if model in vit_variants.CONFIGS:  # after the convolutional families, in the registry's order
    return (len(vit.VARIANTS) + len(_CONV_MODELS) + list(vit_variants.CONFIGS).index(model),)
  if model in swin.CONFIGS:  # last
    offset = len(vit.VARIANTS) + len(_CONV_MODELS) + len(vit_variants.CONFIGS)
    return (offset + list(swin.CONFIGS).index(model),)
  variant, patch = vit.parse_name(model)
  return (list(vit.VARIANTS).index(variant), patch)


# ----------------------------------------------------------------------------
# The convolutional families (docs/conv_families.md, docs/conv_families_mobile.md).

_CONV_MODELS = tuple(
  name
  for family in (convnext, efficientnet, regnet, mobilenet, mnasnet, shufflenet, resnext)
  for name in family.CONFIGS
)
# TensorFlow's EfficientNet B0-B7 sides: timm's `tf_efficientnet_b*` and Hugging Face's
# files take these (torchvision's weights, and duojax's nominal sizes, differ for B2, B3).
TF_EFFICIENTNET_SIZES = (224, 240, 260, 300, 380, 456, 528, 600)
# torchvision's RegNet sizes in timm's and pycls's (so Hugging Face's) numbering; the
# sizes torchvision lacks (002, 006, 040, 064, 120) have no duojax model.
REGNET_NUMBERS = {
  "400mf": "004",
  "800mf": "008",
  "1_6gf": "016",
  "3_2gf": "032",
  "8gf": "080",
  "16gf": "160",
  "32gf": "320",
}
# Families timm publishes under its own names, as a (timm name, duojax model) list.
TIMM_MOBILENETS = (
  ("mobilenetv3_large_100", "mobilenet_v3_large"),
  ("mobilenetv3_small_100", "mobilenet_v3_small"),
)


def _nominal_size(model: str) -> int:
  """The side of torchvision's weights: EfficientNet's own, 224 for every other family."""
  return int(efficientnet.CONFIGS[model]["image_size"]) if model in efficientnet.CONFIGS else 224


def conv_rows() -> list[Row]:
  """The published names of the convolutional families: torchvision's (duojax's own
  names), timm's and Hugging Face's where the converter reads their layout.

  timm's RegNets `regnetx_004`, `regnety_008` and `regnety_080` round their widths as
  timm does: the recipe and evaluation members read that from the file
  (`layouts_mobile.file_overrides`), as they read TensorFlow's padding for `tf_*` and
  Hugging Face EfficientNets and Hugging Face's MobileNetV2."""
  out = [Row("torchvision", m, m, _nominal_size(m)) for m in _CONV_MODELS]
  for model in convnext.CONFIGS:
    out.append(Row("timm", model, model, 224))
    size = model.removeprefix("convnext_")
    out.append(Row("hf", f"facebook/convnext-{size}-224", model, 224))
  for i, size in enumerate(TF_EFFICIENTNET_SIZES):
    model = f"efficientnet_b{i}"
    out.append(Row("timm", model, model, _nominal_size(model)))
    out.append(Row("timm", f"tf_{model}", model, size))
    out.append(Row("hf", f"google/efficientnet-b{i}", model, size))
  for size in ("s", "m", "l"):
    model = f"efficientnet_v2_{size}"
    out.append(Row("timm", f"tf_efficientnetv2_{size}", model, _nominal_size(model)))
  for model in regnet.CONFIGS:
    kind, flops = model.split("_", 2)[1:]
    number = REGNET_NUMBERS[flops]
    out.append(Row("timm", f"regnet{kind}_{number}", model, 224))
    out.append(Row("hf", f"facebook/regnet-{kind}-{number}", model, 224))
  out.append(Row("hf", "google/mobilenet_v2_1.0_224", "mobilenet_v2", 224))
  out += [Row("timm", name, model, 224) for name, model in TIMM_MOBILENETS]
  out += [Row("timm", model, model, 224) for model in resnext.CONFIGS]
  return out
