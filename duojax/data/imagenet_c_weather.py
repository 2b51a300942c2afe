"""ImageNet-C's weather corruptions (snow, frost, fog, brightness) and the helpers the
other ImageNet-C corruptions share (bilinear reads, motion blur, Gaussian blur, PIL's box
resize); `duojax.data.imagenet_c` holds the tables and the entry point.

Every function takes float images x [B, H, W, C] in [0, 1] and works for any size and
channel count. Lengths given in pixels of ImageNet-C's 224-pixel images are multiplied by
`scale(x) = min(H, W) / 224`. The weather layers (snowflakes, frost, fog) are one grey
layer added to every channel (frost tinted bluish on RGB); "grey" (snow's brightening) is
x itself for one channel, the luma 0.299 R + 0.587 G + 0.114 B for three, the channel
mean otherwise.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from duojax.data import shifts

REFERENCE_SIDE = 224  # the side of ImageNet-C's images, which its pixel lengths assume
MOTION_TAPS = 41  # 2 · ceil(radius) + 1 for the largest radius (20) in the tables
PLASMA_SIDE = 256  # the diamond-square map of fog, cropped to 224 as in the reference
FROST_TINT = (0.85, 0.93, 1.0)  # RGB weights of the frost layer: ice is bluish white


def scale(x) -> float:
  """min(H, W) / 224: pixels of this image per pixel of a 224-pixel one."""
  return min(x.shape[1], x.shape[2]) / REFERENCE_SIDE


def grey(x):
  """[B, H, W, 1]: x itself (one channel), luma (three), or the channel mean."""
  if x.shape[-1] == 3:
    return x @ jnp.array([0.299, 0.587, 0.114], jnp.float32)[:, None]
  return x.mean(axis=-1, keepdims=True)


def uniform16(words, count: int):
  """Uniforms in (0, 1) [B, count] from 16 random bits each (2 per uint32 word)."""
  halves = jnp.stack([words >> 16, words & 0xFFFF], axis=-1).reshape(words.shape[0], -1)
  return (halves[:, :count].astype(jnp.float32) + 0.5) / 65536.0


def _fold(index, size: int, mode: str):
  if mode == "nearest":  # edge pixels repeat (ImageMagick's and skimage's default)
    return jnp.clip(index, 0, size - 1)
  # "mirror": d c b | a b c d | c b a (OpenCV's BORDER_REFLECT_101)
  period = max(2 * size - 2, 1)
  index = jnp.mod(index, period)
  return jnp.where(index >= size, period - index, index)


def bilinear(x, rows, cols, mode: str = "nearest"):
  """x [B, H, W, C] read at float positions rows, cols [B, h, w] -> [B, h, w, C].

  Bilinear interpolation between the four neighbouring pixels; positions outside the
  image take `mode` ("nearest" or "mirror") for the missing neighbours.
  """
  x = jnp.asarray(x)
  height, width = x.shape[1], x.shape[2]
  top, left = jnp.floor(rows), jnp.floor(cols)
  fy, fx = (rows - top)[..., None], (cols - left)[..., None]
  top, left = top.astype(jnp.int32), left.astype(jnp.int32)
  batch = jnp.arange(x.shape[0])[:, None, None]

  def at(r, c):
    return x[batch, _fold(r, height, mode), _fold(c, width, mode)]

  upper = at(top, left) * (1 - fx) + at(top, left + 1) * fx
  lower = at(top + 1, left) * (1 - fx) + at(top + 1, left + 1) * fx
  return upper * (1 - fy) + lower * fy


def pixel_grid(x):
  """Float row and column indices [H, W] of x's pixels."""
  return jnp.meshgrid(
    jnp.arange(x.shape[1], dtype=jnp.float32),
    jnp.arange(x.shape[2], dtype=jnp.float32),
    indexing="ij",
  )


