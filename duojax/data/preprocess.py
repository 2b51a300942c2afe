"""What a model expects of its input images, and making them so on the device.

Every member of a duo keeps its own `InputSpec` in its checkpoint metadata, so
models trained elsewhere can sit beside one another: a timm ViT expects pixels
scaled to mean 0.5 / std 0.5, a torchvision ResNet the ImageNet statistics, a
model trained here the statistics of its data set; each at its own size, cut
from the centre `crop_fraction` of the shorter side and resized with its own
filter (timm's ViTs: 0.9, bicubic; ResNets: 0.875 to 0.95, bilinear or
bicubic; `pretrained_view` reads them from the files beside the weights).
The input pipeline delivers one uint8 batch, cut at the widest member crop
and at a side no member needs to enlarge (`duojax.eval.data_spec`); `prepare`
cuts, resizes and normalises it for one member on the device, inside the
jitted program that runs the model (`duojax.core.duo.make_fused_forward`).

Resizing is bilinear or bicubic with antialiasing when shrinking
(`jax.image.scale_and_translate`), as the host's crops are (PIL's filters).
Normalisation is written so that the host (`normalize`) and the device
(`normalize_on_device`) agree to the bit.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from duojax.data.images import CROP_FRACTION, INTERPOLATIONS
from duojax.errors import ConfigError

# Channel statistics of x/255 that pretrained checkpoints were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# OpenAI CLIP's (and every CLIP port's) statistics.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# (layout, model family) -> (mean, std): the libraries' defaults for their weights.
# timm's ViTs from the AugReg / original JAX releases use 0.5/0.5 (DeiT-style
# ones use ImageNet's: override with config.input_mean / input_std).
PRETRAINED_STATS = {
  ("timm", "vit"): (HALF, HALF),
  ("hf", "vit"): (HALF, HALF),
  ("timm", "resnet"): (IMAGENET_MEAN, IMAGENET_STD),
  ("torchvision", "resnet"): (IMAGENET_MEAN, IMAGENET_STD),
  ("hf", "resnet"): (IMAGENET_MEAN, IMAGENET_STD),
  # Hugging Face's MobileNetV2s (ported from TensorFlow) take images in [-1, 1].
  ("hf", "mobilenet"): (HALF, HALF),
  # The ViT variants (duojax.models.vit_variants): CLIP's own statistics, DINOv2's and
  # DeiT's ImageNet ones, SigLIP's [-1, 1].
  ("timm", "vit_clip"): (CLIP_MEAN, CLIP_STD),
  ("hf", "vit_clip"): (CLIP_MEAN, CLIP_STD),
  ("timm", "vit_dinov2"): (IMAGENET_MEAN, IMAGENET_STD),
  ("hf", "vit_dinov2"): (IMAGENET_MEAN, IMAGENET_STD),
  ("timm", "deit"): (IMAGENET_MEAN, IMAGENET_STD),
  ("hf", "deit"): (IMAGENET_MEAN, IMAGENET_STD),
  ("timm", "vit_siglip"): (HALF, HALF),
  ("hf", "vit_siglip"): (HALF, HALF),
  # Swin-V2: ImageNet's in all three (timm's 256-px models: crop 0.9, bicubic).
  ("timm", "swin"): (IMAGENET_MEAN, IMAGENET_STD),
  ("torchvision", "swin"): (IMAGENET_MEAN, IMAGENET_STD),
  ("hf", "swin"): (IMAGENET_MEAN, IMAGENET_STD),
}
# torchvision's weights (its DEFAULT ones, the only ones for most models) each come with
# their eval transform, the centre crop_size of a resize_size resize: model ->
# (crop_size / resize_size, filter, mean, std). The ports of TensorFlow's EfficientNetV2-L
# take [-1, 1] pixels, where every other model takes ImageNet's statistics.
TORCHVISION_INPUTS = {
  "convnext_tiny": (224 / 236, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "convnext_small": (224 / 230, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "convnext_base": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "convnext_large": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_b0": (224 / 256, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_b1": (240 / 255, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_b2": (1.0, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_b3": (300 / 320, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_b4": (380 / 384, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_b5": (1.0, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_b6": (1.0, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_b7": (1.0, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_v2_s": (1.0, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_v2_m": (1.0, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "efficientnet_v2_l": (1.0, "bicubic", HALF, HALF),
  "swin_v2_t": (256 / 260, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  "swin_v2_s": (256 / 260, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  "swin_v2_b": (256 / 272, "bicubic", IMAGENET_MEAN, IMAGENET_STD),
  # RegNets, MobileNets, MNASNets, ShuffleNets, ResNeXts, Wide ResNets: IMAGENET1K_V2's
  # resize to 232, or V1's to 256 where V1 is the DEFAULT (mnasnet0_75, mnasnet1_3 and
  # shufflenet_v2_x1_5, x2_0 were trained later, with 232).
  "regnet_x_400mf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_x_800mf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_x_1_6gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_x_3_2gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_x_8gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_x_16gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_x_32gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_y_400mf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_y_800mf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_y_1_6gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_y_3_2gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_y_8gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_y_16gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "regnet_y_32gf": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "mobilenet_v2": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "mobilenet_v3_large": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "mobilenet_v3_small": (224 / 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "mnasnet0_5": (224 / 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "mnasnet0_75": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "mnasnet1_0": (224 / 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "mnasnet1_3": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "shufflenet_v2_x0_5": (224 / 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "shufflenet_v2_x1_0": (224 / 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "shufflenet_v2_x1_5": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "shufflenet_v2_x2_0": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "resnext50_32x4d": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "resnext101_32x8d": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "resnext101_64x4d": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "wide_resnet50_2": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
  "wide_resnet101_2": (224 / 232, "bilinear", IMAGENET_MEAN, IMAGENET_STD),
}
# The ViT variants' eval transform on their model cards (the Hugging Face processors'):
# crop fraction and filter, where no file beside the weights says them. By model name
# (duojax.models.vit_variants; a test keeps the names in step).
_CLIP_VIEW = _SIGLIP_VIEW = (1.0, "bicubic")
_DINOV2_VIEW = _DEIT_VIEW = (224 / 256, "bicubic")
VIT_VARIANT_VIEWS = {
  **{f"vit_{s}_clip{q}": _CLIP_VIEW for s in ("b16", "l14") for q in ("", "_quickgelu")},
  **{f"vit_{s}14_dinov2{r}": _DINOV2_VIEW for s in "sblg" for r in ("", "_reg")},
  **{f"deit_{s}16_distilled": _DEIT_VIEW for s in ("ti", "s", "b")},
  **{name: _SIGLIP_VIEW for name in ("vit_b16_siglip", "vit_so400m14_siglip")},
}
# Hugging Face repositories keep the preprocessing next to the weights; timm's
# (on the Hugging Face hub) a config.json holding its `pretrained_cfg`.
HF_PREPROCESSOR_FILE = "preprocessor_config.json"
TIMM_CONFIG_FILE = "config.json"
# jax.image's names of the filters (Keys' cubic with a = −0.5, as PIL's).
_JAX_METHODS = {"bilinear": "linear", "bicubic": "cubic"}


def _affine(mean, std) -> tuple[np.ndarray, np.ndarray]:
  """float32 (255·mean, 1 / (255·std)): (x − 255·mean) / (255·std) = (x/255 − mean) / std."""
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return np.float32(255) * mean, np.float32(1) / (np.float32(255) * std)


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
  """float32 (x/255 − mean) / std on the host, to the bit as `normalize_on_device`.

  Computed as (x − 255·mean) · 1/(255·std): one subtraction of whole-number
  pixels, then one product. Neither form XLA rewrites (a division by a
  broadcast becomes a product; a·b − c may fuse into one FMA) is present, so
  the host and the device round identically (a test checks every pixel value).
  """
  shift, scale = _affine(mean, std)
  return (images.astype(np.float32) - shift) * scale


def normalize_on_device(images: jax.Array, mean, std) -> jax.Array:
  """`normalize` inside a jitted step, for uint8 batches (other dtypes pass through)."""
  if images.dtype != jnp.uint8:
    return images
  if isinstance(mean, jax.Array) or isinstance(std, jax.Array):  # traced, or on a device
    mean, std = jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32)
    shift, scale = 255 * mean, 1 / (255 * std)
  else:  # constants of the step, computed as the host computes them
    shift, scale = _affine(mean, std)
  return (images.astype(jnp.float32) - shift) * scale


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """A model's input: side (pixels, square), per-channel mean/std of x/255, and
  how its images are cut and resized: the centre square of `crop_fraction` of
  the shorter side, resized with `interpolation` ("bilinear" | "bicubic")."""

  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  source: str = "data set"  # where the statistics came from, for reports
  crop_fraction: float = CROP_FRACTION
  interpolation: str = "bilinear"

  def as_meta(self) -> dict:
    return {
      "image_size": self.image_size,
      "mean": list(self.mean),
      "std": list(self.std),
      "source": self.source,
      "crop_fraction": self.crop_fraction,
      "interpolation": self.interpolation,
    }

  @classmethod
  def from_meta(
    cls, meta: dict, *, crop_fraction: float = CROP_FRACTION, interpolation: str = "bilinear"
  ) -> InputSpec:
    """The spec of checkpoint meta; `crop_fraction` and `interpolation` stand
    in where it predates them (older checkpoints: their training config's)."""
    return cls(
      int(meta["image_size"]),
      tuple(float(v) for v in meta["mean"]),
      tuple(float(v) for v in meta["std"]),
      str(meta.get("source", "data set")),
      float(meta.get("crop_fraction", crop_fraction)),
      str(meta.get("interpolation", interpolation)),
    )

  def check(self, channels: int) -> None:
    """Raises ConfigError unless the statistics fit `channels` and std > 0, and
    the crop and filter are ones the pipeline has (`check_view`)."""
    if len(self.mean) != channels or len(self.std) != channels:
      raise ConfigError(
        f"input statistics {list(self.mean)} / {list(self.std)} are not one "
        f"value per channel of {channels}-channel images"
      )
    if min(self.std) <= 0:
      raise ConfigError(f"input std {list(self.std)} must be positive")
    self.check_view()

  def check_view(self) -> None:
    """Raises ConfigError unless the crop and filter are ones the pipeline has."""
    if not 0 < self.crop_fraction <= 1:
      raise ConfigError(f"input crop fraction {self.crop_fraction} must be in (0, 1]")
    if self.interpolation not in INTERPOLATIONS:
      raise ConfigError(
        f"input interpolation {self.interpolation!r}; valid: {', '.join(INTERPOLATIONS)}"
      )


def hf_preprocessor_stats(weights_path: str) -> tuple[tuple, tuple] | None:
  """(mean, std) from a Hugging Face `preprocessor_config.json` beside the weights."""
  path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), HF_PREPROCESSOR_FILE)
  try:
    with open(path) as f:
      config = json.load(f)
    mean, std = config["image_mean"], config["image_std"]
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
  except (OSError, ValueError, KeyError, TypeError):
    return None


