"""The 15 ImageNet-C corruptions × 5 severities at any resolution and channel count.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions
and Perturbations", ICLR 2019: noise (gaussian, shot, impulse), blur (defocus, glass,
motion, zoom), weather (snow, frost, fog, brightness) and digital (contrast, elastic
transform, pixelate, JPEG). Named with a `c_` prefix (`c_gaussian_noise`, ...) beside
`duojax.data.shifts`' own four (`shifts.IMAGENET_C` lists them); in `config.shifts`
the group name "imagenet_c" (`shifts.expand`) stands for all 15.

    corrupt(images, "c_frost", 3, seed=0)   # uint8 [N, H, W, C] -> same shape

SEVERITY_TABLE holds the reference code's (make_imagenet_c.py) parameters, defined for
224-pixel images. Scaling rule: a length in pixels (blur radii and σ, glass-blur
displacements, motion-blur length, snowflake size, elastic displacements and their
smoothness, the affine jitter) is multiplied by s = min(H, W) / 224, so a corruption
covers the same fraction of the image at every size; a 28-pixel image gets an eighth of
the 224-pixel radius, which can round to nothing at severity 1 (defocus radius 3 -> 0.4
pixels). Random fields of the reference (elastic displacements, snow noise, fog's
plasma) are drawn on the 224-pixel grid and resampled to the image. Relative
parameters (noise levels, zoom factors, pixelate's size fraction, contrast, fog,
frost, brightness, JPEG quality) are used as they are. Noise and colour corruptions
act channel-wise; the weather layers are grey, added to every channel (see
`imagenet_c_weather`).

Pixels are scaled to [0, 1], corrupted, rounded and clipped back to uint8. Each kind
is one jitted program per chunk shape with the severity's parameters traced (one
compilation serves all severities and seeds), except JPEG, which PIL encodes on the
host, image by image (deterministic). Randomness comes from a Threefry hash of
(seed mixed with the kind's name, index of the image) as in `shifts`: results do not
depend on chunking or batch position, and two kinds with the same seed draw
independently.

Departures from the reference, besides the scaling: glass blur swaps pixels in place
one at a time (a serial loop); here every pixel of an iteration reads a pixel at a
random offset U(-d, d), stochastically rounded, in one gather (the reference's
randint(-d, d) never draws +d). Motion blur is ImageMagick's one-sided Gaussian
streak, read bilinearly. Defocus blur's disk has anti-aliased edges (weight
clip(r + 1/2 - distance, 0, 1)), which gives fractional radii a meaning. Elastic
transform composes its affine jitter and its displacement field into one bilinear
read (mirror edges). Pixelate rounds once, at the end, where PIL also rounds between
its two passes (at most 1 grey level apart). Frost textures are generated
(`imagenet_c_weather.frost_texture`), not photographs.
"""

from __future__ import annotations

import functools
import io
import math
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from duojax.data import imagenet_c_weather as weather
from duojax.data import shifts
from duojax.data.imagenet_c_weather import bilinear, pixel_grid, scale, uniform16