def motion_blur(x, radius, sigma, degrees):
  """ImageMagick's -motion-blur radius×sigma+angle, its lengths scaled by `scale(x)`.

  ImageMagick's kernel is one-sided: 2·ceil(radius) + 1 taps at distances i = 0, 1, ...
  along the direction `degrees` (per image [B]; 0 = to the right, 90 = down), weighted
  exp(-i² / 2σ²) and normalised; edges repeat. Here tap i lies i·scale(x) pixels away
  and is read bilinearly, so a small image gets the same streak relative to its size.
  """
  rows, cols = pixel_grid(x)
  theta = jnp.deg2rad(degrees)[:, None, None]
  step_y, step_x = jnp.sin(theta) * scale(x), jnp.cos(theta) * scale(x)
  taps = jnp.arange(MOTION_TAPS, dtype=jnp.float32)
  weights = jnp.where(taps < 2 * jnp.ceil(radius) + 1, jnp.exp(-(taps**2) / (2 * sigma**2)), 0.0)
  weights = weights / weights.sum()

  # A loop over the taps, not 41 unrolled gathers: the program compiles in a fraction
  # of the time.
  def add_tap(i, total):
    sample = bilinear(x, rows + i * step_y, cols + i * step_x)
    return total + weights[i] * sample

  return jax.lax.fori_loop(0, MOTION_TAPS, add_tap, jnp.zeros_like(x))


def gaussian_blur(x, sigma, max_sigma: float):
  """Separable Gaussian blur of σ `sigma` pixels (traced; at most `max_sigma`)."""
  weights = shifts.blur_kernel(sigma, max(1, math.ceil(shifts.BLUR_TRUNCATE * max_sigma)))
  rows, cols = shifts.blur_matrix(weights, x.shape[1]), shifts.blur_matrix(weights, x.shape[2])
  precision = jax.lax.Precision.HIGHEST
  x = jnp.einsum("ij,bjwc->biwc", rows, x, precision=precision)
  return jnp.einsum("kw,biwc->bikc", cols, x, precision=precision)


