"""An image folder (one subfolder per class) imported as a tfds array_record data set.

`import_folder` runs in three steps, and writes only in the last one:

1. Scan. Classes are SRC's subfolder names in sorted order, so label i is the
   i-th sorted name, as torchvision's `ImageFolder` and timm's heads assume.
   Files anywhere below a class folder count; hidden ones (".name") do not.
2. Check. Every file is decoded once with PIL (`images.check_decodes`), in
   worker processes. Workers receive paths and send back a verdict only, never
   pixels or bytes: the write step reads the files again, which for a data set
   the size of ImageNet costs a second pass over the disk rather than the whole
   data set through the workers' pipes. Files that do not decode are left out,
   and listed on stderr and in `skipped_files.txt` next to the data.
3. Write. A tfds `GeneratorBasedBuilder` named after the data set stores JPEG
   and PNG bytes as they are (the reader decodes with PIL and makes every mode
   RGB itself); other formats PIL reads are re-encoded losslessly as PNG in
   their own mode. tfds writes into an `incomplete.*` folder and renames it
   when done, so an interrupted import leaves no prepared data set; the name is
   free again for the next run, which ignores such leftovers.

The builder class is made per import (`name` is the user's data set name) and
never registered: `tfds.builder(NAME, data_dir=DIR)` finds the prepared data
set from its files, with no code of this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import sys
import tempfile
import time

import tensorflow_datasets as tfds

from duojax.data import folder_scan
from duojax.data.folder_scan import (
  ImageFile,
  Verdict,
  check_files,
  executor,
  in_order,
  png_bytes,
  scan_folder,
)
from duojax.data.listing import readable as _readable
from duojax.data.pipeline import usable_cores
from duojax.errors import DataError, FileError

VERSION = "1.0.0"  # of the stored layout: the folder name under NAME
SKIPPED_FILE = "skipped_files.txt"
# A tfds dataset name that `tfds.builder` can find again: lowercase snake_case.
_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Skipped files named in the one-line warning; the rest are in SKIPPED_FILE.
_WARN_NAMES = folder_scan.WARN_NAMES


@dataclasses.dataclass(frozen=True)
class ImportReport:
  """What an import wrote, and what it left out; `summary()` is the CLI's report line."""

  name: str
  path: str  # the prepared version folder
  class_names: tuple[str, ...]
  counts: dict[str, int]  # split -> images stored
  skipped: dict[str, list[tuple[str, str]]]  # split -> [(file_name, reason)]
  seconds: float

  def summary(self) -> str:
    counts = " and ".join(f"{n:,} {split}" for split, n in self.counts.items())
    left_out = sum(map(len, self.skipped.values()))
    note = f"; {left_out} left out, see {SKIPPED_FILE}" if left_out else ""
    return (
      f"imported {self.name}: {counts} images of {len(self.class_names)} classes into "
      f"{self.path} in {self.seconds:.1f} s{note}"
    )


def check_dataset_name(name: str) -> None:
  """Raises a DataError unless tfds can find a data set of this name from its files."""
  if not _NAME.fullmatch(name or ""):
    raise DataError(
      f"dataset name {name!r} is not lowercase snake_case (letters, digits and "
      "single underscores, starting with a letter): e.g. my_pets"
    )
  try:
    tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError:
    return
  # tfds.builder prefers a catalogue builder's code to prepared files of the same name.
  raise DataError(
    f"dataset name {name!r} belongs to a tfds catalogue data set, which tfds "
    f"would load instead of the import: choose another, e.g. {name}_folder"
  )


