"""Generated distribution shifts of a test set: 4 corruptions × 5 severities.

In the spirit of ImageNet-C (Hendrycks & Dietterich, 2019), with spatial
parameters defined at Fashion-MNIST's 28×28 and scaled with the image: a
blur's σ is given in pixels of a 28-pixel side and multiplied by side / 28
for larger images,
so severity 3 blurs a 224-pixel image as much, relative to its size, as a
28-pixel one (ImageNet-C's own radii of 3 to 10 pixels assume 224 and would
leave little of a 28-pixel image).

    corrupt(images, "blur", 3, seed=0)   # uint8 [N, H, W, C] -> same shape

Pixels are scaled to [0, 1], corrupted, then rounded and clipped back to
uint8. Everything runs as one jitted XLA program per chunk of images; the
severity's parameter and the seed are traced values, so each kind compiles
once per chunk shape, not once per severity or seed.

Randomness (the noise, the direction of rotation) is drawn per image from a
Threefry hash keyed by (seed, index of the image): the result is
deterministic given (kind, severity, seed), and an image's corruption does
not depend on how the set is chunked.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32
from jax.scipy import ndimage as jnd

from duojax.errors import ConfigError, InputError

SHIFTS = ("gaussian_noise", "blur", "rotation", "contrast")
SEVERITIES = (1, 2, 3, 4, 5)
# The 15 ImageNet-C corruptions at their 224-pixel definitions scaled to the image
# (duojax.data.imagenet_c), prefixed so that none clashes with the four above.
IMAGENET_C = (
  "c_gaussian_noise",
  "c_shot_noise",
  "c_impulse_noise",
  "c_defocus_blur",
  "c_glass_blur",
  "c_motion_blur",
  "c_zoom_blur",
  "c_snow",
  "c_frost",
  "c_fog",
  "c_brightness",
  "c_contrast",
  "c_elastic_transform",
  "c_pixelate",
  "c_jpeg_compression",
)
KINDS = SHIFTS + IMAGENET_C  # every kind of corruption (imagenet_c.corrupt takes the c_ ones)
GROUP = "imagenet_c"  # a name in config.shifts that stands for all of IMAGENET_C

# The parameter of each corruption at severities 1..5 (pixels in [0, 1]):
#   gaussian_noise  σ of the additive N(0, σ²) noise, per pixel and channel;
#   blur            σ (pixels up to a 28-pixel side; × side / 28 above) of a
#                   Gaussian blur: separable kernel of radius ceil(3σ),
#                   reflect padding (scipy's "reflect", i.e. d c b a | a b c d);
#   rotation        angle (degrees) about the image centre, bilinear, zero
#                   fill; the direction (clockwise or counter-clockwise) is
#                   drawn per image from the seed, so the shifted set has no
#                   systematic tilt;
#   contrast        c in x -> (x - m) c + m, m the image's own mean.
SEVERITY_TABLE = {
  "gaussian_noise": (0.05, 0.10, 0.15, 0.20, 0.30),
  "blur": (0.5, 0.75, 1.0, 1.25, 1.5),
  "rotation": (6.0, 12.0, 18.0, 24.0, 30.0),
  "contrast": (0.7, 0.5, 0.4, 0.3, 0.2),
}

CHUNK = 4096  # most images per jitted call
CHUNK_VALUES = CHUNK * 28 * 28  # and most pixel values: bounds the memory of one call
REFERENCE_SIDE = 28  # the side the spatial parameters are given for
BLUR_TRUNCATE = 3.0  # kernel radius = ceil(BLUR_TRUNCATE · σ)
# Every blur kernel has this many taps each side; taps beyond ceil(3σ) get weight
# 0, so one compiled program serves all severities.
_MAX_BLUR_RADIUS = math.ceil(BLUR_TRUNCATE * max(SEVERITY_TABLE["blur"]))


# ----------------------------------------------------------------------------
# The corruptions, on float images x [B, H, W, C] in [0, 1] numbered `indices`
# in the whole set. Each returns the corrupted (unclipped) images.


def image_random_bits(seed, indices, num_words: int):
  """uint32 [B, num_words]: random words for each image, from (seed, its index) alone.

  The Threefry key is the pair (seed, image index) and the counter runs over
  the words, so an image's randomness is the same whatever batch or chunk it
  is in. (Per-image keys from a vmapped fold_in, then jax.random.normal, do
  the same but compile several times slower on CPU.)
  """
  counter = jnp.arange(num_words, dtype=jnp.uint32)
  return jax.vmap(lambda index: threefry_2x32(jnp.stack([seed, index]), counter))(
    indices.astype(jnp.uint32)
  )


def standard_normal16(words, count: int):
  """N(0, 1) samples [B, count] from 16 random bits each (2 per uint32 word).

  Inverse CDF of a 16-bit uniform: near 0 the samples step by about 4e-5 (a
  hundredth of a grey level once scaled by σ · 255), coarser only far out in
  the tails, which are cut at ±4.3σ (a 1-in-65536 event). In exchange the
  random bits, the main cost of the noise on CPU, are halved.
  """
  halves = jnp.stack([words >> 16, words & 0xFFFF], axis=-1).reshape(words.shape[0], -1)
  uniform = (halves[:, :count].astype(jnp.float32) + 0.5) / 65536.0
  return jnp.sqrt(2.0) * jax.scipy.special.erfinv(2.0 * uniform - 1.0)


def _gaussian_noise(x, sigma, seed, indices):
  per_image = math.prod(x.shape[1:])
  words = image_random_bits(seed, indices, -(-per_image // 2))
  return x + sigma * standard_normal16(words, per_image).reshape(x.shape)


def blur_kernel(sigma, max_radius: int = _MAX_BLUR_RADIUS):
  """Normalised Gaussian taps at offsets -max_radius..max_radius, zero beyond ceil(3σ)."""
  offsets = jnp.arange(-max_radius, max_radius + 1, dtype=jnp.float32)
  # The epsilon keeps ceil(3σ) exact when 3σ is an integer up to float error.
  radius = jnp.ceil(BLUR_TRUNCATE * sigma - 1e-6)
  weights = jnp.where(jnp.abs(offsets) <= radius, jnp.exp(-0.5 * (offsets / sigma) ** 2), 0.0)
  return weights / weights.sum()


def reflect_index(positions: np.ndarray, size: int) -> np.ndarray:
  """Where positions outside 0..size-1 read from under scipy's "reflect" (d c b a | a b c d)."""
  folded = np.mod(positions, 2 * size)
  return np.where(folded < size, folded, 2 * size - 1 - folded)


