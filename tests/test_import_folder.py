"""`python -m duojax.import_folder`: an image folder in, a tfds array_record data set out.

The folder is `helpers.make_image_folder`'s (JPEG and PNG in several modes, a
truncated JPEG, an empty file) plus what only these tests need: formats that
are re-encoded as PNG, nested and hidden files, a text file, a loose file.
Imports run in-process (workers=1) unless a test is about the worker pool.
"""

import contextlib
import io
import os
import subprocess
import sys

import helpers
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import ROOT, assert_one_line_error
from PIL import Image, features

from duojax.data import folder, folder_scan
from duojax.errors import DataError

NAME = "my_pets"


def _add_extras(root):
  """Adds the files `make_image_folder` lacks; returns (good: {name: path}, bad names)."""
  rng = np.random.default_rng(7)
  rgb = Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8))
  good = {
    "cat/bitmap.bmp": ("BMP", rgb, {}),
    "dog/more/deeper/nested.jpg": ("JPEG", rgb, {"quality": 90}),
    "fish/cmyk.tiff": ("TIFF", rgb.convert("CMYK"), {}),
    "fish/grey16.tiff": (
      "TIFF",
      Image.fromarray(rng.integers(0, 65536, (40, 30), dtype=np.uint16)),
      {},
    ),
    "dog/clear.gif": ("GIF", rgb.quantize(16), {"transparency": 0}),
  }
  if features.check("webp"):
    good["cat/lossless.webp"] = ("WEBP", rgb, {"lossless": True})
  paths = {}
  for name, (fmt, image, options) in good.items():
    paths[name] = root / name
    paths[name].parent.mkdir(parents=True, exist_ok=True)
    image.save(paths[name], fmt, **options)
  # Not images by their extension: counted in one note, never decoded.
  (root / "dog" / "notes.txt").write_text("not an image")
  (root / "fish" / "Thumbs.db").write_bytes(b"\0" * 32)
  # Ignored: hidden files and folders (at every level), files in no class folder.
  (root / "cat" / ".DS_Store").write_bytes(b"\0junk")
  (root / "fish" / ".thumbs").mkdir()
  rgb.save(root / "fish" / ".thumbs" / "t.jpg")
  (root / ".hidden_class").mkdir()
  rgb.save(root / ".hidden_class" / "h.jpg")
  (root / "README.txt").write_text("loose")
  rgb.save(root / "loose.png")
  return paths, []


def _import(src, data_dir, **kwargs):
  """folder.import_folder with stderr captured: (report, stderr text)."""
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    report = folder.import_folder(
      src, dataset=kwargs.pop("dataset", NAME), data_dir=data_dir, **{"workers": 1, **kwargs}
    )
  return report, err.getvalue()


def _records(data_dir, split, name=NAME):
  source = tfds.builder(name, data_dir=os.fspath(data_dir)).as_data_source(
    split=split, decoders={"image": tfds.decode.SkipDecoding()}
  )
  return [source[i] for i in range(len(source))]


def _name(record):
  name = record["file_name"]
  return name.decode() if isinstance(name, bytes) else name


def _warnings(stderr):
  # tqdm redraws with carriage returns; the warnings are whole lines of their own.
  return [
    line[line.index("warning: ") :]
    for line in stderr.replace("\r", "\n").splitlines()
    if "warning: " in line
  ]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  base = tmp_path_factory.mktemp("images")
  train = helpers.make_image_folder(base / "train", per_class=6)
  extras, extra_bad = _add_extras(base / "train")
  test = helpers.make_image_folder(base / "test", classes=("cat", "fish"), per_class=3, seed=1)
  return {"train": train, "test": test, "extras": extras, "extra_bad": extra_bad}


