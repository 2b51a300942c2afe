"""What a model expects of its input images, and making them so on the device.

Every member of a duo keeps its own `InputSpec` in its checkpoint metadata, so
models trained elsewhere can sit beside one another: a timm ViT expects pixels
scaled to mean 0.5 / std 0.5, a torchvision ResNet the ImageNet statistics, a
model trained here the statistics of its data set; and each at its own size.
The input pipeline delivers one uint8 batch at the largest member's size;
`prepare` resizes and normalises it for one member on the device, inside the
jitted program that runs the model (`duojax.core.duo.make_fused_forward`).

Resizing is bilinear with antialiasing when shrinking (`jax.image.resize`), as
the host's crops are (PIL's bilinear filter). Normalisation is written so that
the host (`normalize`) and the device (`normalize_on_device`) agree to the bit.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from duojax.errors import ConfigError

# Channel statistics of x/255 that pretrained checkpoints were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# (layout, model family) -> (mean, std): the libraries' defaults for their weights.
# timm's ViTs from the AugReg / original JAX releases use 0.5/0.5 (DeiT-style
# ones use ImageNet's: override with config.input_mean / input_std).
PRETRAINED_STATS = {
  ("timm", "vit"): (HALF, HALF),
  ("hf", "vit"): (HALF, HALF),
  ("timm", "resnet"): (IMAGENET_MEAN, IMAGENET_STD),
  ("torchvision", "resnet"): (IMAGENET_MEAN, IMAGENET_STD),
  ("hf", "resnet"): (IMAGENET_MEAN, IMAGENET_STD),
}
# Hugging Face repositories keep the preprocessing next to the weights.
HF_PREPROCESSOR_FILE = "preprocessor_config.json"


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
  """A model's input: side (pixels, square) and per-channel mean/std of x/255."""

  image_size: int
  mean: tuple[float, ...]
  std: tuple[float, ...]
  source: str = "data set"  # where the statistics came from, for reports

  def as_meta(self) -> dict:
    return {
      "image_size": self.image_size,
      "mean": list(self.mean),
      "std": list(self.std),
      "source": self.source,
    }

  @classmethod
  def from_meta(cls, meta: dict) -> InputSpec:
    return cls(
      int(meta["image_size"]),
      tuple(float(v) for v in meta["mean"]),
      tuple(float(v) for v in meta["std"]),
      str(meta.get("source", "data set")),
    )

  def check(self, channels: int) -> None:
    """Raises ConfigError unless the statistics fit `channels` and std > 0."""
    if len(self.mean) != channels or len(self.std) != channels:
      raise ConfigError(
        f"input statistics {list(self.mean)} / {list(self.std)} are not one "
        f"value per channel of {channels}-channel images"
      )
    if min(self.std) <= 0:
      raise ConfigError(f"input std {list(self.std)} must be positive")


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


def pretrained_stats(layout: str, family: str, weights_path: str) -> tuple[tuple, tuple, str]:
  """(mean, std, source) a pretrained file of `layout` was trained with."""
  if layout == "hf":
    found = hf_preprocessor_stats(weights_path)
    if found is not None:
      return (*found, HF_PREPROCESSOR_FILE)
  mean, std = PRETRAINED_STATS.get((layout, family), (IMAGENET_MEAN, IMAGENET_STD))
  return mean, std, f"{layout} {family} default"


def prepare(images: jax.Array, spec: InputSpec) -> jax.Array:
  """uint8 [B, H, W, C] -> float32 [B, S, S, C] for the model of `spec`.

  Resizing (if H, W differ from S) works on pixel values, then the same
  normalisation as the pipeline's; float images pass through unchanged (they
  are normalised already).
  """
  if images.dtype != jnp.uint8:
    return images
  b, h, w, c = images.shape
  size = spec.image_size
  if (h, w) == (size, size):
    return normalize_on_device(images, spec.mean, spec.std)
  pixels = jax.image.resize(
    images.astype(jnp.float32), (b, size, size, c), "linear", antialias=True
  )
  shift, scale = _affine(spec.mean, spec.std)
  return (pixels - shift) * scale
