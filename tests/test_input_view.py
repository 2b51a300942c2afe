"""Each model's own crop fraction and resize filter (`data.InputSpec`): the
bicubic resizes (host and device) against a numpy version of PIL's filter,
the device-side cut of a member's crop out of a wider batch, crops read from
the files beside pretrained weights, evaluation and training using them, and
checkpoints written before the spec held them loading as they did."""

import json
import os
import types

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import imported_image_folder, spread_head_model, tiny_train_config
from PIL import Image

from duojax import config_lib, data, eval_config_lib
from duojax.convert import export_pretrained
from duojax.data import images as images_lib
from duojax.data import preprocess
from duojax.eval import data_spec, members, pipeline
from duojax.train import checkpoint, loop, model_init

RAW = ((0.0, 0.0, 0.0), (1 / 255,) * 3)  # mean/std that leave pixel values as they are


# ---------------------------------------------------------------- a numpy reference of PIL
def _keys(x, a=-0.5):
  """Keys' cubic convolution kernel (PIL's BICUBIC, jax.image's "cubic")."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _weights(in_size, out_size, start, stop):
  """[out, in] bicubic weights of PIL's resample of [start, stop) onto out_size
  pixels: the kernel stretched by the scale when shrinking (antialiasing),
  taps outside the image dropped and the rest renormalised."""
  scale = (stop - start) / out_size
  stretch = max(scale, 1.0)
  support = 2.0 * stretch
  w = np.zeros((out_size, in_size))
  for o in range(out_size):
    centre = start + (o + 0.5) * scale
    lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), in_size)
    taps = _keys((np.arange(lo, hi) - centre + 0.5) / stretch)
    w[o, lo:hi] = taps / taps.sum()
  return w


def _bicubic(image, size, box, *, uint8_between=False):
  """`box` (left, top, width, height) of uint8 `image` resized to size×size,
  rows then columns; `uint8_between` rounds and clips between the two passes,
  as PIL does."""
  left, top, width, height = box
  wx = _weights(image.shape[1], size, left, left + width)
  wy = _weights(image.shape[0], size, top, top + height)
  rows = np.einsum("yxc,px->ypc", image.astype(np.float64), wx)
  if uint8_between:
    rows = np.clip(np.floor(rows + 0.5), 0, 255)
  return np.clip(np.einsum("oy,ypc->opc", wy, rows), 0, 255)


def _noise(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("size, box", [(20, (0, 0, 40, 48)), (56, (3.5, 2.25, 30, 30))])
def test_the_host_bicubic_resize_is_pils_filter(size, box):
  image = _noise(48, 40)
  got = images_lib.crop_resize(Image.fromarray(image), box, size, interpolation="bicubic")
  expected = _bicubic(image, size, box, uint8_between=True)
  assert np.abs(got - expected).max() <= 0.5 + 1e-9
  bilinear = images_lib.crop_resize(Image.fromarray(image), box, size)
  assert np.abs(bilinear.astype(float) - expected).max() > 2


def test_a_split_reads_at_its_crop_fraction_with_its_filter():
  images = np.stack([_noise(30, 40, seed=1), _noise(30, 40, seed=2)])
  source = data.ArraySource(images, np.zeros(2, np.int32))
  split = data.Split(
    source, np.arange(2), image_size=12, crop_fraction=0.8, interpolation="bicubic"
  )
  got, _ = data.read_examples(split, np.arange(2))
  side = 0.8 * 30  # the centre square of 0.8 of the shorter side
  box = ((40 - side) / 2, (30 - side) / 2, side, side)
  for image, row in zip(images, got):
    assert np.abs(row - _bicubic(image, 12, box, uint8_between=True)).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("size", [16, 24, 56])
@pytest.mark.parametrize("crop, source_crop", [(None, None), (0.75, 0.875), (0.9, 0.95)])
def test_the_device_resize_cuts_the_members_crop_with_its_filter(size, crop, source_crop):
  batch = np.stack([_noise(40, 40, seed=3), _noise(40, 40, seed=4)])
  view = {} if crop is None else {"crop_fraction": crop}
  spec = data.InputSpec(size, *RAW, interpolation="bicubic", **view)
  got = np.asarray(data.prepare(jnp.asarray(batch), spec, source_crop=source_crop))
  side = 40 if crop is None else 40 * crop / source_crop
  box = ((40 - side) / 2, (40 - side) / 2, side, side)
  for image, row in zip(batch, got):
    np.testing.assert_allclose(row, _bicubic(image, size, box), atol=2e-3)
  bilinear = data.InputSpec(size, *RAW, **view)
  got = np.asarray(data.prepare(jnp.asarray(batch), bilinear, source_crop=source_crop))
  corners = (box[0], box[1], box[0] + side, box[1] + side)  # PIL's box: left, top, right, bottom
  pil = Image.fromarray(batch[0]).resize((size, size), Image.BILINEAR, box=corners)
  assert np.abs(got[0] - np.asarray(pil)).max() <= 1 + 1e-3  # PIL rounds to uint8


def test_a_crop_half_the_batch_at_its_side_is_the_batchs_centre_pixels():
  batch = _noise(40, 40, seed=5)[None]
  spec = data.InputSpec(20, *RAW, crop_fraction=0.5)
  got = np.asarray(data.prepare(jnp.asarray(batch), spec, source_crop=1.0))
  np.testing.assert_allclose(got[0], batch[0, 10:30, 10:30], atol=1e-4)
  # The crop the batch was cut at, at the batch's side: the batch as it is.
  same = data.InputSpec(40, *RAW, crop_fraction=0.5)
  got = np.asarray(data.prepare(jnp.asarray(batch), same, source_crop=0.5))
  np.testing.assert_array_equal(got, batch.astype(np.float32))


# ---------------------------------------------------------------- the files beside the weights
def _beside(tmp_path, name, content):
  os.makedirs(tmp_path, exist_ok=True)
  (tmp_path / name).write_text(json.dumps(content))
  return str(tmp_path / "model.safetensors")


@pytest.mark.parametrize(
  "name, content, view",
  [
    (
      "config.json",
      {"pretrained_cfg": {"crop_pct": 0.9, "interpolation": "bicubic"}},
      (0.9, "bicubic"),
    ),
    ("config.json", {"crop_pct": 0.95, "interpolation": "bilinear"}, (0.95, "bilinear")),
    (
      "config.json",
      {"architecture": "resnet50", "pretrained_cfg": {"crop_pct": 0.95}},
      (0.95, None),
    ),
    ("config.json", {"model_type": "vit", "hidden_size": 768}, (None, None)),
    (
      "preprocessor_config.json",
      {"crop_pct": 0.875, "resample": 3, "size": {"shortest_edge": 224}},
      (0.875, "bicubic"),
    ),
    (
      "preprocessor_config.json",
      {
        "crop_pct": 0.875,
        "size": {"shortest_edge": 384},
        "image_processor_type": "ConvNextImageProcessor",
      },
      (1.0, None),
    ),
    (
      "preprocessor_config.json",
      {"do_center_crop": True, "crop_size": 224, "size": {"shortest_edge": 256}, "resample": 2},
      (0.875, "bilinear"),
    ),
    (
      "preprocessor_config.json",
      {"do_resize": True, "size": {"height": 224, "width": 224}, "resample": 2},
      (1.0, "bilinear"),
    ),
    ("preprocessor_config.json", {"resample": 1}, (None, None)),
  ],
)
def test_the_crop_and_filter_a_pretrained_file_says(tmp_path, name, content, view):
  found, where = data.pretrained_view(_beside(tmp_path, name, content))
  assert (found.get("crop_fraction"), found.get("interpolation")) == view
  assert where == (name if found else "")


def test_no_file_beside_the_weights_says_nothing(tmp_path):
  assert data.pretrained_view(str(tmp_path / "model.safetensors")) == ({}, "")
  (tmp_path / "config.json").write_text("not json")
  assert data.pretrained_view(str(tmp_path / "model.safetensors")) == ({}, "")


def _fake_dataset(channels=3):
  return types.SimpleNamespace(
    image_shape=(16, 16, channels), mean=np.full(channels, 0.4), std=np.full(channels, 0.2)
  )


def test_a_fine_tune_takes_the_crop_and_filter_of_its_pretrained_file(tmp_path):
  path = _beside(
    tmp_path, "config.json", {"pretrained_cfg": {"crop_pct": 0.9, "interpolation": "bicubic"}}
  )
  config = config_lib.base_config()
  config.update(model_name="vit_mu4", init_weights=path, crop_fraction=0.8)
  spec = model_init._input_spec(config, _fake_dataset(), None, {"layout": "timm"})
  assert (spec.crop_fraction, spec.interpolation) == (0.9, "bicubic")
  assert (spec.mean, spec.source) == (preprocess.HALF, "timm vit default")
  # A file that says nothing: the config's.
  config.init_weights = str(tmp_path / "elsewhere" / "model.safetensors")
  spec = model_init._input_spec(config, _fake_dataset(), None, {"layout": "timm"})
  assert (spec.crop_fraction, spec.interpolation) == (0.8, "bilinear")
  # A trained-from-scratch run: the config's.
  config.update(init_weights="", interpolation="bicubic")
  spec = model_init._input_spec(config, _fake_dataset(), None, None)
  assert (spec.crop_fraction, spec.interpolation, spec.source) == (0.8, "bicubic", "data set")
  # A file that says what the pipeline cannot do: one line, naming it.
  config.init_weights = _beside(tmp_path / "bad", "config.json", {"crop_pct": 1.2})
  with pytest.raises(config_lib.ConfigError, match="crop fraction 1.2 must be in") as error:
    model_init._input_spec(config, _fake_dataset(), None, {"layout": "timm"})
  assert "config.json beside" in str(error.value) and "\n" not in str(error.value)


def test_a_resumed_run_keeps_its_spec_and_an_old_one_takes_its_configs_crop():
  config = config_lib.base_config()
  config.update(crop_fraction=0.8, interpolation="bicubic")
  kept = data.InputSpec(16, (0.4,) * 3, (0.2,) * 3, crop_fraction=0.95).as_meta()
  spec = model_init._input_spec(config, _fake_dataset(), {"input": kept}, None)
  assert (spec.crop_fraction, spec.interpolation) == (0.95, "bilinear")
  old = {k: v for k, v in kept.items() if k not in ("crop_fraction", "interpolation")}
  spec = model_init._input_spec(config, _fake_dataset(), {"input": old}, None)
  assert (spec.crop_fraction, spec.interpolation) == (0.8, "bicubic")


def test_input_spec_meta_round_trips_and_old_meta_reads_with_todays_defaults():
  spec = data.InputSpec(24, (0.5,) * 3, (0.5,) * 3, "x", 0.9, "bicubic")
  assert data.InputSpec.from_meta(json.loads(json.dumps(spec.as_meta()))) == spec
  old = {"image_size": 24, "mean": [0.5] * 3, "std": [0.5] * 3}
  assert data.InputSpec.from_meta(old) == data.InputSpec(24, (0.5,) * 3, (0.5,) * 3)
  assert data.InputSpec.from_meta(old).crop_fraction == images_lib.CROP_FRACTION
  for bad, message in (
    ({"crop_fraction": 0.0}, "crop fraction"),
    ({"interpolation": "box"}, "'box'"),
  ):
    with pytest.raises(config_lib.ConfigError, match=message):
      data.InputSpec(24, (0.5,) * 3, (0.5,) * 3, **bad).check(3)


# ---------------------------------------------------------------- the evaluation's batches
def test_the_host_reads_the_widest_crop_at_a_side_no_member_enlarges():
  # One crop among the members (every older checkpoint): the largest side, as before.
  assert data_spec.host_view([(16, 0.875, "bicubic"), (24, 0.875, "bilinear")]) == (
    24,
    0.875,
    "bilinear",
  )
  # A narrower crop at the largest side needs more pixels of the wider batch.
  side, crop, interpolation = data_spec.host_view([(224, 0.875, "bilinear"), (224, 0.9, "bicubic")])
  assert (side, crop, interpolation) == (231, 0.9, "bilinear")  # ⌈224 · 0.9 / 0.875⌉
  assert data_spec.host_view([(16, 0.75, "bicubic"), (24, 0.875, "bilinear")]) == (
    24,
    0.875,
    "bilinear",
  )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("input_view")
  imported_image_folder(root, "view_folder", per_class=6)
  os.makedirs(root / "vit")
  export_pretrained(
    spread_head_model("vit_mu4", 3, 1, image_size=16), str(root / "vit" / "w.safetensors"), "timm"
  )
  (root / "vit" / "config.json").write_text(
    json.dumps({"pretrained_cfg": {"crop_pct": 0.75, "interpolation": "bicubic"}})
  )
  export_pretrained(spread_head_model("resnet8", 3, 2), str(root / "rn.safetensors"), "torchvision")
  return root


def test_each_member_is_evaluated_on_its_own_crop_and_filter(setup, monkeypatch):
  banks = []
  collect = pipeline.bank_lib.collect
  monkeypatch.setattr(
    pipeline.bank_lib, "collect", lambda *a, **k: banks.append(collect(*a, **k)) or banks[-1]
  )
  config = eval_config_lib.base_eval_config()
  config.update(
    large=f"pretrained:vit_mu4:{setup / 'vit' / 'w.safetensors'}",
    sidekick=f"pretrained:resnet8@24:{setup / 'rn.safetensors'}",
    dataset="view_folder",
    test_split="test",
    val_size=6,
    data_dir=str(setup / "tfds"),
    sections="",
    batch_size=8,
    output_dir=str(setup / "out"),
    mahalanobis_train_rows=0,
  )
  results = pipeline.run(config)
  large = results["members"]["large"]["pretrained"]["input"]
  sidekick = results["members"]["sidekick"]["pretrained"]["input"]
  assert (large["crop_fraction"], large["interpolation"]) == (0.75, "bicubic")  # its config.json
  assert (sidekick["crop_fraction"], sidekick["interpolation"]) == (
    0.875,
    "bilinear",
  )  # the config's
  # The batch: the widest crop (0.875) at the side that enlarges no member (24).
  dataset = data.load_dataset(
    "view_folder", setup / "tfds", val_size=6, test_split="test", image_size=24, crop_fraction=0.875
  )
  images, labels = data.read_examples(dataset.test, np.arange(len(dataset.test)))
  np.testing.assert_array_equal(banks[0].labels["test"], labels)
  vit = data.InputSpec(
    16, preprocess.HALF, preprocess.HALF, crop_fraction=0.75, interpolation="bicubic"
  )
  rn = data.InputSpec(24, preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD)
  for name, model, spec in (
    ("large", spread_head_model("vit_mu4", 3, 1, image_size=16), vit),
    ("sidekick", spread_head_model("resnet8", 3, 2), rn),
  ):
    alone = model(data.prepare(jnp.asarray(images), spec, source_crop=0.875))[0]
    np.testing.assert_allclose(banks[0].member("test", name), alone, atol=1e-5, err_msg=name)


# ---------------------------------------------------------------- checkpoints from before
def _strip_view(workdir):
  """Rewrites every checkpoint's meta as the code before per-model crops wrote it."""
  root = os.path.join(workdir, "checkpoints")
  for step in os.listdir(root):
    path = os.path.join(root, step, "meta", "metadata")
    if os.path.isfile(path):
      with open(path) as f:
        meta = json.load(f)
      for key in ("crop_fraction", "interpolation"):
        meta["input"].pop(key)
      for key in ("interpolation", "randaugment"):
        meta["config"].pop(key)
      with open(path, "w") as f:
        json.dump(meta, f)