@pytest.fixture(scope="module")
def imported(folders, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds") / "out"
  report, stderr = _import(folders["train"]["root"], data_dir, test_folder=folders["test"]["root"])
  return data_dir, report, stderr


def _relative(made, path):
  return path.relative_to(made["root"]).as_posix()


# ------------------------------------------------------------------------ the import
def test_stored_bytes_labels_and_class_names(folders, imported):
  data_dir, report, _ = imported
  classes = folders["train"]["classes"]
  builder = tfds.builder(NAME, data_dir=os.fspath(data_dir))
  assert builder.info.features["label"].names == classes == ["cat", "dog", "fish"]
  assert report.class_names == tuple(classes)
  for split in ("train", "test"):
    made = folders[split]
    records = _records(data_dir, split)
    names = [_name(r) for r in records]
    expected = {_relative(made, p) for paths in made["good"].values() for p in paths}
    if split == "train":
      expected |= set(folders["extras"])
    assert set(names) == expected and len(names) == len(expected)
    # Rows in (label, file name) order; labels are the sorted class folders' indices.
    assert names == sorted(names, key=lambda n: (classes.index(n.split("/")[0]), n))
    for record, name in zip(records, names):
      assert record["label"] == classes.index(name.split("/")[0])
      path = made["root"] / name
      if Image.open(path).format in ("JPEG", "PNG"):
        assert record["image"] == path.read_bytes(), name  # as they are, not re-encoded
    assert report.counts[split] == len(records)


def test_other_formats_become_lossless_pngs_in_their_own_mode(folders, imported):
  records = {_name(r): r["image"] for r in _records(imported[0], "train")}
  for name, path in folders["extras"].items():
    original, stored = Image.open(path), Image.open(io.BytesIO(records[name]))
    if original.format == "JPEG":
      continue
    assert stored.format == "PNG", name
    # PNG has no CMYK: that one alone is made RGB.
    assert stored.mode == ("RGB" if original.mode == "CMYK" else original.mode), name

    def pixels(image):
      return (
        np.asarray(image, np.int64)
        if image.mode.startswith("I")
        else np.asarray(image.convert("RGBA"))
      )

    np.testing.assert_array_equal(pixels(stored), pixels(original), err_msg=name)


def test_bad_files_are_left_out_warned_about_and_listed(folders, imported):
  data_dir, report, stderr = imported
  bad = {
    "train": [_relative(folders["train"], p) for p in folders["train"]["bad"]]
    + folders["extra_bad"],
    "test": [_relative(folders["test"], p) for p in folders["test"]["bad"]],
  }
  warnings = _warnings(stderr)
  n_train = len(report.skipped["train"]) + report.counts["train"]
  train_warning = [w for w in warnings if " train files " in w]
  assert (
    len(train_warning) == 1 and f"2 of {n_train} train files cannot be decoded" in train_warning[0]
  )
  for name in bad["train"]:
    assert name in train_warning[0]
  assert "cat/bad.jpg (OSError: image file is truncated" in train_warning[0]
  assert "fish/empty.png (empty file)" in train_warning[0]
  assert any("loose.png" in w and "no class folder" in w for w in warnings)
  # The files that are not images are one note, with no decode error and no address.
  notes = [line for line in stderr.splitlines() if line.startswith("note: ")]
  assert any("3 files" in n and "not images" in n for n in notes), notes
  assert "README.txt" in notes[0] and "notes.txt" in stderr and "Thumbs.db" not in "".join(warnings)
  assert "0x" not in stderr
  listing = (data_dir / NAME / folder.VERSION / folder.SKIPPED_FILE).read_text().splitlines()
  assert listing[0] == "split\tfile_name\treason"
  assert sorted(line.split("\t")[:2] for line in listing[1:]) == sorted(
    [split, name] for split, names in bad.items() for name in names
  )
  assert {s: sorted(n for n, _ in files) for s, files in report.skipped.items()} == {
    s: sorted(names) for s, names in bad.items()
  }
  for split in ("train", "test"):
    assert not set(bad[split]) & {_name(r) for r in _records(data_dir, split)}


def test_report_line(imported):
  data_dir, report, _ = imported
  line = report.summary()
  assert "\n" not in line
  assert line.startswith(
    f"imported {NAME}: {report.counts['train']} train and "
    f"{report.counts['test']} test images of 3 classes into "
  )
  assert str(data_dir / NAME / folder.VERSION) in line and "4 left out" in line


def test_classes_are_the_sorted_folder_names(tmp_path):
  made = helpers.make_image_folder(
    tmp_path, classes=("zebra", "Ant", "bee"), per_class=1, bad=False
  )
  names, files = folder_scan.scan_folder(tmp_path)
  assert names == ("Ant", "bee", "zebra") == tuple(made["classes"])
  assert [(f.name, f.label) for f in files] == [
    ("Ant/Ant_000.jpg", 0),
    ("bee/bee_000.jpg", 1),
    ("zebra/zebra_000.jpg", 2),
  ]


@pytest.mark.slow  # worker processes
def test_worker_processes_store_the_same_records(folders, imported, tmp_path):
  _import(folders["train"]["root"], tmp_path, test_folder=folders["test"]["root"], workers=2)

  def rows(data_dir):
    return {
      (split, _name(r), r["label"], r["image"])
      for split in ("train", "test")
      for r in _records(data_dir, split)
    }

  assert rows(tmp_path) == rows(imported[0])


# --------------------------------------------------------------- interruptions
def test_a_failed_write_leaves_nothing_and_the_rerun_works(folders, tmp_path, monkeypatch):
  src = tmp_path / "src"
  made = helpers.make_image_folder(src, per_class=3, bad=False)
  victim = made["good"]["dog"][0]
  original = victim.read_bytes()
  check_files = folder_scan.check_files

  def check_then_change(*args, **kwargs):
    verdicts = check_files(*args, **kwargs)
    victim.write_bytes(original[:-10])  # the file changes between the check and the write
    return verdicts

  monkeypatch.setattr(folder, "check_files", check_then_change)
  data_dir = tmp_path / "new" / "tfds"
  with pytest.raises(DataError, match="changed during the import: run it again") as error:
    _import(src, data_dir)
  assert "\n" not in str(error.value)
  # Neither a data set nor tfds's incomplete.* folder, nor the folders made for them.
  assert not (tmp_path / "new").exists()
  monkeypatch.undo()
  victim.write_bytes(original)
  report, _ = _import(src, data_dir)
  assert report.counts == {"train": 9}


def test_the_leftover_of_a_killed_import_is_ignored(tmp_path):
  src = tmp_path / "src"
  helpers.make_image_folder(src, per_class=3, bad=False)
  # What a SIGKILL during tfds's write leaves: a half-written incomplete.* folder.
  leftover = tmp_path / "tfds" / NAME / f"incomplete.ABC123_{folder.VERSION}"
  leftover.mkdir(parents=True)
  (leftover / f"{NAME}-train.array_record-00000-of-00001").write_bytes(b"\0" * 100)
  report, stderr = _import(src, tmp_path / "tfds")
  assert any(f"interrupted imports left ({leftover.name})" in w for w in _warnings(stderr))
  assert len(_records(tmp_path / "tfds", "train")) == report.counts["train"] == 9


# ----------------------------------------------------------------------- bad input
def _no_class_folders(tmp_path):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "a.jpg").write_bytes(b"x")
  return {}


