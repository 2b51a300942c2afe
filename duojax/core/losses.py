"""Training losses on logits: cross-entropy and the Gatekeeper loss.

Pure functions of (logits [N, C], labels [N]); both compute in float32
whatever the logits' dtype. The Gatekeeper loss (arXiv 2502.19335) tunes a
small model's confidence for cascades (see `duojax.cascade`):

    L = α/N·Σ_i [ŷ_i = y_i]·CE(p_i, y_i) + (1 − α)/N·Σ_i [ŷ_i ≠ y_i]·KL(p_i ‖ u)

sharpens the predictions it gets right and flattens the wrong ones towards
the uniform distribution u.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from duojax.errors import ConfigError, InputError


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy with optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


@jax.jit
def _gatekeeper_loss(logits, labels, alpha, valid):
  # Padding rows may hold anything, NaN included: replaced before any math,
  # neither their values nor their gradients reach the sums.
  logits = jnp.where(valid[:, None], logits.astype(jnp.float32), 0.0)
  labels = jnp.where(valid, labels, 0)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  cross_entropy = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  kl_uniform = jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1) + math.log(logits.shape[-1])
  # Which term a row gets is decided by the current prediction, not trained
  # through: the loss moves the probabilities, never the split.
  correct = jax.lax.stop_gradient(jnp.argmax(logits, axis=-1) == labels)
  num_valid = jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)
  sharpen = jnp.sum(jnp.where(valid & correct, cross_entropy, 0.0))
  flatten = jnp.sum(jnp.where(valid & ~correct, kl_uniform, 0.0))
  return (alpha * sharpen + (1.0 - alpha) * flatten) / num_valid


def gatekeeper_loss(logits, labels, alpha, mask=None) -> jax.Array:
  """The Gatekeeper loss (module docstring), a float32 scalar.

  logits [N, C] (computed in float32 via log_softmax), int labels [N] in
  [0, C), alpha in [0, 1] (a Python number is checked here; an array may be
  traced), and an optional bool mask [N]: rows where it is False are padding,
  left out of both sums and of N. Both sums are divided by the number of
  valid rows, not by the size of their group, so α alone sets the balance.
  KL(p ‖ u) = Σ_c p_c log p_c + log C. Differentiable and jittable.
  """
  if isinstance(alpha, (int, float, np.number)) and not 0.0 <= alpha <= 1.0:
    raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
  # Host (numpy) labels, not device or traced ones, have their range checked
  # below: free, where a device array would need a sync inside training.
  host_labels = None if isinstance(labels, jax.Array) else np.asarray(labels)
  if host_labels is not None and not jnp.issubdtype(host_labels.dtype, jnp.integer):
    raise InputError(f"labels must be integers, got dtype {host_labels.dtype}")
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if logits.ndim != 2 or 0 in logits.shape:
    raise InputError(f"logits must be non-empty 2-D [N, C], got shape {tuple(logits.shape)}")
  if labels.shape != logits.shape[:1]:
    raise InputError(
      f"labels shape {tuple(labels.shape)} does not match the {logits.shape[0]} rows of logits"
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise InputError(f"labels must be integers, got dtype {labels.dtype}")
  valid = jnp.ones(logits.shape[0], bool) if mask is None else jnp.asarray(mask)
  if valid.shape != logits.shape[:1]:
    raise InputError(
      f"mask shape {tuple(valid.shape)} does not match the {logits.shape[0]} rows of logits"
    )
  if host_labels is not None and (mask is None or not isinstance(mask, jax.Array)):
    # An out-of-range label would gather a fill value: a silent NaN loss.
    rows = host_labels if mask is None else host_labels[np.asarray(mask, bool)]
    if bad := int(np.sum((rows < 0) | (rows >= logits.shape[1]))):
      raise InputError(f"labels have {bad} values outside [0, {logits.shape[1]})")
  return _gatekeeper_loss(
    logits, labels.astype(jnp.int32), jnp.asarray(alpha, jnp.float32), valid.astype(bool)
  )