def _view_config(setup, **overrides):
  """A two-step run on the imported folder, random-resized crops at 16 px."""
  return tiny_train_config(
    setup / "tfds",
    dataset="view_folder",
    val_size=6,
    batch_size=6,
    eval_batch_size=6,
    total_steps=2,
    checkpoint_every=2,
    augment="rrc,flip",
    data_workers=0,
    **overrides,
  )


def test_a_checkpoint_written_before_the_crop_was_in_its_spec_loads_as_before(setup, tmp_path):
  config = _view_config(setup, crop_fraction=0.8)
  config.model.image_size = 16
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  _strip_view(workdir)
  _, meta = checkpoint.read_meta(workdir)
  assert "crop_fraction" not in meta["input"] and "interpolation" not in meta["config"]
  member = members.load_workdir_member("large", workdir)
  # Its training config's crop, and the one filter there was.
  assert (member.inputs.crop_fraction, member.inputs.interpolation) == (0.8, "bilinear")
  eval_config = eval_config_lib.base_eval_config()
  eval_config.update(large=workdir, data_dir="")
  found = data_spec.data_of(eval_config, [member])
  dataset, [loaded] = data_spec.load_eval_data(found, [member])
  # Read as before: at its side and its training config's crop, bilinear.
  assert (dataset.test.crop_fraction, dataset.test.interpolation) == (0.8, "bilinear")
  assert dataset.image_shape == (16, 16, 3) and loaded.inputs == member.inputs


