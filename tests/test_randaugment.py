"""RandAugment: each op against plain numpy arithmetic on tiny images, and the
training pipeline's use of it (pure in (seed, step), per row, after the crop
and before the flip), down to a training run on an imported image folder."""

import json

import numpy as np
import pytest
from helpers import imported_image_folder, tiny_train_config

from duojax import config_lib, data
from duojax.data import batches, images
from duojax.data import randaugment as ra
from duojax.train import checkpoint, loop

FILL = ra.FILL


def _image(h=7, w=9, c=3, seed=0, low=0, high=256):
  return np.random.default_rng(seed).integers(low, high, size=(h, w, c), dtype=np.uint8)


def _op(image, op, magnitude, sign=1.0):
  return ra.from_pil(ra.apply_op(ra.to_pil(image), op, magnitude, sign), image.shape[-1])


def _grey(image):
  """PIL's "L" of RGB: ITU-R 601-2 luma, L = (299 R + 587 G + 114 B) / 1000."""
  r, g, b = (image[..., i].astype(np.float64) for i in range(3))
  return np.floor((299 * r + 587 * g + 114 * b) / 1000 + 0.5)[..., None]


def _blend(degenerate, image, factor):
  return np.clip(degenerate + factor * (image.astype(np.float64) - degenerate), 0, 255)


def _bilinear(image, xin, yin):
  """`image` sampled at continuous (xin, yin) (pixel centres at i + ½), bilinearly."""
  x, y = xin - 0.5, yin - 0.5
  x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
  dx, dy = (x - x0)[..., None], (y - y0)[..., None]
  h, w = image.shape[:2]
  at = lambda yy, xx: image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.float64)
  top = at(y0, x0) * (1 - dx) + at(y0, x0 + 1) * dx
  bottom = at(y0 + 1, x0) * (1 - dx) + at(y0 + 1, x0 + 1) * dx
  return top * (1 - dy) + bottom * dy


def _warp(image, inverse):
  """(sampled image, mask of outputs whose every bilinear neighbour is inside):
  output (x, y) reads input `inverse(x + ½, y + ½)`."""
  h, w = image.shape[:2]
  ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
  xin, yin = inverse(xs, ys)
  inside = (xin >= 1.5) & (xin <= w - 1.5) & (yin >= 1.5) & (yin <= h - 1.5)
  return _bilinear(image, xin, yin), inside


# ---------------------------------------------------------------- the ops, one by one
@pytest.mark.parametrize("magnitude", [0, 3, 9, 10])
def test_solarize_inverts_the_pixels_at_or_above_its_threshold(magnitude):
  image = _image()
  threshold = 256 - round(256 * magnitude / 10)
  expected = np.where(image >= threshold, 255 - image, image)
  np.testing.assert_array_equal(_op(image, "solarize", magnitude), expected)
  if magnitude == 10:  # threshold 0: every pixel inverted
    np.testing.assert_array_equal(_op(image, "solarize", 10), 255 - image)


@pytest.mark.parametrize("magnitude, bits", [(0, 8), (2, 7), (5, 6), (9, 4), (10, 4)])
def test_posterize_keeps_the_top_bits(magnitude, bits):
  image = _image(c=1)
  mask = (0xFF << (8 - bits)) & 0xFF
  np.testing.assert_array_equal(_op(image, "posterize", magnitude), image & mask)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_enhance_ops_blend_with_their_degenerate_image(sign):
  image = _image(h=8, w=10, seed=1)
  factor = 1 + sign * 0.9 * 0.7
  grey = _grey(image)
  mean = np.floor(grey.mean() + 0.5)
  smooth = image.astype(np.float64).copy()  # 3×3 kernel [1 1 1; 1 5 1; 1 1 1] / 13, border kept
  kernel = np.ones((3, 3)) / 13
  kernel[1, 1] = 5 / 13
  padded = image.astype(np.float64)
  smooth[1:-1, 1:-1] = sum(
    kernel[i, j] * padded[i : i + 6, j : j + 8] for i in range(3) for j in range(3)
  )
  references = {
    "brightness": _blend(0.0, image, factor),
    "color": _blend(grey, image, factor),
    "contrast": _blend(mean, image, factor),
    "sharpness": _blend(np.round(smooth), image, factor),
  }
  for op, expected in references.items():
    got = _op(image, op, 7, sign).astype(np.float64)
    assert np.abs(got - expected).max() <= 1, op
    np.testing.assert_array_equal(_op(image, op, 0, sign), image, err_msg=op)


