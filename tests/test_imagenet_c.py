"""The 15 ImageNet-C corruptions (duojax.data.imagenet_c): shapes, determinism, strength,
and numpy / PIL references for the simple ones."""

import colorsys
import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from duojax import errors, eval_config_lib
from duojax.data import imagenet_c, shifts
from duojax.data import imagenet_c_weather as weather
from duojax.eval import splits

KINDS = shifts.IMAGENET_C
corrupt = imagenet_c.corrupt
# Two shapes carry the fast tests (each kind compiles once per shape): small grey and
# larger RGB. The other combinations, and a non-square one, are in the slow test.
GREY = (4, 28, 28, 1)
RGB = (4, 64, 64, 3)
RANDOM = (
  "c_gaussian_noise",
  "c_shot_noise",
  "c_impulse_noise",
  "c_glass_blur",
  "c_motion_blur",
  "c_snow",
  "c_frost",
  "c_fog",
  "c_elastic_transform",
)


def _smooth(shape, seed=0):
  """Smooth random images in [28, 228]: structure at a tenth of the side."""
  rng = np.random.default_rng(seed)
  x = ndimage.gaussian_filter(rng.uniform(size=shape), (0, shape[1] / 10, shape[2] / 10, 0))
  x = (x - x.min((1, 2, 3), keepdims=True)) / np.ptp(x, (1, 2, 3), keepdims=True)
  return np.round(28 + 200 * x).astype(np.uint8)


def _change(images, kind, severity, seed=1):
  out = corrupt(images, kind, severity, seed=seed)
  return np.abs(out.astype(np.float64) - images).mean()


def test_names_and_the_group():
  assert len(KINDS) == 15 and tuple(imagenet_c.SEVERITY_TABLE) == KINDS
  assert all(k.startswith("c_") for k in KINDS) and not set(KINDS) & set(shifts.SHIFTS)
  assert shifts.SHIFTS == ("gaussian_noise", "blur", "rotation", "contrast")
  assert shifts.expand(["imagenet_c"]) == KINDS
  assert shifts.expand(["blur", "c_fog", "imagenet_c", "blur"]) == ("blur", "c_fog") + tuple(
    k for k in KINDS if k != "c_fog"
  )
  assert all(len(rows) == 5 for rows in imagenet_c.SEVERITY_TABLE.values())


@pytest.mark.parametrize("shape", [GREY, RGB], ids=["grey28", "rgb64"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_severity_keeps_shape_and_dtype(kind, shape):
  images = _smooth(shape)
  for severity in shifts.SEVERITIES:
    out = corrupt(images, kind, severity, seed=2)
    assert out.shape == images.shape and out.dtype == np.uint8


@pytest.mark.slow
@pytest.mark.parametrize(
  "shape", [(3, 28, 28, 3), (3, 64, 64, 1), (3, 20, 36, 2), (2, 240, 256, 3)]
)
@pytest.mark.parametrize("kind", KINDS)
def test_other_shapes(kind, shape):
  images = _smooth(shape)
  for severity in shifts.SEVERITIES:
    out = corrupt(images, kind, severity, seed=2)
    assert out.shape == images.shape and out.dtype == np.uint8


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_and_per_image(kind):
  images = _smooth(GREY)
  out = corrupt(images, kind, 4, seed=5)
  np.testing.assert_array_equal(out, corrupt(images, kind, 4, seed=5))
  # An image's result does not depend on the other images of its batch.
  others = images.copy()
  others[:2] = _smooth(GREY, seed=9)[:2]
  np.testing.assert_array_equal(corrupt(others, kind, 4, seed=5)[2:], out[2:])
  if kind in RANDOM:
    assert not np.array_equal(corrupt(images, kind, 4, seed=6), out)


def _chunk_kinds():
  fast = ("c_shot_noise", "c_elastic_transform")
  return [k if k in fast else pytest.param(k, marks=pytest.mark.slow) for k in RANDOM]


@pytest.mark.parametrize("kind", _chunk_kinds())
def test_images_do_not_depend_on_chunking(kind, monkeypatch):
  images = _smooth(GREY)
  whole = corrupt(images, kind, 3, seed=3)
  monkeypatch.setattr(imagenet_c, "CHUNK", 3)  # chunks of 2 and 2
  np.testing.assert_array_equal(corrupt(images, kind, 3, seed=3), whole)


def test_kinds_with_one_seed_draw_independently():
  images = np.full((2, 28, 28, 1), 128, np.uint8)
  a = shifts.corrupt(images, "gaussian_noise", 5, seed=0).astype(float) - 128
  b = corrupt(images, "c_gaussian_noise", 2, seed=0).astype(float) - 128
  assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.1


# Mean |change| from the clean image at severities 1..5 may fall by at most this fraction
# from one severity to the next: close severities of the reference's tables (glass blur
# 4 -> 5, snow 2 -> 3) change smooth images by about the same amount.
TOLERANCE = 0.05
# Exceptions: the reference's elastic_transform table is not ordered (severities 1-2 are
# large affine distortions with little local warping, 3-5 the reverse), and frost trades
# image for texture (x -> a·x + b·frost), so its mean change depends on the texture's
# brightness; its strength is the weight b / a, checked by the falling correlation
# with the clean image.
NOT_BY_MEAN_CHANGE = ("c_elastic_transform", "c_frost")


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in NOT_BY_MEAN_CHANGE])
def test_strength_grows_with_severity(kind):
  images = _smooth(RGB)
  changes = [_change(images, kind, s) for s in shifts.SEVERITIES]
  assert changes[-1] > changes[0] and changes[-1] > 0, changes
  assert all(b >= a * (1 - TOLERANCE) for a, b in zip(changes, changes[1:])), changes


