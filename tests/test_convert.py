"""PyTorch-layout checkpoints in and out of duojax, without PyTorch: file format, maps, errors."""

import os
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from duojax import convert, models
from duojax.convert import layouts, safetensors_io
from duojax.models import resnet


def tiny_resnet(num_classes=5, block="basic", seed=0):
  return resnet.ResNet((1, 2), block, num_classes, width=8, rngs=nnx.Rngs(seed))


def tiny_vit(num_classes=5, seed=0, **kw):
  return models.get_model(
    "vit_mu4", num_classes, rngs=seed, image_size=kw.pop("image_size", 16), **kw
  )


def randomize_batch_stats(model, seed=1):
  """Non-trivial running statistics, so that a mapping mix-up shows in the logits."""
  rng = np.random.default_rng(seed)
  values = {
    k: (rng.uniform(0.5, 2.0, v.shape) if k.endswith(".var") else rng.normal(0, 0.3, v.shape))
    for k, v in convert.flat_state(model).items()
    if k.endswith((".mean", ".var"))
  }
  convert.pretrained._set_flat(model, values)
  return model


def logits(model, x):
  return np.asarray(model(x)[0])


def images(model, n=3):
  h, w = model.image_size
  c = model.input_shape[-1]
  return jax.random.normal(jax.random.key(7), (n, h, w, c), jnp.float32)


def test_safetensors_round_trip_with_bfloat16_and_metadata(tmp_path):
  path = str(tmp_path / "t.safetensors")
  tensors = {
    "a": np.arange(6, dtype=np.float32).reshape(2, 3),
    "b": np.array([1.5, -2.0], dtype=ml_dtypes.bfloat16),
    "c": np.array(3, dtype=np.int64),
    "d": np.zeros((0, 4), np.float16),
  }
  safetensors_io.write(path, tensors, {"format": "pt"})
  read, meta = safetensors_io.read(path)
  assert meta == {"format": "pt"}
  for k, v in tensors.items():
    assert read[k].dtype == v.dtype and read[k].shape == v.shape
    np.testing.assert_array_equal(read[k], v)
  # Data starts 8-byte aligned, as the format asks.
  with open(path, "rb") as f:
    assert struct.unpack("<Q", f.read(8))[0] % 8 == 0


def test_reads_files_written_by_the_reference_library(tmp_path):
  import safetensors.numpy as st  # the reference library, installed with the torch extra

  path = str(tmp_path / "ref.safetensors")
  tensors = {
    "w": np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32),
    "i": np.arange(5, dtype=np.int32),
  }
  st.save_file(tensors, path, metadata={"format": "pt"})
  read, meta = safetensors_io.read(path)
  assert meta == {"format": "pt"}
  for k in tensors:
    np.testing.assert_array_equal(read[k], tensors[k])
  ours = str(tmp_path / "ours.safetensors")
  safetensors_io.write(ours, tensors)
  for k, v in st.load_file(ours).items():
    np.testing.assert_array_equal(v, tensors[k])


@pytest.mark.parametrize(
  "name,content",
  [
    ("model.pth", b"anything"),
    ("model.bin", b"\x80\x02}q\x00."),
    ("model.safetensors", b"PK\x03\x04" + b"\x00" * 60),  # torch.save zip renamed
    ("model.safetensors", b"\x80\x04\x95" + b"\x00" * 60),  # a pickle renamed
  ],
)
def test_pickles_are_refused_without_being_opened(tmp_path, name, content):
  path = tmp_path / name
  path.write_bytes(content)
  with pytest.raises(convert.WeightsFileError, match="pickle.*never opens.*safetensors.torch"):
    safetensors_io.read(str(path))


