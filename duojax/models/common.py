"""Pieces shared by the model families: initialisation and dropout checks."""

import math

import jax
import jax.numpy as jnp


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
    raise ValueError(f"{name}: dropout must be in [0, 1), got {rate}")
  return float(rate)


def check_rngs(name: str, rate: float, train: bool, rngs) -> None:
  """Training with dropout needs keys: fail with a message, not a trace error."""
  if train and rate > 0 and rngs is None:
    raise ValueError(f"{name}: train=True with dropout={rate} needs rngs, e.g. "
                     "nnx.Rngs(dropout=key); got rngs=None")


def check_fixed_input(name: str, input_shape: tuple, x) -> None:
  """One-line errors for images a fixed-size model cannot take (static shapes)."""
  if x.ndim != 4:
    raise ValueError(f"{name} expects images of shape {input_shape} batched as "
                     f"[B, H, W, C], got an array of shape {tuple(x.shape)}")
  if tuple(x.shape[1:]) != tuple(input_shape):
    raise ValueError(f"{name} expects images of shape {input_shape}, "
                     f"got {tuple(x.shape[1:])}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise ValueError(f"{name} expects float images, got {x.dtype}")
