"""The train step's fine-tune recipe options: Mixup/CutMix, weight EMA, gradient accumulation.

All three run on the device, inside the one jitted train step of
`duojax.train.steps`, and all default to off (`Recipe()`), which traces the
step exactly as it is without them. What they do to a run is described for
users in docs/training_options.md; the maths is here.

Mixup / CutMix (`duojax.core.mixing`): drawn from a key that is a pure function
of (seed, step), as the dropout keys are, for the global batch: a resumed run
draws the same mixes, and 1 or N devices mix the same rows the same way.

Weight EMA: after the update of step t (t = 1, 2, …) the state's average
becomes

    θ̄_t = d_t·θ̄_{t−1} + (1 − d_t)·θ_t,   θ̄_0 = θ_0,

for the parameters and the BatchNorm statistics alike, with d_t = `ema_decay`,
or with `ema_warmup` d_t = min(ema_decay, 1 − t^(−2/3)) (timm's ModelEmaV3
warm-up with γ = 1, power 2/3: d_1 = 0 copies the first update, and the
average's horizon 1/(1 − d_t) ≈ t^(2/3) grows with the run until it reaches
the fixed decay's). Unrolled, θ̄_t = Σ_s w_s·θ_s with weights w_s ∝ Π_{r>s} d_r
that sum to one. The average is part of the train state, so it is
checkpointed and resumes bit-identically.

Gradient accumulation: the global batch of B rows is split into k
micro-batches of B/k rows and

    g = (1/k)·Σ_j ∇L_j,   L = (1/k)·Σ_j L_j,

where L_j is the mean loss over micro-batch j. For a loss that is a mean over
rows (cross-entropy, with or without mixing) (1/k)·Σ_j L_j is the mean over
all B rows, so g is the gradient of the whole batch and the one optimizer
update per step is the k = 1 update, up to float rounding. What differs:
BatchNorm normalises each micro-batch by its own statistics and updates its
running averages k times per step (as PyTorch does when accumulating), and
dropout draws per micro-batch. Micro-batch j holds rows j, j + k, j + 2k, …:
with the batch split into contiguous blocks over the devices, each device
then holds B/(k·devices) rows of every micro-batch and nothing moves between
devices, which needs B divisible by k × devices.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from duojax.core import mixing
from duojax.errors import ConfigError
from duojax.parallel import sharding

# Folded into the seed's key for the mixing draws, as 0x0D0 is for dropout: two
# streams of one seed that never share a key.
_MIX_STREAM = 0x313


@dataclasses.dataclass(frozen=True)
class Recipe:
  """The options of `config_lib.base_config` that change the train step (all off by default)."""

  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0
  mix_switch_prob: float = 0.5
  ema_decay: float = 0.0
  ema_warmup: bool = False
  grad_accum_steps: int = 1

  @classmethod
  def from_config(cls, config) -> Recipe:
    return cls(**{field.name: config[field.name] for field in dataclasses.fields(cls)})

  @property
  def mixing(self) -> bool:
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0

  @property
  def ema(self) -> bool:
    return self.ema_decay > 0


def check_batch_size(batch_size: int, grad_accum_steps: int, num_shards: int) -> None:
  """ConfigError unless every micro-batch splits evenly over the devices."""
  if batch_size % (grad_accum_steps * num_shards):
    raise ConfigError(
      f"config.batch_size={batch_size} is not divisible by config.grad_accum_steps="
      f"{grad_accum_steps} × the {num_shards} devices (each micro-batch is split over "
      "every device)"
    )


# ---------------------------------------------------------------- Mixup / CutMix
def mix_key(seed: int) -> jax.Array:
  """The key of a run's mixing draws; step t folds t into it."""
  return jax.random.fold_in(jax.random.key(seed), _MIX_STREAM)


def draw_mix(recipe: Recipe, key, image_shape) -> mixing.MixDraw:
  """The mix of a batch of images of `image_shape` [B, H, W, C] (`mixing.draw`)."""
  return mixing.draw(
    key,
    mixup_alpha=recipe.mixup_alpha,
    cutmix_alpha=recipe.cutmix_alpha,
    prob=recipe.mix_prob,
    switch_prob=recipe.mix_switch_prob,
    height=int(image_shape[1]),
    width=int(image_shape[2]),
  )