def test_truncated_and_garbage_files(tmp_path):
  good = str(tmp_path / "good.safetensors")
  safetensors_io.write(good, {"w": np.ones((64, 64), np.float32)})
  data = open(good, "rb").read()
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(data[:-100])
  with pytest.raises(convert.WeightsFileError, match="truncated"):
    safetensors_io.read(str(cut))
  short = tmp_path / "short.safetensors"
  short.write_bytes(data[:5])
  with pytest.raises(convert.WeightsFileError, match="too short"):
    safetensors_io.read(str(short))
  header_only = tmp_path / "h.safetensors"
  header_only.write_bytes(data[:20])
  with pytest.raises(convert.WeightsFileError, match="truncated"):
    safetensors_io.read(str(header_only))
  with pytest.raises(convert.WeightsFileError, match="does not exist"):
    safetensors_io.read(str(tmp_path / "nope.safetensors"))


def test_failed_write_leaves_no_file(tmp_path):
  path = tmp_path / "out.safetensors"
  with pytest.raises(convert.WeightsFileError, match="not storable"):
    safetensors_io.write(str(path), {"a": np.ones(2, np.float32), "z": np.array(["x"])})
  assert os.listdir(tmp_path) == []


MODELS = {
  "resnet basic": lambda **kw: randomize_batch_stats(tiny_resnet(**kw)),
  "resnet bottleneck": lambda **kw: randomize_batch_stats(tiny_resnet(block="bottleneck", **kw)),
  "vit tok": lambda **kw: tiny_vit(**kw),
  "vit gap, pre-norm, no patch bias": lambda **kw: tiny_vit(
    pool="gap", pre_norm=True, patch_bias=False, **kw
  ),
}
CASES = [
  (m, layout)
  for m in MODELS
  for layout in layouts.LAYOUTS
  if not (m.startswith("vit") and layout == "torchvision")
  and not (m.startswith("vit gap") and layout == "hf")
]


@pytest.mark.parametrize("model_name,layout", CASES)
def test_export_then_load_is_the_identity(tmp_path, model_name, layout):
  source = MODELS[model_name](seed=0)
  target = MODELS[model_name](seed=1)
  path = str(tmp_path / "m.safetensors")
  convert.export_pretrained(source, path, layout)
  # timm's ResNets use torchvision's names: the two are one layout on disk.
  expected = "torchvision" if layout == "timm" and model_name.startswith("resnet") else layout
  assert layouts.detect(list(safetensors_io.read(path)[0])) == expected
  info = convert.load_pretrained(target, path)  # layout detected from the names
  assert info["layout"] == expected and info["resampled_posemb"] is None
  a, b = convert.flat_state(source), convert.flat_state(target)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  np.testing.assert_array_equal(logits(source, images(source)), logits(target, images(source)))


def test_fresh_head_keeps_the_models_head_and_loads_the_rest(tmp_path):
  source, target = tiny_vit(num_classes=5, seed=0), tiny_vit(num_classes=3, seed=1)
  path = str(tmp_path / "m.safetensors")
  convert.export_pretrained(source, path, "timm")
  head_before = convert.flat_state(target)["head.kernel"]
  with pytest.raises(convert.WeightsMismatchError, match="5-class head but the model has 3.*fresh"):
    convert.load_pretrained(target, path)
  info = convert.load_pretrained(target, path, head="fresh")
  assert info["fresh_head"]
  after, src = convert.flat_state(target), convert.flat_state(source)
  np.testing.assert_array_equal(after["head.kernel"], head_before)
  np.testing.assert_array_equal(
    after["blocks.1.attn.query.kernel"], src["blocks.1.attn.query.kernel"]
  )


def test_position_embeddings_resample_to_another_grid(tmp_path):
  source = tiny_vit(image_size=16)  # 4x4 tokens + class token
  target = tiny_vit(image_size=32, seed=1)  # 8x8
  path = str(tmp_path / "m.safetensors")
  convert.export_pretrained(source, path, "hf")
  info = convert.load_pretrained(target, path)
  assert info["resampled_posemb"] == ((1, 17, 32), (1, 65, 32))
  src, new = (
    convert.flat_state(source)["pos_embedding"],
    convert.flat_state(target)["pos_embedding"],
  )
  np.testing.assert_array_equal(new[:, 0], src[:, 0])  # class token kept
  # Bilinear resampling preserves the grid's mean and its range.
  np.testing.assert_allclose(new[0, 1:].mean(0), src[0, 1:].mean(0), atol=1e-5)
  assert new[0, 1:].max() <= src[0, 1:].max() + 1e-6
  assert logits(target, images(target)).shape == (3, 5)