# make_imagenet_c.py's parameters at severities 1..5 (224-pixel units for lengths):
SEVERITY_TABLE = {
  "c_gaussian_noise": ((0.08,), (0.12,), (0.18,), (0.26,), (0.38,)),  # σ of x + N(0, σ²)
  "c_shot_noise": ((60,), (25,), (12,), (5,), (3,)),  # λ of Poisson(λx) / λ
  "c_impulse_noise": ((0.03,), (0.06,), (0.09,), (0.17,), (0.27,)),  # salt & pepper fraction
  # disk radius, σ of the Gaussian that anti-aliases it
  "c_defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
  # Gaussian σ, largest displacement, iterations
  "c_glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
  "c_motion_blur": ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)),  # radius, σ
  # zoom factors np.arange(start, stop, step), averaged with the image
  "c_zoom_blur": (
    (1, 1.11, 0.01),
    (1, 1.16, 0.01),
    (1, 1.21, 0.02),
    (1, 1.26, 0.02),
    (1, 1.31, 0.03),
  ),
  # noise mean, sd, zoom, threshold, motion radius, motion σ, blend
  "c_snow": (
    (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
    (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
    (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
  ),
  "c_frost": ((1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)),  # image, frost
  "c_fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),  # thickness, decay
  "c_brightness": ((0.1,), (0.2,), (0.3,), (0.4,), (0.5,)),  # added to HSV value
  "c_contrast": ((0.4,), (0.3,), (0.2,), (0.1,), (0.05,)),  # (x - channel mean) · c + mean
  # displacement scale α, its smoothing σ, affine jitter (the reference's 244 is its typo
  # for 224, kept: these are its numbers)
  "c_elastic_transform": (
    (244 * 2, 244 * 0.7, 244 * 0.1),
    (244 * 2, 244 * 0.08, 244 * 0.2),
    (244 * 0.05, 244 * 0.01, 244 * 0.02),
    (244 * 0.07, 244 * 0.01, 244 * 0.02),
    (244 * 0.12, 244 * 0.01, 244 * 0.02),
  ),
  "c_pixelate": ((0.6,), (0.5,), (0.4,), (0.3,), (0.25,)),  # PIL box down to this fraction, up
  "c_jpeg_compression": ((25,), (18,), (15,), (10,), (7,)),  # PIL JPEG quality
}
assert tuple(SEVERITY_TABLE) == shifts.IMAGENET_C

CHUNK = 4096  # most images per jitted call
CHUNK_VALUES = 1 << 24  # and most values per call (pixels, or the kind's internal grids)
ZOOM_STEPS = 16  # the longest list of zoom factors (severity 2)
# Values per image of the grids some kinds draw at 224-pixel resolution whatever the size.
_GRID_VALUES = {
  "c_fog": 4 * weather.PLASMA_SIDE**2,
  "c_elastic_transform": 4 * 224 * 224,
  "c_snow": 2 * 116 * 116,
}


def _uniform_words(words):
  """Two uniforms in (0, 1) from each uint32 word: (high half, low half)."""
  return ((words >> 16).astype(jnp.float32) + 0.5) / 65536, (
    (words & 0xFFFF).astype(jnp.float32) + 0.5
  ) / 65536


# ----------------------------------------------------------------------------
# Noise and blur: f(x, params, seed, indices) -> unclipped images.


def _gaussian_noise(x, params, seed, indices):
  per_image = math.prod(x.shape[1:])
  words = shifts.image_random_bits(seed, indices, -(-per_image // 2))
  return x + params[0] * shifts.standard_normal16(words, per_image).reshape(x.shape)


def _shot_noise(x, params, seed, indices):
  rate = params[0]
  per_image = math.prod(x.shape[1:])
  u = uniform16(shifts.image_random_bits(seed, indices, -(-per_image // 2)), per_image)
  u = u.reshape(x.shape)
  lam = x * rate

  # Poisson(λ) by inversion: the count is the number of k with F(k) < u. The loop runs
  # only as far as the largest count in the chunk (≈ λ + 5√λ), never the table's worst;
  # each pass adds 8 terms, so the arrays are read and written an eighth as often.
  def more(state):
    k, _, cdf, _ = state
    # The cap only bounds the loop: with λ ≤ 60 a count past 280 has probability ~1e-80.
    return (k < 4 * 60 + 40) & jnp.any(u > cdf)

  def step(state):
    k, term, cdf, count = state
    for _ in range(8):
      count = count + (u > cdf)
      k = k + 1
      term = term * lam / k
      cdf = cdf + term
    return k, term, cdf, count

  start = jnp.exp(-lam)
  state = (jnp.float32(0), start, start, jnp.zeros_like(x))
  return jax.lax.while_loop(more, step, state)[3] / rate


def _impulse_noise(x, params, seed, indices):
  # skimage's s&p: each value flips with probability `amount`, to 1 or 0 with equal odds.
  words = shifts.image_random_bits(seed, indices, math.prod(x.shape[1:])).reshape(x.shape)
  flip = ((words & 0xFFFF).astype(jnp.float32) + 0.5) / 65536 < params[0]
  return jnp.where(flip, (words >> 31).astype(jnp.float32), x)


def defocus_kernel(radius, alias, half: int):
  """[2·half+1]² disk of `radius` pixels (anti-aliased edge), smoothed by a 5-tap Gaussian
  of σ `alias` as the reference's cv2.GaussianBlur, summing to 1."""
  offsets = jnp.arange(-half, half + 1, dtype=jnp.float32)
  distance = jnp.hypot(offsets[:, None], offsets[None, :])
  disk = jnp.clip(radius + 0.5 - distance, 0.0, 1.0)
  gaps = offsets[:, None] - offsets[None, :]
  sigma = jnp.maximum(alias, 1e-3)
  smooth = jnp.where(jnp.abs(gaps) <= 2, jnp.exp(-0.5 * (gaps / sigma) ** 2), 0.0)
  smooth = smooth / smooth.sum(axis=1, keepdims=True)
  kernel = smooth @ disk @ smooth.T
  return kernel / kernel.sum()


def _defocus_blur(x, params, seed, indices):
  del seed, indices  # deterministic
  s = scale(x)
  half = math.ceil(max(r for r, _ in SEVERITY_TABLE["c_defocus_blur"]) * s + 0.5) + 2
  kernel = defocus_kernel(params[0] * s, params[1] * s, half)
  height, width = x.shape[1], x.shape[2]
  # cv2.filter2D's default border, BORDER_REFLECT_101, is numpy's "reflect". The kernel
  # is up to 25 pixels wide at 224 pixels: an FFT product beats a direct convolution
  # (on CPU, by about 50×); the padding keeps the circular wrap out of the kept pixels.
  padded = jnp.pad(x, ((0, 0), (half, half), (half, half), (0, 0)), mode="reflect")
  shape = (padded.shape[1], padded.shape[2])
  spectrum = jnp.fft.rfft2(padded, axes=(1, 2)) * jnp.fft.rfft2(kernel, s=shape)[:, :, None]
  full = jnp.fft.irfft2(spectrum, s=shape, axes=(1, 2))
  return full[:, 2 * half : 2 * half + height, 2 * half : 2 * half + width]


def _glass_blur(x, params, seed, indices):
  s = scale(x)
  table = SEVERITY_TABLE["c_glass_blur"]
  max_sigma = max(row[0] for row in table) * s
  sigma, delta, iterations = params[0] * s, params[1] * s, params[2]
  # The reference blurs, stores as uint8 (truncating), shuffles, blurs again.
  x = jnp.floor(jnp.clip(weather.gaussian_blur(x, sigma, max_sigma), 0.0, 1.0) * 255) / 255
  height, width = x.shape[1], x.shape[2]
  rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
  batch = jnp.arange(x.shape[0])[:, None, None]
  rounds = max(row[2] for row in table)
  words = shifts.image_random_bits(seed, indices, 2 * rounds * height * width)
  words = words.reshape(-1, rounds, 2, height, width)
  for i in range(rounds):  # each pixel reads a pixel about `delta` away (whole pixels)
    uy, ux = _uniform_words(words[:, i, 0])
    vy, vx = _uniform_words(words[:, i, 1])
    # U(-d, d) rounded stochastically (down, or up with the probability of its fraction):
    # unbiased, so a displacement of a fraction of a pixel (small images) still moves
    # the right share of pixels.
    dy = jnp.floor((2 * uy - 1) * delta + vy).astype(jnp.int32)
    dx = jnp.floor((2 * ux - 1) * delta + vx).astype(jnp.int32)
    moved = x[batch, jnp.clip(rows + dy, 0, height - 1), jnp.clip(cols + dx, 0, width - 1)]
    x = jnp.where(i < iterations, moved, x)
  return weather.gaussian_blur(x, sigma, max_sigma)


def _motion_blur(x, params, seed, indices):
  angle = -45.0 + 90.0 * uniform16(shifts.image_random_bits(seed, indices, 1), 1)[:, 0]
  return weather.motion_blur(x, params[0], params[1], angle)


def _zoom_blur(x, params, seed, indices):
  del seed, indices  # deterministic
  factors = params  # [ZOOM_STEPS], 0 where unused
  rows, cols = pixel_grid(x)
  centre_y, centre_x = (x.shape[1] - 1) / 2, (x.shape[2] - 1) / 2
  shape = (x.shape[0], x.shape[1], x.shape[2])

  def add_zoom(i, total):
    used = factors[i] > 0
    factor = jnp.where(used, factors[i], 1.0)
    # Zoomed about the centre: output pixel p reads centre + (p - centre) / factor.
    zoomed = bilinear(
      x,
      jnp.broadcast_to(centre_y + (rows - centre_y) / factor, shape),
      jnp.broadcast_to(centre_x + (cols - centre_x) / factor, shape),
    )
    return total + jnp.where(used, zoomed, 0.0)

  total = jax.lax.fori_loop(0, ZOOM_STEPS, add_zoom, x)
  return total / (1 + (factors > 0).sum())


# ----------------------------------------------------------------------------
# Digital.


def _contrast(x, params, seed, indices):
  del seed, indices  # deterministic
  mean = x.mean(axis=(1, 2), keepdims=True)  # per channel, as the reference
  return (x - mean) * params[0] + mean


def _elastic_transform(x, params, seed, indices):
  alpha, sigma, jitter = params[0], params[1], params[2]
  batch, height, width = x.shape[:3]
  s = scale(x)
  # The displacement field on the reference's 224-pixel grid: U(-1, 1) noise smoothed
  # by a Gaussian of σ (truncated at 3σ, reflect edges, as skimage), times α.
  grid_h = round(weather.REFERENCE_SIDE * height / min(height, width))
  grid_w = round(weather.REFERENCE_SIDE * width / min(height, width))
  count = 2 * grid_h * grid_w
  u = uniform16(shifts.image_random_bits(seed, indices, count // 2 + 3), count + 6)
  fields = (2 * u[:, :count] - 1).reshape(batch, 2, grid_h, grid_w)
  max_sigma = max(row[1] for row in SEVERITY_TABLE["c_elastic_transform"])
  weights = shifts.blur_kernel(sigma, math.ceil(shifts.BLUR_TRUNCATE * max_sigma))
  precision = jax.lax.Precision.HIGHEST
  rows_m, cols_m = shifts.blur_matrix(weights, grid_h), shifts.blur_matrix(weights, grid_w)
  fields = jnp.einsum("ij,bfjw->bfiw", rows_m, fields, precision=precision)
  fields = alpha * jnp.einsum("kw,bfiw->bfik", cols_m, fields, precision=precision)
  # To this image's grid, in its pixels (the field is smooth: σ ≥ 2.4 grid pixels).
  dy, dx = (jax.image.resize(fields, (batch, 2, height, width), "linear") * s).transpose(1, 0, 2, 3)
  # The affine jitter: three points about the centre moved by U(-j, j), as (col, row).
  centre, half = np.array([width // 2, height // 2], np.float32), min(height, width) // 3
  points = np.array(
    [centre + half, [centre[0] + half, centre[1] - half], centre - half], np.float32
  )
  moved = points + (2 * u[:, count:].reshape(batch, 3, 2) - 1) * jitter * s
  homogeneous = jnp.asarray(np.concatenate([points, np.ones((3, 1), np.float32)], axis=1))
  affine = jax.vmap(lambda target: jnp.linalg.solve(homogeneous, target))(moved)  # [B, 3, 2]
  affine = jnp.concatenate(
    [affine.transpose(0, 2, 1), jnp.broadcast_to(jnp.array([[0.0, 0.0, 1.0]]), (batch, 1, 3))],
    axis=1,
  )
  inverse = jnp.linalg.inv(affine)  # warpAffine reads the source at M⁻¹ · destination
  rows, cols = pixel_grid(x)
  # Output pixel p reads the affine-warped image at p + d(p), i.e. the source there.
  qx, qy = cols + dx, rows + dy
  src_x = inverse[:, 0, 0, None, None] * qx + inverse[:, 0, 1, None, None] * qy
  src_y = inverse[:, 1, 0, None, None] * qx + inverse[:, 1, 1, None, None] * qy
  src_x = src_x + inverse[:, 0, 2, None, None]
  src_y = src_y + inverse[:, 1, 2, None, None]
  return bilinear(x, src_y, src_x, mode="mirror")


def pixelate_matrices(height: int, width: int, fraction: float):
  """Row and column matrices of the reference's BOX resize to int(side · fraction) and back."""
  small_h, small_w = max(1, int(height * fraction)), max(1, int(width * fraction))
  rows = weather.box_resize_matrix(small_h, height) @ weather.box_resize_matrix(height, small_h)
  cols = weather.box_resize_matrix(small_w, width) @ weather.box_resize_matrix(width, small_w)
  return rows.astype(np.float32), cols.astype(np.float32)


def _pixelate(x, params, seed, indices):
  del seed, indices  # deterministic
  precision = jax.lax.Precision.HIGHEST
  x = jnp.einsum("ij,bjwc->biwc", params[0], x, precision=precision)
  return jnp.einsum("kw,biwc->bikc", params[1], x, precision=precision)


def jpeg_compress(images: np.ndarray, quality: int) -> np.ndarray:
  """uint8 [N, H, W, C] through PIL's JPEG at `quality`: RGB for 3 channels, else each
  channel as a grey image (libjpeg is deterministic)."""
  from PIL import Image

  def roundtrip(array, mode):
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())))

  out = np.empty_like(images)
  for i, image in enumerate(images):
    if image.shape[-1] == 3:
      out[i] = roundtrip(np.ascontiguousarray(image), "RGB")
    else:
      for c in range(image.shape[-1]):
        out[i, ..., c] = roundtrip(np.ascontiguousarray(image[..., c]), "L")
  return out


_CORRUPTIONS = {
  "c_gaussian_noise": _gaussian_noise,
  "c_shot_noise": _shot_noise,
  "c_impulse_noise": _impulse_noise,
  "c_defocus_blur": _defocus_blur,
  "c_glass_blur": _glass_blur,
  "c_motion_blur": _motion_blur,
  "c_zoom_blur": _zoom_blur,
  "c_snow": weather.snow,
  "c_frost": weather.frost,
  "c_fog": weather.fog,
  "c_brightness": weather.brightness,
  "c_contrast": _contrast,
  "c_elastic_transform": _elastic_transform,
  "c_pixelate": _pixelate,
}


@functools.partial(jax.jit, static_argnames=("kind",))
def _corrupt_chunk(images, params, seed, indices, *, kind: str):
  """uint8 [B, H, W, C] -> uint8, images numbered `indices` in the whole set."""
  return shifts.on_unit_range(_CORRUPTIONS[kind], images, params, seed, indices)


def severity_params(kind: str, severity: int, shape):
  """The traced parameters of `kind` at `severity` for images of `shape` [N, H, W, C]: the
  table's row as an array (zoom blur: its factors, 0-padded), or pixelate's matrices."""
  row = SEVERITY_TABLE[kind][severity - 1]
  if kind == "c_zoom_blur":
    factors = np.zeros(ZOOM_STEPS, np.float32)
    steps = np.arange(*row)  # the reference's own list, float rounding included
    factors[: len(steps)] = steps
    return factors
  if kind == "c_pixelate":
    return pixelate_matrices(shape[1], shape[2], row[0])
  return np.asarray(row, np.float32)


def corrupt(images, kind: str, severity: int, *, seed: int = 0) -> np.ndarray:
  """`images` (uint8 [N, H, W, C]) with ImageNet-C corruption `kind` (a `c_` name) at
  `severity` (1..5); a new uint8 array of the same shape, deterministic given
  (kind, severity, seed). See SEVERITY_TABLE and the module docstring."""
  images = shifts._check(images, kind, severity, seed, kinds=shifts.IMAGENET_C)
  count = images.shape[0]
  if count == 0:
    return images.copy()
  if kind == "c_jpeg_compression":
    return jpeg_compress(images, SEVERITY_TABLE[kind][severity - 1][0])
  params = jax.tree.map(jnp.asarray, severity_params(kind, severity, images.shape))
  # The kind's name enters the key, so kinds drawn with the same seed are independent.
  seed = jnp.uint32((int(seed) + zlib.crc32(kind.encode())) % 2**32)
  per_image = max(int(np.prod(images.shape[1:])), _GRID_VALUES.get(kind, 0))
  return shifts.in_chunks(
    images,
    per_image,
    lambda chunk, indices: _corrupt_chunk(chunk, params, seed, indices, kind=kind),
  )
