"""Real image data end to end: an imported folder of variable-size JPEG/PNG files,
read by the grain pipeline in worker processes, trained on and evaluated through
the CLIs, killed and resumed bit-identically with no worker left behind.

The folder (tests/helpers.make_image_folder) holds random sizes from 60 to 500
pixels, grayscale, CMYK, alpha and palette images, and two files that do not
decode; `duojax.data.folder.import_folder` turns it into a tfds array_record set.
"""

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import jax
import numpy as np
import pytest
from helpers import ROOT, final_state, make_image_folder, run_script

from duojax import data
from duojax.data import folder

SIZE = 32
TOTAL_STEPS, CHECKPOINT_EVERY = 16, 8


@pytest.fixture(scope="module")
def image_data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  make_image_folder(root / "train", per_class=12, seed=0)
  make_image_folder(root / "test", per_class=4, seed=1, bad=False)
  data_dir = root / "tfds"
  folder.import_folder(
    root / "train", dataset="tiny_folder", data_dir=data_dir, test_folder=root / "test", workers=1
  )
  return data_dir


def _dataset(data_dir):
  return data.load_dataset("tiny_folder", data_dir, val_size=6, image_size=SIZE)


def _batches(split, n, **kw):
  iterator = data.train_batches(split, global_batch_size=8, seed=3, augment="rrc,flip", **kw)
  try:
    return [next(iterator) for _ in range(n)]
  finally:
    iterator.close()


def test_imported_folder_loads_as_rgb_at_the_configured_size(image_data_dir):
  ds = _dataset(image_data_dir)
  assert ds.image_shape == (SIZE, SIZE, 3) and ds.num_classes == 3
  assert ds.class_names == ("cat", "dog", "fish")
  assert len(ds.train) + len(ds.val) == 36 and len(ds.test) == 12
  assert ds.train.encoded and np.all(ds.std > 0)
  images, labels = data.read_examples(ds.test, np.arange(len(ds.test)))
  assert images.shape == (12, SIZE, SIZE, 3) and images.dtype == np.uint8
  assert sorted(np.bincount(labels)) == [4, 4, 4]


@pytest.mark.slow  # worker processes
def test_batches_are_the_same_in_process_and_in_worker_processes(image_data_dir):
  ds = _dataset(image_data_dir)
  in_process = _batches(ds.train, 4, workers=0)
  in_workers = _batches(ds.train, 4, workers=2)
  for a, b in zip(in_process, in_workers):
    assert a["image"].shape == (8, SIZE, SIZE, 3) and a["image"].dtype == np.uint8
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  # Crops are drawn afresh each step: no two batches alike.
  assert not np.array_equal(in_process[0]["image"], in_process[1]["image"])


