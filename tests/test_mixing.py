"""Mixup and CutMix (duojax.core.mixing) against plain numpy, timm's way.

The references below re-derive timm's batch-mode `Mixup` in numpy: the box of
`rand_bbox`, the λ correction of `cutmix_bbox_and_lam`, the in-place paste and
blend of `_mix_batch` and the targets of `mixup_target`. Fixed λ and boxes
are compared exactly (CutMix copies pixels) or to float32 rounding (Mixup);
the random draws are compared by their averages over many batches.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from duojax.core import mixing
from duojax.core.losses import cross_entropy
from duojax.errors import ConfigError


def _numpy_box(lam, cy, cx, h, w):
  """timm's rand_bbox with a given centre."""
  ratio = np.sqrt(1 - lam)
  cut_h, cut_w = int(h * ratio), int(w * ratio)
  return (
    int(np.clip(cy - cut_h // 2, 0, h)),
    int(np.clip(cy + cut_h // 2, 0, h)),
    int(np.clip(cx - cut_w // 2, 0, w)),
    int(np.clip(cx + cut_w // 2, 0, w)),
  )


def _numpy_mix(x, lam, box=None):
  """timm's _mix_batch on NHWC images: paste the flipped batch's box, or blend."""
  x = x.copy()
  flipped = x[::-1].copy()
  if box is not None:
    yl, yh, xl, xh = box
    x[:, yl:yh, xl:xh, :] = flipped[:, yl:yh, xl:xh, :]
    return x
  return x * np.float32(lam) + flipped * np.float32(1 - lam)


def _numpy_targets(labels, lam, num_classes, smoothing):
  off = smoothing / num_classes
  on = 1 - smoothing + off
  one_hot = lambda y: np.where(np.arange(num_classes)[None] == y[:, None], on, off)
  return lam * one_hot(labels) + (1 - lam) * one_hot(labels[::-1])


def _images(b=6, h=9, w=7, c=3, seed=0):
  return np.random.default_rng(seed).normal(size=(b, h, w, c)).astype(np.float32)


@pytest.mark.parametrize("lam", [0.0, 0.13, 0.5, 0.77, 0.999])
@pytest.mark.parametrize("center", [(0, 0), (4, 3), (8, 6), (2, 5)])
def test_cutmix_box_and_corrected_lambda_are_timms(lam, center):
  h, w = 9, 7
  box = np.asarray(mixing.cutmix_box(lam, center[0], center[1], h, w))
  want = _numpy_box(lam, center[0], center[1], h, w)
  assert tuple(box) == want
  area = (want[1] - want[0]) * (want[3] - want[2])
  assert float(mixing.box_lambda(jnp.asarray(box), h, w)) == pytest.approx(1 - area / (h * w))


@pytest.mark.parametrize("box", [(2, 7, 1, 4), (0, 9, 0, 7), (3, 3, 0, 7), (0, 1, 6, 7)])
def test_cutmix_pastes_the_flipped_batch_exactly(box):
  x = _images()
  lam = mixing.box_lambda(jnp.asarray(box), 9, 7)
  mix = mixing.MixDraw(lam, jnp.asarray(True), jnp.asarray(box, jnp.int32))
  np.testing.assert_array_equal(np.asarray(mixing.mix_images(x, mix)), _numpy_mix(x, None, box))


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 1.0])
def test_mixup_blends_with_the_flipped_batch(lam):
  x = _images()
  mix = mixing.MixDraw(jnp.float32(lam), jnp.asarray(False), jnp.zeros(4, jnp.int32))
  got = np.asarray(mixing.mix_images(x, mix))
  np.testing.assert_allclose(got, _numpy_mix(x, lam), rtol=1e-6, atol=1e-6)
  if lam == 1.0:  # no mix: the batch itself, bit for bit
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_loss_is_the_cross_entropy_of_timms_mixed_targets(smoothing):
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(6, 5)).astype(np.float32)
  labels = rng.integers(0, 5, 6)
  lam = 0.35
  targets = mixing.mixed_targets(jnp.asarray(labels), lam, 5, smoothing)
  np.testing.assert_allclose(
    np.asarray(targets), _numpy_targets(labels, lam, 5, smoothing), rtol=1e-6, atol=1e-7
  )
  soft = float(optax.softmax_cross_entropy(jnp.asarray(logits), targets).mean())
  loss = lambda z, y: cross_entropy(z, y, smoothing).mean()
  mixed = float(mixing.mixed_loss(loss, logits, labels, labels[::-1], lam))
  assert mixed == pytest.approx(soft, rel=1e-5)


def _draws(n, **options):
  options = {"prob": 1.0, "switch_prob": 0.5, "height": 16, "width": 12, **options}
  keys = jax.random.split(jax.random.key(0), n)
  return jax.device_get(jax.vmap(lambda k: mixing.draw(k, **options))(keys))


def test_mixup_lambda_averages_one_minus_half_the_probability():
  """Beta(α, α) is symmetric about 1/2; unmixed batches have λ = 1."""
  n = 20000
  for alpha, prob in ((0.4, 1.0), (1.0, 0.6)):
    drawn = _draws(n, mixup_alpha=alpha, cutmix_alpha=0.0, prob=prob)
    assert not drawn.cutmix.any() and not drawn.box.any()
    assert np.all((drawn.lam >= 0) & (drawn.lam <= 1))
    assert drawn.lam.mean() == pytest.approx(1 - prob / 2, abs=0.01)
    assert np.mean(drawn.lam < 1) == pytest.approx(prob, abs=0.015)
    # Var of Beta(α, α) is 1 / (4(2α + 1)): the draw is Beta's, not any symmetric law.
    mixed = drawn.lam[drawn.lam < 1]
    assert mixed.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.06)


def test_cutmix_lambda_averages_timms_corrected_lambda():
  """The corrected λ's mean matches timm's procedure simulated in numpy, and
  every λ is the box's own 1 − area share."""
  n, h, w, alpha = 20000, 16, 12, 1.0
  drawn = _draws(n, mixup_alpha=0.0, cutmix_alpha=alpha, height=h, width=w)
  assert drawn.cutmix.all()
  areas = (drawn.box[:, 1] - drawn.box[:, 0]) * (drawn.box[:, 3] - drawn.box[:, 2])
  np.testing.assert_allclose(drawn.lam, 1 - areas / (h * w), rtol=1e-6)
  rng = np.random.default_rng(0)
  reference = []
  for lam in rng.beta(alpha, alpha, n):
    yl, yh, xl, xh = _numpy_box(lam, rng.integers(0, h), rng.integers(0, w), h, w)
    reference.append(1 - (yh - yl) * (xh - xl) / (h * w))
  assert drawn.lam.mean() == pytest.approx(np.mean(reference), abs=0.01)
  assert drawn.lam.mean() > 0.5 + 0.02  # the floor and the clipping only shrink boxes


def test_both_on_switches_to_cutmix_at_its_probability():
  drawn = _draws(20000, mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.8, switch_prob=0.25)
  assert np.mean(drawn.cutmix) == pytest.approx(0.8 * 0.25, abs=0.015)
  assert not drawn.box[~drawn.cutmix].any()
  assert np.mean(drawn.lam == 1) == pytest.approx(0.2, abs=0.015)


def test_a_draw_is_a_pure_function_of_its_key():
  options = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, height=8, width=8)
  one = jax.device_get(mixing.draw(jax.random.key(3), **options))
  two = jax.device_get(jax.jit(lambda k: mixing.draw(k, **options))(jax.random.key(3)))
  for a, b in zip(one, two):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ConfigError, match="mixup_alpha or cutmix_alpha"):
    mixing.draw(jax.random.key(0), **{**options, "mixup_alpha": 0.0, "cutmix_alpha": 0.0})