def test_frost_hides_the_image_more_with_severity():
  images = _smooth(RGB)
  corr = [
    np.corrcoef(images.ravel(), corrupt(images, "c_frost", s, seed=1).ravel())[0, 1]
    for s in shifts.SEVERITIES
  ]
  assert all(a > b for a, b in zip(corr, corr[1:])), corr


def test_frost_textures_look_alike_at_every_size():
  texture = jax.jit(weather.frost_texture, static_argnums=(2, 3))
  stats = []
  for side in (28, 64):
    t = np.asarray(texture(np.uint32(0), np.arange(8), side, side))
    assert t.min() >= 0 and t.max() <= 1
    stats.append((t.mean(), t.std()))
  assert all(0.3 < mean < 0.5 and 0.1 < sd < 0.25 for mean, sd in stats), stats
  assert abs(stats[0][0] - stats[1][0]) < 0.03 and abs(stats[0][1] - stats[1][1]) < 0.03


def test_gaussian_noise_statistics():
  images = np.full((4, 64, 64, 3), 128, np.uint8)
  for severity, (sigma,) in enumerate(imagenet_c.SEVERITY_TABLE["c_gaussian_noise"], 1):
    noise = corrupt(images, "c_gaussian_noise", severity, seed=0).astype(float) - 128
    expected = np.clip(
      np.round(sigma * 255 * np.random.default_rng(0).standard_normal(10**6)), -128, 127
    )
    assert abs(noise.std() / expected.std() - 1) < 0.03
    assert abs(noise.mean()) < 4 * expected.std() / np.sqrt(noise.size)


def test_shot_noise_is_poisson():
  level = 100  # x = 100 / 255
  images = np.full((4, 64, 64, 3), level, np.uint8)
  rng = np.random.default_rng(0)
  for severity, (rate,) in enumerate(imagenet_c.SEVERITY_TABLE["c_shot_noise"], 1):
    out = corrupt(images, "c_shot_noise", severity, seed=0).astype(float)
    # numpy's Poisson(λx) / λ, clipped and rounded as the corruption is.
    expected = np.round(np.clip(rng.poisson(level / 255 * rate, 10**6) / rate, 0, 1) * 255)
    assert abs(out.mean() - expected.mean()) < 4 * expected.std() / np.sqrt(out.size)
    assert abs(out.std() / expected.std() - 1) < 0.03, severity


def test_impulse_noise_fractions():
  images = np.full((4, 64, 64, 3), 128, np.uint8)
  for severity, (amount,) in enumerate(imagenet_c.SEVERITY_TABLE["c_impulse_noise"], 1):
    out = corrupt(images, "c_impulse_noise", severity, seed=0)
    salt, pepper = (out == 255).mean(), (out == 0).mean()
    assert set(np.unique(out)) <= {0, 128, 255}
    sd = np.sqrt(amount / 2 / out.size)
    assert abs(salt - amount / 2) < 5 * sd and abs(pepper - amount / 2) < 5 * sd


