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

import collections
import concurrent.futures
import contextlib
import dataclasses
import io
import logging
import multiprocessing
import os
import re
import signal
import sys
import tempfile
import time
from typing import Iterable, Iterator

import tensorflow_datasets as tfds
import tqdm
from PIL import Image

from duojax.data import images, listing
from duojax.data.listing import readable as _readable
from duojax.data.pipeline import usable_cores
from duojax.errors import DataError, FileError

VERSION = "1.0.0"  # of the stored layout: the folder name under NAME
SKIPPED_FILE = "skipped_files.txt"
# Formats stored as they are. MPO is what PIL calls a camera JPEG that carries
# extra frames after the first: every JPEG decoder reads it as that first frame.
KEPT_FORMATS = ("JPEG", "MPO", "PNG")
# A tfds dataset name that `tfds.builder` can find again: lowercase snake_case.
_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
# Skipped files named in the one-line warning; the rest are in SKIPPED_FILE.
_WARN_NAMES = 3
# By default, one worker process per this many files, up to the usable cores:
# a worker takes ~2 s to start (it imports this package), the time it needs
# to check a few hundred typical JPEGs; a small folder is checked in-process.
FILES_PER_WORKER = 500


# Slotted: ImageNet's 1.28 M files are held as ImageFiles and Verdicts at once.
@dataclasses.dataclass(frozen=True, slots=True)
class ImageFile:
  """One file of a split: where it is, its name in the data set, its class."""

  path: str  # absolute
  name: str  # relative to the split's folder, "/"-separated: the stored file_name
  label: int


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
  """What the check found: `reason` is None for a file that decodes."""

  reason: str | None
  reencode: bool  # not JPEG/PNG: stored as a PNG
  size: int  # bytes; the write step sees whether the file changed since


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


# ------------------------------------------------------------------------ scanning
def scan_folder(
  root: str | os.PathLike, class_names: Iterable[str] | None = None
) -> tuple[tuple[str, ...], list[ImageFile]]:
  """(class folder names, files sorted by label then name) of an image folder.

  Without `class_names`, the classes are `root`'s subfolders in sorted order;
  with them (the train folder's), `root`'s subfolders must be among them and
  keep their labels. Files directly in `root` belong to no class: a warning.
  """
  root = os.path.abspath(os.path.expanduser(os.fspath(root)))
  if not os.path.isdir(root):
    what = "is not a folder" if os.path.exists(root) else "does not exist"
    raise DataError(f"image folder {root} {what}")
  try:
    entries = [e for e in os.scandir(root) if not e.name.startswith(".")]
  except OSError as e:
    raise DataError(f"cannot list {root}: {e.strerror}") from None
  folders = sorted(e.name for e in entries if e.is_dir())
  if not folders:
    raise DataError(
      f"{root} has no class subfolders: put each class's images in a subfolder "
      "named after the class (e.g. cat/1.jpg, dog/2.jpg)"
    )
  # A README or licence file beside the class folders is expected; a loose image is not.
  loose, other = listing.split_images(sorted(e.name for e in entries if not e.is_dir()))
  if loose:
    print(
      f"warning: {len(loose)} files directly in {root} are in no class folder and were "
      f"left out: {', '.join(map(_readable, loose[:_WARN_NAMES]))}"
      f"{', ...' if len(loose) > _WARN_NAMES else ''}",
      file=sys.stderr,
      flush=True,
    )
  names = tuple(folders) if class_names is None else tuple(class_names)
  unknown = [f for f in folders if f not in names]
  if unknown:
    raise DataError(
      f"class folder {_readable(unknown[0])!r} of {root} is not a class of the "
      f"train folder ({len(names)} classes): rename or remove it"
    )
  for name in folders:
    if any(c in name for c in "\n\r"):  # tfds keeps class names one a line
      raise DataError(f"class folder {_readable(name)!r} in {root} has a line break in its name")
  files = []
  for name in folders:
    kept, junk = listing.split_images(listing.files_below(os.path.join(root, name)))
    other += junk
    found = sorted(os.path.relpath(p, root) for p in kept)
    if not found:
      what = "image files" if junk else "files"
      raise DataError(f"class folder {os.path.join(root, _readable(name))} has no {what}")
    label = names.index(name)
    files += [
      ImageFile(os.path.join(root, rel), _readable(rel).replace(os.sep, "/"), label)
      for rel in found
    ]
  listing.note_non_images(other, root)
  return names, files