def test_auto_contrast_stretches_each_channel_to_the_full_range():
  image = _image(low=40, high=200, seed=2)
  lo, hi = image.min(axis=(0, 1)), image.max(axis=(0, 1))
  expected = (image.astype(np.float64) - lo) * 255 / (hi - lo)
  got = _op(image, "auto_contrast", 9)
  assert np.abs(got - expected).max() <= 1
  assert (got.min(axis=(0, 1)) == 0).all() and (got.max(axis=(0, 1)) == 255).all()


def test_equalize_maps_each_channel_through_its_cumulative_histogram():
  # step = (pixels − count of the top value) // 255; LUT(v) = (step // 2 + #pixels below v) // step
  image = _image(h=32, w=40, c=3, low=30, high=120, seed=3)
  expected = np.empty_like(image)
  for c in range(3):
    hist = np.bincount(image[..., c].ravel(), minlength=256)
    step = (hist.sum() - hist[np.nonzero(hist)[0][-1]]) // 255
    assert step > 0
    lut = (step // 2 + np.concatenate([[0], np.cumsum(hist)[:-1]])) // step
    expected[..., c] = np.clip(lut, 0, 255)[image[..., c]]
  np.testing.assert_array_equal(_op(image, "equalize", 9), expected)
  # Too few pixels for a step of 1: the channel stays as it is.
  small = _image(h=7, w=9, seed=3)
  np.testing.assert_array_equal(_op(small, "equalize", 9), small)


@pytest.mark.parametrize("op", ["rotate", "shear_x", "shear_y", "translate_x", "translate_y"])
def test_geometric_ops_at_magnitude_0_are_the_identity(op):
  for image in (_image(), _image(c=1)):
    for sign in (1.0, -1.0):
      np.testing.assert_array_equal(_op(image, op, 0, sign), image)


def test_identity_and_a_quarter_turn():
  image = _image(h=8, w=8)
  np.testing.assert_array_equal(_op(image, "identity", 10), image)
  # PIL's rotate by 90 on a square is exact: counter-clockwise, as np.rot90.
  turned = ra.apply_op(ra.to_pil(image), "rotate", 0).rotate(90)
  np.testing.assert_array_equal(np.asarray(turned), np.rot90(image))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_rotate_and_shear_resample_the_inverse_map_bilinearly(sign):
  image = _image(h=24, w=20, seed=4)
  h, w = image.shape[:2]
  theta = np.radians(sign * 30 * 0.8)
  s = sign * 0.3 * 0.8
  cases = {
    # Counter-clockwise by θ about the centre (y down): the output at d from the
    # centre reads the input at d turned back.
    "rotate": lambda x, y: (
      w / 2 + (x - w / 2) * np.cos(theta) - (y - h / 2) * np.sin(theta),
      h / 2 + (x - w / 2) * np.sin(theta) + (y - h / 2) * np.cos(theta),
    ),
    "shear_x": lambda x, y: (x + s * (y - h / 2), y),
    "shear_y": lambda x, y: (x, y + s * (x - w / 2)),
  }
  for op, inverse in cases.items():
    expected, inside = _warp(image, inverse)
    got = _op(image, op, 8, sign).astype(np.float64)
    assert inside.sum() > 0.4 * h * w, op
    assert np.abs(got - expected)[inside].max() <= 1 + 1e-9, op  # PIL rounds to uint8
    # Whatever maps from outside the image is mid-grey.
    far = _warp_outside(inverse, h, w)
    assert far.any() and (got[far] == FILL).all(), op


def _warp_outside(inverse, h, w):
  """Outputs whose sample point lies a pixel or more outside the image."""
  ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
  xin, yin = inverse(xs, ys)
  return (xin < -1) | (xin > w + 1) | (yin < -1) | (yin > h + 1)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_translate_shifts_by_whole_pixels_and_fills_with_grey(sign):
  image = _image(h=10, w=12, seed=5)
  for op, axis, side in (("translate_x", 1, 12), ("translate_y", 0, 10)):
    shift = int(sign * round(0.45 * 0.6 * side))
    expected = np.full_like(image, FILL)
    src = [slice(None)] * 3
    dst = [slice(None)] * 3
    # output[i] = input[i + shift] where that is inside
    if shift >= 0:
      src[axis], dst[axis] = slice(shift, None), slice(0, side - shift)
    else:
      src[axis], dst[axis] = slice(0, side + shift), slice(-shift, None)
    expected[tuple(dst)] = image[tuple(src)]
    np.testing.assert_array_equal(_op(image, op, 6, sign), expected, err_msg=op)


def test_an_unknown_op_is_refused():
  with pytest.raises(ValueError, match="unknown RandAugment op"):
    ra.apply_op(ra.to_pil(_image()), "invert", 5)


def test_rand_augment_draws_its_ops_from_the_generator_alone():
  image = _image(h=16, w=16, seed=6)
  first = ra.rand_augment(image, np.random.default_rng(7), 2, 9)
  again = ra.rand_augment(image, np.random.default_rng(7), 2, 9)
  np.testing.assert_array_equal(first, again)
  # The ops applied are the drawn ones, in order.
  steps = ra.draw(np.random.default_rng(7), 2)
  expected = ra.to_pil(image)
  for op, sign in steps:
    expected = ra.apply_op(expected, op, 9, sign)
  np.testing.assert_array_equal(first, np.asarray(expected))
  # Every op comes up, about equally often.
  drawn = [op for seed in range(300) for op, _ in ra.draw(np.random.default_rng(seed), 2)]
  counts = np.array([drawn.count(op) for op in ra.OPS])
  assert counts.min() > 0.5 * len(drawn) / len(ra.OPS)
  # Zero ops leave the image as it is; a grey image keeps its one channel.
  np.testing.assert_array_equal(ra.rand_augment(image, np.random.default_rng(0), 0, 9), image)
  grey = ra.rand_augment(_image(c=1), np.random.default_rng(1), 3, 9)
  assert grey.shape == (7, 9, 1) and grey.dtype == np.uint8


# ---------------------------------------------------------------- in the pipeline
def _in_memory_split(n=40, shape=(12, 10, 3)):
  images = np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)
  labels = np.arange(n, dtype=np.int32) % 4
  return data.Split(data.ArraySource(images, labels), np.arange(n, dtype=np.int64))