def test_resample_posemb_same_grid_is_identity_and_constant_stays_constant():
  rng = np.random.default_rng(0)
  posemb = rng.normal(size=(1, 1 + 36, 8)).astype(np.float32)
  np.testing.assert_allclose(convert.resample_posemb(posemb, (6, 6), 1), posemb, atol=1e-6)
  constant = np.ones((1, 25, 4), np.float32)
  np.testing.assert_allclose(
    convert.resample_posemb(constant, (9, 3), 0), np.ones((1, 27, 4)), atol=1e-6
  )
  with pytest.raises(convert.WeightsMismatchError, match="no square token grid"):
    convert.resample_posemb(np.ones((1, 1 + 12, 4), np.float32), (4, 4), 1)


def _file_with(tmp_path, model, layout, edit):
  path = str(tmp_path / "m.safetensors")
  convert.export_pretrained(model, path, layout)
  tensors, meta = safetensors_io.read(path)
  edit(tensors)
  safetensors_io.write(path, tensors, meta)
  return path


def _unchanged(model, before):
  after = convert.flat_state(model)
  return all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
  "edit,pattern",
  [
    (lambda t: t.pop("layer2.0.bn1.running_var"), r"missing 1: layer2\.0\.bn1\.running_var"),
    (lambda t: t.update(extra=np.ones(3, np.float32)), r"unexpected 1: extra"),
    (
      lambda t: t.update({"layer1.0.conv2.weight": np.ones((8, 8, 5, 5), np.float32)}),
      r"mis-shaped 1: layer1\.0\.conv2\.weight",
    ),
    (lambda t: [t.pop(k) for k in ("fc.weight", "fc.bias")], r"no classifier head.*fresh"),
  ],
)
def test_mismatches_are_reported_and_change_nothing(tmp_path, edit, pattern):
  path = _file_with(tmp_path, tiny_resnet(seed=0), "torchvision", edit)
  target = tiny_resnet(seed=1)
  before = convert.flat_state(target)
  with pytest.raises(convert.WeightsMismatchError, match=pattern):
    convert.load_pretrained(target, path)
  assert _unchanged(target, before)


def test_wrong_architecture_and_bad_arguments(tmp_path):
  vit_path, resnet_path = str(tmp_path / "vit.safetensors"), str(tmp_path / "r.safetensors")
  convert.export_pretrained(tiny_vit(), vit_path, "timm")
  convert.export_pretrained(tiny_resnet(), resnet_path, "hf")
  with pytest.raises(convert.WeightsMismatchError, match="holds a ViT, but .* is a ResNet"):
    convert.load_pretrained(tiny_resnet(), vit_path)
  with pytest.raises(convert.WeightsMismatchError, match="holds a ResNet, but .* is a ViT"):
    convert.load_pretrained(tiny_vit(), resnet_path)
  # Same family, other depth: the extra blocks are named.
  deeper = models.get_model("vit_mu4", 5, rngs=0, image_size=16, depth=3)
  with pytest.raises(convert.WeightsMismatchError, match=r"missing \d+: blocks\.2\."):
    convert.load_pretrained(deeper, vit_path)
  with pytest.raises(convert.WeightsMismatchError, match="unknown layout 'keras'"):
    convert.load_pretrained(tiny_vit(), vit_path, layout="keras")
  with pytest.raises(convert.WeightsMismatchError, match="unknown head mode"):
    convert.load_pretrained(tiny_vit(), vit_path, head="drop")
  with pytest.raises(convert.WeightsMismatchError, match="ResNets only"):
    convert.export_pretrained(tiny_vit(), vit_path, "torchvision")
  cnn = models.get_model("cnn_xs", 5, rngs=0)
  with pytest.raises(convert.WeightsMismatchError, match="only ResNets and ViTs"):
    convert.load_pretrained(cnn, resnet_path)
  unknown = str(tmp_path / "u.safetensors")
  safetensors_io.write(unknown, {"encoder.w": np.ones(2, np.float32)})
  with pytest.raises(convert.WeightsMismatchError, match="cannot tell the layout"):
    convert.load_pretrained(tiny_resnet(), unknown)