def test_a_fine_tune_reads_its_images_as_its_pretrained_file_says(setup, tmp_path, monkeypatch):
  os.makedirs(tmp_path / "rn")
  weights = str(tmp_path / "rn" / "w.safetensors")
  export_pretrained(spread_head_model("resnet8", 3, 5, width=4), weights, "torchvision")
  (tmp_path / "rn" / "config.json").write_text(
    json.dumps({"pretrained_cfg": {"crop_pct": 0.95, "interpolation": "bicubic"}})
  )
  read = []
  read_as = data.read_as
  monkeypatch.setattr(data, "read_as", lambda *a: read.append(read_as(*a)) or read[-1])
  config = _view_config(
    setup,
    init_weights=weights,
  )
  config.model.image_size = 16
  loop.train_and_evaluate(config, str(tmp_path / "run"))
  _, meta = checkpoint.read_meta(str(tmp_path / "run"))
  assert (meta["input"]["crop_fraction"], meta["input"]["interpolation"]) == (0.95, "bicubic")
  assert meta["input"]["mean"] == list(preprocess.IMAGENET_MEAN)
  # Training's crops and its validation read with the file's crop and filter.
  for split in (read[0].train, read[0].val, read[0].test):
    assert (split.crop_fraction, split.interpolation) == (0.95, "bicubic")