def _sidecar(weights_path: str, name: str) -> dict:
  """The JSON object in file `name` beside the weights; {} if it is absent or unreadable."""
  path = os.path.join(os.path.dirname(os.path.abspath(weights_path)), name)
  try:
    with open(path) as f:
      found = json.load(f)
  except (OSError, ValueError):
    return {}
  return found if isinstance(found, dict) else {}


def _side(value) -> float | None:
  """A Hugging Face size: an int, or {"shortest_edge" | "height": n, ...}."""
  if isinstance(value, dict):
    value = value.get("shortest_edge", value.get("height"))
  return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _hf_view(config: dict) -> dict:
  """What a `preprocessor_config.json` says of the crop and filter.

  `crop_pct` where the processor has one (ConvNeXt's, which Hugging Face's
  ResNets use; it crops only below 384 pixels); else crop_size / size for a
  resize then a centre crop; 1.0 for a resize to height × width with no crop
  (ViT's: the whole image, which the centre square of the whole shorter side
  comes closest to). `resample` is PIL's filter number: 2 bilinear, 3
  bicubic (others are not said).
  """
  view = {}
  crop = config.get("crop_pct")
  convnext = "ConvNext" in str(config.get("image_processor_type", ""))
  if crop is not None and convnext and (_side(config.get("size")) or 0) >= 384:
    crop = 1.0
  if crop is None and config.get("do_center_crop"):
    side, cut = _side(config.get("size")), _side(config.get("crop_size"))
    crop = cut / side if side and cut else None
  elif crop is None and config.get("do_resize") and isinstance(config.get("size"), dict):
    crop = 1.0 if "height" in config["size"] else None
  if isinstance(crop, (int, float)) and not isinstance(crop, bool):
    view["crop_fraction"] = float(crop)
  resample = {2: "bilinear", 3: "bicubic"}.get(config.get("resample"))
  if resample:
    view["interpolation"] = resample
  return view


