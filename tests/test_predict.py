"""`python -m duojax.predict`: a bundle over a folder, a path list or a tfds split,
rows that match the bundle's own predictions, junk and damaged files, resuming
after a SIGKILL, and bad arguments that write nothing."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import ROOT, assert_one_line_error, imported_image_folder, make_image_folder

import duojax
from duojax import bundle
from duojax.bundle import prediction, prediction_input, prediction_rows
from duojax.core import selective
from duojax.data.preprocess import InputSpec
from duojax.errors import InputError
from duojax.models.spec import ModelSpec

CLASSES = ["cat", "dog", "fish"]


def _members():
  """A ViT large model at 24 px and a ResNet sidekick at 16 px (bicubic, its own crop)."""
  large = ModelSpec("vit_mu4", {}, 3, (24, 24, 3))
  sidekick = ModelSpec("resnet8", {"width": 4}, 3, (16, 16, 3))
  return [
    bundle.BundleMember(
      large.build(0), large, InputSpec(24, (0.5,) * 3, (0.5,) * 3, interpolation="bicubic")
    ),
    bundle.BundleMember(
      sidekick.build(1), sidekick, InputSpec(16, (0.4,) * 3, (0.3,) * 3, "x", 0.8)
    ),
  ]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
  """The weighted duo of `_members`, with a shift alarm."""
  members = _members()
  rng = np.random.default_rng(0)
  confidence = rng.uniform(0.3, 1.0, 2000).astype(np.float32)
  path = tmp_path_factory.mktemp("bundle") / "duo"
  duo = duojax.Duo(np.array([1.0, 0.6], np.float32), ("large", "sidekick"))
  validation = (confidence, rng.uniform(size=2000) < confidence**0.3)
  # Validation logits with a spread of disagreements and confidence gaps.
  alarm = duojax.fit_shift_alarm(
    [rng.normal(0, 2, (400, 3)), rng.normal(0, 2, (400, 3))], temperatures=(1.5, 0.8)
  )
  bundle.write_bundle(
    path, members, duo, CLASSES, validation=validation, shift_alarm=alarm, platforms=("cpu",)
  )
  return str(path)


def _with_alarm(bundle_dir, tmp_path, alarm):
  """A copy of the bundle holding `alarm` instead (None: an older bundle without one)."""
  import shutil

  path = tmp_path / "bundle_copy"
  shutil.copytree(bundle_dir, path)
  manifest = json.loads((path / "manifest.json").read_text())
  os.remove(path / "shift_alarm.json")
  if alarm is None:
    del manifest["shift_alarm"]
  else:
    alarm.save(path / "shift_alarm.json")
  (path / "manifest.json").write_text(json.dumps(manifest))
  return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """12 images a class, two damaged ones, and files that are not images at all."""
  root = tmp_path_factory.mktemp("photos") / "photos"
  made = make_image_folder(root, per_class=12)
  (root / "notes.txt").write_text("taken in spring")
  (root / "dog" / "Thumbs.db").write_bytes(b"\0" * 64)
  return made


def _predict(*args, env=None, check=True):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
  result = subprocess.run(
    [sys.executable, "-m", "duojax.predict", *map(str, args)],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env=env,
  )
  if check:
    assert result.returncode == 0, result.stderr[-3000:]
  return result


def _rows(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _good_ids(made):
  root = made["root"]
  return sorted(str(p.relative_to(root)) for paths in made["good"].values() for p in paths)


def test_folder_rows_are_the_bundles_predictions_on_two_devices(bundle_dir, folder, tmp_path):
  out = tmp_path / "rows.jsonl"
  result = _predict(
    "--bundle", bundle_dir, "--input", folder["root"], "--output", out, "--batch_size", 8,
    env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"},
  )  # fmt: skip
  rows = _rows(out)
  assert [r["id"] for r in rows] == _good_ids(folder)
  assert not os.path.exists(f"{out}.progress")
  # The damaged files are listed with a reason; the junk is only counted.
  skipped = (tmp_path / "rows.jsonl.skipped").read_text().splitlines()
  assert sorted(line.split("\t")[0] for line in skipped) == ["cat/bad.jpg", "fish/empty.png"]
  assert "0x" not in result.stderr and "BytesIO" not in result.stderr
  assert "Thumbs.db" not in "".join(skipped) and "notes.txt" in result.stderr
  assert "2 could not be read" in result.stdout

  loaded = duojax.load_bundle(bundle_dir)
  geometry = prediction.geometry(loaded)
  images = np.stack(
    [prediction_input.cut((folder["root"] / r["id"]).read_bytes(), geometry)[0] for r in rows]
  )
  want = loaded.predict(images)
  assert [r["class_index"] for r in rows] == want["class_index"].tolist()
  assert [CLASSES[i] for i in want["class_index"]] == [r["class"] for r in rows]
  np.testing.assert_allclose([r["probability"] for r in rows], want["confidence"], atol=2e-6)
  np.testing.assert_allclose([r["uncertainty"] for r in rows], 1 - want["confidence"], atol=2e-6)
  assert [r["abstain"] for r in rows] == want["abstain"].tolist()
  assert [r["disagree"] for r in rows] == want["disagree"].tolist()
  for r, p in zip(rows, want["probabilities"]):
    top = [t["class"] for t in r["top_k"]]
    assert top == [CLASSES[i] for i in np.argsort(-p, kind="stable")]
    assert top[0] == r["class"]


def test_csv_rows_abstain_at_the_guaranteed_threshold(bundle_dir, folder, tmp_path):
  out = tmp_path / "rows.csv"
  result = _predict(
    "--bundle", bundle_dir, "--input", folder["root"], "--output", out,
    "--target_risk", 0.1, "--delta", 0.1, "--top_k", 2,
  )  # fmt: skip
  loaded = duojax.load_bundle(bundle_dir)
  found = selective.guaranteed_threshold(*loaded.validation, 0.1, 0.1)
  assert f"threshold {found.threshold:.4f}" in result.stderr
  import csv

  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == prediction_rows.COLUMNS
  assert len(rows) == len(_good_ids(folder))
  for r in rows:
    assert len(r["top_k"].split("|")) == 2
    p = float(r["probability"])
    if abs(p - found.threshold) > 1e-5:
      assert r["abstain"] == str(p < found.threshold)


def test_tfds_splits_and_path_lists(bundle_dir, tmp_path):
  data_dir = imported_image_folder(tmp_path / "pets", "predict_pets", per_class=3)
  out = tmp_path / "test.jsonl"
  _predict(
    "--bundle", bundle_dir, "--input", "tfds:predict_pets", "--data_dir", data_dir,
    "--output", out,
  )  # fmt: skip
  rows = _rows(out)
  assert [r["id"] for r in rows] == list(range(12))  # the test split's 4 a class

  listed = [f"train/cat/{name}" for name in sorted(os.listdir(tmp_path / "pets/train/cat"))]
  (tmp_path / "pets" / "list.txt").write_text("# cats\n" + "\n".join(listed) + "\n")
  out = tmp_path / "list.jsonl"
  _predict("--bundle", bundle_dir, "--input", tmp_path / "pets/list.txt", "--output", out)
  assert [r["id"] for r in _rows(out)] == listed


_KILLED = textwrap.dedent(
  """
  import os, runpy, signal, sys
  from duojax.bundle import prediction_rows
  write, calls = prediction_rows.ChunkedRows._write, []
  def dying(self, where, mode, text):
    write(self, where, mode, text)
    calls.append(where)
    # 1: the new file, before any row; 3: the second chunk's rows on disk, its
    # progress record not yet, so the rerun must cut them off.
    if sum(w == self.path for w in calls) == {kill_at}:
      os.kill(os.getpid(), signal.SIGKILL)
  prediction_rows.ChunkedRows._write = dying
  sys.argv = ["predict"] + sys.argv[1:]
  runpy.run_module("duojax.predict", run_name="__main__")
  """
)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 3])
def test_a_killed_run_rerun_ends_with_the_rows_of_an_uninterrupted_one(
  bundle_dir, folder, tmp_path, kill_at
):
  args = ["--bundle", bundle_dir, "--input", folder["root"], "--batch_size", 4, "--workers", 0]
  reference = tmp_path / "reference.jsonl"
  _predict(*args, "--output", reference)
  out = tmp_path / "rows.jsonl"
  killed = subprocess.run(
    [sys.executable, "-c", _KILLED.format(kill_at=kill_at), *map(str, args), "--output", out],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert os.path.exists(f"{out}.progress")
  rerun = _predict(*args, "--output", out)
  assert "continued from row" in rerun.stdout or kill_at == 1
  assert out.read_bytes() == reference.read_bytes()
  for suffix in (".skipped", ".shift.jsonl"):
    assert (tmp_path / f"rows.jsonl{suffix}").read_bytes() == (
      tmp_path / f"reference.jsonl{suffix}"
    ).read_bytes()
  assert not os.path.exists(f"{out}.progress")


def test_each_chunk_gets_the_shift_alarms_verdict_on_its_images(bundle_dir, folder, tmp_path):
  out = tmp_path / "rows.jsonl"
  result = _predict(
    "--bundle", bundle_dir, "--input", folder["root"], "--output", out, "--batch_size", 4,
    "--workers", 0,
  )  # fmt: skip
  rows, verdicts = _rows(out), _rows(f"{out}.shift.jsonl")
  loaded = duojax.load_bundle(bundle_dir)
  geometry = prediction.geometry(loaded)
  # A chunk is 4 batches of 4 input rows; its verdict covers the readable ones.
  position = {i: k for k, i in enumerate(prediction_input.open_input(str(folder["root"])).ids)}
  chunks = {}
  for r in rows:
    chunks.setdefault(position[r["id"]] // 16, []).append(r["id"])
  assert len(verdicts) == len(chunks)
  alarms = 0
  for verdict, ids in zip(verdicts, chunks.values()):
    assert (verdict["first_id"], verdict["last_id"], verdict["images"]) == (
      ids[0],
      ids[-1],
      len(ids),
    )
    images = np.stack(
      [prediction_input.cut((folder["root"] / i).read_bytes(), geometry)[0] for i in ids]
    )
    alarm, p = loaded.shift_check(images)
    assert verdict["p_value"] == pytest.approx(p, abs=2e-6) and verdict["shifted"] == alarm
    alarms += alarm
  assert f"shift alarm on {alarms} of {len(chunks)} chunks" in result.stdout
  assert result.stderr.count("look unlike the validation data") == alarms


def test_a_shift_alarm_that_fires_warns_and_an_older_bundle_is_not_checked(
  bundle_dir, folder, tmp_path
):
  # Validation rows that all agree with one confidence gap: any other batch is shifted.
  same = np.tile([[3.0, 0.0, -1.0]], (50, 1))
  strict = _with_alarm(bundle_dir, tmp_path / "strict", duojax.fit_shift_alarm([same, same]))
  out = tmp_path / "strict.jsonl"
  result = _predict("--bundle", strict, "--input", folder["root"], "--output", out)
  (verdict,) = _rows(f"{out}.shift.jsonl")  # one chunk of 1,024 rows holds them all
  assert verdict["shifted"] and verdict["images"] == len(_good_ids(folder))
  assert f"to 37 ({verdict['images']}) look unlike the validation data" in result.stderr
  assert "shift alarm on 1 of 1 chunks" in result.stdout
  # --noshift_check, or a bundle written before bundles held an alarm: no check, no file.
  out = tmp_path / "unchecked.jsonl"
  result = _predict(
    "--bundle", strict, "--input", folder["root"], "--output", out, "--noshift_check"
  )
  assert not os.path.exists(f"{out}.shift.jsonl") and "shift alarm" not in result.stdout
  older = _with_alarm(bundle_dir, tmp_path / "older", None)
  out = tmp_path / "older.jsonl"
  result = _predict("--bundle", older, "--input", folder["root"], "--output", out)
  assert "holds no shift alarm" in result.stderr and not os.path.exists(f"{out}.shift.jsonl")
  assert _rows(out) == _rows(tmp_path / "unchecked.jsonl")
  with pytest.raises(InputError, match="holds no shift alarm"):
    duojax.load_bundle(older).shift_check(np.zeros((1, 24, 24, 3), np.uint8))


def test_a_guarded_duo_writes_a_flagged_chunk_as_its_equal_mixture(folder, tmp_path):
  rng = np.random.default_rng(1)
  val = [rng.normal(0, 2, (400, 3)).astype(np.float32) for _ in range(2)]
  duo = duojax.fit_duo(val, rng.integers(0, 3, 400), method="guarded")
  # An alarm fitted on validation rows that all agree with one confidence gap flags
  # any other batch.
  same = np.tile([[3.0, 0.0, -1.0]], (50, 1))
  strict = dataclasses.replace(duo, alarm=duojax.fit_shift_alarm([same, same]))
  confidence = rng.uniform(0.3, 1.0, 500).astype(np.float32)
  path = bundle.write_bundle(
    tmp_path / "guarded",
    _members(),
    strict,
    CLASSES,
    validation=(confidence, rng.uniform(size=500) < confidence),
    platforms=(),
  )
  loaded = duojax.load_bundle(path)
  assert loaded.guards_shifts
  geometry = prediction.geometry(loaded)
  images = np.stack(
    [
      prediction_input.cut((folder["root"] / i).read_bytes(), geometry)[0]
      for i in _good_ids(folder)
    ]
  )
  checked, unchecked = tmp_path / "checked.jsonl", tmp_path / "unchecked.jsonl"
  result = _predict("--bundle", path, "--input", folder["root"], "--output", checked)
  (verdict,) = _rows(f"{checked}.shift.jsonl")
  assert verdict["shifted"] and "mixes equally with its large model" in result.stderr
  _predict("--bundle", path, "--input", folder["root"], "--output", unchecked, "--noshift_check")
  for out, flag in ((checked, True), (unchecked, False)):
    want = loaded.predict(images, shifted=flag)
    rows = _rows(out)
    assert [r["class_index"] for r in rows] == want["class_index"].tolist()
    np.testing.assert_allclose([r["probability"] for r in rows], want["confidence"], atol=2e-6)
  # The two differ, and `Bundle.predict` applies the alarm to its batch by default.
  assert not np.allclose(_rows(checked)[0]["probability"], _rows(unchecked)[0]["probability"])
  np.testing.assert_array_equal(
    loaded.predict(images)["probabilities"], loaded.predict(images, shifted=True)["probabilities"]
  )


def test_bad_arguments_are_one_line_errors_that_write_nothing(bundle_dir, folder, tmp_path):
  root = folder["root"]
  cases = [
    (["--bundle", tmp_path / "nowhere", "--input", root, "--output", tmp_path / "a.jsonl"], "bundle"),
    (["--bundle", bundle_dir, "--input", root, "--output", tmp_path / "a.parquet"], ".jsonl or .csv"),
    (["--bundle", bundle_dir, "--input", tmp_path / "none", "--output", tmp_path / "a.jsonl"], "does not exist"),
    (["--bundle", bundle_dir, "--input", root, "--output", tmp_path / "no/a.jsonl"], "does not exist"),
    (
      ["--bundle", bundle_dir, "--input", root, "--output", tmp_path / "a.jsonl", "--target_risk", 1e-4],
      "smallest",
    ),
    (["--bundle", bundle_dir, "--input", "tfds:no_such_set", "--output", tmp_path / "a.jsonl"], "no_such_set"),
    (["--bundle", bundle_dir, "--input", folder["good"]["cat"][0], "--output", tmp_path / "a.jsonl"], "is an image"),
  ]  # fmt: skip
  for args, pattern in cases:
    assert_one_line_error(_predict(*args, check=False), 1, pattern)
  assert sorted(os.listdir(tmp_path)) == []

  # A finished output is kept; another command's stopped run is not mixed in.
  out = tmp_path / "done.jsonl"
  out.write_text("{}\n")
  args = ["--bundle", bundle_dir, "--input", root, "--output", out]
  assert_one_line_error(_predict(*args, check=False), 1, "--overwrite")
  (tmp_path / "done.jsonl.progress").write_text(
    json.dumps({"fingerprint": {"top_k": 1}, "done": 0, "sizes": {"rows": 0, "skipped": 0}})
  )
  assert_one_line_error(_predict(*args, check=False), 1, "another command")
  assert out.read_text() == "{}\n"


def test_rows_are_split_into_one_block_and_one_file_per_process():
  blocks = [prediction.process_block(10, i, 3) for i in range(3)]
  assert blocks == [(0, 3), (3, 6), (6, 10)]
  assert prediction.shard_path("/o/rows.csv", 0, 1) == "/o/rows.csv"
  assert prediction.shard_path("/o/rows.csv", 2, 3) == "/o/rows.process-2-of-3.csv"


def test_the_batch_maker_marks_damaged_rows_and_padding(folder):
  paths = (str(folder["good"]["cat"][1]), str(folder["bad"][0]), str(folder["good"]["dog"][0]))
  make = prediction_input.PredictionBatch(
    prediction_input.FileReader(paths), 1, 3, 4, prediction_input.Geometry(20, 3, 0.9)
  )
  batch = make(0)
  assert batch["image"].shape == (4, 20, 20, 3) and batch["image"].dtype == np.uint8
  assert batch["ok"].tolist() == [False, True, False, False]
  assert batch["valid"].tolist() == [True, True, False, False]
  assert "truncated" in batch["reason"][0] and not batch["image"][0].any()


def test_a_bundle_of_logits_files_or_into_a_foreign_folder_is_refused_before_any_work(tmp_path):
  rng = np.random.default_rng(0)
  members = []
  for name in ("large", "sidekick"):
    labels = rng.integers(0, 3, 40)
    path = tmp_path / f"{name}.npz"
    np.savez(
      path,
      val_labels=labels,
      test_labels=labels,
      val_logits=rng.normal(size=(40, 3)).astype(np.float32),
      test_logits=rng.normal(size=(40, 3)).astype(np.float32),
    )
    members.append(f"--config.{name}=logits:{path}")
  (tmp_path / "taken").mkdir()
  (tmp_path / "taken" / "notes.md").write_text("mine")
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}

  def run(*args):
    return subprocess.run(
      [sys.executable, "-m", "duojax.bundle", "--config", "configs/eval_logits.py", *args],
      capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # fmt: skip

  assert_one_line_error(run(*members, f"--output={tmp_path / 'b'}"), 1, "is a logits file")
  assert_one_line_error(run(members[0], f"--output={tmp_path / 'b'}"), 1, "config.sidekick")
  result = run(*members, f"--output={tmp_path / 'taken'}")
  assert_one_line_error(result, 1, "exists and is not a bundle")
  assert not (tmp_path / "b").exists() and os.listdir(tmp_path / "taken") == ["notes.md"]
