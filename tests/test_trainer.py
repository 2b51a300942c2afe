"""The training loop and the two CLIs: resume equality, end to end, bad input."""

import json
import os
import shutil
import sys

import jax
import numpy as np
import pytest
from helpers import (
  assert_one_line_error,
  cli_train_args,
  final_state,
  run_script,
  tiny_train_config,
)

from duojax import errors
from duojax.models import functional
from duojax.train import checkpoint, loop


@pytest.mark.slow
def test_resumed_run_is_bit_identical_to_uninterrupted(tmp_path, learnable_data_dir):
  config = tiny_train_config(learnable_data_dir)
  full = tmp_path / "full"
  loop.train_and_evaluate(config, str(full))

  # An interrupted run: its last checkpoint is step 4, and its log already holds
  # lines for steps after 4 (written before the crash). Resume it.
  interrupted = tmp_path / "interrupted"
  shutil.copytree(full, interrupted)
  for step in (8, 12):
    shutil.rmtree(interrupted / "checkpoints" / str(step))
  os.remove(interrupted / loop.SUMMARY_FILE)
  summary = loop.train_and_evaluate(config, str(interrupted))
  assert summary["resumed_from"] == 4

  step_a, state_a = final_state(str(full))
  step_b, state_b = final_state(str(interrupted))
  assert step_a == step_b == 12
  same = jax.tree.map(lambda a, b: np.array_equal(a, b), state_a, state_b)
  assert all(jax.tree.leaves(same)), "resumed parameters differ from the uninterrupted run"

  with open(interrupted / loop.METRICS_FILE) as f:
    records = [json.loads(line) for line in f]
  train_steps = [r["step"] for r in records if "train_loss" in r]
  assert train_steps == list(range(2, 13, 2))  # none duplicated, none missing
  with open(full / loop.METRICS_FILE) as f:
    assert [json.loads(line) for line in f if "train_loss" in line][-1]["train_loss"] == [
      r for r in records if "train_loss" in r
    ][-1]["train_loss"]


@pytest.mark.slow
def test_training_learns_and_nan_loss_stops_with_last_good_checkpoint(tmp_path, learnable_data_dir):
  config = tiny_train_config(
    learnable_data_dir, total_steps=40, lr=1e-2, augment="", checkpoint_every=20
  )
  summary = loop.train_and_evaluate(config, str(tmp_path / "ok"))
  assert summary["test_accuracy"] > 0.5  # chance is 0.1
  assert summary["params"] > 0 and summary["flops_per_image"] > 0
  # Without the final test pass (the demo leaves the test split to evaluate.py)
  # the summary keeps val and says there is no test score.
  config.final_test = False
  again = loop.train_and_evaluate(config, str(tmp_path / "ok"))
  assert again["test_accuracy"] is None and again["test_nll"] is None
  assert again["val_accuracy"] == summary["val_accuracy"] and again["resumed_from"] == 40

  # Warmup to an absurd learning rate: finite for a step or two, then overflow.
  diverging = tiny_train_config(
    learnable_data_dir,
    total_steps=8,
    lr=1e30,
    warmup_steps=4,
    augment="",
    checkpoint_every=1,
    log_every=1,
    grad_clip_norm=0.0,
    optimizer="sgd",
  )
  with pytest.raises(errors.TrainingDiverged, match="last good checkpoint: step"):
    loop.train_and_evaluate(diverging, str(tmp_path / "nan"))
  manager = checkpoint.make_manager(str(tmp_path / "nan"), create=False)
  assert manager.all_steps() and max(manager.all_steps()) < 8
  for step in manager.all_steps():
    _, params, _ = jax.device_get(
      functional.split_model(checkpoint.load_model(str(tmp_path / "nan"), step)[0])
    )
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
  manager.close()


# ----------------------------------------------------------------------------
# The CLIs, as a user runs them.


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, learnable_data_dir):
  workdir = tmp_path_factory.mktemp("cli") / "cnn"
  result = run_script("train.py", *cli_train_args(learnable_data_dir, workdir))
  assert result.returncode == 0, result.stderr[-3000:]
  assert "test accuracy" in result.stdout
  return workdir


