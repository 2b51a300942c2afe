"""The optimizer of a training config: schedule, weight decay, clipping, layer-wise
learning-rate decay, linear probe."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from duojax.errors import ConfigError
from duojax.train.layer_decay import scale_by_layer


def total_steps(config, num_train: int) -> int:
  """`config.total_steps`, else `config.epochs` of full batches (at least one step)."""
  if config.total_steps > 0:
    return int(config.total_steps)
  # Imported here: the rest of this module is needed where grain is not (a
  # train step timed on an accelerator host).
  from duojax.data.pipeline import steps_per_epoch

  per_epoch = steps_per_epoch(num_train, config.batch_size)
  if per_epoch == 0:
    raise ConfigError(f"batch_size {config.batch_size} exceeds the {num_train} training examples")
  return max(1, math.ceil(config.epochs * per_epoch))


def make_schedule(config, num_steps: int) -> optax.Schedule:
  warmup = min(config.warmup_steps, max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0, peak_value=config.lr, warmup_steps=warmup, decay_steps=num_steps, end_value=0.0
  )


def make_optimizer(config, num_steps: int) -> optax.GradientTransformation:
  """The config's optimizer; with `linear_probe_steps`, a head-only phase first.

  During the probe the backbone's updates are zero and its optimizer state
  (moments, schedule position) does not move, so the full fine-tune that
  follows starts with its own warm-up over the remaining steps.
  """
  probe = config.linear_probe_steps
  if probe <= 0:
    return _base_optimizer(config, num_steps)
  if probe >= num_steps:
    raise ConfigError(
      f"config.linear_probe_steps={probe} leaves no fine-tuning steps "
      f"of the {num_steps} in this run"
    )
  labels = lambda params: {
    k: jax.tree.map(lambda _, part="head" if k == "head" else "backbone": part, v)
    for k, v in params.items()
  }
  return optax.multi_transform(
    {
      "head": _base_optimizer(config, num_steps),
      "backbone": hold_until(_base_optimizer(config, num_steps - probe), probe),
    },
    labels,
  )


def hold_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
  """`inner`, frozen for its first `steps` updates: zero updates, state unchanged."""

  def init(params):
    return inner.init(params), jnp.zeros((), jnp.int32)

  def update(updates, state, params=None):
    inner_state, count = state
    new_updates, new_state = inner.update(updates, inner_state, params)
    active = count >= steps
    new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
    new_state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, inner_state)
    return new_updates, (new_state, count + 1)

  return optax.GradientTransformation(init, update)


def _base_optimizer(config, num_steps: int) -> optax.GradientTransformation:
  schedule = make_schedule(config, num_steps)
  # Decay kernels only: decaying biases and norm scales hurts small models.
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  if config.optimizer == "adamw":
    opt = optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
  elif config.optimizer == "sgd":
    opt = optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
      optax.sgd(schedule, momentum=config.momentum, nesterov=True),
    )
  else:
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; valid: adamw, sgd")
  if config.get("layer_decay", 1.0) < 1.0:
    opt = optax.chain(opt, scale_by_layer(config.layer_decay))
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return opt
