"""Swin Transformer V2's pieces: windows, the shift mask, the continuous position bias,
the attention, the block and the patch merging (`duojax.models.swin` stacks them).

A block is residual post-norm (V2's order: the norm after the branch, not before it):

    x = x + drop_path(norm1(window_attention(x)))
    x = x + drop_path(norm2(fc2(GELU(fc1(x)))))

Window attention is scaled cosine attention: q and k are normalised, their dot product
is multiplied by exp(logit_scale) per head (clamped at log 100), and the relative
position bias is added, which a 2-layer MLP (2 → 512 → heads, ReLU) computes from the
log-spaced relative coordinates of the window, 16·sigmoid of it. Odd blocks of a
stage shift the windows by half a window (cyclically, with the -100 mask on pairs
that come from different regions). The table is computed from the MLP at call time,
so any window size works with the same weights.

How windows meet the feature map (`window_plan`) differs between the libraries where
a side is not a multiple of the window; `WINDOW_RULES` names each one's.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.models import attention as attention_lib
from duojax.models import common

EPS = 1e-5  # every LayerNorm, in all three libraries
MASK = -100.0  # the shift mask's value between regions
LOGIT_SCALE_MAX = math.log(100.0)
CPB_HIDDEN = 512  # the position-bias MLP's width

# How a block's windows meet a feature-map side of `s` pixels (window `w`):
#   "fit":         s ≤ w: the window shrinks to s and does not shift (timm, Hugging Face);
#                  otherwise s must be a multiple of w (where the libraries pad, each its way).
#   "torchvision": the window never shrinks; every side is padded with zeros (bottom,
#                  right) to a multiple of w before the shift; no shift where that is w.
#   "hf":          shrinks as "fit"; larger sides padded as torchvision's, before the shift.
#   "timm":        shrinks as "fit"; larger sides padded after the shift.
WINDOW_RULES = ("fit", "torchvision", "hf", "timm")

# torchvision's init: trunc_normal_(std=0.02) for every linear weight, zero biases.
_init = common.normal_init(lambda s: 0.02)


def dense(d_in, d_out, *, use_bias=True, dtype, rngs):
  return nnx.Linear(
    d_in,
    d_out,
    use_bias=use_bias,
    kernel_init=_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


def layer_norm(ch, *, dtype, rngs):
  return nnx.LayerNorm(ch, epsilon=EPS, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


# ----------------------------------------------------------------------------
# Static geometry (numpy, at trace time).


def window_plan(sides, window: int, shifted: bool, rule: str, decide=None):
  """((wh, ww), (shift_h, shift_w), (padded_h, padded_w)) of a block on a feature map
  of `sides`; None where rule "fit" cannot place the windows (a side above the window
  that is not a multiple of it). `decide`: the sides that choose the window and the
  shift where they are not `sides` (Hugging Face's: the image's patch grid halved
  with flooring, where the patch merging pads odd sides)."""
  plan = []
  for side, chooser in zip(sides, decide or sides):
    if rule != "torchvision" and chooser <= window:
      w = min(chooser, side) if rule != "hf" else max(chooser, 1)
      plan.append((w, 0, -(-side // w) * w))
      continue
    if rule == "fit" and side % window:
      return None
    padded = -(-side // window) * window
    shift = (
      window // 2 if shifted and (chooser > window if rule == "hf" else padded > window) else 0
    )
    plan.append((window, shift, padded))
  return tuple(tuple(p[i] for p in plan) for i in range(3))


def shift_mask(padded, window, shift) -> np.ndarray | None:
  """[windows, N, N] float32: MASK between tokens of different shifted regions."""
  if not any(shift):
    return None
  labels = []
  for size, w, s in zip(padded, window, shift):
    i = np.arange(size)
    labels.append((i >= size - w).astype(np.int64) + (i >= size - s) if s else np.zeros(size, int))
  regions = labels[0][:, None] * 3 + labels[1][None, :]
  (ph, pw), (wh, ww) = padded, window
  regions = regions.reshape(ph // wh, wh, pw // ww, ww).transpose(0, 2, 1, 3).reshape(-1, wh * ww)
  return np.where(regions[:, None, :] != regions[:, :, None], MASK, 0.0).astype(np.float32)


def relative_position_index(wh: int, ww: int) -> np.ndarray:
  """[N, N] int64: row of the coordinates table holding position i − position j."""
  coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :]
  return ((rel[0] + wh - 1) * (2 * ww - 1) + rel[1] + ww - 1).astype(np.int64)


def relative_coords_table(wh: int, ww: int, pretrained=(0, 0)) -> np.ndarray:
  """[2wh−1, 2ww−1, 2] float32: log-spaced relative coordinates, scaled by the
  pretrained window (or this window where it is 0) to ±8 before the log."""
  h = np.arange(-(wh - 1), wh, dtype=np.float32)
  w = np.arange(-(ww - 1), ww, dtype=np.float32)
  table = np.stack(np.meshgrid(h, w, indexing="ij"), axis=-1)
  base = pretrained if pretrained[0] > 0 else (wh, ww)
  table = table / np.asarray([max(b - 1, 1) for b in base], np.float32)
  table = table * np.float32(8)
  return (np.sign(table) * np.log2(np.abs(table) + np.float32(1)) / np.float32(3)).astype(
    np.float32
  )


def partition(x, window):
  """[B, H, W, C] -> [B, N, windows, C]: tokens of a window on axis 1, windows row-major."""
  b, h, w, c = x.shape
  wh, ww = window
  x = x.reshape(b, h // wh, wh, w // ww, ww, c).transpose(0, 2, 4, 1, 3, 5)
  return x.reshape(b, wh * ww, (h // wh) * (w // ww), c)


def unpartition(x, window, sides):
  b, _, _, c = x.shape
  (wh, ww), (h, w) = window, sides
  x = x.reshape(b, wh, ww, h // wh, w // ww, c).transpose(0, 3, 1, 4, 2, 5)
  return x.reshape(b, h, w, c)


def _normalize(x):
  """F.normalize: x / max(‖x‖, 1e-12) over the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