def blur_matrix(weights, size: int):
  """[size, size] matrix M with M @ signal = the reflect-padded convolution with `weights`.

  Folding the padding into a small dense matrix turns the blur into two
  matrix products, which XLA runs far faster on CPU than a sum of shifted
  slices; the index pattern is static, only the weights are traced.
  """
  radius = (weights.shape[0] - 1) // 2
  outputs, offsets = np.meshgrid(np.arange(size), np.arange(-radius, radius + 1), indexing="ij")
  sources = reflect_index(outputs + offsets, size)
  taps = jnp.broadcast_to(weights, outputs.shape)
  return jnp.zeros((size, size), weights.dtype).at[outputs, sources].add(taps)


def _blur(x, sigma, seed, indices):
  del seed, indices  # deterministic
  # Up to 28 pixels σ is used as it is (to the bit); larger images scale it.
  scale = max(1.0, min(x.shape[1], x.shape[2]) / REFERENCE_SIDE)
  if scale != 1:
    sigma = sigma * jnp.float32(scale)
  weights = blur_kernel(sigma, math.ceil(_MAX_BLUR_RADIUS * scale))
  rows = blur_matrix(weights, x.shape[1])
  cols = blur_matrix(weights, x.shape[2])
  precision = jax.lax.Precision.HIGHEST  # full float32 on accelerators too
  x = jnp.einsum("ij,bjwc->biwc", rows, x, precision=precision)
  return jnp.einsum("kw,biwc->bikc", cols, x, precision=precision)


def rotate_image(image, degrees):
  """One image [H, W, C] rotated by `degrees` about its centre, bilinear, zero fill.

  Same convention as scipy.ndimage.rotate(image, degrees, reshape=False,
  order=1): positive angles turn the picture counter-clockwise as displayed
  (row 0 at the top).
  """
  height, width = image.shape[:2]
  centre_y, centre_x = (height - 1) / 2.0, (width - 1) / 2.0
  rows, cols = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
  )
  theta = jnp.deg2rad(degrees)
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  # Inverse mapping: each output pixel reads the input at the point that the
  # rotation carries onto it, so every output pixel gets exactly one value.
  dy, dx = rows - centre_y, cols - centre_x
  source_y = cos * dy + sin * dx + centre_y
  source_x = -sin * dy + cos * dx + centre_x

  def one_channel(channel):
    return jnd.map_coordinates(channel, [source_y, source_x], order=1, mode="constant", cval=0.0)

  return jax.vmap(one_channel, in_axes=2, out_axes=2)(image)


