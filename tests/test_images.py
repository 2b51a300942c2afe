"""One image at a time (duojax.data.images) and the host/device normalisation."""

import io
import math

import jax
import numpy as np
import pytest
from PIL import Image

from duojax import data
from duojax.data import images


def _encode(array, fmt="JPEG", mode=None, **kw):
  image = Image.fromarray(array)
  if mode:
    image = image.convert(mode)
  out = io.BytesIO()
  image.save(out, format=fmt, **kw)
  return out.getvalue()


def _smooth(h, w, seed=0):
  """A smooth RGB image (resampling error stays small on it)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w] / max(h, w)
  phases = rng.uniform(0, 2 * np.pi, 3)
  return np.stack([127 + 100 * np.sin(3 * x + 2 * y + p) for p in phases], -1).astype(np.uint8)


# ------------------------------------------------------------------ boxes
@pytest.mark.parametrize("width,height", [(500, 375), (60, 480), (300, 300), (7, 5)])
def test_random_resized_crop_boxes_fit_and_follow_their_ranges(width, height):
  rng = np.random.default_rng(0)
  scale, ratio = (0.08, 1.0), (3 / 4, 4 / 3)
  areas, aspects = [], []
  for _ in range(500):
    left, top, w, h = images.random_resized_crop_box(rng, width, height, scale=scale, ratio=ratio)
    assert 0 <= left and 0 <= top and 0 < w and 0 < h
    assert left + w <= width and top + h <= height
    areas.append(w * h / (width * height))
    aspects.append(w / h)
  # Rounding to whole pixels widens the ranges by about a pixel a side.
  slack = 2 / min(width, height) + 0.02
  assert max(areas) <= scale[1] + 1e-9
  if min(width, height) >= 60:
    assert min(areas) >= scale[0] * (1 - slack)
    assert all(ratio[0] * (1 - slack) <= a <= ratio[1] * (1 + slack) for a in aspects)
  if 3 / 4 <= width / height <= 4 / 3:
    # Every area fits: the draws cover the range rather than sitting on one value.
    assert np.std(areas) > 0.1


def test_random_resized_crop_falls_back_to_the_clamped_centre_crop():
  # A strip far outside the ratio range: no try fits, the centre crop is clamped.
  box = images.random_resized_crop_box(
    np.random.default_rng(0), 1000, 10, scale=(0.9, 1.0), ratio=(1.0, 1.0)
  )
  assert box == (495, 0, 10, 10)


def test_random_resized_crop_is_a_pure_function_of_its_generator():
  boxes = [
    images.random_resized_crop_box(np.random.default_rng([3, 7]), 400, 300) for _ in range(2)
  ]
  assert boxes[0] == boxes[1]


def test_centre_crop_box_is_the_resize_then_crop_of_the_shorter_side():
  left, top, w, h = images.center_crop_box(512, 256, 0.875)
  assert (w, h) == (224, 224)
  assert (left, top) == (144, 16)


# ------------------------------------------------------------- decoding
@pytest.mark.parametrize(
  "mode,fmt",
  [
    ("RGB", "JPEG"),
    ("L", "JPEG"),
    ("CMYK", "JPEG"),
    ("RGBA", "PNG"),
    ("P", "PNG"),
    ("LA", "PNG"),
    ("1", "PNG"),
    ("I;16", "PNG"),
  ],
)
def test_every_mode_decodes_to_rgb_uint8(mode, fmt):
  array = _smooth(40, 50)
  if mode == "I;16":
    encoded = _encode(array[..., 0].astype(np.uint16) * 257, "PNG")
  else:
    encoded = _encode(array, fmt, mode)
  rgb = images.decode(encoded)
  assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
  if mode in ("RGB", "RGBA"):
    np.testing.assert_allclose(rgb, array, atol=12)  # JPEG's error on a smooth image
  if mode == "I;16":  # 16 bits scaled down to 8, not clipped at 255
    np.testing.assert_array_equal(rgb[..., 0], array[..., 0])


@pytest.mark.parametrize(
  "data,reason",
  [(b"", "empty file"), (b"not an image", "UnidentifiedImageError"), (None, "OSError")],
)
def test_check_decodes_names_what_is_wrong(data, reason):
  if data is None:  # a truncated JPEG
    data = _encode(_smooth(200, 200), "JPEG")[:500]
  found = images.check_decodes(data)
  assert found is not None and reason in found, found


def test_check_decodes_accepts_whole_images():
  assert images.check_decodes(_encode(_smooth(30, 20), "PNG")) is None


@pytest.mark.parametrize("box", [(0, 0, 500, 375), (100, 50, 240, 180), (10, 10, 60, 60)])
def test_draft_decoding_equals_full_decoding_within_resampling_error(box):
  encoded = _encode(_smooth(375, 500), "JPEG", quality=95)
  draft = images.crop_resize(images.open_encoded(encoded), box, 56)
  full = images.crop_resize(images.open_encoded(encoded), box, 56, draft=False)
  assert draft.shape == full.shape == (56, 56, 3)
  error = np.abs(draft.astype(int) - full.astype(int))
  assert error.mean() < 2.0 and error.max() < 24


def test_draft_decoding_decodes_fewer_pixels():
  encoded = _encode(_smooth(400, 800), "JPEG")
  image = images.open_encoded(encoded)
  drafted, box = images._draft(image, (0, 0, 800, 400), 50)
  assert drafted.size == (100, 50)  # 1/8 scale, the most the decoder offers
  assert box == (0, 0, 100, 50)


def test_crop_resize_of_a_decoded_array_and_of_its_bytes_agree():
  array = _smooth(64, 96)
  box = images.center_crop_box(96, 64, 0.875)
  from_array = images.crop_resize(Image.fromarray(array), box, 32)
  from_png = images.crop_resize(images.open_encoded(_encode(array, "PNG")), box, 32)
  np.testing.assert_array_equal(from_array, from_png)


# --------------------------------------------------------- normalisation
def test_host_and_device_normalisation_agree_to_the_bit_on_every_pixel_value():
  pixels = np.tile(np.arange(256, dtype=np.uint8)[:, None], (1, 3)).reshape(1, 16, 16, 3)
  rng = np.random.default_rng(0)
  step = jax.jit(data.normalize_on_device)
  for _ in range(20):
    mean = rng.uniform(0, 1, 3).astype(np.float32)
    std = rng.uniform(0.05, 0.5, 3).astype(np.float32)
    host = data.normalize(pixels, mean, std)
    device = np.asarray(step(pixels, mean, std))
    np.testing.assert_array_equal(host.view(np.int32), device.view(np.int32))
    np.testing.assert_allclose(host, (pixels / 255.0 - mean) / std, rtol=1e-6, atol=1e-6)


def test_device_normalisation_leaves_float_images_alone():
  x = np.ones((1, 2, 2, 1), np.float32) * 0.3
  np.testing.assert_array_equal(data.normalize_on_device(x, [0.5], [0.2]), x)


def test_rrc_scale_bounds_area_without_rounding_surprises():
  # sqrt(area · ratio) rounding keeps a crop inside its image at the top of the range.
  rng = np.random.default_rng(1)
  for _ in range(200):
    left, top, w, h = images.random_resized_crop_box(rng, 61, 59, scale=(1.0, 1.0))
    assert w <= 61 and h <= 59 and math.isclose(w * h / (61 * 59), 1.0, rel_tol=0.1)
