"""RandAugment (Cubuk et al. 2020) of one uint8 image, with PIL.

An image gets `num_ops` operations in turn, each drawn uniformly (with
replacement) from `OPS`, all at one magnitude M on timm's scale 0..10
(`rand-m9-n2` is M = 9, N = 2). With level ℓ = M / 10 ∈ [0, 1], each op's
parameter is

  rotate                    θ = ±30°·ℓ, about the centre
  shear_x, shear_y          s = ±0.3·ℓ, about the centre: x_in = x + s·(y − H/2)
  translate_x, translate_y  t = ±round(0.45·ℓ·side) whole pixels
  solarize                  pixels ≥ 256 − round(256·ℓ) become 255 − x
  posterize                 the top 8 − round(4·ℓ) bits of each channel kept
  color, contrast,          blend factor f = 1 ± 0.9·ℓ between the image and
  brightness, sharpness     its grey / mean-grey / black / smoothed version:
                            out = degenerate + f·(image − degenerate)
  identity, auto_contrast,  no magnitude (auto_contrast stretches each
  equalize                  channel's [min, max] to [0, 255]; equalize
                            flattens each channel's histogram)

each ± a fair coin. So every op is the identity at M = 0 and the strength
grows linearly with M, as in timm's "increasing" ops (torchvision's
magnitude m of 31 bins is M = m / 3 here). Geometric ops resample
bilinearly and fill what they uncover with mid-grey (128, timm's fill).
Every chosen op is applied (the paper's and torchvision's rule; timm's
applies each with probability 0.5): `identity` among the ops is the chance
of leaving an image alone.

Everything is a pure function of the image and the numpy Generator given
(`duojax.data.batches` seeds one per row from (seed, step, row)), so a batch
is the same in any worker and after any restart.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from duojax.errors import InputError

OPS = (
  "identity",
  "auto_contrast",
  "equalize",
  "rotate",
  "solarize",
  "color",
  "posterize",
  "contrast",
  "brightness",
  "sharpness",
  "shear_x",
  "shear_y",
  "translate_x",
  "translate_y",
)
MAX_MAGNITUDE = 10.0  # timm's scale: M = 10 is each op's strongest setting
DEFAULT = (2, 9.0)  # (num_ops, magnitude): timm's rand-m9-n2
FILL = 128
MAX_ROTATE, MAX_SHEAR, MAX_TRANSLATE, MAX_ENHANCE = 30.0, 0.3, 0.45, 0.9
_ENHANCERS = {
  "color": ImageEnhance.Color,
  "contrast": ImageEnhance.Contrast,
  "brightness": ImageEnhance.Brightness,
  "sharpness": ImageEnhance.Sharpness,
}


def _affine(image: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
  """`image` resampled at input (a·x + b·y + c, d·x + e·y + f) of each output (x, y)."""
  fill = FILL if image.mode == "L" else (FILL,) * len(image.getbands())
  return image.transform(
    image.size, Image.Transform.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=fill
  )


def apply_op(image: Image.Image, op: str, magnitude: float, sign: float = 1.0) -> Image.Image:
  """`op` of `OPS` at `magnitude` (0..10) on an "L" or "RGB" image; `sign` ±1
  picks the direction of the signed ops (rotate, shear, translate, enhance)."""
  level = magnitude / MAX_MAGNITUDE
  if op == "identity":
    return image
  if op == "auto_contrast":
    return ImageOps.autocontrast(image)
  if op == "equalize":
    return ImageOps.equalize(image)
  if op == "solarize":
    return ImageOps.solarize(image, 256 - round(256 * level))
  if op == "posterize":
    return ImageOps.posterize(image, 8 - round(4 * level))
  if op in _ENHANCERS:
    return _ENHANCERS[op](image).enhance(1.0 + sign * MAX_ENHANCE * level)
  if op == "rotate":
    fill = FILL if image.mode == "L" else (FILL,) * len(image.getbands())
    return image.rotate(sign * MAX_ROTATE * level, resample=Image.BILINEAR, fillcolor=fill)
  width, height = image.size
  if op == "shear_x":  # rows slide sideways, the middle row still
    s = sign * MAX_SHEAR * level
    return _affine(image, (1, s, -s * height / 2, 0, 1, 0))
  if op == "shear_y":
    s = sign * MAX_SHEAR * level
    return _affine(image, (1, 0, 0, s, 1, -s * width / 2))
  if op == "translate_x":  # whole pixels: a shift, not a blur
    return _affine(image, (1, 0, sign * round(MAX_TRANSLATE * level * width), 0, 1, 0))
  if op == "translate_y":
    return _affine(image, (1, 0, 0, 0, 1, sign * round(MAX_TRANSLATE * level * height)))
  raise InputError(f"unknown RandAugment op {op!r}; valid: {', '.join(OPS)}")


def to_pil(image: np.ndarray) -> Image.Image:
  """uint8 [H, W, 1 or 3] as an "L" or "RGB" PIL image."""
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def from_pil(image: Image.Image, channels: int) -> np.ndarray:
  return np.asarray(image, np.uint8).reshape(image.height, image.width, channels)


def draw(rng: np.random.Generator, num_ops: int) -> list[tuple[str, float]]:
  """(op, sign) of each of `num_ops` steps; always two draws per step, so the
  Generator is left in a state that does not depend on which ops came out."""
  ops = rng.integers(0, len(OPS), size=num_ops)
  signs = np.where(rng.random(num_ops) < 0.5, -1.0, 1.0)
  return [(OPS[int(i)], float(s)) for i, s in zip(ops, signs)]


def rand_augment(
  image: np.ndarray, rng: np.random.Generator, num_ops: int, magnitude: float
) -> np.ndarray:
  """uint8 [H, W, C] (C 1 or 3): `num_ops` ops drawn from `rng`, at `magnitude`."""
  steps = draw(rng, num_ops)
  if all(op == "identity" for op, _ in steps):
    return image
  out = to_pil(image)
  for op, sign in steps:
    out = apply_op(out, op, magnitude, sign)
  return from_pil(out, image.shape[-1])
