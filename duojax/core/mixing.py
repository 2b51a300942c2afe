"""Mixup and CutMix of a batch with itself flipped (timm's batch mode), as pure arrays.

Row i of a batch of B rows is mixed with row B − 1 − i: the partner batch is the
batch reversed, so no second batch is drawn and every row is some row's partner.
One draw per batch decides what happens (`draw`):

* with probability 1 − `prob` nothing: λ = 1;
* else, when both alphas are > 0, CutMix with probability `switch_prob` and
  Mixup otherwise; when one alpha is > 0, that one.

Mixup (Zhang et al., arXiv 1710.09412) takes λ ~ Beta(α_m, α_m) and

    x̃ = λ·x + (1 − λ)·flip(x).

CutMix (Yun et al., arXiv 1905.04899) pastes a box of flip(x) into x. Its
λ ~ Beta(α_c, α_c) sets the box's sides to ⌊H·√(1 − λ)⌋ and ⌊W·√(1 − λ)⌋, so
that before clipping the box covers a (1 − λ) share of the image; the centre is
uniform over the pixels and the box is clipped at the borders, which can only
shrink it. λ is then corrected to what the image really holds of x:

    λ = 1 − (y_high − y_low)·(x_high − x_low) / (H·W).

The targets follow the pixels. With s(y) the label-smoothed one-hot of y
(1 − ε + ε/C on y, ε/C elsewhere; `mixed_targets` is timm's `mixup_target`)

    ỹ = λ·s(y) + (1 − λ)·s(flip(y)),

and because the cross-entropy is linear in its target distribution,

    CE(p, ỹ) = λ·CE(p, s(y)) + (1 − λ)·CE(p, s(flip(y))),

which is how `mixed_loss` computes it, so any per-batch loss of (logits, labels)
with the smoothing inside composes the same way.

Expected λ: a Beta(α, α) draw is symmetric about 1/2, so Mixup's λ averages
1 − prob/2 over batches. CutMix's corrected λ averages more than its draw: the
floor and the clipping only ever remove box area.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from duojax.errors import ConfigError


class MixDraw(NamedTuple):
  """One batch's mix: λ (float32 scalar, the share of each row's own image and
  label), whether it is CutMix (bool scalar), and CutMix's box as int32
  [y_low, y_high, x_low, x_high] (half-open; all zero when not CutMix)."""

  lam: jax.Array
  cutmix: jax.Array
  box: jax.Array


def cutmix_box(lam, center_y, center_x, height: int, width: int) -> jax.Array:
  """The CutMix box of a drawn λ around (center_y, center_x), as timm's `rand_bbox`.

  Sides ⌊H·√(1 − λ)⌋ and ⌊W·√(1 − λ)⌋; the box spans centre ± half the side
  (rounded down), clipped to the image. Returns int32 [y_low, y_high, x_low, x_high].
  """
  ratio = jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))
  cut_h = jnp.floor(height * ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * ratio).astype(jnp.int32)
  y_low = jnp.clip(center_y - cut_h // 2, 0, height)
  y_high = jnp.clip(center_y + cut_h // 2, 0, height)
  x_low = jnp.clip(center_x - cut_w // 2, 0, width)
  x_high = jnp.clip(center_x + cut_w // 2, 0, width)
  return jnp.stack([y_low, y_high, x_low, x_high]).astype(jnp.int32)


def box_lambda(box, height: int, width: int) -> jax.Array:
  """1 − the box's share of the image: the λ CutMix's pixels really carry."""
  area = (box[1] - box[0]) * (box[3] - box[2])
  return 1.0 - area.astype(jnp.float32) / float(height * width)


def draw(
  key,
  *,
  mixup_alpha: float,
  cutmix_alpha: float,
  prob: float,
  switch_prob: float,
  height: int,
  width: int,
) -> MixDraw:
  """The mix of one batch (module docstring), a pure function of `key`.

  The alphas are Python numbers (which mixes exist is fixed when tracing); at
  least one must be > 0. Every random number is drawn whether or not it is
  used, so the key's use never depends on an earlier draw.
  """
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ConfigError("mixing needs mixup_alpha or cutmix_alpha > 0")
  k_apply, k_switch, k_mixup, k_cutmix, k_y, k_x = jax.random.split(key, 6)
  applied = jax.random.uniform(k_apply) < prob
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  beta = lambda k, alpha: (
    jax.random.beta(k, alpha, alpha) if alpha > 0 else jnp.ones((), jnp.float32)
  )
  lam_mixup, lam_cutmix = beta(k_mixup, mixup_alpha), beta(k_cutmix, cutmix_alpha)
  center_y = jax.random.randint(k_y, (), 0, height)
  center_x = jax.random.randint(k_x, (), 0, width)
  cutmix = applied & use_cutmix
  box = jnp.where(cutmix, cutmix_box(lam_cutmix, center_y, center_x, height, width), 0)
  lam = jnp.where(cutmix, box_lambda(box, height, width), lam_mixup)
  lam = jnp.where(applied, lam, 1.0).astype(jnp.float32)
  return MixDraw(lam, cutmix, box)


def mix_images(images, mix: MixDraw) -> jax.Array:
  """Images [B, H, W, C] mixed with their flipped batch as `mix` says.

  CutMix copies the partner's pixels inside the box (exactly, no arithmetic);
  Mixup is λ·x + (1 − λ)·flip(x) in the images' float dtype (integer images
  are mixed as float32).
  """
  if not jnp.issubdtype(images.dtype, jnp.floating):  # uint8 pixels would wrap, not blend
    images = images.astype(jnp.float32)
  flipped = images[::-1]
  height, width = images.shape[1], images.shape[2]
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  y_low, y_high, x_low, x_high = mix.box[0], mix.box[1], mix.box[2], mix.box[3]
  inside = (rows >= y_low) & (rows < y_high) & (cols >= x_low) & (cols < x_high)
  pasted = jnp.where(inside[None, :, :, None], flipped, images)
  lam = mix.lam.astype(images.dtype)
  blended = images * lam + flipped * (1 - lam)
  return jnp.where(mix.cutmix, pasted, blended)


def mixed_targets(labels, lam, num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
  """ỹ = λ·s(y) + (1 − λ)·s(flip(y)) [B, C] float32 (timm's `mixup_target`)."""
  smooth = lambda y: (
    jax.nn.one_hot(y, num_classes) * (1.0 - label_smoothing) + label_smoothing / num_classes
  )
  return lam * smooth(labels) + (1.0 - lam) * smooth(labels[::-1])


def mixed_loss(loss_fn: Callable, logits, labels, partner_labels, lam) -> jax.Array:
  """λ·loss(logits, y) + (1 − λ)·loss(logits, y_partner): for the mean
  cross-entropy with smoothing ε, CE against `mixed_targets` (module docstring).

  `partner_labels` are the labels the rows were mixed with (flip(y) of the
  whole batch, passed in so that a micro-batch of it can be scored alone).
  """
  return lam * loss_fn(logits, labels) + (1.0 - lam) * loss_fn(logits, partner_labels)