def _take(split, steps, **kwargs):
  kwargs = {"global_batch_size": 8, "seed": 5, "workers": 0, **kwargs}
  iterator = data.train_batches(split, **kwargs)
  try:
    return [next(iterator) for _ in range(steps)]
  finally:
    iterator.close()


def test_each_row_is_cropped_then_randaugmented_then_flipped():
  split = _in_memory_split()
  got = _take(split, 3, augment="crop,randaugment,flip", crop_padding=2, randaugment=(2, 9))
  order = batches.epoch_order(5, 0, len(split))
  for step, batch in enumerate(got):
    rows = order[step * 8 : (step + 1) * 8]
    rng = np.random.default_rng([5, step, batches.AUGMENT_STREAM])
    offsets = rng.integers(0, 5, size=(8, 2))
    flips = rng.random(8) < 0.5
    cropped = batches.pad_crop(split.source.images[rows], offsets, 2)
    for i in range(8):
      row_rng = np.random.default_rng([5, step, batches.RANDAUGMENT_STREAM, i])
      image = ra.rand_augment(cropped[i], row_rng, 2, 9)
      image = image[:, ::-1] if flips[i] else image
      np.testing.assert_array_equal(batch["image"][i], image)
      assert batch["label"][i] == split.source.labels[rows[i]]


