"""Other ways to write the demo's convolutions, batch norm and pooling, for the
train-step A/B of `bench_xla_cpu.py`: each is a drop-in (an `nnx.Conv`'s
`conv_general_dilated`, or a context in which `nnx.BatchNorm` or the CNN's pool
traces differently) whose results agree with the library's to float32 rounding
(tests/test_bench_formulations.py checks values and gradients).
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.models import common


def matmul_conv(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  precision=None,
  **kwargs,
):
  """`lax.conv_general_dilated` as one matmul over shifted slices (im2col).

  A drop-in for an `nnx.Conv`'s `conv_general_dilated` attribute. For a k×k
  kernel with stride s, the k² strided slices of the padded input, concatenated
  on the channel axis, make patches [B, H', W', k²·C] whose product with the kernel
  reshaped to [k²·C, O] is the convolution. Its gradients are a matmul each
  (patchesᵀ·dy for the kernel, dy·kernelᵀ for the patches) plus pads and adds
  that put the patches' gradient back in place. The question it answers: do
  XLA's CPU convolutions (and their kernel gradients, a convolution over the
  batch) lose to the CPU's matmul on the demo's small channel counts? The sums
  come in another order, so results agree with the library convolution to
  float32 rounding, not bit for bit. Grouped or dilated convolutions go to
  `lax.conv_general_dilated` unchanged.
  """

  def library():
    return jax.lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      precision=precision,
      **kwargs,
    )

  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  if (
    lhs.ndim != 4
    or feature_group_count != 1
    or (lhs_dilation is not None and tuple(lhs_dilation) != (1, 1))
    or (rhs_dilation is not None and tuple(rhs_dilation) != (1, 1))
    or (
      dimension_numbers is not None
      and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc
    )
    or kwargs.get("out_sharding") is not None
  ):
    return library()
  kh, kw, channels, out = rhs.shape
  batch, height, width, _ = lhs.shape
  sh, sw = window_strides
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads((height, width), (kh, kw), window_strides, padding)
  (top, bottom), (left, right) = padding
  out_h = (height + top + bottom - kh) // sh + 1
  out_w = (width + left + right - kw) // sw + 1
  x = jnp.pad(lhs, ((0, 0), (top, bottom), (left, right), (0, 0)))
  slices = [
    jax.lax.slice(
      x,
      (0, i, j, 0),
      (batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, channels),
      (1, sh, sw, 1),
    )
    for i in range(kh)
    for j in range(kw)
  ]
  patches = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
  dtype = kwargs.get("preferred_element_type")
  return jax.lax.dot_general(
    patches,
    rhs.reshape(kh * kw * channels, out),
    (((3,), (0,)), ((), ())),
    precision=precision,
    preferred_element_type=dtype,
  )


def matmul_kernel_grad_conv(lhs, rhs, window_strides, padding, **kwargs):
  """The library convolution and its input gradient; the kernel's gradient as one
  matmul (im2col patchesᵀ · dy, the kernel gradient of `matmul_conv`).

  XLA computes a kernel gradient as a convolution over the batch, with the
  activations transposed to [C, H, W, B] first; this variant asks whether that
  transpose and convolution lose to one GEMM with the batch as its long axis.
  """
  library = lambda x, w: jax.lax.conv_general_dilated(x, w, window_strides, padding, **kwargs)

  @jax.custom_vjp
  def conv(x, w):
    return library(x, w)

  def forward(x, w):
    return library(x, w), (x, w)

  def backward(residuals, dy):
    x, w = residuals
    dx = jax.vjp(lambda x: library(x, w), x)[1](dy)[0]
    dw = jax.vjp(lambda w: matmul_conv(x, w, window_strides, padding, **kwargs), w)[1](dy)[0]
    return dx, dw

  conv.defvjp(forward, backward)
  return conv(lhs, rhs)


def nchw_conv(lhs, rhs, window_strides, padding, dimension_numbers=None, **kwargs):
  """The convolution asked for in NCHW/OIHW (transposed in and out): does the
  logical layout reach XLA's CPU kernels, or does XLA pick its own?"""
  nhwc = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC"))
  if lhs.ndim != 4 or (
    dimension_numbers is not None
    and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != nhwc
  ):
    return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, dimension_numbers=dimension_numbers, **kwargs
    )
  y = jax.lax.conv_general_dilated(
    lhs.transpose(0, 3, 1, 2),
    rhs.transpose(3, 2, 0, 1),
    window_strides,
    padding,
    dimension_numbers=("NCHW", "OIHW", "NCHW"),
    **kwargs,
  )
  return y.transpose(0, 2, 3, 1)