# ---------------------------------------------------------------- weight EMA
def init_ema(params, batch_stats) -> dict:
  """θ̄_0: copies of the starting weights (copies, so that donating the state
  never donates one buffer twice)."""
  return {
    "params": jax.tree.map(jnp.copy, params),
    "batch_stats": jax.tree.map(jnp.copy, batch_stats),
  }


def ema_decay_at(recipe: Recipe, update) -> jax.Array:
  """d_t of update t (1-based; module docstring), a float32 scalar."""
  decay = jnp.asarray(recipe.ema_decay, jnp.float32)
  if not recipe.ema_warmup:
    return decay
  t = jnp.asarray(update, jnp.float32)
  return jnp.minimum(decay, 1.0 - t ** (-2.0 / 3.0))


def update_ema(ema: dict, params, batch_stats, decay) -> dict:
  """θ̄ ← d·θ̄ + (1 − d)·θ, computed in float32 and stored in θ̄'s dtype.

  A leaf that is not a float (a counter) takes the new value.
  """

  def one(average, new):
    if not jnp.issubdtype(average.dtype, jnp.floating):
      return new
    mixed = average.astype(jnp.float32) * decay + new.astype(jnp.float32) * (1.0 - decay)
    return mixed.astype(average.dtype)

  return {
    "params": jax.tree.map(one, ema["params"], params),
    "batch_stats": jax.tree.map(one, ema["batch_stats"], batch_stats),
  }


def eval_weights(state: dict) -> tuple:
  """(params, batch_stats) that evaluation scores: the EMA's when the state keeps one."""
  weights = state.get("ema", state)
  return weights["params"], weights["batch_stats"]


# ---------------------------------------------------------------- gradient accumulation
def micro_batches(x, steps: int, mesh: Mesh):
  """[B, ...] → [k, B/k, ...], micro-batch j = rows j, j + k, … (module docstring)."""
  if x is None:
    return None
  x = x.reshape(x.shape[0] // steps, steps, *x.shape[1:]).swapaxes(0, 1)
  return jax.lax.with_sharding_constraint(x, sharding.stacked_batch_sharding(mesh))


def accumulate(grad_fn: Callable, params, batch_stats, batch: tuple, key, steps: int, mesh: Mesh):
  """(mean loss, mean accuracy, batch_stats, mean gradient) over `steps` micro-batches.

  `grad_fn(params, batch_stats, images, labels, partner_labels, key)` is
  `jax.value_and_grad(..., has_aux=True)` of a loss returning (loss, (logits,
  batch_stats)); `batch` = (images, labels, partner_labels or None) of the
  whole batch. One `lax.scan` step per micro-batch, so only one micro-batch's
  activations exist at a time; the gradients are summed in the parameters'
  dtype and divided by k once. Micro-batch j's dropout key is `key` with j
  folded in; BatchNorm statistics flow from one micro-batch to the next.
  """
  images, labels, partner = (micro_batches(x, steps, mesh) for x in batch)

  def body(carry, micro):
    grads, stats, loss_sum, accuracy_sum = carry
    image, label, partner_label, j = micro
    (loss, (logits, stats)), g = grad_fn(
      params, stats, image, label, partner_label, jax.random.fold_in(key, j)
    )
    accuracy = jnp.mean(jnp.argmax(logits, -1) == label)
    carry = (
      jax.tree.map(jnp.add, grads, g),
      stats,
      loss_sum + loss.astype(jnp.float32),
      accuracy_sum + accuracy.astype(jnp.float32),
    )
    return carry, None

  zero = jnp.zeros((), jnp.float32)
  start = (jax.tree.map(jnp.zeros_like, params), batch_stats, zero, zero)
  micro = (images, labels, partner, jnp.arange(steps))
  (grads, stats, loss_sum, accuracy_sum), _ = jax.lax.scan(body, start, micro)
  grads = jax.tree.map(lambda g: g / steps, grads)
  return loss_sum / steps, accuracy_sum / steps, stats, grads