def _rotation(x, degrees, seed, indices):
  # The direction is the top bit of the image's first random word.
  signs = jnp.where(image_random_bits(seed, indices, 1)[:, 0] >> 31 == 1, 1.0, -1.0)
  return jax.vmap(rotate_image)(x, signs * degrees)


def _contrast(x, factor, seed, indices):
  del seed, indices  # deterministic
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean) * factor + mean


_CORRUPTIONS = {
  "gaussian_noise": _gaussian_noise,
  "blur": _blur,
  "rotation": _rotation,
  "contrast": _contrast,
}


def on_unit_range(corruption, images, *args):
  """corruption(x, *args) of uint8 images seen as x in [0, 1], rounded back to uint8:
  every corruption is written on [0, 1], as ImageNet-C's are."""
  y = corruption(images.astype(jnp.float32) / 255.0, *args)
  return jnp.clip(jnp.round(y * 255.0), 0.0, 255.0).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("kind",))
def _corrupt_chunk(images, param, seed, indices, *, kind: str):
  """uint8 [B, H, W, C] -> uint8, images numbered `indices` in the whole set."""
  return on_unit_range(_CORRUPTIONS[kind], images, param, seed, indices)


# ----------------------------------------------------------------------------
# Public entry point.


def expand(names) -> tuple[str, ...]:
  """The kinds that `names` (kinds, or GROUP for the 15 ImageNet-C ones) stand for, in
  order, each once."""
  kinds = []
  for name in names:
    for kind in IMAGENET_C if name == GROUP else (name,):
      if kind not in kinds:
        kinds.append(kind)
  return tuple(kinds)


def _check(images, kind, severity, seed, kinds=SHIFTS) -> np.ndarray:
  if kind not in kinds:
    raise ConfigError(f"unknown shift kind {kind!r}; expected one of {kinds}")
  if (
    isinstance(severity, bool)
    or not isinstance(severity, (int, np.integer))
    or severity not in SEVERITIES
  ):
    raise ConfigError(f"severity must be an int in {SEVERITIES}, got {severity!r}")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ConfigError(f"seed must be an int, got {seed!r}")
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise InputError(f"images must be uint8, got {images.dtype}")
  if images.ndim != 4:
    raise InputError(f"images must be [N, H, W, C], got shape {images.shape}")
  return images


def corrupt(images, kind: str, severity: int, *, seed: int = 0) -> np.ndarray:
  """`images` (uint8 [N, H, W, C]) with corruption `kind` at `severity` (1..5).

  Returns a new uint8 array of the same shape. Deterministic given
  (kind, severity, seed); see SEVERITY_TABLE for what each severity means.
  The `c_` kinds (IMAGENET_C) are duojax.data.imagenet_c.corrupt's.
  """
  images = _check(images, kind, severity, seed)
  count = images.shape[0]
  if count == 0:
    return images.copy()
  param = jnp.float32(SEVERITY_TABLE[kind][SEVERITIES.index(severity)])
  # uint32 wrap-around keeps any Python int seed usable as a traced key seed.
  seed = jnp.uint32(int(seed) % 2**32)
  per_image = int(np.prod(images.shape[1:]))
  return in_chunks(
    images,
    per_image,
    lambda chunk, indices: _corrupt_chunk(chunk, param, seed, indices, kind=kind),
  )


def in_chunks(images: np.ndarray, per_image: int, corrupt_chunk) -> np.ndarray:
  """corrupt_chunk(images, indices) over equal chunks of `images` ([N, ...], N ≥ 1).

  Chunks hold at most CHUNK images and CHUNK_VALUES values (`per_image` values
  an image): equal sizes, the last one padded, so a set size compiles one
  shape, and the padding is at most a few images; `indices` (int32) number
  each chunk's images in the whole set, which is what their randomness is
  keyed by. Every chunk is dispatched before any is read back, so the device
  keeps working while the host copies results out.
  """
  count = images.shape[0]
  per_chunk = min(CHUNK, max(1, CHUNK_VALUES // per_image))
  num_chunks = -(-count // per_chunk)
  chunk = -(-count // num_chunks)
  padded = np.concatenate(
    [images, np.zeros((num_chunks * chunk - count, *images.shape[1:]), np.uint8)]
  )
  results = [
    corrupt_chunk(padded[start : start + chunk], np.arange(start, start + chunk, dtype=np.int32))
    for start in range(0, count, chunk)
  ]
  return np.concatenate([np.asarray(r) for r in results])[:count]