@pytest.mark.slow
def test_train_cli_fine_tunes_from_a_safetensors_file(tmp_path, learnable_data_dir):
  """train.py starts from an exported file, probes the head, then fine-tunes; bad files fail cleanly."""
  import subprocess
  import sys

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  pretrained = resnet.ResNet(
    (1, 1, 1), "basic", 1000, width=4, stem="small", in_channels=1, rngs=nnx.Rngs(3)
  )
  weights = str(tmp_path / "pre.safetensors")
  convert.export_pretrained(randomize_batch_stats(pretrained), weights, "torchvision")

  def train(workdir, *extra):
    return subprocess.run(
      [
        sys.executable,
        os.path.join(root, "train.py"),
        "--config",
        os.path.join(root, "configs", "fashion_mnist.py") + ":model=resnet8",
        f"--workdir={workdir}",
        f"--config.data_dir={learnable_data_dir}",
        "--config.model.width=4",
        "--config.val_size=100",
        "--config.total_steps=6",
        "--config.batch_size=32",
        "--config.augment=",
        *extra,
      ],
      capture_output=True,
      text=True,
      cwd=root,
      timeout=600,
    )

  run = train(
    tmp_path / "ok",
    f"--config.init_weights={weights}",
    "--config.init_head=fresh",
    "--config.linear_probe_steps=2",
  )
  assert run.returncode == 0, run.stderr
  assert "initialised from" in run.stdout and "fresh classifier head" in run.stdout
  # The fine-tuned model started from the file: its stem moved, but only a little.
  from duojax.train import checkpoint

  model, _ = checkpoint.load_model(str(tmp_path / "ok"))
  ours, theirs = convert.flat_state(model), convert.flat_state(pretrained)
  delta = np.abs(ours["stem_conv.kernel"] - theirs["stem_conv.kernel"]).max()
  assert 0 < delta < 0.1 * np.abs(theirs["stem_conv.kernel"]).max()

  # Export the fine-tuned model back; it loads into a fresh model unchanged.
  out = tmp_path / "ft.safetensors"
  export = [sys.executable, "-m", "duojax.convert", f"--workdir={tmp_path / 'ok'}"]
  run = subprocess.run(
    export + [f"--out={out}", "--layout=hf"], capture_output=True, text=True, cwd=root, timeout=300
  )
  assert run.returncode == 0, run.stderr
  fresh = resnet.ResNet(
    (1, 1, 1), "basic", 10, width=4, stem="small", in_channels=1, rngs=nnx.Rngs(9)
  )
  assert convert.load_pretrained(fresh, str(out))["layout"] == "hf"
  for k, v in convert.flat_state(fresh).items():
    np.testing.assert_array_equal(v, ours[k], err_msg=k)
  run = subprocess.run(
    export + [f"--out={tmp_path / 'x.pth'}"], capture_output=True, text=True, cwd=root, timeout=300
  )
  assert run.returncode == 1 and "must end in .safetensors" in run.stderr
  assert not (tmp_path / "x.pth").exists()

  bad = train(tmp_path / "bad", f"--config.init_weights={weights}")  # 1000-class head
  assert bad.returncode == 1
  assert (
    bad.stderr.strip().splitlines()[-1].startswith("error:") and "init_head=fresh" in bad.stderr
  )
  assert not (tmp_path / "bad").exists()
  pickle_file = tmp_path / "model.pth"
  pickle_file.write_bytes(b"\x80\x02.")
  bad = train(tmp_path / "bad2", f"--config.init_weights={pickle_file}")
  assert bad.returncode == 1 and "never opens" in bad.stderr and not (tmp_path / "bad2").exists()


def test_config_choices_match_the_converter():
  # config_lib validates these without importing duojax.convert (it stays light).
  from duojax import config_lib

  assert config_lib._INIT_LAYOUTS == ("auto", *convert.LAYOUTS)
  assert config_lib._INIT_HEADS == convert.HEAD_MODES