def test_brightness_matches_an_hsv_round_trip():
  images = _smooth((2, 16, 16, 3), seed=4)
  images[0, 0, 0] = 0  # a black pixel: no hue, becomes grey
  for severity, (c,) in enumerate(imagenet_c.SEVERITY_TABLE["c_brightness"], 1):
    out = corrupt(images, "c_brightness", severity)
    expected = np.empty(images.shape)
    for index in np.ndindex(images.shape[:3]):
      h, s, v = colorsys.rgb_to_hsv(*(images[index] / 255.0))
      expected[index] = colorsys.hsv_to_rgb(h, s, min(v + c, 1.0))
    np.testing.assert_allclose(out, np.round(expected * 255), atol=1)
  grey = _smooth((2, 16, 16, 1))
  out = corrupt(grey, "c_brightness", 2)
  np.testing.assert_array_equal(out, np.minimum(grey + 0.2 * 255, 255).round())


def test_contrast_matches_numpy():
  images = _smooth((2, 16, 16, 3), seed=5)
  for severity, (c,) in enumerate(imagenet_c.SEVERITY_TABLE["c_contrast"], 1):
    x = images / 255.0
    mean = x.mean(axis=(1, 2), keepdims=True)  # per image and channel
    expected = np.clip(np.round(((x - mean) * c + mean) * 255), 0, 255)
    np.testing.assert_allclose(corrupt(images, "c_contrast", severity), expected, atol=1)


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (2, 37, 40, 3)])
def test_pixelate_matches_pil(shape):
  images = np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)
  for severity, (fraction,) in enumerate(imagenet_c.SEVERITY_TABLE["c_pixelate"], 1):
    expected = []
    for image in images:
      pil = Image.fromarray(image[..., 0] if shape[-1] == 1 else image)
      small = (int(shape[2] * fraction), int(shape[1] * fraction))
      pil = pil.resize(small, Image.BOX).resize((shape[2], shape[1]), Image.BOX)
      expected.append(np.asarray(pil).reshape(shape[1:]))
    out = corrupt(images, "c_pixelate", severity)
    # PIL rounds to uint8 between its two passes; here only at the end.
    assert np.abs(out.astype(int) - np.array(expected)).max() <= 1


def test_jpeg_is_pils_and_keeps_grey_images_grey():
  images = _smooth((2, 32, 32, 3))
  out = corrupt(images, "c_jpeg_compression", 5)
  assert 0 < np.abs(out.astype(int) - images).mean() < 20
  grey = _smooth((2, 32, 32, 1))
  np.testing.assert_array_equal(
    corrupt(grey, "c_jpeg_compression", 1),
    imagenet_c.jpeg_compress(grey, 25),
  )


def _reference_plasma(uniforms, decay, side=256):
  """make_imagenet_c.py's plasma_fractal, its np.random draws replaced by `uniforms`."""
  grid, step, wibble, used = np.zeros((side, side)), side, 100.0, 0
  while step >= 2:
    count, half = side // step, step // 2
    draws = (2 * uniforms[used : used + 3 * count**2].reshape(3, count, count) - 1) * wibble**2
    used += 3 * count**2
    corners = grid[0:side:step, 0:side:step]
    squares = corners + np.roll(corners, shift=-1, axis=0)
    squares += np.roll(squares, shift=-1, axis=1)
    grid[half:side:step, half:side:step] = squares / 4 + draws[0]
    centres, corners = grid[half:side:step, half:side:step], grid[0:side:step, 0:side:step]
    left = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
    grid[0:side:step, half:side:step] = left / 4 + draws[1]
    top = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
    grid[half:side:step, 0:side:step] = top / 4 + draws[2]
    step, wibble = step // 2, wibble / decay
  grid -= grid.min()
  return grid / grid.max()


def test_plasma_fractal_is_the_reference_diamond_square():
  side = 32  # fog's is 256; the algorithm is the same at every power of 2
  uniforms = np.random.default_rng(0).uniform(size=(2, side * side - 1)).astype(np.float32)
  got = np.asarray(jax.jit(weather.plasma_fractal)(uniforms, 1.7))
  for image in range(2):
    expected = _reference_plasma(uniforms[image].astype(np.float64), 1.7, side)
    np.testing.assert_allclose(got[image], expected, atol=1e-5)


def test_defocus_kernel_is_a_normalised_disk():
  kernel = np.asarray(jax.jit(imagenet_c.defocus_kernel, static_argnums=2)(3.0, 0.1, 6))
  assert abs(kernel.sum() - 1) < 1e-6 and np.allclose(kernel, kernel.T)
  assert np.allclose(kernel, kernel[::-1]) and kernel[6, 6] > 0 and kernel[6, 10] < 1e-6
  # The disk covers about π r² pixels.
  assert abs(1 / kernel[6, 6] - np.pi * 9) < 3


