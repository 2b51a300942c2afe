"""What the tests share: small synthetic data sets (built by the real builder),
tiny training configs, CLI runners and checks, and a full-disk stand-in.

Test modules import this one module, never each other.
"""

import errno
import gzip
import io
import os
import pathlib
import struct
import subprocess
import sys

import jax
import numpy as np
from PIL import Image

from duojax import config_lib
from duojax.data import embedded
from duojax.models import functional
from duojax.train import checkpoint


def write_idx(path, array):
  header = struct.pack(f">{1 + array.ndim}I", 0x0800 + array.ndim, *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def learnable_split(n, seed):
  """28x28 images whose class k lights a 6x6 block at a class-specific place, plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.uint8)
  images = rng.integers(0, 96, (n, 28, 28)).astype(np.uint8)
  for i, k in enumerate(labels):
    row, col = divmod(int(k), 5)
    images[i, 2 + 12 * row : 8 + 12 * row, 1 + 5 * col : 6 + 5 * col] = 255
  return images, labels


def prepare_learnable_fashion_mnist(idx_dir, data_dir, n_train=600, n_test=200):
  """Writes idx files of `learnable_split` and builds them as 'fashion_mnist' in data_dir."""
  arrays = {"train": learnable_split(n_train, 0), "test": learnable_split(n_test, 1)}
  for split, (images_file, labels_file) in embedded.IDX_FILES.items():
    write_idx(idx_dir / images_file, arrays[split][0])
    write_idx(idx_dir / labels_file, arrays[split][1])
  embedded.prepare_fashion_mnist(data_dir, idx_dir=idx_dir)
  return data_dir


def prepare_five_class_blocks(data_dir, n_train=300, n_test=100):
  """A prepared tfds dataset 'five_class_blocks': `learnable_split` images with labels
  mod 5, so a model trained on it has 5 classes where Fashion-MNIST's have 10."""
  import tensorflow_datasets as tfds

  class FiveClassBlocks(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            # Raw bytes, as the embedded builder stores them: no TensorFlow to encode.
            "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8, encoding="bytes"),
            "label": tfds.features.ClassLabel(num_classes=5),
          }
        ),
        disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      return {
        "train": self._generate_examples(n_train, 0),
        "test": self._generate_examples(n_test, 1),
      }

    def _generate_examples(self, n, seed):
      images, labels = learnable_split(n, seed)
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": image[..., None], "label": int(label) % 5}

  FiveClassBlocks(data_dir=data_dir, file_format="array_record").download_and_prepare(
    download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )
  return data_dir


class FullDisk:
  """A file whose writes fail with ENOSPC after a few bytes, as on a full disk."""

  def __init__(self, f):
    self.f = f

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.f.close()

  def write(self, text):
    self.f.write(text[:8])
    self.f.flush()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------- training and the CLIs
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_train_config(data_dir, **overrides):
  """A training config of a tiny ResNet that trains in seconds on `data_dir`."""
  config = config_lib.base_config()
  config.data_dir = str(data_dir)
  config.val_size = 100
  config.model_name = "resnet8"
  config.model.width = 4
  config.batch_size = 32
  config.eval_batch_size = 64
  config.total_steps = 12
  config.warmup_steps = 2
  config.log_every = 2
  config.checkpoint_every = 4
  config.keep_checkpoints = 10
  config.augment = "crop,flip"  # so the resumed data position and augmentation matter
  for key, value in overrides.items():
    config[key] = value
  return config


def final_state(workdir):
  """(step, (params, batch_stats)) of the newest checkpoint in `workdir`, on the host."""
  step, meta = checkpoint.read_meta(workdir)
  model, _ = checkpoint.load_model(workdir)
  return step, jax.device_get(functional.split_model(model)[1:])


def run_script(script, *args, path=None, env=None):
  """Runs `python ROOT/script args` on the CPU (in `env`, by default this
  process's); returns the CompletedProcess."""
  env = {**(os.environ if env is None else env), "JAX_PLATFORMS": "cpu"}
  if path is not None:
    env["PATH"] = path
  return subprocess.run(
    [sys.executable, os.path.join(ROOT, script), *args],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env=env,
  )