@pytest.mark.slow
def test_cli_train_then_evaluate(trained_workdir, tmp_path):
  assert (trained_workdir / "summary.json").exists()
  assert (trained_workdir / "checkpoints" / "6").is_dir()
  out = tmp_path / "eval.json"
  result = run_script(
    "evaluate.py", f"--workdirs={trained_workdir}", "--split=val", f"--output={out}"
  )
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(out.read_text())[str(trained_workdir)]
  summary = json.loads((trained_workdir / "summary.json").read_text())
  assert results["count"] == 100
  assert results["accuracy"] == pytest.approx(summary["val_accuracy"])


@pytest.mark.slow
@pytest.mark.parametrize(
  "extra, code, pattern",
  [
    (("--config.model_name=resnet999",), 1, "unknown model 'resnet999'"),
    (("--config.dataset=cifar10",), 1, "cifar10"),
    (("--config.nope=1",), 2, "nope"),
    (("--config.model.in_channels=3",), 1, "expects images of shape (28, 28, 3), got (28, 28, 1)"),
    (("--config.augment=rrc,crop",), 1, "'crop' and 'rrc' are two ways of cropping"),
    (("--config.test_split=validation",), 1, "has no split 'validation' (it has"),
    (("--config.optimizer=adam9",), 1, "optimizer"),
    (("--config.batch_size=0",), 1, "batch_size"),
    (("--resume",), 1, "holds no checkpoint"),
    (("--config.loss=focal",), 1, "config.loss='focal'; valid: ce, gatekeeper"),
    (
      ("--config.loss=gatekeeper", "--config.gatekeeper_alpha=1.5"),
      1,
      "config.gatekeeper_alpha must be in [0, 1], got 1.5",
    ),
    (("--config.fsdp=3",), 1, "fsdp=3 must be a positive divisor of the 1 devices"),
  ],
)
def test_cli_train_bad_input_leaves_no_workdir(tmp_path, learnable_data_dir, extra, code, pattern):
  workdir = tmp_path / "run"
  result = run_script("train.py", *cli_train_args(learnable_data_dir, workdir, *extra))
  assert_one_line_error(result, code, pattern)
  assert not workdir.exists()


@pytest.mark.slow
def test_cli_checkpoint_of_another_architecture_is_refused(trained_workdir, learnable_data_dir):
  before = sorted(p.name for p in trained_workdir.rglob("*"))
  result = run_script(
    "train.py", *cli_train_args(learnable_data_dir, trained_workdir, "--config.model_name=cnn_s")
  )
  assert_one_line_error(result, 1, "model_name='cnn_xs'")
  assert sorted(p.name for p in trained_workdir.rglob("*")) == before


@pytest.mark.slow
def test_cli_missing_data_files(tmp_path):
  # No apt-get on PATH and no files: the fetch must fail with how to get them.
  workdir = tmp_path / "run"
  result = run_script(
    "train.py", *cli_train_args(tmp_path / "empty", workdir), path=os.path.dirname(sys.executable)
  )
  assert_one_line_error(result, 1, "dataset-fashion-mnist")
  assert not workdir.exists()
  leftovers = [p for p in (tmp_path / "empty").rglob("*") if p.is_file()]
  assert leftovers == []


@pytest.mark.slow
@pytest.mark.parametrize(
  "args, pattern",
  [
    (("--workdirs=/nonexistent/run",), "does not exist"),
    (("--workdirs={empty}",), "no checkpoints"),
    (("--workdirs={empty}", "--batch_size=0"), "batch_size"),
  ],
)
def test_cli_evaluate_bad_input(tmp_path, args, pattern):
  empty = tmp_path / "empty_run"
  empty.mkdir()
  result = run_script("evaluate.py", *(a.format(empty=empty) for a in args))
  assert_one_line_error(result, 1, pattern)
  assert list(empty.iterdir()) == []
