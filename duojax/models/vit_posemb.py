"""Position embeddings for another token grid: resampled as the libraries do.

A ViT's learned position embedding is a [gh, gw, D] image of vectors; a file
made for another grid is resized to the model's (the prefix tokens' entries
kept as they are). Three filters:

  * "bilinear": `jax.image.resize`'s (duojax's plain ViTs);
  * "bicubic": PyTorch's `F.interpolate(mode="bicubic", align_corners=False)`,
    the cubic convolution kernel of Keys with a = −0.75, source taps clamped
    at the border (Hugging Face's DINOv2);
  * "bicubic_aa": the same call with `antialias=True` (timm's
    `resample_abs_pos_embed`, Hugging Face's DINOv2 with registers): PIL's
    kernel, a = −0.5, stretched by the scale when shrinking, taps outside
    the grid dropped and the weights renormalised.

Both bicubic filters are separable, so each is one [out, in] matrix per axis,
written out below from those definitions, and the resize is W_h · G · W_wᵀ.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from duojax.errors import WeightsMismatchError

METHODS = ("bilinear", "bicubic", "bicubic_aa")


def _keys(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel, support [-2, 2]."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = ((x - 5) * x + 8) * x * a - 4 * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def cubic_matrix(n_in: int, n_out: int, antialias: bool) -> np.ndarray:
  """[n_out, n_in] weights of PyTorch's bicubic resize of one axis (float64)."""
  scale = n_in / n_out
  w = np.zeros((n_out, n_in))
  for i in range(n_out):
    if not antialias:
      # Source coordinate of the output pixel's centre; taps floor-1 .. floor+2.
      real = scale * (i + 0.5) - 0.5
      base = math.floor(real)
      taps = np.arange(base - 1, base + 3)
      weights = _keys(taps - real, -0.75)
      np.add.at(w[i], np.clip(taps, 0, n_in - 1), weights)
      continue
    support = 2.0 * max(scale, 1.0)
    inv = 1.0 / max(scale, 1.0)
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    taps = np.arange(lo, hi)
    weights = _keys((taps - center + 0.5) * inv, -0.5)
    w[i, lo:hi] = weights / weights.sum()
  return w


def resample(posemb: np.ndarray, grid_hw: tuple[int, int], num_prefix: int, method: str):
  """[1, prefix + n·n, D] -> [1, prefix + gh·gw, D] float32, the prefix kept."""
  prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
  side = math.isqrt(grid.shape[0])
  if side * side != grid.shape[0]:
    raise WeightsMismatchError(
      f"position embeddings of shape {tuple(posemb.shape)} have no square token grid "
      f"after {num_prefix} prefix token(s); cannot resample them to {tuple(grid_hw)}"
    )
  width = grid.shape[-1]
  grid = grid.reshape(side, side, width).astype(np.float32)
  if method == "bilinear":
    resized = np.asarray(jax.image.resize(grid, (*grid_hw, width), "bilinear"))
  else:
    aa = method == "bicubic_aa"
    wh, ww = (cubic_matrix(side, n, aa) for n in grid_hw)
    resized = np.einsum("ai,ijd,bj->abd", wh, grid.astype(np.float64), ww).astype(np.float32)
  return np.concatenate([prefix.astype(np.float32), resized.reshape(1, -1, width)], axis=1)
