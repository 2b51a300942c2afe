"""Sizes chosen from the data (duojax.train.sizing): the rules on small and large
data sets, the one-line errors, the printed line, and a train.py run of the
ImageNet recipe on a generated image folder with no size given."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT, imported_image_folder, run_script

from duojax import config_lib, errors
from duojax.train import sizing

AUTO = config_lib.AUTO


def _auto(**overrides):
  """A fine-tune config with every size left to the data, as configs/imagenet_duo.py's."""
  config = config_lib.base_config()
  config.val_size = config.batch_size = config.eval_batch_size = config.warmup_steps = AUTO
  config.epochs, config.total_steps = 10.0, -1
  config.auto_max.total_steps = 20_000
  config.update(overrides)
  return config


def _sizes(sizes):
  return (
    sizes.val_size,
    sizes.batch_size,
    sizes.total_steps,
    sizes.warmup_steps,
    sizes.eval_batch_size,
  )


@pytest.mark.parametrize(
  "images, devices, expected",
  [
    # (val, batch, steps, warmup, eval batch)
    (99, 1, (19, 4, 200, 20, 32)),  # val a fifth; 80 / 16 -> batch 4; 20 steps an epoch
    (99, 8, (19, 8, 100, 10, 32)),  # the batch is at least one image per device
    (5_000, 1, (500, 256, 170, 17, 512)),  # 4,500 / 16 = 281 -> 256; 17 steps an epoch
    (5_000, 8, (500, 256, 170, 17, 512)),  # the same on 8 devices
    (5_000, 6, (500, 252, 170, 17, 516)),  # multiples of 6: 256 down, 512 up
    (1_200_000, 8, (10_000, 512, 20_000, 500, 1024)),  # the recipe's ImageNet sizes
  ],
)
def test_the_rules_on_small_and_large_data_sets(images, devices, expected):
  config = _auto()
  resolved, sizes = sizing.resolve(config, images, devices)
  assert _sizes(sizes) == expected
  assert (resolved.val_size, resolved.batch_size, resolved.total_steps) == expected[:3]
  assert (resolved.warmup_steps, resolved.eval_batch_size) == expected[3:]
  assert sizes.chosen == {
    "val_size",
    "batch_size",
    "eval_batch_size",
    "warmup_steps",
    "total_steps",
  }
  config_lib.validate(resolved)
  # Pure: the same data and devices give the same sizes (what a resume relies on),
  # and the config it was given is left as it was.
  assert _sizes(sizing.resolve(config, images, devices)[1]) == expected
  assert config.batch_size == AUTO and resolved is not config


def test_imagenet_runs_the_recipes_length_and_says_where_it_stopped():
  _, sizes = sizing.resolve(_auto(), 1_281_167, 8)
  assert sizes.steps_per_epoch == 2482 and sizes.total_steps == 20_000  # of 24,820
  assert sizes.steps_bound == 20_000
  assert "8.06 epochs = 20,000 steps (10 asked, capped by auto_max.total_steps=20,000)" in (
    sizes.line()
  )
  # No bound (from scratch): all the epochs.
  _, sizes = sizing.resolve(_auto(epochs=90.0, auto_max={"total_steps": 0}), 1_281_167, 8)
  assert sizes.total_steps == 90 * 2482 and sizes.steps_bound == 0
  assert sizes.warmup_steps == 500


def test_the_printed_line():
  _, sizes = sizing.resolve(_auto(), 5_000, 8)
  assert sizes.line() == (
    "sizes from the data (5,000 images, 8 devices): val 500, batch 256, 10 epochs = 170 steps, "
    "warmup 17, eval batch 512"
  )
  _, sizes = sizing.resolve(_auto(batch_size=128, total_steps=100), 5_000, 1)
  assert sizes.line() == (
    "sizes from the data (5,000 images, 1 device): val 500, batch 128 (given), "
    "100 steps (given) = 2.86 epochs, warmup 10, eval batch 512"
  )