# ----------------------------------------------------------------------------
# Modules.


class WindowAttention(nnx.Module):
  """Scaled cosine attention in windows with the continuous relative position bias.

  Parameters as timm's: one qkv kernel without bias, `q_bias` and `v_bias`, and with
  `key_bias` a `k_bias` as torchvision's (its qkv bias has a key third, which its
  forward zeroes: held, counted, never used).
  """

  def __init__(self, dim, heads, key_bias: bool, pretrained_window, *, attention, dtype, rngs):
    self.heads = heads
    self.attention = attention  # models.attention's form: "auto", "explicit", "xla", "cudnn"
    self.pretrained_window = tuple(pretrained_window)
    self.qkv = dense(dim, 3 * dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.q_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.k_bias = nnx.Param(jnp.zeros((dim,), jnp.float32)) if key_bias else None
    self.v_bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
    self.logit_scale = nnx.Param(jnp.full((heads,), math.log(10.0), jnp.float32))
    # The position-bias MLP runs in float32: it is tiny and feeds a sigmoid × 16.
    self.cpb_fc1 = dense(2, CPB_HIDDEN, dtype=jnp.float32, rngs=rngs)
    self.cpb_fc2 = dense(CPB_HIDDEN, heads, use_bias=False, dtype=jnp.float32, rngs=rngs)
    self.proj = dense(dim, dim, dtype=dtype, rngs=rngs)

  def position_bias(self, window) -> jax.Array:
    """[heads, N, N] float32: 16·sigmoid(MLP(coordinates)) gathered per token pair."""
    wh, ww = window
    table = jnp.asarray(relative_coords_table(wh, ww, self.pretrained_window).reshape(-1, 2))
    bias = self.cpb_fc2(jax.nn.relu(self.cpb_fc1(table)))
    n = wh * ww
    bias = bias[relative_position_index(wh, ww).reshape(-1)].reshape(n, n, self.heads)
    return 16.0 * jax.nn.sigmoid(bias.transpose(2, 0, 1))

  def __call__(self, windows, window, mask) -> jax.Array:
    """windows [B, N, nW, C] -> [B, N, nW, C]; mask [nW, N, N] or None."""
    b, n, nw, c = windows.shape
    qkv = self.qkv(windows)
    zeros = jnp.zeros_like(self.q_bias[...])
    qkv = qkv + jnp.concatenate([self.q_bias[...], zeros, self.v_bias[...]]).astype(qkv.dtype)
    q, k, v = (t.reshape(b, n, nw, self.heads, -1) for t in jnp.split(qkv, 3, axis=-1))
    scale = jnp.exp(jnp.minimum(self.logit_scale[...], LOGIT_SCALE_MAX))
    # Cosine attention: unit q and k, q carrying the head's scale, then scale=1.
    q = (_normalize(q) * scale[:, None]).astype(qkv.dtype)
    k = _normalize(k).astype(qkv.dtype)
    # Windows join the heads axis: the bias [windows · heads, N, N] then broadcasts
    # over the batch, whatever its size.
    q, k, v = (t.reshape(b, n, nw * self.heads, -1) for t in (q, k, v))
    bias = self.position_bias(window)[None]
    bias = bias + (0.0 if mask is None else jnp.asarray(mask)[:, None])
    bias = jnp.broadcast_to(bias, (nw, self.heads, n, n)).reshape(1, nw * self.heads, n, n)
    y = attention_lib.attention(q, k, v, bias=bias, scale=1.0, implementation=self.attention)
    return self.proj(y.reshape(b, n, nw, c))


class Block(nnx.Module):
  """Window attention and MLP, each with residual post-norm and stochastic depth."""

  def __init__(
    self,
    dim,
    heads,
    *,
    window: int,
    shifted: bool,
    rule: str,
    key_bias: bool,
    pretrained_window,
    mlp_ratio: float,
    drop_path: float,
    attention: str,
    dtype,
    rngs,
  ):
    self.window, self.shifted, self.rule = window, shifted, rule
    self.attn = WindowAttention(
      dim, heads, key_bias, pretrained_window, attention=attention, dtype=dtype, rngs=rngs
    )
    self.norm1 = layer_norm(dim, dtype=dtype, rngs=rngs)
    hidden = int(dim * mlp_ratio)
    self.fc1 = dense(dim, hidden, dtype=dtype, rngs=rngs)
    self.fc2 = dense(hidden, dim, dtype=dtype, rngs=rngs)
    self.norm2 = layer_norm(dim, dtype=dtype, rngs=rngs)
    # One draw per image (broadcast over H, W, C): torchvision's "row" mode.
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=None)

  def _attend(self, x, decide):
    _, h, w, _ = x.shape
    plan = window_plan((h, w), self.window, self.shifted, self.rule, decide)
    if plan is None:  # the model checks every stage before it runs (`swin.check_windows`)
      raise AssertionError(f"window {self.window} does not fit {h}×{w}")
    window, shift, (ph, pw) = plan
    shifted = any(shift)
    after = self.rule == "timm"  # timm shifts, then pads; the others pad, then shift
    if shifted and after:
      x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    if (ph, pw) != (h, w):
      x = jnp.pad(x, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)))
    if shifted and not after:
      x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
    y = self.attn(partition(x, window), window, shift_mask((ph, pw), window, shift))
    y = unpartition(y, window, (ph, pw))
    if shifted and not after:
      y = jnp.roll(y, shift, axis=(1, 2))
    y = y[:, :h, :w]
    if shifted and after:
      y = jnp.roll(y, shift, axis=(1, 2))
    return y

  def __call__(self, x, deterministic: bool, rngs, decide=None):
    """`decide`: the sides that choose windows and shifts, if not x's (`window_plan`)."""
    y = self.norm1(self._attend(x, decide))
    x = x + self.drop_path(y, deterministic=deterministic, rngs=rngs)
    y = self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))
    return x + self.drop_path(self.norm2(y), deterministic=deterministic, rngs=rngs)


class PatchMerging(nnx.Module):
  """2×2 neighbours concatenated (odd sides padded), linear 4C → 2C, then LayerNorm
  (V2's order: the norm after the reduction)."""

  def __init__(self, dim, *, dtype, rngs):
    self.reduction = dense(4 * dim, 2 * dim, use_bias=False, dtype=dtype, rngs=rngs)
    self.norm = layer_norm(2 * dim, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h, w = h + h % 2, w + w % 2
    # The libraries' order: (0, 0), (1, 0), (0, 1), (1, 1) as (row, column) offsets.
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5)
    return self.norm(self.reduction(x.reshape(b, h // 2, w // 2, 4 * c)))


def run_block(block, x, rngs, deterministic, decide):
  """One block's forward, in the argument order `nnx.remat` is given it."""
  return block(x, deterministic, rngs, decide)


# Rematerialised: the block's activations are recomputed in the backward pass.
run_block_remat = nnx.remat(run_block, static_argnums=(3, 4))