def cli_train_args(data_dir, workdir, *extra):
  """train.py arguments for a 6-step cnn_xs run on `data_dir`."""
  return (
    "--config",
    os.path.join(ROOT, "configs/fashion_mnist.py:model=cnn_xs"),
    f"--workdir={workdir}",
    f"--config.data_dir={data_dir}",
    "--config.val_size=100",
    "--config.batch_size=32",
    "--config.total_steps=6",
    "--config.log_every=3",
    "--config.eval_batch_size=64",
    *extra,
  )


def assert_one_line_error(result, code, pattern):
  """The CLI failed with `code` and one `error:` line containing `pattern`, no traceback."""
  assert result.returncode == code, (result.returncode, result.stderr[-2000:])
  lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
  assert lines and lines[-1].startswith("error: "), result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert pattern in lines[-1], lines[-1]


# ---------------------------------------------------------------- image folders
def make_image_folder(root, classes=("cat", "dog", "fish"), per_class=10, seed=0, bad=True):
  """Writes a small ImageNet-like folder `root/<class>/<files>`; returns what tests check.

  Each class gets `per_class` images that decode, of random sizes (60 to 500
  pixels a side; smooth content, so ~30 images take about 0.2 s), alternately
  JPEG (quality 90) and PNG, every third one grayscale. Three stand for the
  odd files a real folder holds (with per_class >= 3): a CMYK JPEG (in the
  first class), an RGBA PNG and a palette PNG (the next classes, round the
  list). With `bad`, two files that do not decode are added: a truncated JPEG
  `bad.jpg` in the first class and a zero-byte `empty.png` in the last.

  Returns {"root": Path, "classes": sorted class names, "good": {class: sorted
  paths}, "bad": [paths], "special": {"cmyk"|"rgba"|"palette": path}}. Labels
  follow the sorted class names, as `python -m duojax.import_folder` gives them.
  """
  root = pathlib.Path(root)
  rng = np.random.default_rng(seed)
  classes = sorted(classes)
  odd = {(0, 0): "cmyk", (1 % len(classes), 1): "rgba", (2 % len(classes), 2): "palette"}
  good, special = {}, {}
  fast_png = {"compress_level": 1}  # 4x faster than the default, and as valid a PNG
  for c, name in enumerate(classes):
    (root / name).mkdir(parents=True, exist_ok=True)
    good[name] = []
    for i in range(per_class):
      width, height = (int(v) for v in rng.integers(60, 501, size=2))
      # A coarse random grid upsampled: gradients, which encode fast.
      grid = rng.integers(0, 256, (4, 4, 4), dtype=np.uint8)
      image = Image.fromarray(grid, "RGBA").resize((width, height), Image.BILINEAR)
      kind = odd.get((c, i))
      if kind == "cmyk":
        path, image, options = f"{i:03d}.jpg", image.convert("CMYK"), {"quality": 90}
      elif kind == "rgba":
        path, options = f"{i:03d}.png", fast_png
      elif kind == "palette":
        path, options = f"{i:03d}.png", fast_png
        image = image.convert("RGB").quantize(32, method=Image.Quantize.FASTOCTREE)
      else:
        image = image.convert("L" if i % 3 == 2 else "RGB")
        path, options = (
          (f"{i:03d}.jpg", {"quality": 90}) if i % 2 == 0 else (f"{i:03d}.png", fast_png)
        )
      path = root / name / f"{name}_{path}"
      image.save(path, **options)
      good[name].append(path)
      if kind:
        special[kind] = path
  bad_files = []
  if bad:
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    truncated, empty = root / classes[0] / "bad.jpg", root / classes[-1] / "empty.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    empty.write_bytes(b"")
    bad_files = [truncated, empty]
  return {"root": root, "classes": classes, "good": good, "bad": bad_files, "special": special}