def _empty_src(tmp_path):
  (tmp_path / "src").mkdir()
  return {}


def _empty_class(tmp_path):
  helpers.make_image_folder(tmp_path / "src", per_class=1, bad=False)
  (tmp_path / "src" / "wolf" / ".hidden").mkdir(parents=True)
  return {}


def _unknown_test_class(tmp_path):
  helpers.make_image_folder(tmp_path / "src", per_class=1, bad=False)
  helpers.make_image_folder(tmp_path / "test", classes=("cat", "wolf"), per_class=1, bad=False)
  return {"test_folder": tmp_path / "test"}


def _all_bad(tmp_path):
  helpers.make_image_folder(tmp_path / "src", per_class=1, bad=False)
  for name in ("cat", "dog"):
    (tmp_path / "test" / name).mkdir(parents=True)
    (tmp_path / "test" / name / "x.jpg").write_bytes(b"not a jpeg")
  return {"test_folder": tmp_path / "test"}


def _src_file(tmp_path):
  (tmp_path / "src").write_bytes(b"x")
  return {}


def _valid_src(tmp_path):
  helpers.make_image_folder(tmp_path / "src", per_class=1, bad=False)
  return {}


def _data_dir_inside(tmp_path):
  helpers.make_image_folder(tmp_path / "src", per_class=1, bad=False)
  return {"data_dir": tmp_path / "src" / "out"}


