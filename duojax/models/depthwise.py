"""A convolution whose depthwise case runs as shifted multiply-adds on the CPU.

A depthwise k×k convolution (groups = input channels = output channels) is, with x
padded,

    y[b, h, w, c] = bias[c] + Σ_{i<k, j<k} x[b, s·h + i, s·w + j, c] · K[i, j, 0, c],

k² strided slices of x, each scaled per channel and summed: elementwise work that XLA
fuses into one loop over the output. XLA's CPU backend runs the same convolution
through a grouped-convolution kernel several times slower; on this machine the shifted
form made whole EfficientNet-B0, MobileNetV3-Large and ConvNeXt-T forwards 4.7×, 5.7×
and 2.5× faster with the same logits (BENCHMARKS.md, "Convolutional families on the
CPU"). GPU and TPU compilers have fast depthwise kernels, so there the layer is
`nnx.Conv` itself, and so is every other convolution everywhere.

`Conv` is `nnx.Conv` (its parameters, names and checkpoints unchanged); `form="auto"`
picks the shifted form on the CPU backend at trace time, "shifts" or "conv" force one,
and `with forms("conv"):` makes "auto" layers trace as convolutions (the FLOP counter
does: a model's FLOPs are its convolutions', whichever form runs them). The slices sum
in float32 whatever the compute dtype, as a convolution accumulates.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError

FORMS = ("auto", "shifts", "conv")
# What "auto" means while tracing in this context (`forms`); "auto": by backend.
_TRACED_FORM = contextvars.ContextVar("duojax_depthwise_form", default="auto")


@contextlib.contextmanager
def forms(form: str):
  """Within the block, layers built with form="auto" trace in `form`."""
  if form not in FORMS:
    raise ConfigError(f"unknown convolution form {form!r}; valid: {', '.join(FORMS)}")
  token = _TRACED_FORM.set(form)
  try:
    yield
  finally:
    _TRACED_FORM.reset(token)


def _pairs(value) -> tuple[int, int]:
  return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


class Conv(nnx.Conv):
  """`nnx.Conv`, with depthwise convolutions as shifted multiply-adds on the CPU."""

  def __init__(self, *args, form: str = "auto", **kwargs):
    super().__init__(*args, **kwargs)
    if form not in FORMS:
      raise ConfigError(f"unknown convolution form {form!r}; valid: {', '.join(FORMS)}")
    self.form = form

  def _depthwise(self) -> bool:
    return (
      self.feature_group_count > 1
      and self.feature_group_count == self.in_features == self.out_features
      and _pairs(self.input_dilation or 1) == (1, 1)
      and _pairs(self.kernel_dilation or 1) == (1, 1)
    )

  def __call__(self, inputs, out_sharding=None):
    form = self.form if self.form != "auto" else _TRACED_FORM.get()
    if form == "auto":
      form = "shifts" if jax.default_backend() == "cpu" else "conv"
    if form == "conv" or not self._depthwise() or inputs.ndim != 4:
      return super().__call__(inputs, out_sharding=out_sharding)
    return self._shifted(inputs)

  def _shifted(self, x):
    (kh, kw), (sh, sw) = _pairs(self.kernel_size), _pairs(self.strides or 1)
    padding = self.padding
    if isinstance(padding, str):  # "SAME" / "VALID": XLA's rule, as the conv applies it
      padding = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    elif isinstance(padding, int):
      padding = ((padding, padding), (padding, padding))
    dtype = self.dtype or x.dtype
    x = jnp.pad(x.astype(dtype), ((0, 0), *map(tuple, padding), (0, 0)))
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    kernel = self.kernel[...].astype(dtype)  # [kh, kw, 1, C]
    y = jnp.zeros((x.shape[0], ho, wo, x.shape[3]), jnp.float32)
    for i in range(kh):
      for j in range(kw):
        window = x[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :]
        y = y + (window * kernel[i, j, 0]).astype(jnp.float32)
    if self.bias is not None:
      y = y + self.bias[...].astype(jnp.float32)
    return y.astype(dtype)