def test_defocus_blur_is_the_kernel_correlated_with_mirror_edges():
  x = np.random.default_rng(0).uniform(size=(2, 40, 30, 2)).astype(np.float32)
  blur = jax.jit(imagenet_c._defocus_blur)
  for severity, row in enumerate(imagenet_c.SEVERITY_TABLE["c_defocus_blur"], 1):
    got = np.asarray(blur(x, np.asarray(row, np.float32), 0, 0))
    s = 30 / 224
    half = int(np.ceil(10 * s + 0.5)) + 2
    kernel = np.asarray(imagenet_c.defocus_kernel(row[0] * s, row[1] * s, half))
    for b, c in np.ndindex(2, 2):
      # scipy's "mirror" is cv2's BORDER_REFLECT_101, the reference's filter2D default
      expected = ndimage.correlate(x[b, :, :, c], kernel, mode="mirror")
      np.testing.assert_allclose(got[b, :, :, c], expected, atol=1e-5, err_msg=str(severity))


def test_motion_blur_streaks_one_way():
  x = np.zeros((1, 41, 41, 1), np.float32)
  x[0, 20, 10] = 1.0
  # Scale 41/224: radius 20 -> 41 taps ≈ 7.5 pixels long; angle 0 reads to the right.
  out = jax.jit(weather.motion_blur)(x, 20.0, 15.0, np.zeros(1, np.float32))
  out = np.asarray(out)[0, :, :, 0]
  assert abs(out.sum() - 1) < 1e-5
  row = out[20]
  assert row[11:].sum() < 1e-6 < row[3:10].sum()  # the point is smeared to its left


def test_config_accepts_the_group_and_the_names():
  for value in ("imagenet_c", "gaussian_noise,c_fog,imagenet_c", ",".join(KINDS)):
    config = eval_config_lib.base_eval_config()
    config.large, config.shifts = "runs/large", value
    eval_config_lib.validate_eval(config)
  config.shifts = "blur,c_snowfall"
  with pytest.raises(errors.ConfigError) as error:
    eval_config_lib.validate_eval(config)
  assert "config.shifts has unknown ['c_snowfall']" in str(error.value)
  assert "imagenet_c" in str(error.value) and "\n" not in str(error.value)


def test_the_real_eval_config_takes_imagenet_c():
  path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "eval_real.py"
  spec = importlib.util.spec_from_file_location("eval_real", path)
  eval_real = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(eval_real)
  config = eval_real.get_config("large=runs/large,shifts=imagenet_c blur")
  assert config.shifts == "imagenet_c,blur"
  eval_config_lib.validate_eval(config)


def test_shifted_splits_expand_the_group(monkeypatch):
  calls = []

  def fake(images, kind, severity, *, seed):
    calls.append(kind)
    return images

  monkeypatch.setattr(shifts, "corrupt", fake)
  monkeypatch.setattr(imagenet_c, "corrupt", fake)
  images, labels = np.zeros((3, 8, 8, 1), np.uint8), np.arange(3)
  names = splits.shifted_splits(
    splits.array_split(images, labels), kinds=["blur", "imagenet_c"], severities=(2,)
  )
  assert list(names) == ["blur/2"] + [f"{k}/2" for k in KINDS]
  assert calls == ["blur", *KINDS]


def test_errors():
  images = np.zeros((1, 8, 8, 1), np.uint8)
  with pytest.raises(errors.ConfigError, match="unknown shift kind 'c_rain'"):
    corrupt(images, "c_rain", 1)
  with pytest.raises(errors.ConfigError, match="unknown shift kind 'blur'"):
    corrupt(images, "blur", 1)  # shifts.corrupt's
  with pytest.raises(errors.ConfigError, match="unknown shift kind 'c_fog'"):
    shifts.corrupt(images, "c_fog", 1)  # imagenet_c.corrupt's
  with pytest.raises(errors.ConfigError, match="severity"):
    corrupt(images, "c_fog", 6)
  with pytest.raises(errors.InputError, match="uint8"):
    corrupt(images.astype(np.float32), "c_fog", 1)
  assert corrupt(images[:0], "c_fog", 1).shape == (0, 8, 8, 1)