def pretrained_view(
  weights_path: str, layout: str | None = None, model_name: str | None = None
) -> tuple[dict, str]:
  """({"crop_fraction", "interpolation"}: what the files beside the weights say,
  either or both or neither; where it was read, for reports).

  A Hugging Face `preprocessor_config.json` (`_hf_view`), else a timm
  `config.json`, whose `pretrained_cfg` (or top level) holds timm's
  `crop_pct` and `interpolation`. A crop outside (0, 1] or a filter other
  than bilinear and bicubic is kept, for `InputSpec.check` to refuse: a
  silent substitute would score the model on other inputs than its own.
  Else, for a torchvision file of a model in `TORCHVISION_INPUTS`, its weights'.
  """
  view = _hf_view(_sidecar(weights_path, HF_PREPROCESSOR_FILE))
  if view:
    return view, HF_PREPROCESSOR_FILE
  timm = _sidecar(weights_path, TIMM_CONFIG_FILE)
  if isinstance(timm.get("pretrained_cfg"), dict):
    timm = timm["pretrained_cfg"]
  crop, interpolation = timm.get("crop_pct"), timm.get("interpolation")
  if isinstance(crop, (int, float)) and not isinstance(crop, bool):
    view["crop_fraction"] = float(crop)
  if isinstance(interpolation, str) and interpolation:
    view["interpolation"] = interpolation
  if not view and layout == "torchvision" and model_name in TORCHVISION_INPUTS:
    crop, interpolation, _, _ = TORCHVISION_INPUTS[model_name]
    return {"crop_fraction": crop, "interpolation": interpolation}, f"torchvision {model_name}"
  if not view and model_name in VIT_VARIANT_VIEWS:
    crop, interpolation = VIT_VARIANT_VIEWS[model_name]
    return {"crop_fraction": crop, "interpolation": interpolation}, f"{model_name} model card"
  return view, TIMM_CONFIG_FILE if view else ""


