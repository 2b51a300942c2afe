"""The duo cascade, batched: the large model runs only on the inputs it must.

A cheap sidekick S runs on every input. Where it is confident (its
temperature-scaled max softmax probability is at least τ) its answer stands;
elsewhere the input is *deferred* and the large model L runs on it, and the
answer is the duo

    z = w_L · z_L + w_S · z_S       (z_S reused from the first stage)

or, with `weights=None`, the large model's logits alone (a plain
Gatekeeper-style cascade). Compute falls with the deferral ratio r: per input
it costs F_S + r · F_L instead of the always-on duo's F_S + F_L.

Skipping work inside one XLA program is not possible (shapes are static), so
a batch runs in two stages with one host round trip between them:

  1. one jitted program: the sidekick's logits, its confidence and the
     deferral mask for the whole batch; only the B booleans go to the host;
  2. if any row is deferred, one jitted program that gathers the deferred
     rows into a sub-batch padded to the smallest fitting *bucket* size, runs
     the large model on it, combines, and scatters the answers back.

The images stay on the device between the stages. jax.jit caches by shape,
so a fixed set of bucket sizes bounds the compilations of stage 2 at
len(buckets) per batch shape, however the deferral count varies.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.core.duo import msp_confidence
from duojax.errors import ConfigError, InputError


def default_buckets(batch_size: int) -> tuple[int, ...]:
  """Eighths of the batch, (B/8, 2B/8, ..., B) rounded up, deduplicated; ends in B.

  Eight compilations at most, and the padding costs at most B/8 rows of
  large-model work. Coarser steps (B/4, B/2, B) were measured to waste the
  saving at high deferral ratios: 390 deferred rows of 500 ran a full batch.
  """
  if (
    isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1
  ):
    raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
  b = int(batch_size)
  return tuple(sorted({max(1, -(-b * k // 8)) for k in range(1, 9)}))


def _check_buckets(buckets) -> tuple[int, ...]:
  try:
    sizes = tuple(int(s) for s in buckets)
  except (TypeError, ValueError):
    raise ConfigError(f"buckets must be a sequence of positive ints, got {buckets!r}") from None
  if not sizes or min(sizes) < 1:
    raise ConfigError(f"buckets must be a non-empty sequence of positive ints, got {buckets!r}")
  return tuple(sorted(set(sizes)))


def _check_weights(weights) -> tuple[float, float] | None:
  if weights is None:
    return None
  try:
    w = tuple(float(x) for x in np.ravel(np.asarray(weights, np.float64)))
  except (TypeError, ValueError):
    w = ()
  if len(w) != 2 or not all(math.isfinite(x) for x in w):
    raise ConfigError(f"weights must be two finite numbers (w_L, w_S), got {weights!r}")
  return w


def _check_scale(small_scale) -> float:
  scale = float(small_scale)
  if not (math.isfinite(scale) and scale > 0):
    raise ConfigError(f"small_scale must be a positive finite number, got {small_scale!r}")
  return scale


def _check_threshold(threshold) -> float:
  t = float(threshold)
  if math.isnan(t):
    raise ConfigError("threshold must be a number, got NaN")
  return t


def make_cascade_forward(
  small_graphdef, large_graphdef, *, weights=None, small_scale: float = 1.0, buckets: Sequence[int]
) -> Callable:
  """`run(small_state, large_state, images, threshold) -> dict`, the batched cascade.

  Args:
    small_graphdef, large_graphdef: NNX graphdefs (e.g. from `duo.split_members`).
    weights: (w_L, w_S) for the duo answer on deferred rows; None answers
      them with the large model's logits alone.
    small_scale: the sidekick's fitted inverse temperature; the gate and the
      kept rows' logits use small_scale · z_S.
    buckets: sub-batch sizes for the large model; the largest must cover the
      batch size (e.g. `default_buckets(B)`).

  `run` returns {"logits": [B, C] float32, "confidence": [B] (max softmax of
  the logits), "deferred": [B] bool (numpy), "num_deferred": k, "bucket":
  the sub-batch size the large model ran on, 0 when it did not run}.
  `run.traces` counts how often each stage was traced ("small", "large"):
  each trace is one compilation.
  """
  weights = _check_weights(weights)
  scale = _check_scale(small_scale)
  buckets = _check_buckets(buckets)
  traces = {"small": 0, "large": 0}

  @jax.jit
  def small_stage(small_state, images, threshold):
    traces["small"] += 1  # runs at trace time only
    z_s = nnx.merge(small_graphdef, small_state)(images, train=False)[0].astype(jnp.float32)
    scaled = scale * z_s
    confidence = msp_confidence(scaled)
    return z_s, scaled, confidence, confidence < threshold

  @jax.jit
  def large_stage(large_state, images, z_s, scaled, idx):
    traces["large"] += 1
    # Padding entries hold the out-of-range index B: the gather clips them to
    # a real row (computed, then discarded) and the scatter drops them, so no
    # kept row can be overwritten whatever the padding.
    sub = jnp.take(images, idx, axis=0, mode="clip")
    z_l = nnx.merge(large_graphdef, large_state)(sub, train=False)[0].astype(jnp.float32)
    if weights is None:
      answer = z_l
    else:
      answer = weights[0] * z_l + weights[1] * jnp.take(z_s, idx, axis=0, mode="clip")
    logits = scaled.at[idx].set(answer, mode="drop")
    return logits, msp_confidence(logits)

  def run(small_state, large_state, images, threshold) -> dict:
    threshold = _check_threshold(threshold)
    # Once on the device for both stages (a numpy batch would otherwise be
    # transferred once per jitted call).
    images = jnp.asarray(images)
    batch = images.shape[0]
    if batch > buckets[-1]:
      raise InputError(
        f"batch of {batch} rows exceeds the largest bucket {buckets[-1]}; "
        "pass buckets ending in the batch size"
      )
    z_s, scaled, confidence, deferred = small_stage(small_state, images, jnp.float32(threshold))
    deferred = np.asarray(deferred)  # the one device -> host transfer: B booleans
    rows = np.flatnonzero(deferred)
    k = int(rows.size)
    if k == 0:
      return {
        "logits": scaled,
        "confidence": confidence,
        "deferred": deferred,
        "num_deferred": 0,
        "bucket": 0,
      }
    bucket = next(s for s in buckets if s >= k)
    idx = np.full(bucket, batch, np.int32)
    idx[:k] = rows
    logits, confidence = large_stage(large_state, images, z_s, scaled, jnp.asarray(idx))
    return {
      "logits": logits,
      "confidence": confidence,
      "deferred": deferred,
      "num_deferred": k,
      "bucket": bucket,
    }

  run.traces = traces
  run.buckets = buckets
  return run


def reference_cascade(
  small_apply: Callable,
  large_apply: Callable,
  images,
  threshold,
  *,
  weights=None,
  small_scale: float = 1.0,
) -> dict:
  """The cascade without batching tricks: both models on every row, then select.

  `small_apply` / `large_apply` map images to logits. Returns the keys of
  `make_cascade_forward`'s result except "bucket".
  """
  weights = _check_weights(weights)
  scale = _check_scale(small_scale)
  threshold = _check_threshold(threshold)
  z_s = jnp.asarray(small_apply(images), jnp.float32)
  z_l = jnp.asarray(large_apply(images), jnp.float32)
  scaled = scale * z_s
  deferred = msp_confidence(scaled) < jnp.float32(threshold)
  answer = z_l if weights is None else weights[0] * z_l + weights[1] * z_s
  logits = jnp.where(deferred[:, None], answer, scaled)
  deferred = np.asarray(deferred)
  return {
    "logits": logits,
    "confidence": msp_confidence(logits),
    "deferred": deferred,
    "num_deferred": int(deferred.sum()),
  }
