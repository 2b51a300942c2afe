"""The `get_model` options a weights file needs beyond its tensor names.

`file_overrides(model_name, path, layout)` gathers them for every family, and
evaluation members (`pretrained:`), the ImageNet recipe and `train.py`'s
`init_weights` all take them from it, the config's own keys winning:

  * EfficientNet (`layouts_efficientnet.file_overrides`): TensorFlow's "same"
    padding and BatchNorm eps for Hugging Face's files and timm's `tf_*` models;
  * MobileNet and RegNet (`layouts_mobile.file_overrides`): Hugging Face's
    MobileNetV2 padding and eps, timm's MobileNetV3 eps, timm's RegNet widths;
  * the ViTs (below, `vit_file_overrides`).

What a Hugging Face ViT file's `config.json` says that its tensor names do not:
two options of a ViT tower change its outputs without changing a single tensor
name or shape, so layout detection cannot see them:

  * the MLP's activation: OpenAI's CLIP files use QuickGELU (`"hidden_act":
    "quick_gelu"`), SigLIP's GELU's tanh form (`"gelu_pytorch_tanh"`), the others
    the exact GELU. A CLIP file run with the wrong one is not an error, just other
    logits, so the file's own word wins over the name's default;
  * a DINOv2 classifier's head (`Dinov2ForImageClassification`) reads the class
    token concatenated with the mean patch token: pool "tok+gap".

transformers writes that `config.json` beside the weights (`save_pretrained`,
and on the hub); without one, or for other layouts, nothing is overridden and
the model name's defaults stand (timm's files carry their activation in the
model name: the `_quickgelu` names).
"""

from __future__ import annotations

import json
import os

from duojax.convert import layouts, layouts_efficientnet, layouts_mobile, safetensors_io
from duojax.errors import WeightsFileError
from duojax.models import vit, vit_blocks, vit_variants

# transformers' `hidden_act` -> duojax's ViT `act`.
HF_ACTIVATIONS = {
  "gelu": "gelu",
  "quick_gelu": "quick_gelu",
  "gelu_pytorch_tanh": "gelu_tanh",
  "gelu_new": "gelu_tanh",
}
_POOLED_CLASSIFIERS = ("Dinov2ForImageClassification", "Dinov2WithRegistersForImageClassification")


def _config(path: str) -> dict:
  try:
    with open(os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")) as f:
      config = json.load(f)
  except (OSError, ValueError):
    return {}
  return config if isinstance(config, dict) else {}


def file_overrides(model_name: str, path: str, layout: str = "auto", shapes=None) -> dict:
  """Every option the file at `path` needs for `model_name` beyond its tensor names; {}
  for a file that is not there or not readable (its loading then says what is wrong).
  `layout`: the file's, or "auto" (from its names); `shapes`: its {name: shape}, if read."""
  if shapes is None:
    try:
      shapes = safetensors_io.read_shapes(path)
    except (OSError, ValueError, WeightsFileError):
      return {}
  if layout == "auto":
    layout = layouts.detect(list(shapes))
  if layout is None:
    return {}
  found = dict(layouts_mobile.file_overrides(model_name, layout, shapes))
  found.update(layouts_efficientnet.file_overrides(model_name, layout, path))
  name = model_name.lower()
  is_vit = name in vit_variants.CONFIGS or vit.parse_name(name) is not None
  found.update(vit_file_overrides(is_vit, layout, path))
  return found


def vit_file_overrides(is_vit: bool, layout: str, path: str) -> dict:
  """The ViT options (`act`, `pool`) a Hugging Face file's config.json sets; {} otherwise."""
  if not is_vit or layout != "hf":
    return {}
  config = _config(path)
  vision = config.get("vision_config")
  vision = vision if isinstance(vision, dict) else config
  out = {}
  act = HF_ACTIVATIONS.get(vision.get("hidden_act"))
  # DINOv2's giant size swaps the MLP for SwiGLU; its hidden_act does not describe that.
  if act in vit_blocks.ACTIVATIONS and not vision.get("use_swiglu_ffn"):
    out["act"] = act
  architectures = config.get("architectures")
  if isinstance(architectures, list) and any(a in _POOLED_CLASSIFIERS for a in architectures):
    out["pool"] = "tok+gap"
  return out