def timm_config_stats(weights_path: str) -> tuple[tuple, tuple] | None:
  """(mean, std) from the `pretrained_cfg` of a timm `config.json` beside the weights."""
  config = _sidecar(weights_path, TIMM_CONFIG_FILE)
  if isinstance(config.get("pretrained_cfg"), dict):
    config = config["pretrained_cfg"]
  try:
    mean, std = config["mean"], config["std"]
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
  except (KeyError, TypeError, ValueError):
    return None


def pretrained_stats(
  layout: str, family: str, weights_path: str, model_name: str | None = None
) -> tuple[tuple, tuple, str]:
  """(mean, std, source) a pretrained file of `layout` was trained with: a Hugging Face
  `preprocessor_config.json` or timm `config.json` beside it, else torchvision's
  weights of `model_name` (`TORCHVISION_INPUTS`), else the library's for the family."""
  if layout == "hf":
    found = hf_preprocessor_stats(weights_path)
    if found is not None:
      return (*found, HF_PREPROCESSOR_FILE)
  if layout == "timm" and (found := timm_config_stats(weights_path)) is not None:
    return (*found, TIMM_CONFIG_FILE)
  if layout == "torchvision" and model_name in TORCHVISION_INPUTS:
    _, _, mean, std = TORCHVISION_INPUTS[model_name]
    return mean, std, f"torchvision {model_name} weights"
  mean, std = PRETRAINED_STATS.get((layout, family), (IMAGENET_MEAN, IMAGENET_STD))
  return mean, std, f"{layout} {family} default"


def prepare(images: jax.Array, spec: InputSpec, source_crop: float | None = None) -> jax.Array:
  """uint8 [B, H, W, C] -> float32 [B, S, S, C] for the model of `spec`.

  `source_crop`: the crop fraction the host cut the batch at (None: none, or
  the model's own). A batch of side H covering `source_crop` of each image's
  shorter side holds the model's crop as its centre r·H pixels, r =
  spec.crop_fraction / source_crop (≤ 1 when the host cuts the widest crop).
  Output pixel o (centre o + ½) reads input x with o + ½ = k·(x + ½) + t, k =
  S / (r·H) and t = S/2 − k·H/2, which puts the two centres together; one
  resampling (`jax.image.scale_and_translate`, antialiased when shrinking)
  cuts and resizes at once. Then the same normalisation as the pipeline's;
  float images pass through unchanged (they are normalised already).
  """
  if images.dtype != jnp.uint8:
    return images
  b, h, w, c = images.shape
  size = spec.image_size
  ratio = 1.0 if source_crop is None else spec.crop_fraction / source_crop
  if (h, w) == (size, size) and ratio == 1.0:
    return normalize_on_device(images, spec.mean, spec.std)
  method = _JAX_METHODS[spec.interpolation]
  pixels = images.astype(jnp.float32)
  if ratio == 1.0:
    pixels = jax.image.resize(pixels, (b, size, size, c), method, antialias=True)
  else:
    k = jnp.array([size / (ratio * h), size / (ratio * w)], jnp.float32)
    t = jnp.array([size / 2, size / 2], jnp.float32) - k * jnp.array([h / 2, w / 2], jnp.float32)
    pixels = jax.image.scale_and_translate(
      pixels, (b, size, size, c), (1, 2), k, t, method, antialias=True
    )
  if method == "cubic":  # the cubic filter overshoots; PIL's uint8 output clips
    pixels = jnp.clip(pixels, 0, 255)
  shift, scale = _affine(spec.mean, spec.std)
  return (pixels - shift) * scale