def test_randaugment_batches_are_pure_in_seed_and_step():
  split = _in_memory_split()
  kw = dict(augment="crop,randaugment,flip")
  whole = _take(split, 4, **kw)
  np.testing.assert_array_equal(whole[2]["image"], _take(split, 1, start_step=2, **kw)[0]["image"])
  halves = [_take(split, 4, process_index=p, process_count=2, **kw) for p in (0, 1)]
  for step in range(4):
    joined = np.concatenate([halves[0][step]["image"], halves[1][step]["image"]])
    np.testing.assert_array_equal(joined, whole[step]["image"])
  assert not np.array_equal(whole[0]["image"], whole[1]["image"])
  plain = _take(split, 4, augment="crop,flip")
  assert not np.array_equal(whole[0]["image"], plain[0]["image"])
  # No ops: the batches without RandAugment, bit for bit.
  none = _take(split, 4, augment="crop,randaugment,flip", randaugment=(0, 9))
  for a, b in zip(none, plain):
    np.testing.assert_array_equal(a["image"], b["image"])
  with pytest.raises(data.DataError, match="randaugment"):
    _take(split, 1, augment="randaugment", randaugment=(2, 11))


def test_the_config_takes_randaugment_and_refuses_bad_settings():
  config = config_lib.base_config()
  assert tuple(config.randaugment) == ra.DEFAULT and config.interpolation == "bilinear"
  assert config_lib._AUGMENTATIONS == batches.AUGMENTATIONS
  assert config_lib._INTERPOLATIONS == tuple(images.INTERPOLATIONS)
  config.augment = "rrc,randaugment,flip"
  config_lib.validate(config)
  for key, value, message in (
    ("randaugment", (2, 11), "magnitude in [0, 10]"),
    ("randaugment", (1.5, 9), "ops per image"),
    ("randaugment", (2,), "config.randaugment"),
    ("interpolation", "lanczos", "config.interpolation='lanczos'"),
  ):
    bad = config_lib.base_config()
    bad[key] = value
    with pytest.raises(config_lib.ConfigError, match=message.replace("[", r"\[")):
      config_lib.validate(bad)


# ---------------------------------------------------------------- a real image folder
SIZE = 24


@pytest.fixture(scope="module")
def folder_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("randaugment_images")
  imported_image_folder(root, "ra_folder", per_class=10)
  return root / "tfds"


@pytest.mark.slow  # worker processes
def test_rrc_randaugment_flip_on_a_folder_is_the_same_in_workers_and_processes(folder_dir):
  ds = data.load_dataset("ra_folder", folder_dir, val_size=6, image_size=SIZE)
  kw = dict(augment="rrc,randaugment,flip", global_batch_size=8)
  in_process = _take(ds.train, 3, **kw)
  in_workers = _take(ds.train, 3, workers=2, **kw)
  halves = [_take(ds.train, 3, process_index=p, process_count=2, **kw) for p in (0, 1)]
  for step, batch in enumerate(in_process):
    assert batch["image"].shape == (8, SIZE, SIZE, 3) and batch["image"].dtype == np.uint8
    np.testing.assert_array_equal(batch["image"], in_workers[step]["image"])
    joined = np.concatenate([halves[0][step]["image"], halves[1][step]["image"]])
    np.testing.assert_array_equal(joined, batch["image"])
  assert not np.array_equal(in_process[0]["image"], in_process[1]["image"])
  without = _take(ds.train, 1, augment="rrc,flip", global_batch_size=8)
  assert not np.array_equal(without[0]["image"], in_process[0]["image"])


def test_training_with_rrc_randaugment_flip_on_a_folder(folder_dir, tmp_path):
  config = tiny_train_config(
    folder_dir,
    dataset="ra_folder",
    val_size=6,
    batch_size=8,
    eval_batch_size=8,
    total_steps=4,
    checkpoint_every=4,
    augment="rrc,randaugment,flip",
    randaugment=(2, 9.0),
    interpolation="bicubic",
    data_workers=0,
  )
  config.model.image_size = SIZE
  summary = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert summary["steps"] == 4 and np.isfinite(summary["val_nll"])
  _, meta = checkpoint.read_meta(str(tmp_path / "run"))
  assert meta["input"]["interpolation"] == "bicubic"
  assert meta["input"]["crop_fraction"] == config.crop_fraction
  assert json.loads(json.dumps(meta["config"]))["augment"] == "rrc,randaugment,flip"
