"""One image at a time: decode, crop and resize to uint8, on the host.

The pipeline (`duojax.data.pipeline`) calls these in its worker processes for
data sets of encoded (JPEG/PNG) or variable-size images. Everything here is
a pure function of its inputs: the random crops take their draws from a
numpy Generator the caller seeds from (seed, step, row).

Geometry is expressed as a box (left, top, width, height) in the source
image's pixels, cut and resized to the output in one resampling step
(`PIL.Image.resize(box=...)`, bilinear, or bicubic as timm's ViTs were
evaluated, with antialiasing when shrinking, as torchvision's
`antialias=True`). A JPEG whose box is much larger than the
output is decoded at 1/2, 1/4 or 1/8 scale first (the decoder's DCT scaling,
`Image.draft`), which skips most of the decoding work; the box is scaled with
it, so the result differs from a full decode only by resampling error
(bench/bench_input.py measures both).
"""

from __future__ import annotations

import functools
import io
import math
import os
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

# Inception-style random-resized crop (Szegedy et al. 2015), as torchvision's.
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
RRC_ATTEMPTS = 10
# Evaluation: the centre square covering this fraction of the shorter side
# (224 of a 256 resize), resized to the output.
CROP_FRACTION = 0.875
# Resampling filters by the names configs and pretrained files use.
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}
# Decode errors PIL raises for bytes that are not a whole image.
DECODE_ERRORS = (
  UnidentifiedImageError,
  OSError,
  SyntaxError,
  ValueError,
  Image.DecompressionBombError,
)
# Modes resampled as they are; every other mode is made 8-bit RGB (or L) first,
# since PIL resamples palette and 16-bit images poorly or not at all.
_RESAMPLE_MODES = ("RGB", "L", "RGBA", "LA")

Box = tuple[float, float, float, float]  # left, top, width, height
# PIL names the in-memory file it was given ("<_io.BytesIO object at 0x7f…>"):
# an address means nothing to a user and makes two runs' messages differ.
_OBJECT_ADDRESS = re.compile(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>")


@functools.cache
def image_extensions() -> frozenset[str]:
  """File extensions (".jpg", ".png", ...) of the formats this PIL can open."""
  Image.init()
  return frozenset(
    ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN
  )


def is_image_name(name: str) -> bool:
  """Whether a file name's extension is an image format's (`notes.txt`, `Thumbs.db`: no)."""
  return os.path.splitext(name)[1].lower() in image_extensions()


def error_text(error: BaseException) -> str:
  """`error` in a few words for a message: its type and first line, no object addresses."""
  first = str(error).splitlines()[0] if str(error) else ""
  first = _OBJECT_ADDRESS.sub("", first).strip()
  return f"{type(error).__name__}: {first or 'cannot decode'}"


def open_encoded(data: bytes) -> Image.Image:
  """A lazily decoded PIL image of JPEG/PNG/... `data`; raises one of DECODE_ERRORS."""
  return Image.open(io.BytesIO(data))


def check_decodes(data: bytes) -> str | None:
  """None if `data` decodes to a whole image, else the reason in a few words."""
  if not data:
    return "empty file"
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.width < 1 or image.height < 1:
        return "no pixels"
  except DECODE_ERRORS as e:
    return error_text(e)
  return None


def _to_8bit(image: Image.Image) -> Image.Image:
  """`image` in a mode PIL resamples well: RGB(A) or L(A), 8 bits a channel."""
  if image.mode in _RESAMPLE_MODES:
    return image
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    # 16-bit (and 32-bit integer) grey: keep the top 8 bits of 16.
    pixels = np.asarray(image).astype(np.int64)
    return Image.fromarray(np.clip(pixels >> 8, 0, 255).astype(np.uint8), "L")
  if image.mode == "F":
    return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L")
  if image.mode == "PA" or (image.mode == "P" and "transparency" in image.info):
    return image.convert("RGBA")
  if image.mode == "1":
    return image.convert("L")
  return image.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV


def to_channels(image: Image.Image, channels: int) -> np.ndarray:
  """uint8 [H, W, channels] of an 8-bit `image`; alpha is dropped (as PIL's convert)."""
  mode = "RGB" if channels == 3 else "L"
  if image.mode != mode:
    image = image.convert(mode)
  return np.asarray(image, dtype=np.uint8).reshape(image.height, image.width, channels)


def random_resized_crop_box(
  rng: np.random.Generator,
  width: int,
  height: int,
  *,
  scale: tuple[float, float] = RRC_SCALE,
  ratio: tuple[float, float] = RRC_RATIO,
) -> Box:
  """An Inception-style random crop of a `width`×`height` image.

  Area fraction ~ U(scale), aspect ratio log-uniform in `ratio`; up to 10
  tries for a box that fits, else the centre crop with the aspect ratio
  clamped into `ratio` (torchvision's fallback). Integer box, in pixels.
  """
  area = width * height
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(RRC_ATTEMPTS):
    target = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * aspect)))
    h = int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return (left, top, w, h)
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  return ((width - w) // 2, (height - h) // 2, w, h)


def center_crop_box(width: int, height: int, crop_fraction: float = CROP_FRACTION) -> Box:
  """The centred square of side `crop_fraction` × the shorter side.

  Resized to S, it is what resizing the shorter side to S / crop_fraction and
  cutting the centre S×S gives, in one resampling instead of two.
  """
  side = crop_fraction * min(width, height)
  return ((width - side) / 2, (height - side) / 2, side, side)


def _draft(image: Image.Image, box: Box, size: int) -> tuple[Image.Image, Box]:
  """Asks a JPEG decoder for the smallest DCT scale that keeps `box` ≥ `size`."""
  if image.format != "JPEG" or image.mode not in ("RGB", "L", "CMYK"):
    return image, box
  full_w, full_h = image.size
  # The full image at the reduction that maps the box onto at least size×size.
  reduce = min(box[2] / size, box[3] / size)
  if reduce < 2:
    return image, box
  image.draft(image.mode, (math.ceil(full_w / reduce), math.ceil(full_h / reduce)))
  sx, sy = image.size[0] / full_w, image.size[1] / full_h
  return image, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def crop_resize(
  image: Image.Image,
  box: Box,
  size: int,
  channels: int = 3,
  *,
  draft: bool = True,
  flip: bool = False,
  interpolation: str = "bilinear",
) -> np.ndarray:
  """uint8 [size, size, channels]: `box` of `image` resized to size×size.

  `image` is a PIL image not yet decoded (`open_encoded`) or a decoded one
  (`Image.fromarray`); `draft=False` always decodes at full scale; `flip`
  mirrors the result left to right (in PIL, cheaper than a numpy copy);
  `interpolation` is a name of INTERPOLATIONS.
  """
  if draft:
    image, box = _draft(image, box, size)
  image = _to_8bit(image)
  left, top, w, h = box
  resample = INTERPOLATIONS[interpolation]
  out = image.resize((size, size), resample, box=(left, top, left + w, top + h))
  if flip:
    out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return to_channels(out, channels)


def decode(data: bytes, channels: int = 3) -> np.ndarray:
  """The whole image of `data` as uint8 [H, W, channels] (full-scale decode)."""
  with open_encoded(data) as image:
    return to_channels(_to_8bit(image), channels)
