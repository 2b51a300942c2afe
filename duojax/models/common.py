"""Pieces shared by the model families: initialisation, dropout checks, pooling."""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError, InputError


def normal_init(std_of_shape):
  """Initializer N(0, std_of_shape(shape)**2) with a shared sampler program.

  Eager construction compiles XLA's (slow to compile) threefry sampler once
  per sample shape. Drawing a power-of-two number of 4096-wide rows and
  cutting them to size lets parameters of similar size share one compiled
  sampler, which makes building a model several times faster.
  """

  def init(key, shape, dtype=jnp.float32):
    size = math.prod(shape)
    rows = 1 << max(0, math.ceil(math.log2(size / 4096)))
    flat = jax.random.normal(key, (rows, 4096), dtype).reshape(-1)[:size]
    return (flat * std_of_shape(shape)).reshape(shape)

  return init


def check_dropout(name: str, rate: float) -> float:
  if not 0.0 <= rate < 1.0:
    raise ConfigError(f"{name}: dropout must be in [0, 1), got {rate}")
  return float(rate)


def check_rngs(name: str, rate: float, train: bool, rngs) -> None:
  """Training with dropout needs keys: fail with a message, not a trace error."""
  if train and rate > 0 and rngs is None:
    raise ConfigError(
      f"{name}: train=True with dropout={rate} needs rngs, e.g. "
      "nnx.Rngs(dropout=key); got rngs=None"
    )


def train_rngs(name: str, train: bool, rngs, *, dropout: float, drop_path: float):
  """The keys a forward draws its dropout and stochastic-depth masks from: `rngs` as
  an nnx.Rngs (a bare PRNG key becomes its "dropout" stream), or a one-line error when
  training with either rate on and no keys were given."""
  if train and (dropout > 0 or drop_path > 0) and rngs is None:
    raise ConfigError(
      f"{name}: train=True with dropout={dropout}, drop_path={drop_path} needs rngs, e.g. "
      "nnx.Rngs(dropout=key); got rngs=None"
    )
  if isinstance(rngs, jax.Array):
    return nnx.Rngs(dropout=rngs)
  return rngs


def check_fixed_input(name: str, input_shape: tuple, x) -> None:
  """One-line errors for images a fixed-size model cannot take (static shapes)."""
  if x.ndim != 4:
    raise InputError(
      f"{name} expects images of shape {input_shape} batched as "
      f"[B, H, W, C], got an array of shape {tuple(x.shape)}"
    )
  if tuple(x.shape[1:]) != tuple(input_shape):
    raise InputError(f"{name} expects images of shape {input_shape}, got {tuple(x.shape[1:])}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise InputError(f"{name} expects float images, got {x.dtype}")


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2×2 max pool with stride 2, 'VALID' (odd rows and columns dropped), NHWC.

  The same values as `nnx.max_pool(x, (2, 2), strides=(2, 2))`, written as a
  max over a reshape: XLA's CPU backend turns the windowed pool's gradient
  (select-and-scatter) into a reduce-window that carries four index arrays,
  which cost the demo's CNN sidekick more than its convolutions did. The
  reshape's gradient is an elementwise mask instead. It goes to the window's
  maximum as select-and-scatter's does; where several entries tie for the
  maximum it is shared among them rather than given to the first (after a
  ReLU, all-zero windows pass no gradient either way).
  """
  b, h, w, c = x.shape
  x = x[:, : h - h % 2, : w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def same_padding(size: int, kernel: int, stride: int = 1, dilation: int = 1) -> tuple[int, int]:
  """TensorFlow's "same" padding of one spatial axis: (before, after).

  The output has ceil(size / stride) positions; the padding that needs is
  split with the odd pixel after, so a stride-2 3×3 conv on an even input
  pads (0, 1) where PyTorch's symmetric padding gives (1, 1). XLA's
  padding="SAME" is the same rule (convolutions may use it directly); this
  spells it out for pads written by hand (pools, or a `jnp.pad` before a
  "VALID" op), as Hugging Face's and timm's ported TensorFlow models do.
  """
  out = -(-size // stride)
  total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
  return total // 2, total - total // 2


def check_any_size_input(name: str, channels: int, x) -> None:
  """One-line errors for images a globally pooled model cannot take (any H, W)."""
  if x.ndim != 4:
    raise InputError(
      f"{name} expects images of shape (H, W, {channels}) batched as [B, H, W, C], "
      f"got an array of shape {tuple(x.shape)}"
    )
  if x.shape[-1] != channels:
    raise InputError(f"{name} expects images of shape (H, W, {channels}), got {tuple(x.shape[1:])}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise InputError(f"{name} expects float images, got {x.dtype}")


class ParamKeys:
  """Stands in for `nnx.Rngs` when building layers: `params()` gives keys folded from
  one key by a Python counter.

  Each `nnx.Rngs.params()` advances a counter held as a JAX array. Under
  `nnx.eval_shape` (shapes only: parameter counts, FLOPs, checking a weights
  file against a model) each advance is a traced update whose bookkeeping
  walks the whole program traced so far, so building costs time quadratic in
  the number of layers: 14 s for EfficientNetV2-L's 700 tensors here, 1.6 s
  with these keys. Eager builds are unchanged (and a little faster).
  """

  def __init__(self, rngs):
    self.key = rngs.params()
    self.count = 0

  def params(self):
    self.count += 1
    return jax.random.fold_in(self.key, self.count)
