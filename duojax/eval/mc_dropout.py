"""MC dropout as a baseline member: the head run under K dropout masks."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.errors import ConfigError


def mc_dropout_logits(
  head: nnx.Module,
  features: dict[str, np.ndarray],
  *,
  rate: float,
  num_samples: int,
  seed: int = 0,
  chunk: int = 4096,
) -> dict[str, np.ndarray]:
  """log of the mean softmax over `num_samples` dropout masks on the pre-logits.

  Dropout is applied to the features the head sees (last-layer MC dropout):
  exact for models whose only dropout sits before the head (the ResNets and
  CNNs here), cheap (the backbone's features come from the one fused pass,
  only the head runs K times), and an approximation for ViTs trained with
  dropout inside their blocks.
  """
  if not 0.0 < rate < 1.0:
    raise ConfigError(f"MC dropout rate must be in (0, 1), got {rate}")
  if num_samples < 1:
    raise ConfigError(f"MC dropout needs num_samples >= 1, got {num_samples}")
  head_graphdef, head_state = nnx.split(head)

  @jax.jit
  def mc_head(head_state, rows, key):
    head = nnx.merge(head_graphdef, head_state)

    def one_sample(k):
      keep = jax.random.bernoulli(k, 1.0 - rate, rows.shape)
      dropped = jnp.where(keep, rows / (1.0 - rate), 0.0)
      return jax.nn.log_softmax(head(dropped).astype(jnp.float32))

    log_probs = jax.vmap(one_sample)(jax.random.split(key, num_samples))
    return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(num_samples)

  out = {}
  key = jax.random.key(seed)
  for name, rows in features.items():
    # Keys from (seed, split name, chunk): reproducible across processes
    # (str hash() is salted per process, crc32 is not).
    split_key = jax.random.fold_in(key, zlib.crc32(name.encode()))
    parts = []
    for i, start in enumerate(range(0, len(rows), chunk)):
      block = rows[start : start + chunk]
      padded = np.zeros((chunk, rows.shape[1]), np.float32)  # one shape: one compile
      padded[: len(block)] = block
      parts.append(
        np.asarray(mc_head(head_state, padded, jax.random.fold_in(split_key, i)))[: len(block)]
      )
    out[name] = np.concatenate(parts)
  return out