def test_resuming_at_a_step_and_splitting_rows_over_processes_change_nothing(image_data_dir):
  ds = _dataset(image_data_dir)
  whole = _batches(ds.train, 4, workers=0)
  resumed = _batches(ds.train, 2, workers=0, start_step=2)
  for a, b in zip(whole[2:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  halves = [_batches(ds.train, 4, workers=0, process_index=p, process_count=2) for p in (0, 1)]
  for step, batch in enumerate(whole):
    np.testing.assert_array_equal(
      batch["image"], np.concatenate([halves[0][step]["image"], halves[1][step]["image"]])
    )


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_evaluation_batches_are_centre_crops_in_order(image_data_dir, workers):
  ds = _dataset(image_data_dir)
  batches = list(data.eval_batches(ds.test, global_batch_size=5, workers=workers))
  images = np.concatenate([b["image"] for b in batches])
  mask = np.concatenate([b["mask"] for b in batches])
  assert images.shape == (15, SIZE, SIZE, 3) and mask.sum() == 12 and not mask[12:].any()
  expected, _ = data.read_examples(ds.test, np.arange(12))
  np.testing.assert_array_equal(images[:12], expected)


def test_a_tfrecord_data_set_gets_the_conversion_command(image_data_dir, tmp_path):
  import shutil

  copy = tmp_path / "tfds"
  shutil.copytree(image_data_dir, copy)
  info = next(copy.glob("tiny_folder/*/dataset_info.json"))
  meta = json.loads(info.read_text())
  meta["fileFormat"] = "tfrecord"
  info.write_text(json.dumps(meta))
  with pytest.raises(data.DataError, match="tfds convert_format .*--out_file_format=array_record"):
    data.load_dataset("tiny_folder", copy, val_size=6, image_size=SIZE)


# ------------------------------------------------------------ through the CLIs
def _train_args(data_dir, workdir, *extra):
  return (
    "--config",
    os.path.join(ROOT, "configs/fashion_mnist.py:model=cnn_xs"),
    f"--workdir={workdir}",
    "--config.dataset=tiny_folder",
    f"--config.data_dir={data_dir}",
    f"--config.model.image_size={SIZE}",
    "--config.augment=rrc,flip",
    "--config.data_workers=2",
    "--config.val_size=6",
    "--config.batch_size=8",
    "--config.eval_batch_size=8",
    f"--config.total_steps={TOTAL_STEPS}",
    "--config.warmup_steps=2",
    "--config.log_every=1",
    f"--config.checkpoint_every={CHECKPOINT_EVERY}",
    "--config.keep_checkpoints=10",
    *extra,
  )


@pytest.fixture(scope="module")
def reference(tmp_path_factory, image_data_dir, env):
  workdir = tmp_path_factory.mktemp("reference") / "run"
  result = run_script("train.py", *_train_args(image_data_dir, workdir), env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_train_and_evaluate_an_imported_folder_through_the_clis(reference, tmp_path):
  summary = json.loads((reference / "summary.json").read_text())
  assert summary["steps"] == TOTAL_STEPS and 0 <= summary["test_accuracy"] <= 1
  meta = json.loads((reference / "config.json").read_text())
  assert meta["augment"] == "rrc,flip" and meta["model"]["image_size"] == SIZE
  out = tmp_path / "eval.json"
  result = run_script("evaluate.py", f"--workdirs={reference}", "--split=test", f"--output={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads(out.read_text())[str(reference)]
  assert results["count"] == 12
  assert results["accuracy"] == pytest.approx(summary["test_accuracy"])


def _children_tagged(tag):
  """Live processes whose environment carries `tag` (the run and its workers)."""
  found = []
  for pid in os.listdir("/proc"):
    if not pid.isdigit():
      continue
    try:
      with open(f"/proc/{pid}/environ", "rb") as f:
        if tag.encode() in f.read():
          found.append(int(pid))
    except OSError:
      pass
  return found


def _checkpoints(workdir):
  directory = workdir / "checkpoints"
  return (
    sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    if directory.is_dir()
    else []
  )


def _logged(workdir):
  try:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
  except FileNotFoundError:
    return 0
  steps = []
  for line in lines:
    try:
      steps.append(json.loads(line)["step"])
    except ValueError:
      pass
  return max(steps, default=0)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_killed_with_workers_resumes_bit_identical_and_leaves_no_worker(
  reference, image_data_dir, env, tmp_path, signum
):
  workdir = tmp_path / "run"
  tag = f"DUOJAX_TEST_RUN={uuid.uuid4().hex}"
  out = open(tmp_path / "stderr", "w")
  proc = subprocess.Popen(
    [sys.executable, "train.py", *_train_args(image_data_dir, workdir)],
    cwd=ROOT,
    env={**env, tag.split("=")[0]: tag.split("=")[1]},
    stdout=subprocess.DEVNULL,
    stderr=out,
  )
  deadline = time.monotonic() + 240
  while not (CHECKPOINT_EVERY in _checkpoints(workdir) and _logged(workdir) >= 10):
    assert proc.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
    assert time.monotonic() < deadline, "timed out waiting for checkpoint 8"
    time.sleep(0.01)
  assert len(_children_tagged(tag)) >= 3  # the run and its two grain workers
  os.kill(proc.pid, signum)
  code = proc.wait(timeout=120)
  assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 143), (
    tmp_path / "stderr"
  ).read_text()[-3000:]
  deadline = time.monotonic() + 20
  while _children_tagged(tag) and time.monotonic() < deadline:
    time.sleep(0.1)
  assert _children_tagged(tag) == [], "worker processes outlived the killed run"

  result = run_script("train.py", *_train_args(image_data_dir, workdir), env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  step_a, state_a = final_state(str(reference))
  step_b, state_b = final_state(str(workdir))
  assert step_a == step_b == TOTAL_STEPS
  same = jax.tree.map(lambda a, b: np.array_equal(a, b), state_a, state_b)
  assert all(jax.tree.leaves(same)), "the resumed run's parameters differ"


# ------------------------------------------------------------------ OOD sets
@pytest.mark.parametrize("kind", ["tfds", "folder", "mnist"])
def test_ood_sets_from_tfds_a_folder_or_mnist_come_at_the_models_shape(
  image_data_dir, tmp_path, kind
):
  from duojax.eval import splits

  ds = _dataset(image_data_dir)
  if kind == "folder":
    make_image_folder(tmp_path / "ood", classes=("x",), per_class=5, seed=4, bad=False)
    name, count = f"folder:{tmp_path / 'ood'}", 5
  elif kind == "tfds":
    name, count = "tfds:tiny_folder:test", 12
  else:
    name, count = "mnist", 10_000
  split = splits.ood_split(name, ds, str(image_data_dir))
  assert len(split) == count
  images, _ = data.read_examples(split, np.arange(3))
  assert images.shape == (3, SIZE, SIZE, 3) and images.dtype == np.uint8


def test_an_ood_folder_with_a_bad_file_is_a_one_line_error(image_data_dir, tmp_path):
  from duojax.eval import splits

  make_image_folder(tmp_path / "ood", classes=("x",), per_class=3, seed=5, bad=True)
  with pytest.raises(data.DataError, match=r"2 files in .* cannot be decoded: x/bad.jpg"):
    splits.ood_split(f"folder:{tmp_path / 'ood'}", _dataset(image_data_dir), "")
