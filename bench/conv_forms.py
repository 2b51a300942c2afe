"""Grouped and depthwise convolutions written without XLA's convolution, to time
against it on the CPU, where XLA's grouped kernels are its weakest.

  * `shifts` (depthwise k×k, groups = channels): with the input padded,
        y[b, h, w, c] = bias[c] + Σ_{i,j} x[b, s·h + i, s·w + j, c] · K[i, j, c],
    k² strided slices of x, each scaled per channel and summed: elementwise work only,
    which XLA fuses into one loop over the output.
  * `einsum` (grouped k×k, 1 < groups < channels): the k² strided slices stacked into
    patches P[b, h, w, t, g, c] (t over the window, c over a group's Cg inputs), and
        y[b, h, w, g, o] = Σ_{t, c} P[b, h, w, t, g, c] · K[t, c, g, o],
    one batched matmul over the G groups of contraction length k²·Cg: im2col, batched.

`swap(model, form)` replaces every matching `nnx.Conv` in place (the same kernel and bias
Variables), and `compare` times the model against its swapped copy, interleaved.
"""

from __future__ import annotations

import interleave
import jax
import jax.numpy as jnp
from flax import nnx

from duojax.models import depthwise

DESCRIPTIONS = {
  "shifts": "depthwise as k² shifted multiply-adds",
  "einsum": "grouped as shifted slices + batched einsum",
}


def _pairs(value, n=2):
  return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def _windows(x, kernel_size, strides, padding):
  """The k_h·k_w strided slices of the padded x, each [B, H_out, W_out, C]."""
  (kh, kw), (sh, sw) = kernel_size, strides
  x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
  ho = (x.shape[1] - kh) // sh + 1
  wo = (x.shape[2] - kw) // sw + 1
  return [
    x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
    for i in range(kh)
    for j in range(kw)
  ]


class _Replacement(nnx.Module):
  """The conv's kernel and bias Variables, its geometry and compute dtype."""

  def __init__(self, conv: nnx.Conv):
    self.kernel = conv.kernel
    self.bias = conv.bias
    self.kernel_size = _pairs(conv.kernel_size)
    self.strides = _pairs(conv.strides)
    self.padding = conv.padding
    self.groups = conv.feature_group_count
    self.dtype = conv.dtype or jnp.float32

  def _finish(self, y):
    if self.bias is not None:
      y = y + self.bias[...].astype(y.dtype)
    return y


class ShiftedDepthwise(_Replacement):
  def __call__(self, x):
    x = x.astype(self.dtype)
    k = self.kernel[...].astype(self.dtype)  # [kh, kw, 1, C]
    slices = _windows(x, self.kernel_size, self.strides, self.padding)
    kw = self.kernel_size[1]
    y = sum(s * k[t // kw, t % kw, 0] for t, s in enumerate(slices))
    return self._finish(y)


class EinsumGrouped(_Replacement):
  def __call__(self, x):
    x = x.astype(self.dtype)
    k = self.kernel[...].astype(self.dtype)  # [kh, kw, C / G, O]
    g = self.groups
    slices = _windows(x, self.kernel_size, self.strides, self.padding)
    b, ho, wo, c = slices[0].shape
    patches = jnp.stack(slices, axis=3).reshape(b, ho, wo, len(slices), g, c // g)
    # Output channels come in G blocks of O / G, one per group.
    k = k.reshape(len(slices), c // g, g, k.shape[-1] // g)
    y = jnp.einsum("bhwtgc,tcgo->bhwgo", patches, k).reshape(b, ho, wo, -1)
    return self._finish(y)


FORMS = {"shifts": ShiftedDepthwise, "einsum": EinsumGrouped}


def _matches(conv: nnx.Conv, form: str) -> bool:
  if isinstance(conv.padding, str):  # "SAME" and the like: left to XLA
    return False
  groups, channels = conv.feature_group_count, conv.in_features
  if form == "shifts":
    return groups == channels > 1
  return 1 < groups < channels


def swap(model: nnx.Module, form: str) -> int:
  """Replaces `model`'s convs that `form` covers; returns how many."""
  found = [
    (path, node)
    for path, node in nnx.iter_graph(model)
    if isinstance(node, nnx.Conv) and _matches(node, form)
  ]
  for path, conv in found:
    parent = model
    for key in path[:-1]:
      parent = getattr(parent, key) if isinstance(key, str) else parent[key]
    new = FORMS[form](conv)
    if isinstance(path[-1], str):
      setattr(parent, path[-1], new)
    else:
      parent[path[-1]] = new
  return len(found)


def compare(name, overrides, form, classes, size, batch, rounds) -> dict:
  """{"convs", "xla_s", "form_s", "max_diff"}: model `name` with XLA's convs against
  the same weights with `form`'s, timed in interleaved rounds; `max_diff` is the largest
  logit difference over the largest logit."""
  from duojax import models

  def build():
    return models.get_model(name, classes, rngs=0, image_size=size, **overrides)

  plain, alt = build(), build()
  convs = swap(alt, form)
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
  calls = {}
  for key, model in (("xla", plain), ("form", alt)):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, x, g=graphdef: nnx.merge(g, s)(x, train=False)[0])
    # The library's own depthwise layers take the shifted form on the CPU: the baseline
    # is XLA's convolution, so they are traced as convolutions here.
    with depthwise.forms("conv" if key == "xla" else "auto"):
      compiled = fn.lower(state, x).compile()
    calls[key] = (lambda c=compiled, s=state: c(s, x), jax.block_until_ready)
  # Relative to the logits' size: a randomly initialised EfficientNet's are ~1e-11.
  reference = calls["xla"][0]()
  diff = float(jnp.max(jnp.abs(reference - calls["form"][0]())) / jnp.max(jnp.abs(reference)))
  out = interleave.interleaved(calls, rounds)
  return {
    "convs": convs,
    "xla_s": out["xla"]["median_s"],
    "form_s": out["form"]["median_s"],
    "max_diff": diff,
  }