@pytest.mark.parametrize(
  "setup, kwargs, message",
  [
    (lambda p: {}, {}, "src does not exist"),
    (_src_file, {}, "src is not a folder"),
    (_empty_src, {}, "has no class subfolders"),
    (_no_class_folders, {}, "has no class subfolders"),
    (_empty_class, {}, "wolf has no files"),
    (_unknown_test_class, {}, "class folder 'wolf' of"),
    (_all_bad, {}, "none of the 2 files in"),
    (_valid_src, {"dataset": "MyPets"}, "is not lowercase snake_case"),
    (_valid_src, {"dataset": "my-pets"}, "is not lowercase snake_case"),
    (_valid_src, {"dataset": "mnist"}, "belongs to a tfds catalogue data set"),
    (_valid_src, {"workers": 0}, "--workers must be >= 1"),
    (_data_dir_inside, {}, "is inside the image folder"),
  ],
  ids=[
    "missing",
    "file",
    "empty",
    "no-classes",
    "empty-class",
    "unknown-test-class",
    "all-bad",
    "camel-case",
    "dash",
    "catalogue-name",
    "workers",
    "data-dir-inside",
  ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, setup, kwargs, message):
  extra = setup(tmp_path)
  data_dir = extra.pop("data_dir", tmp_path / "tfds")
  before = sorted(p for p in tmp_path.rglob("*"))
  with pytest.raises(DataError) as error:
    _import(tmp_path / "src", data_dir, **{**extra, **kwargs})
  assert message in str(error.value) and "\n" not in str(error.value), str(error.value)
  assert not data_dir.exists()
  assert sorted(p for p in tmp_path.rglob("*")) == before


def test_an_existing_data_set_is_not_overwritten(folders, imported):
  data_dir = imported[0]
  before = {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")}
  with pytest.raises(
    DataError,
    match=f"{NAME} already exists: delete it to import again, or choose another --dataset name",
  ) as error:
    _import(folders["train"]["root"], data_dir)
  assert "\n" not in str(error.value)
  assert {p: p.stat().st_mtime_ns for p in data_dir.rglob("*")} == before


# ---------------------------------------------------------------------------- CLI
def _cli(*args):
  return subprocess.run(
    [sys.executable, "-m", "duojax.import_folder", *map(str, args)],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )


@pytest.mark.slow  # subprocesses
def test_cli(tmp_path):
  made = helpers.make_image_folder(tmp_path / "src", per_class=3)
  data_dir = tmp_path / "tfds"
  result = _cli(tmp_path / "missing", "--dataset", NAME, "--data_dir", data_dir)
  assert_one_line_error(result, 1, "does not exist")
  assert not data_dir.exists()
  assert_one_line_error(_cli(made["root"], "--data_dir", data_dir), 2, "--dataset")
  result = _cli(made["root"], "--dataset", NAME, "--data_dir", data_dir)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.count("\n") == 1 and result.stdout.startswith(f"imported {NAME}: 9 train")
  assert "warning: 2 of 11 train files cannot be decoded" in result.stderr
  assert len(_records(data_dir, "train")) == 9
  assert_one_line_error(
    _cli(made["root"], "--dataset", NAME, "--data_dir", data_dir), 1, "already exists"
  )