def box_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of PIL's Image.resize(..., Image.BOX) along one axis.

  PIL's precompute_coeffs: output pixel o is centred at (o + 1/2)·in/out; input pixels
  whose centres fall in the box of half-width max(in/out, 1)/2 around it share it
  equally.
  """
  ratio = in_size / out_size
  filter_scale = max(ratio, 1.0)
  support = 0.5 * filter_scale
  matrix = np.zeros((out_size, in_size), np.float64)
  for out in range(out_size):
    centre = (out + 0.5) * ratio
    first = max(int(centre - support + 0.5), 0)
    stop = min(int(centre + support + 0.5), in_size)
    for src in range(first, stop):
      offset = (src - centre + 0.5) / filter_scale
      matrix[out, src] = 1.0 if -0.5 < offset <= 0.5 else 0.0
    total = matrix[out].sum()
    if total:
      matrix[out] /= total
  return matrix


# ----------------------------------------------------------------------------
# The four weather corruptions: f(x, params, seed, indices) -> unclipped images.


def snow(x, params, seed, indices):
  """Snowflakes: a thresholded, zoomed, motion-blurred grey noise layer added twice.

  params = (mean, sd, zoom, threshold, blur radius, blur σ, blend). As in the reference:
  N(mean, sd²) noise, zoomed `zoom`× about the centre, values below `threshold` set to
  0, clipped to [0, 1], motion-blurred at an angle drawn uniformly in [-135°, -45°] (so
  flakes fall); then x ← blend·x + (1 - blend)·max(x, 1.5·grey(x) + 0.5) and the layer
  and its 180° rotation are added. The noise lives on ImageNet-C's 224-pixel grid
  (flakes are `zoom` pixels of a 224-pixel image wide) and is read bilinearly at this
  image's pixels.
  """
  mean, sd, zoom, threshold, radius, sigma, blend = (params[i] for i in range(7))
  height, width = x.shape[1], x.shape[2]
  side = min(height, width)
  # The zoom (≥ 2) reads at most the central half of the 224-pixel grid: only that half
  # (and a margin for the interpolation) is drawn.
  grid_h = math.ceil(REFERENCE_SIDE / 2 * height / side) + 2
  grid_w = math.ceil(REFERENCE_SIDE / 2 * width / side) + 2
  words = shifts.image_random_bits(seed, indices, grid_h * grid_w // 2 + 2)
  noise = mean + sd * shifts.standard_normal16(words[:, 1:], grid_h * grid_w)
  angle = -135.0 + 90.0 * uniform16(words[:, :1], 1)[:, 0]
  rows, cols = pixel_grid(x)
  s = scale(x)
  # Pixel centre -> 224-grid position about the centre -> zoomed -> noise index.
  grid_rows = ((rows + 0.5 - height / 2) / s / zoom + grid_h / 2 - 0.5)[None]
  grid_cols = ((cols + 0.5 - width / 2) / s / zoom + grid_w / 2 - 0.5)[None]
  batch = x.shape[0]
  layer = bilinear(
    noise.reshape(batch, grid_h, grid_w, 1),
    jnp.broadcast_to(grid_rows, (batch, height, width)),
    jnp.broadcast_to(grid_cols, (batch, height, width)),
  )
  layer = jnp.clip(jnp.where(layer < threshold, 0.0, layer), 0.0, 1.0)
  layer = motion_blur(layer, radius, sigma, angle)
  x = blend * x + (1 - blend) * jnp.maximum(x, grey(x) * 1.5 + 0.5)
  return x + layer + jnp.flip(layer, axis=(1, 2))


def spectral_noise(words, height: int, width: int, exponent: float):
  """Zero-mean, unit-sd noise [B, H, W] with amplitude spectrum f^-exponent.

  f is in cycles per image side and frequencies above 112 (a 224-pixel image's Nyquist
  limit) are cut, so the texture has the same structure relative to the image at every
  resolution.
  """
  side = min(height, width)
  white = shifts.standard_normal16(words, height * width).reshape(-1, height, width)
  fy = np.fft.fftfreq(height)[:, None] * side
  fx = np.fft.fftfreq(width)[None, :] * side
  f = np.hypot(fy, fx)
  gain = np.where((f > 0) & (f <= REFERENCE_SIDE / 2), np.maximum(f, 1e-9) ** -exponent, 0.0)
  field = jnp.fft.ifft2(jnp.fft.fft2(white) * gain.astype(np.float32)).real
  field = field - field.mean(axis=(1, 2), keepdims=True)
  return field / (field.std(axis=(1, 2), keepdims=True) + 1e-6)


def frost_texture(seed, indices, height: int, width: int):
  """A procedural frost layer [B, H, W] in [0, 1], one per image (mean ≈ 0.41, sd ≈ 0.16).

  ImageNet-C crops its frost from six photographs; none ship here, so the layer is
  drawn: bright vein networks (the zero crossings of 1/f^1.5 noise, the ice
  crystals' edges) over a patchy haze (1/f² noise, where the frost is thick).
  """
  per_field = -(-height * width // 2)  # words: two normals each
  words = shifts.image_random_bits(seed, indices, 2 * per_field)
  haze = spectral_noise(words[:, :per_field], height, width, 2.0)
  veins = spectral_noise(words[:, per_field:], height, width, 1.5)
  crystals = jnp.exp(-((veins / 0.35) ** 2))
  thick = jax.nn.sigmoid(1.5 * haze)
  return jnp.clip(0.2 + 0.3 * thick + 0.55 * crystals * thick, 0.0, 1.0)


def frost(x, params, seed, indices):
  """x ← a·x + b·frost, params = (a, b); the layer tinted bluish on RGB images."""
  texture = frost_texture(seed, indices, x.shape[1], x.shape[2])[..., None]
  if x.shape[-1] == 3:
    texture = texture * jnp.array(FROST_TINT, jnp.float32)
  return params[0] * x + params[1] * texture


def plasma_fractal(uniforms, decay):
  """[B, side, side] diamond-square height maps in [0, 1], as ImageNet-C's plasma_fractal.

  `uniforms` [B, side² - 1] in (0, 1) (one per filled point, coarse to fine; side a
  power of 2, 256 for fog); each new point is the mean of its 4 neighbours (wrapping
  around) plus w·U(-w, w), with w = 100 at the coarsest level, divided by `decay` at
  each finer one.
  """
  batch, side = uniforms.shape[0], math.isqrt(uniforms.shape[1] + 1)
  # The points filled so far form a dense n × n grid (n = 1, 2, 4, ...); each level adds
  # the square centres and the two kinds of diamond centres, interleaved into 2n × 2n
  # by reshapes (a scatter into a 256² map per level compiles many times slower).
  grid = jnp.zeros((batch, 1, 1), jnp.float32)
  wibble, used = jnp.float32(100.0), 0
  while grid.shape[1] < side:
    count = grid.shape[1]
    draws = uniforms[:, used : used + 3 * count * count].reshape(batch, 3, count, count)
    draws = wibble * wibble * (2 * draws - 1)
    used += 3 * count * count
    # Square centres (i + ½, j + ½): the mean of their 4 corners (wrapping around).
    corners = grid + jnp.roll(grid, -1, axis=1)
    centres = (corners + jnp.roll(corners, -1, axis=2)) / 4 + draws[:, 0]
    # Diamond centres (i, j + ½) and (i + ½, j): 2 corners and 2 square centres each.
    across = grid + jnp.roll(grid, -1, axis=2) + centres + jnp.roll(centres, 1, axis=1)
    down = grid + jnp.roll(grid, -1, axis=1) + centres + jnp.roll(centres, 1, axis=2)
    across, down = across / 4 + draws[:, 1], down / 4 + draws[:, 2]
    even = jnp.stack([grid, across], axis=-1).reshape(batch, count, 2 * count)
    odd = jnp.stack([down, centres], axis=-1).reshape(batch, count, 2 * count)
    grid = jnp.stack([even, odd], axis=2).reshape(batch, 2 * count, 2 * count)
    grid = jax.lax.optimization_barrier(grid)
    wibble = wibble / decay
  grid = grid - grid.min(axis=(1, 2), keepdims=True)
  return grid / grid.max(axis=(1, 2), keepdims=True)


def fog(x, params, seed, indices):
  """x ← (x + t·plasma) · m / (m + t), params = (t, decay), m the image's maximum.

  The plasma map is drawn at 256², cropped to 224² as in the reference (to the image's
  aspect ratio within it), and resized to the image (area-averaged when smaller).
  """
  thickness, decay = params[0], params[1]
  height, width = x.shape[1], x.shape[2]
  count = PLASMA_SIDE * PLASMA_SIDE - 1
  plasma = plasma_fractal(uniform16(shifts.image_random_bits(seed, indices, 32768), count), decay)
  longest = max(height, width)
  crop_h = max(1, round(REFERENCE_SIDE * height / longest))
  crop_w = max(1, round(REFERENCE_SIDE * width / longest))
  layer = jax.image.resize(
    plasma[:, :crop_h, :crop_w], (x.shape[0], height, width), "linear", antialias=True
  )
  peak = x.max(axis=(1, 2, 3), keepdims=True)
  return (x + thickness * layer[..., None]) * peak / (peak + thickness)


def brightness(x, params, seed, indices):
  """HSV value V = max over channels raised by c (params[0]) and clipped to 1, hue and
  saturation kept: RGB scales by V'/V (black pixels become grey V'), as skimage's
  rgb2hsv -> hsv2rgb round trip in the reference; one channel: min(x + c, 1)."""
  del seed, indices  # deterministic
  value = x.max(axis=-1, keepdims=True)
  raised = jnp.minimum(value + params[0], 1.0)
  return jnp.where(value > 0, x * raised / jnp.maximum(value, 1e-12), raised)