# ------------------------------------------------------------------------ checking
def check_file(path: str) -> Verdict:
  """Whether the file at `path` decodes whole, and whether it must be stored as a PNG."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    return Verdict(f"cannot read: {e.strerror or type(e).__name__}", False, 0)
  try:
    reason = images.check_decodes(data)
    if reason is not None:
      return Verdict(reason, False, len(data))
    with Image.open(io.BytesIO(data)) as image:
      return Verdict(None, image.format not in KEPT_FORMATS, len(data))
  except Exception as e:  # noqa: BLE001
    # PIL's plugins raise more than images.DECODE_ERRORS on hostile input; such
    # a file is one more bad file, not a reason to stop an import of millions.
    return Verdict(images.error_text(e), False, len(data))


def _check_chunk(paths: list[str]) -> list[Verdict]:
  return [check_file(p) for p in paths]


def png_bytes(path: str) -> bytes:
  """The image at `path` as a lossless PNG, in its own mode where PNG has that mode."""
  try:
    with open(path, "rb") as f, Image.open(f) as image:
      image.load()
      out = io.BytesIO()
      try:
        image.save(out, "PNG")
      except (OSError, KeyError, ValueError):  # CMYK, YCbCr, LAB, float, ...: no such PNG
        out = io.BytesIO()
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(out, "PNG")
      return out.getvalue()
  except images.DECODE_ERRORS:  # it decoded when checked
    raise DataError(f"{path} changed during the import: run it again") from None


class _InProcess:
  """The part of an Executor `_in_order` uses, running each call at once (workers=1)."""

  def submit(self, fn, *args):
    future = concurrent.futures.Future()
    try:
      future.set_result(fn(*args))
    except Exception as e:  # noqa: BLE001 -- raised again by .result(), as a pool would
      future.set_exception(e)
    return future


def _ignore_interrupts() -> None:
  # Ctrl-C reaches the whole process group; the parent alone stops the import.
  signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _executor(workers: int):
  if workers == 1:
    yield _InProcess()
    return
  # Spawned, not forked: the parent may run threads (JAX's, tfds's), whose
  # locks a forked child would inherit held.
  pool = concurrent.futures.ProcessPoolExecutor(
    workers, mp_context=multiprocessing.get_context("spawn"), initializer=_ignore_interrupts
  )
  try:
    yield pool
  except concurrent.futures.process.BrokenProcessPool:
    raise DataError(
      "a worker process died while reading images (out of memory, or a decoder "
      "crashed on a file): run again with --workers=1 to see which"
    ) from None
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _in_order(pool, fn, items: Iterable, window: int) -> Iterator:
  """fn(item) for each item, in order, with at most `window` calls pending at a time."""
  pending = collections.deque()
  for item in items:
    pending.append(pool.submit(fn, item))
    if len(pending) >= window:
      yield pending.popleft().result()
  while pending:
    yield pending.popleft().result()


def check_files(files: list[ImageFile], pool, workers: int, desc: str = "") -> list[Verdict]:
  """`check_file` of every file, in chunks spread over `pool`'s `workers`."""
  chunk = max(1, min(256, len(files) // (16 * workers)))
  chunks = [[f.path for f in files[i : i + chunk]] for i in range(0, len(files), chunk)]
  verdicts = []
  with tqdm.tqdm(total=len(files), desc=desc, unit=" files", leave=False, mininterval=2.0) as bar:
    for result in _in_order(pool, _check_chunk, chunks, 4 * workers):
      verdicts += result
      bar.update(len(result))
  return verdicts


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
    pngs = _in_order(
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
    workers = max(1, min(usable_cores(), total // FILES_PER_WORKER))
  if leftovers:
    _warn_leftovers(target, leftovers)
  labels = tuple(map(_readable, class_names))
  listing = os.path.join(target, VERSION, SKIPPED_FILE)
  with _executor(workers) as pool:
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
