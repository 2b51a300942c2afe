import math

import numpy as np
import pytest
from scipy import ndimage

from duojax.data import shifts

# Most tests share these two shapes, so each kind compiles only a few times.
GREY = dict(count=8, size=16, channels=1)
RGB = dict(count=8, size=16, channels=3)


def _clothes(count, size, channels, seed=0):
  """Fashion-MNIST-like images: bright, off-centre, textured blobs on black."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[:size, :size]
  images = np.zeros((count, size, size, channels), np.float64)
  for i in range(count):
    cy, cx = rng.uniform(0.35, 0.65, 2) * size
    ry, rx = rng.uniform(0.2, 0.35, 2) * size
    blob = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1
    texture = rng.uniform(80, 230, (size, size, channels))
    images[i] = blob[..., None] * texture
  return images.round().astype(np.uint8)


def _mean_change(kind, severity, images):
  out = shifts.corrupt(images, kind, severity, seed=1)
  return np.abs(out.astype(np.float64) - images).mean()


@pytest.mark.parametrize("kind", shifts.SHIFTS)
@pytest.mark.parametrize("shape", [GREY, RGB], ids=["grey", "rgb"])
def test_shape_dtype_and_determinism(kind, shape):
  images = _clothes(**shape)
  out = shifts.corrupt(images, kind, 3, seed=7)
  assert out.shape == images.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out, shifts.corrupt(images, kind, 3, seed=7))


def test_seeds_change_the_randomness():
  images = _clothes(**GREY)
  a = shifts.corrupt(images, "gaussian_noise", 2, seed=0)
  b = shifts.corrupt(images, "gaussian_noise", 2, seed=1)
  assert (a != b).mean() > 0.5
  # Rotation directions come from the seed: over 8 images some differ.
  a = shifts.corrupt(images, "rotation", 2, seed=0)
  b = shifts.corrupt(images, "rotation", 2, seed=1)
  assert not np.array_equal(a, b)


def test_images_do_not_depend_on_chunking(monkeypatch):
  images = _clothes(**GREY)
  whole = shifts.corrupt(images, "gaussian_noise", 4, seed=3)
  monkeypatch.setattr(shifts, "CHUNK", 3)  # chunks of 3, 3, 2 (+ 1 padding image)
  np.testing.assert_array_equal(shifts.corrupt(images, "gaussian_noise", 4, seed=3), whole)


@pytest.mark.parametrize("kind", shifts.SHIFTS)
def test_change_grows_with_severity(kind):
  images = _clothes(**GREY)
  changes = [_mean_change(kind, s, images) for s in shifts.SEVERITIES]
  assert changes[0] > 0
  assert all(a < b for a, b in zip(changes, changes[1:])), changes


def _cross(size):
  """A symmetric pattern (a plus sign inside a ring), float [H, W]."""
  rows, cols = np.mgrid[:size, :size] - (size - 1) / 2
  radius = np.hypot(rows, cols) / size
  ring = (radius > 0.3) & (radius < 0.4)
  plus = (np.abs(rows) < 1.5) | (np.abs(cols) < 1.5)
  return 200.0 * (ring | (plus & (radius < 0.3)))


@pytest.mark.parametrize("severity", shifts.SEVERITIES)
def test_rotation_matches_scipy(severity):
  image = _cross(GREY["size"]).round().astype(np.uint8)[None, ..., None]
  angle = shifts.SEVERITY_TABLE["rotation"][severity - 1]
  out = shifts.corrupt(np.repeat(image, GREY["count"], axis=0), "rotation", severity, seed=0)
  clockwise = ndimage.rotate(
    image[0, ..., 0].astype(np.float64), -angle, reshape=False, order=1, mode="constant", cval=0.0
  )
  anticlockwise = ndimage.rotate(
    image[0, ..., 0].astype(np.float64), angle, reshape=False, order=1, mode="constant", cval=0.0
  )
  inner = np.s_[3:-3, 3:-3]
  directions = set()
  for rotated in out[..., 0].astype(np.float64):
    errors = [np.abs(rotated - ref)[inner].max() for ref in (clockwise, anticlockwise)]
    assert min(errors) <= 1.0, errors  # rounding to uint8 only
    directions.add(int(np.argmin(errors)))
  assert directions == {0, 1}  # both directions occur among 8 images


def test_rotation_of_an_asymmetric_image_matches_scipy_sign():
  image = np.zeros((20, 24), np.float32)
  image[3:9, 5:19] = 1.0  # a bar above the centre
  ours = np.asarray(shifts.rotate_image(image[..., None], 18.0))[..., 0]
  ref = ndimage.rotate(image, 18.0, reshape=False, order=1, mode="constant", cval=0.0)
  np.testing.assert_allclose(ours[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-4)


@pytest.mark.parametrize("severity", shifts.SEVERITIES)
def test_blur_matches_scipy_gaussian_filter(severity):
  images = _clothes(**RGB)
  sigma = shifts.SEVERITY_TABLE["blur"][severity - 1]
  radius = math.ceil(3 * sigma)
  ref = ndimage.gaussian_filter(
    images.astype(np.float64), (0, sigma, sigma, 0), mode="reflect", radius=(0, radius, radius, 0)
  )
  out = shifts.corrupt(images, "blur", severity)
  assert np.abs(out - ref).max() <= 0.51  # rounding to uint8 only


def test_blur_keeps_a_constant_image():
  images = np.full((2, 9, 9, 1), 137, np.uint8)
  np.testing.assert_array_equal(shifts.corrupt(images, "blur", 5), images)


@pytest.mark.parametrize("severity", shifts.SEVERITIES)
def test_contrast_keeps_each_image_mean(severity):
  images = _clothes(**RGB)
  out = shifts.corrupt(images, "contrast", severity)
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), images.mean(axis=(1, 2, 3)), atol=0.5)
  # ... and scales each pixel's distance to it by c.
  c = shifts.SEVERITY_TABLE["contrast"][severity - 1]
  mean = images.mean(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(out, (images - mean) * c + mean, atol=0.51)


@pytest.mark.parametrize("severity", shifts.SEVERITIES)
def test_noise_std_on_mid_grey(severity):
  images = np.full((RGB["count"], RGB["size"], RGB["size"], 3), 128, np.uint8)
  out = shifts.corrupt(images, "gaussian_noise", severity, seed=severity).astype(np.float64)
  sigma = shifts.SEVERITY_TABLE["gaussian_noise"][severity - 1] * 255
  # Clipping at 0 and 255 shrinks the std at high σ (by ~9 % at σ = 0.3), so
  # the reference is the std of clipped, rounded normal samples.
  normal = np.random.default_rng(0).standard_normal(1_000_000)
  expected = np.clip(np.round(128 + sigma * normal), 0, 255)
  assert abs(out.std() / expected.std() - 1) < 0.03
  assert abs(out.mean() - expected.mean()) < 4 * sigma / np.sqrt(out.size)


def test_empty_set():
  images = np.zeros((0, 28, 28, 1), np.uint8)
  assert shifts.corrupt(images, "rotation", 1).shape == (0, 28, 28, 1)


@pytest.mark.parametrize(
  "images, kind, severity, message",
  [
    (np.zeros((1, 8, 8, 1), np.uint8), "fog", 1, "unknown shift kind 'fog'"),
    (np.zeros((1, 8, 8, 1), np.uint8), "blur", 0, "severity"),
    (np.zeros((1, 8, 8, 1), np.uint8), "blur", 6, "severity"),
    (np.zeros((1, 8, 8, 1), np.uint8), "blur", 2.0, "severity"),
    (np.zeros((1, 8, 8, 1), np.uint8), "blur", True, "severity"),
    (np.zeros((1, 8, 8, 1), np.float32), "blur", 1, "uint8"),
    (np.zeros((8, 8, 1), np.uint8), "blur", 1, r"\[N, H, W, C\]"),
  ],
)
def test_errors(images, kind, severity, message):
  with pytest.raises(ValueError, match=message):
    shifts.corrupt(images, kind, severity)


def test_bad_seed():
  with pytest.raises(ValueError, match="seed"):
    shifts.corrupt(np.zeros((1, 8, 8, 1), np.uint8), "blur", 1, seed=1.5)


def test_one_compilation_per_kind_for_all_severities_and_seeds():
  images = _clothes(count=3, size=11, channels=1)  # a shape no other test uses
  before = shifts._corrupt_chunk._cache_size()
  for kind in ("blur", "rotation", "contrast"):  # the cheap ones to compile
    for severity in shifts.SEVERITIES:
      shifts.corrupt(images, kind, severity, seed=severity)
  assert shifts._corrupt_chunk._cache_size() - before == 3


def test_blur_scales_with_the_image_side():
  """Severity 3 blurs a 2x upsampled image as much, relative to its size, as the original."""
  y, x = np.mgrid[0:28, 0:28]
  small = ((x // 4 + y // 4) % 2 * 200 + 20).astype(np.uint8)[None, :, :, None]
  large = small.repeat(2, axis=1).repeat(2, axis=2)
  blurred_small = shifts.corrupt(small, "blur", 3).astype(float)
  blurred_large = shifts.corrupt(large, "blur", 3).astype(float)
  pooled = blurred_large.reshape(1, 28, 2, 28, 2, 1).mean(axis=(2, 4))
  unscaled = (
    shifts.corrupt(large, "blur", 1).astype(float).reshape(1, 28, 2, 28, 2, 1).mean(axis=(2, 4))
  )
  assert np.abs(pooled - blurred_small).mean() < 4
  # Without the scaling, the large image would come out much sharper.
  assert np.abs(pooled - blurred_small).mean() < 0.5 * np.abs(unscaled - blurred_small).mean()