# ------------------------------------------------------------------------ writing
class _FolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """The checked files of each split, as tfds examples (made per import: `name`)."""

  VERSION = tfds.core.Version(VERSION)
  RELEASE_NOTES = {str(VERSION): "Imported from an image folder by duojax.import_folder."}

  def __init__(self, *, class_names, plan, skipped, pool, workers, source, **kwargs):
    self._class_names, self._plan, self._skipped = class_names, plan, skipped
    self._pool, self._workers, self._source = pool, workers, source
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=f"Images imported from {self._source} by duojax.import_folder.",
      features=tfds.features.FeaturesDict(
        {
          # Stored encoded as found (JPEG/PNG, any mode); the declared shape is
          # what the reader makes of them: RGB.
          "image": tfds.features.Image(shape=(None, None, 3), encoding_format=None),
          "label": tfds.features.ClassLabel(names=self._class_names),
          "file_name": tfds.features.Text(),
        }
      ),
      supervised_keys=("image", "label"),
      # Row i of a split is its i-th file by (label, file name).
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The files are local.
    return {split: self._generate_examples(split) for split in self._plan}

  def _generate_examples(self, split):
    checked = self._plan[split]
    pngs = in_order(
      self._pool, png_bytes, (f.path for f, v in checked if v.reencode), 4 * self._workers
    )
    for i, (file, verdict) in enumerate(checked):
      if verdict.reencode:
        data = next(pngs)
      else:
        with open(file.path, "rb") as f:
          data = f.read()
        if len(data) != verdict.size:
          raise DataError(f"{file.path} changed during the import: run it again")
      yield i, {"image": data, "label": file.label, "file_name": file.name}

  def _download_and_prepare(self, dl_manager, download_config):
    super()._download_and_prepare(dl_manager, download_config)
    # Still the incomplete folder: the list appears with the data, or not at all.
    lines = ["split\tfile_name\treason"] + [
      f"{split}\t{_escaped(name)}\t{reason}"
      for split, files in self._skipped.items()
      for name, reason in files
    ]
    with open(os.path.join(self.data_dir, SKIPPED_FILE), "w") as f:
      f.write("\n".join(lines) + "\n")


def _escaped(name: str) -> str:
  return name.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _leftovers(target: str) -> list[str]:
  """Unfinished imports in `target`; a DataError if it holds anything else."""
  if not os.path.lexists(target):
    return []
  entries = os.listdir(target) if os.path.isdir(target) else [""]
  others = [e for e in entries if not e.startswith(tfds.core.constants.INCOMPLETE_PREFIX)]
  if others:
    raise DataError(
      f"{target} already exists: delete it to import again, or choose another --dataset name"
    )
  return [os.path.join(target, e) for e in entries]


def _warn_skipped(split: str, skipped: list[tuple[str, str]], total: int, listing: str) -> None:
  shown = ", ".join(f"{name} ({reason[:80]})" for name, reason in skipped[:_WARN_NAMES])
  more = ", ..." if len(skipped) > _WARN_NAMES else ""
  print(
    f"warning: {len(skipped)} of {total} {split} files cannot be decoded and were left out: "
    f"{shown}{more}; the full list goes to {listing}",
    file=sys.stderr,
    flush=True,
  )


@contextlib.contextmanager
def _quiet_absl():
  # tfds warns about every incomplete.* folder it glances at; `_leftovers` has said it once.
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _data_dir(data_dir: str | os.PathLike) -> str:
  """`data_dir` as an absolute path, checked to be a folder if it exists."""
  data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
  if os.path.exists(data_dir) and not os.path.isdir(data_dir):
    raise DataError(f"--data_dir {data_dir} is a file, not a folder")
  return data_dir


def _image_folders(
  src: str | os.PathLike, test_folder: str | os.PathLike | None, data_dir: str
) -> dict[str, str]:
  """Split -> absolute image folder, none of them holding `data_dir`."""
  folders = {"train": os.path.abspath(os.path.expanduser(os.fspath(src)))}
  if test_folder is not None:
    folders["test"] = os.path.abspath(os.path.expanduser(os.fspath(test_folder)))
  for folder in folders.values():
    if os.path.realpath(data_dir).startswith(os.path.join(os.path.realpath(folder), "")):
      raise DataError(
        f"--data_dir {data_dir} is inside the image folder {folder}: the import "
        "would become a class of a later import; choose a folder outside it"
      )
  return folders


def _scan(folders: dict[str, str]) -> tuple[tuple[str, ...], dict[str, list[ImageFile]]]:
  """(the train folder's class names, split -> its files): later splits keep the
  train folder's labels."""
  class_names, scanned = None, {}
  for split, folder in folders.items():
    class_names, scanned[split] = scan_folder(folder, class_names)
  return class_names, scanned


def _warn_leftovers(target: str, leftovers: list[str]) -> None:
  print(
    f"warning: {target} holds what interrupted imports left "
    f"({', '.join(map(os.path.basename, leftovers))}): ignored; delete it to free the space",
    file=sys.stderr,
    flush=True,
  )