def batch_norm_closed_form(x, scale, bias, epsilon):
  """Training-mode batch norm over all axes but the last, with its backward
  written out: (y, batch mean, batch variance).

  With x̂ = (x − μ)/σ and y = γ·x̂ + β over n rows, the chain rule through μ and
  σ² collapses to dx = (γ/σ)·(dy − mean(dy) − x̂·mean(dy·x̂)), dγ = Σ dy·x̂,
  dβ = Σ dy: two reductions and one elementwise pass, against whatever XLA
  makes of the autodiff graph through the statistics. The statistics are
  returned for the running averages only (no gradient flows through them).
  """
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]

  def statistics(x):
    mean = jnp.mean(x, axes)
    return mean, jnp.maximum(jnp.mean(jnp.square(x), axes) - jnp.square(mean), 0.0)

  @jax.custom_vjp
  def norm(x, scale, bias):
    mean, var = statistics(x)
    return (x - mean) * (jax.lax.rsqrt(var + epsilon) * scale) + bias, mean, var

  def forward(x, scale, bias):
    mean, var = statistics(x)
    inv = jax.lax.rsqrt(var + epsilon)
    return ((x - mean) * (inv * scale) + bias, mean, var), (x, mean, inv, scale)

  def backward(residuals, cotangents):
    x, mean, inv, scale = residuals
    dy = cotangents[0]
    xhat = (x - mean) * inv
    dbias, dscale = jnp.sum(dy, axes), jnp.sum(dy * xhat, axes)
    return (scale * inv) * (dy - (dbias + xhat * dscale) / n), dscale, dbias

  norm.defvjp(forward, backward)
  return norm(x, scale, bias)


@contextlib.contextmanager
def closed_form_batch_norm():
  """Every `nnx.BatchNorm` traced inside runs `batch_norm_closed_form` in training
  mode (running averages updated as flax does); inference mode is unchanged."""
  original = nnx.BatchNorm.__call__

  def call(self, x, use_running_average=None, *, mask=None):
    frozen = self.use_running_average if use_running_average is None else use_running_average
    if frozen or mask is not None or self.axis not in (-1, x.ndim - 1):
      return original(self, x, use_running_average=use_running_average, mask=mask)
    y, mean, var = batch_norm_closed_form(x, self.scale[...], self.bias[...], self.epsilon)
    keep = self.momentum
    self.mean[...] = jax.lax.stop_gradient(keep * self.mean[...] + (1 - keep) * mean)
    self.var[...] = jax.lax.stop_gradient(keep * self.var[...] + (1 - keep) * var)
    return y

  nnx.BatchNorm.__call__ = call
  try:
    yield
  finally:
    nnx.BatchNorm.__call__ = original


@contextlib.contextmanager
def windowed_max_pool():
  """The CNN's 2×2 pool traced as flax's windowed `nnx.max_pool` (what
  `common.max_pool_2x2` replaced): XLA lowers its gradient to select-and-scatter.
  The CNN looks the pool up on `common` at trace time, so the swap reaches it."""
  original = common.max_pool_2x2
  common.max_pool_2x2 = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))
  try:
    yield
  finally:
    common.max_pool_2x2 = original
