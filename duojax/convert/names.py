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
"""

from __future__ import annotations

from typing import NamedTuple

from duojax.convert import layouts
from duojax.models import resnet, vit

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


def duojax_name(name: str) -> tuple[str, int] | None:
  """(duojax model, image size) of a timm, torchvision or Hugging Face name; None if
  none. A timm pretrained tag (`.augreg_in21k`) names weights of the same model."""
  if "/" not in name:
    name = name.split(".", 1)[0]
  found = {row.name: (row.model, row.image_size) for row in rows()}
  return found.get(name)


def markdown() -> str:
  """docs/model_names.md: one line per duojax model and image size."""
  table: dict[tuple[str, int], dict[str, list[str]]] = {}
  for row in rows():
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
    "Not listed, since their tensors are laid out otherwise: torchvision's ViTs (`vit_b_16`, …;",
    "timm's `vit_base_patch16_224` is the same architecture), timm's CLIP (`*_clip_*`),",
    "average-pooled (`*_gap_*`) and medium ViTs, and Hugging Face's `-in21k` ViTs (saved as a",
    "bare `ViTModel`, without a classifier).",
    "",
    "Generated from the model registry (`duojax/models`) and the converter's layouts",
    "(`duojax/convert/layouts.py`) by `python -m duojax.convert --names --out",
    "docs/model_names.md`; a test keeps this page equal to that command's output.",
  ]
  return "\n".join(lines) + "\n"


def _model_order(model: str) -> tuple:
  """ResNets by depth, ViTs by width (vit.VARIANTS' order) then patch."""
  if model.startswith("resnet"):
    return (int(model.removeprefix("resnet")),)
  variant, patch = vit.parse_name(model)
  return (list(vit.VARIANTS).index(variant), patch)