def test_given_sizes_are_kept_and_marked():
  _, sizes = sizing.resolve(_auto(batch_size=64, warmup_steps=3), 5_000, 8)
  assert sizes.batch_size == 64 and sizes.warmup_steps == 3 and sizes.total_steps == 700
  assert "batch 64 (given)" in sizes.line() and "warmup 3 (given)" in sizes.line()
  assert "10 epochs = 700 steps" in sizes.line()
  _, sizes = sizing.resolve(_auto(total_steps=500), 5_000, 1)
  assert "500 steps (given) = 29.41 epochs, warmup 50" in sizes.line()


def test_a_val_split_of_its_own_is_not_carved():
  _, sizes = sizing.resolve(_auto(val_split="validation"), 5_000, 1, val_split_size=800)
  assert sizes.val_size == 800 and sizes.batch_size == 256  # 5,000 / 16 = 312 -> 256
  assert sizes.eval_batch_size == 1024 and sizes.total_steps == 190
  assert "val 800 (split 'validation')" in sizes.line()


def test_gradient_accumulation_rounds_the_batch_to_its_micro_batches():
  config = _auto()
  config.grad_accum_steps = 4  # each micro-batch over every device: batch % 32 == 0
  _, sizes = sizing.resolve(config, 5_000, 8)
  assert sizes.batch_size == 256
  _, sizes = sizing.resolve(config, 99, 8)
  assert sizes.batch_size == 32


