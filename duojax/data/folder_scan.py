"""The first two steps of an image-folder import: scan the folder, check every file.

Scanning lists the classes (SRC's subfolders, sorted) and the image files below each;
checking decodes every file once with PIL in worker processes that send back a
`Verdict`, never pixels (`duojax.data.folder` explains why, and writes the data set).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import io
import multiprocessing
import os
import signal
import sys
from typing import Iterable, Iterator

import tqdm
from PIL import Image

from duojax.data import images, listing
from duojax.data.listing import readable as _readable
from duojax.errors import DataError

# Formats stored as they are. MPO is what PIL calls a camera JPEG that carries
# extra frames after the first: every JPEG decoder reads it as that first frame.
KEPT_FORMATS = ("JPEG", "MPO", "PNG")
# Loose files named in the one-line warning.
WARN_NAMES = 3
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
      f"left out: {', '.join(map(_readable, loose[:WARN_NAMES]))}"
      f"{', ...' if len(loose) > WARN_NAMES else ''}",
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
def executor(workers: int):
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


def in_order(pool, fn, items: Iterable, window: int) -> Iterator:
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
    for result in in_order(pool, _check_chunk, chunks, 4 * workers):
      verdicts += result
      bar.update(len(result))
  return verdicts