def _check_splits(
  scanned: dict[str, list[ImageFile]], folders: dict[str, str], pool, workers: int, listing: str
) -> tuple[dict[str, list[tuple[ImageFile, Verdict]]], dict[str, list[tuple[str, str]]]]:
  """(split -> the files that decode with their verdicts, split -> [(file_name,
  reason)] of those left out); a DataError for a split where none decodes."""
  plan, skipped = {}, {}
  for split, files in scanned.items():
    verdicts = check_files(files, pool, workers, desc=f"checking {split} images")
    plan[split] = [(f, v) for f, v in zip(files, verdicts) if v.reason is None]
    skipped[split] = [(f.name, v.reason) for f, v in zip(files, verdicts) if v.reason]
    if not plan[split]:
      name, reason = skipped[split][0]
      raise DataError(
        f"none of the {len(files)} files in {folders[split]} decodes as an "
        f"image (e.g. {name}: {reason})"
      )
    if skipped[split]:
      _warn_skipped(split, skipped[split], len(files), listing)
  return plan, skipped


def _builder(dataset: str, data_dir: str, **kwargs) -> _FolderBuilder:
  """A `_FolderBuilder` named `dataset` (never registered), writing array_record
  into `data_dir`; `kwargs` are its own arguments."""
  with _quiet_absl():
    builder_cls = type(
      f"ImageFolder_{dataset}", (_FolderBuilder,), {"name": dataset}, skip_registration=True
    )
    return builder_cls(data_dir=data_dir, file_format="array_record", **kwargs)


def _write(builder: _FolderBuilder, target: str, dataset: str, data_dir: str) -> None:
  """Prepares `builder`'s data set in `target`; a failed write leaves no folder
  it made, and an OSError of the file system is a FileError."""
  # What a failed write leaves: the folders tfds made on the way (it removes
  # its incomplete.* folder itself), deepest first.
  made, folder = [], target
  while not os.path.exists(folder):
    made.append(folder)
    folder = os.path.dirname(folder)
  try:
    # tfds's own messages go to stderr with its progress bars: stdout is the report.
    with (
      tempfile.TemporaryDirectory(prefix=".import-downloads-") as downloads,
      contextlib.redirect_stdout(sys.stderr),
    ):
      builder.download_and_prepare(
        download_dir=downloads,  # tfds makes one even with nothing to download
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
      )
  except BaseException as e:
    for folder in made:
      with contextlib.suppress(OSError):  # not empty: not only ours
        os.rmdir(folder)
    if isinstance(e, OSError) and e.errno is not None and not isinstance(e, FileError):
      # A full disk, or a folder made read-only during the import.
      raise FileError(e.errno, f"cannot write {dataset} in {data_dir}: {e.strerror}") from e
    raise


def import_folder(
  src: str | os.PathLike,
  *,
  dataset: str,
  data_dir: str | os.PathLike,
  test_folder: str | os.PathLike | None = None,
  workers: int | None = None,
) -> ImportReport:
  """Imports `src` (and `test_folder`) as tfds data set `dataset` in `data_dir`.

  Split "train" comes from `src`, "test" from `test_folder`. Everything is
  checked before anything is written; a DataError says what is wrong in one
  line. `workers` processes decode (1: in-process; default: one per
  FILES_PER_WORKER files, up to the usable cores).
  """
  start = time.perf_counter()
  check_dataset_name(dataset)
  if workers is not None and workers < 1:
    raise DataError(f"--workers must be >= 1, got {workers}")
  data_dir = _data_dir(data_dir)
  target = os.path.join(data_dir, dataset)
  leftovers = _leftovers(target)
  folders = _image_folders(src, test_folder, data_dir)
  class_names, scanned = _scan(folders)
  if workers is None:
    total = sum(map(len, scanned.values()))
    workers = max(1, min(usable_cores(), total // folder_scan.FILES_PER_WORKER))
  if leftovers:
    _warn_leftovers(target, leftovers)
  labels = tuple(map(_readable, class_names))
  listing = os.path.join(target, VERSION, SKIPPED_FILE)
  with executor(workers) as pool:
    plan, skipped = _check_splits(scanned, folders, pool, workers, listing)
    builder = _builder(
      dataset,
      data_dir,
      class_names=labels,
      plan=plan,
      skipped=skipped,
      pool=pool,
      workers=workers,
      source=folders["train"],
    )
    _write(builder, target, dataset, data_dir)
  return ImportReport(
    dataset,
    os.fspath(builder.data_dir),
    labels,
    {split: len(files) for split, files in plan.items()},
    skipped,
    time.perf_counter() - start,
  )