def test_a_config_with_nothing_left_to_the_data_comes_back_unchanged():
  config = config_lib.base_config()  # val 5,000, batch 128, epochs 2: Fashion-MNIST's
  resolved, sizes = sizing.resolve(config, 60_000, 1)
  assert resolved is config and config.total_steps == -1
  assert sizes.total_steps == 2 * (55_000 // 128)


@pytest.mark.parametrize(
  "overrides, images, devices, message",
  [
    ({"val_size": 5_000}, 5_000, 1, "val_size=5000 must be in [1, 4999] for the 5000 training"),
    ({"batch_size": 8192}, 5_000, 1, "config.batch_size=8192 is larger than the 4,500 training"),
    ({"batch_size": 100}, 5_000, 8, "config.batch_size=100 is not divisible by the 8 devices"),
    ({"eval_batch_size": 100}, 5_000, 8, "config.eval_batch_size=100 is not divisible by the 8"),
    ({}, 20, 32, "config.batch_size=32 (the least that splits over the 32 devices) is larger"),
    ({}, 1, 1, "has 1 example(s): carving val needs at least 2"),
  ],
)
def test_sizes_that_cannot_work_are_one_line_config_errors(overrides, images, devices, message):
  with pytest.raises(errors.ConfigError) as error:
    sizing.resolve(_auto(**overrides), images, devices)
  assert message in str(error.value) and "\n" not in str(error.value), str(error.value)


def test_validate_takes_auto_and_refuses_other_negatives():
  config_lib.validate(_auto())
  for key in ("val_size", "batch_size", "eval_batch_size", "warmup_steps"):
    with pytest.raises(
      errors.ConfigError, match=f"config.{key} must be .*-1: chosen from the data"
    ):
      config_lib.validate(_auto(**{key: -2}))
  with pytest.raises(errors.ConfigError, match="config.auto_max.batch_size must be > 0"):
    config_lib.validate(_auto(auto_max={"batch_size": 0}))


def test_the_rules_helpers():
  assert [sizing.pow2_floor(x) for x in (0, 1, 2, 3, 281, 512)] == [1, 1, 2, 2, 256, 512]
  assert [sizing.pow2_ceil(x) for x in (0, 1, 2, 3, 500, 512)] == [1, 1, 2, 4, 512, 512]
  assert sizing.val_size_rule(2, 10_000) == 1  # leaves one to train on
  assert sizing.val_size_rule(3_000, 10_000) == 500  # the 500 floor (a tenth is 300)
  assert sizing.val_size_rule(2_000, 10_000) == 400  # the floor, at most a fifth
  assert sizing.val_size_rule(50_000, 10_000) == 5_000


def _recipe():
  spec = importlib.util.spec_from_file_location(
    "imagenet_duo", os.path.join(ROOT, "configs/imagenet_duo.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_recipe_leaves_sizes_to_the_data_unless_given():
  recipe = _recipe()
  config = recipe.get_config("model=vit_b16,weights=w.safetensors")
  assert config.data_dir == config_lib.base_config().data_dir == "data"
  assert config.batch_size == config.val_size == config.eval_batch_size == AUTO
  assert config.warmup_steps == AUTO and config.total_steps == -1 and config.epochs == 10
  config = recipe.get_config("model=vit_b16,weights=w,batch_size=64,steps=300,warmup=7,epochs=3")
  assert (config.batch_size, config.total_steps, config.warmup_steps) == (64, 300, 7)
  assert config.epochs == 3
  with pytest.raises(errors.ConfigError, match="batch_size='big' must be 'auto' or a positive"):
    recipe.get_config("model=vit_b16,batch_size=big")


def test_the_split_sizes_come_from_the_metadata_and_the_line_is_printed(learnable_data_dir, capsys):
  config = _auto(data_dir=str(learnable_data_dir), dataset="fashion_mnist")
  assert sizing.split_sizes(config) == (600, None)
  resolved, sizes = sizing.sizes_for_run(config, 1)
  assert capsys.readouterr().out == sizes.line() + "\n"
  assert sizes.line().startswith("sizes from the data (600 images, 1 device): val 120, batch 16,")
  # Nothing left to the data: no line.
  plain = config_lib.base_config()
  plain.data_dir = str(learnable_data_dir)
  plain.val_size = 100
  assert sizing.sizes_for_run(plain, 1)[0] is plain and capsys.readouterr().out == ""
  with pytest.raises(errors.DataError, match="has no split 'holdout'"):
    sizing.split_sizes(_auto(data_dir=str(learnable_data_dir), val_split="holdout"))


# ------------------------------------------------------------ through train.py
@pytest.fixture(scope="module")
def folder_and_weights(tmp_path_factory):
  """A generated image folder imported as `sized_folder`, and a tiny timm-layout ViT file."""
  from duojax import convert, models

  root = tmp_path_factory.mktemp("sized")
  imported_image_folder(root, "sized_folder", per_class=12, bad=True)
  convert.export_pretrained(
    models.get_model("vit_mu4", 1000, rngs=0, image_size=16), str(root / "vit.safetensors"), "timm"
  )
  return root


@pytest.mark.slow  # train.py subprocesses
def test_a_fine_tune_with_no_size_given_fits_the_folder_and_saves_its_sizes(
  folder_and_weights, env
):
  root = folder_and_weights
  workdir = root / "run"
  args = (
    "--config",
    f"configs/imagenet_duo.py:model=vit_mu4,weights={root / 'vit.safetensors'},"
    f"dataset=sized_folder,data_dir={root / 'tfds'},test_split=test,size=16,dtype=float32,"
    "epochs=1",
    f"--workdir={workdir}",
  )
  result = run_script("train.py", *args, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  # 36 images (the folder's two undecodable files left out): val 7, 29 to train on.
  line = (
    "sizes from the data (36 images, 1 device): val 7, batch 1, 1 epoch = 29 steps, "
    "warmup 2, eval batch 8"
  )
  assert result.stdout.splitlines()[0] == line
  saved = json.loads((workdir / "config.json").read_text())
  assert (saved["val_size"], saved["batch_size"], saved["eval_batch_size"]) == (7, 1, 8)
  assert (saved["total_steps"], saved["warmup_steps"]) == (29, 2)
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["steps"] == 29 and 0 <= summary["test_accuracy"] <= 1
  from duojax.train import checkpoint

  _, meta = checkpoint.read_meta(str(workdir))
  assert meta["config"]["batch_size"] == 1 and meta["config"]["val_size"] == 7
  # The same command again resumes the finished run: the same sizes, nothing retrained.
  again = run_script("train.py", *args, env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.splitlines()[0] == line
  assert json.loads((workdir / "summary.json").read_text())["resumed_from"] == 29
  assert json.loads((workdir / "config.json").read_text()) == saved


def test_the_folder_import_writes_where_the_recipe_reads():
  result = subprocess.run(
    [sys.executable, "-m", "duojax.import_folder", "--helpshort"],
    capture_output=True,
    text=True,
    cwd=ROOT,
    timeout=300,
  )
  help_text = " ".join(result.stdout.split())
  assert "--data_dir: tfds data_dir to write it into. (default: 'data')" in help_text
  assert _recipe().get_config("resnet18").data_dir == config_lib.base_config().data_dir == "data"