def spread_head_model(name, classes, seed, **overrides):
  """A model whose head is far from its small initial one, so its logits tell rows apart."""
  from duojax import models

  model = models.get_model(name, classes, rngs=seed, **overrides)
  kernel = model.head.kernel[...]
  model.head.kernel[...] = (
    3 * np.random.default_rng(seed).normal(size=kernel.shape) / (kernel.shape[0] ** 0.5)
  )
  return model


def synthetic_eval_inputs(n=2000, seed=0, **config_overrides):
  """Evaluation inputs over a bank of synthetic logits, no models: a large model, a
  weaker sidekick and a second large seed (for the 2-member ensemble), 8 classes,
  `n` val and `n` test rows; the evaluation config takes `config_overrides`."""
  from duojax import eval_config_lib
  from duojax.eval.bank import LogitsBank
  from duojax.eval.inputs import EvalInputs
  from duojax.eval.methods import standard_methods

  rng = np.random.default_rng(seed)
  bank = LogitsBank(("large", "sidekick", "large#2"))
  for split in ("val", "test"):
    labels = rng.integers(0, 8, n)
    signal = np.eye(8)[labels]
    bank.logits[split] = np.stack(
      [
        2.5 * signal + 1.2 * rng.normal(size=(n, 8)),
        1.5 * signal + rng.normal(size=(n, 8)),
        2.5 * signal + 1.2 * rng.normal(size=(n, 8)),
      ]
    ).astype(np.float32)
    bank.labels[split] = labels
  config = eval_config_lib.base_eval_config()
  config.update(config_overrides)
  methods = standard_methods(large="large", sidekick="sidekick", ensemble=("large", "large#2"))
  return EvalInputs(
    config=config, bank=bank, members={}, member_flops={}, methods=methods, added={}, mesh=None
  )


def imported_image_folder(root, dataset, per_class, bad=False):
  """Generated `root/train` (`per_class` images a class; `bad` adds two that do not
  decode) and `root/test` (4 a class) folders, imported as `dataset` into `root/tfds`,
  which is returned."""
  from duojax.data import folder

  root = pathlib.Path(root)
  make_image_folder(root / "train", per_class=per_class, seed=0, bad=bad)
  make_image_folder(root / "test", per_class=4, seed=1, bad=False)
  folder.import_folder(
    root / "train", dataset=dataset, data_dir=root / "tfds", test_folder=root / "test", workers=1
  )
  return root / "tfds"


def recipe_fine_tune(tmp_path, data_dir, recipe_args: str, extra_lines: str = ""):
  """train.py on `configs/imagenet_duo.py:recipe_args` (plus `extra_lines` of Python
  setting `config`), on the data in `data_dir`; (the completed process, the workdir)."""
  import textwrap

  recipe = os.path.join(ROOT, "configs", "imagenet_duo.py")
  extra = textwrap.indent(textwrap.dedent(extra_lines).strip(), "  ")
  config_file = tmp_path / "recipe_config.py"
  config_file.write_text(
    "import importlib.util\n"
    f"spec = importlib.util.spec_from_file_location('recipe', {recipe!r})\n"
    "recipe = importlib.util.module_from_spec(spec)\n"
    "spec.loader.exec_module(recipe)\n\n"
    "def get_config():\n"
    f"  config = recipe.get_config({recipe_args!r})\n"
    f"  config.data_dir = {str(data_dir)!r}\n"
    f"{extra}\n"
    "  return config\n"
  )
  workdir = tmp_path / "run"
  result = subprocess.run(
    [sys.executable, os.path.join(ROOT, "train.py"), f"--config={config_file}",
     f"--workdir={workdir}"],
    capture_output=True, text=True, timeout=600, cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )  # fmt: skip
  return result, workdir


def timm_vit_mu4(classes: int = 1000):
  """timm's own ViT at duojax's vit_mu4 sizes (16 px, patch 4, width 32, 2 blocks, 2 heads)."""
  from reference_libs import timm

  return timm().create_model(
    "vit_base_patch16_224", pretrained=False, img_size=16, patch_size=4, embed_dim=32, depth=2,
    num_heads=2, mlp_ratio=2.0, num_classes=classes,
  )  # fmt: skip
