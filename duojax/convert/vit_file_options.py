"""What a Hugging Face ViT file's `config.json` says that its tensor names do not.

Two options of a ViT tower change its outputs without changing a single tensor
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

from duojax.models import vit_blocks

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


def file_overrides(is_vit: bool, layout: str, path: str) -> dict:
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
