"""What `python -m duojax.predict` reads: images from a folder, a path list or a tfds set.

A `PredictionInput` is the rows to predict on, in a fixed order, each with an
id for its output row: an image folder's files (found recursively, sorted,
ids relative to the folder), a text file's paths (one a line, relative paths
taken from the list's own folder, ids as written), or a tfds split of
array_record files (`tfds:NAME[:SPLIT]`, ids the row numbers; the folders
`duojax.import_folder` writes are such sets). Its reader holds only paths or
the tfds data source, so it pickles to grain's worker processes, where
`PredictionBatch` decodes and cuts the images.

Each image is brought to the bundle's batch geometry as evaluation reads
images (`duojax.data.images`): the centre square of `crop_fraction` of its
shorter side, resized to S with the widest member's interpolation; the
members then cut their own views on the device. A file that does not decode
is not an error: its row is marked, with the reason, and the caller lists it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any

import numpy as np
from PIL import Image

from duojax.data import images as images_lib
from duojax.data import listing
from duojax.errors import DataError

TFDS_PREFIX = "tfds:"
DEFAULT_TFDS_SPLIT = "test"


@dataclasses.dataclass(frozen=True, eq=False)
class FileReader:
  """Reads images by position from a tuple of absolute paths."""

  paths: tuple[str, ...]

  def read(self, positions) -> list:
    out = []
    for p in positions:
      try:
        with open(self.paths[p], "rb") as f:
          out.append(f.read())
      except OSError as e:
        out.append(DataError(f"cannot read: {e.strerror or type(e).__name__}"))
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class TfdsReader:
  """Reads images by position from a tfds data source (encoded bytes or arrays)."""

  source: Any
  image_key: str

  def read(self, positions) -> list:
    keys = [int(p) for p in positions]
    get_many = getattr(self.source, "__getitems__", None)
    examples = get_many(keys) if get_many else [self.source[k] for k in keys]
    return [ex[self.image_key] for ex in examples]


@dataclasses.dataclass(frozen=True, eq=False)
class PredictionInput:
  """Rows to predict on: `ids[i]` names row i, `reader.read([i])` gives its image."""

  description: str
  ids: tuple
  reader: FileReader | TfdsReader
  non_images: tuple[str, ...] = ()  # folder files left out for their extension

  def __len__(self) -> int:
    return len(self.ids)

  def fingerprint(self) -> str:
    """A digest of what is read and in which order (for resuming the same run)."""
    digest = hashlib.sha256(self.description.encode())
    for i in self.ids:
      digest.update(str(i).encode("utf-8", "replace") + b"\0")
    return digest.hexdigest()


def open_input(src: str, *, data_dir: str = "data", image_key: str = "image") -> PredictionInput:
  """The rows of SRC: a folder, a text file of paths, or `tfds:NAME[:SPLIT]`."""
  if src.startswith(TFDS_PREFIX):
    return _tfds_input(src[len(TFDS_PREFIX) :], data_dir, image_key)
  path = os.path.abspath(os.path.expanduser(src))
  if os.path.isdir(path):
    return _folder_input(path)
  if os.path.isfile(path):
    if images_lib.is_image_name(path):
      raise DataError(
        f"--input {src} is an image: give its folder, or a text file listing image paths"
      )
    return _list_input(path)
  raise DataError(f"--input {src} does not exist (a folder, a text file of paths, or tfds:NAME)")


def _folder_input(root: str) -> PredictionInput:
  kept, other = listing.split_images(listing.files_below(root))
  if not kept:
    extra = f" ({len(other)} other files)" if other else ""
    raise DataError(f"--input {root} holds no image files{extra}")
  ids = tuple(listing.readable(os.path.relpath(p, root)).replace(os.sep, "/") for p in kept)
  return PredictionInput(f"folder {root}", ids, FileReader(tuple(kept)), tuple(other))


def _list_input(path: str) -> PredictionInput:
  try:
    with open(path, encoding="utf-8") as f:
      lines = [line.strip() for line in f]
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"--input {path}: cannot read the list of paths ({e})") from None
  ids = tuple(line for line in lines if line and not line.startswith("#"))
  if not ids:
    raise DataError(f"--input {path} lists no paths (one image path a line)")
  base = os.path.dirname(path)
  paths = tuple(os.path.join(base, os.path.expanduser(i)) for i in ids)
  missing = [i for i, p in zip(ids, paths) if not os.path.isfile(p)]
  if missing:
    raise DataError(
      f"--input {path}: {len(missing)} of its {len(ids)} paths are not files, e.g. "
      f"{missing[0]!r} (relative paths are taken from the list's folder)"
    )
  return PredictionInput(f"list {path}", ids, FileReader(paths))


def _tfds_input(spec: str, data_dir: str, image_key: str) -> PredictionInput:
  import tensorflow_datasets as tfds

  from duojax.data import sources

  name, _, split = spec.partition(":")
  split = split or DEFAULT_TFDS_SPLIT
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  builder = sources.open_builder(name, data_dir, prepare=False)
  sources.check_random_access(builder, name, data_dir)
  if split not in builder.info.splits:
    raise DataError(f"{name} has no split {split!r} (it has {', '.join(builder.info.splits)})")
  features = builder.info.features
  if image_key not in features:
    raise DataError(f"{name} has no feature {image_key!r} (it has {', '.join(features)})")
  encoded = isinstance(features[image_key], tfds.features.Image)
  decoders = {image_key: tfds.decode.SkipDecoding()} if encoded else None
  source = builder.as_data_source(split=split, decoders=decoders)
  return PredictionInput(
    f"tfds {name}:{split} in {data_dir}", tuple(range(len(source))), TfdsReader(source, image_key)
  )


@dataclasses.dataclass(frozen=True)
class Geometry:
  """The batch's images: S×S×C, the centre `crop_fraction` resized with `interpolation`."""

  size: int
  channels: int
  crop_fraction: float
  interpolation: str = "bilinear"


def cut(item, geometry: Geometry) -> tuple[np.ndarray | None, str | None]:
  """(uint8 [S, S, C], None) for an encoded or decoded image, else (None, why not)."""
  if isinstance(item, Exception):
    return None, str(item)
  try:
    if isinstance(item, (bytes, bytearray)):
      if not item:
        return None, "empty file"
      image = images_lib.open_encoded(bytes(item))
    else:
      array = np.asarray(item)
      image = Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array)
    box = images_lib.center_crop_box(image.width, image.height, geometry.crop_fraction)
    out = images_lib.crop_resize(
      image, box, geometry.size, geometry.channels, interpolation=geometry.interpolation
    )
    return out, None
  except Exception as e:  # noqa: BLE001 -- PIL raises many types on hostile files
    return None, images_lib.error_text(e)


@dataclasses.dataclass(frozen=True, eq=False)
class PredictionBatch:
  """Batch index -> rows [lo + index·B, lo + (index + 1)·B) ∩ [lo, hi) of the input.

  {"image": uint8 [B, S, S, C] (zeros where a row failed or is padding),
   "ok": bool [B], "reason": str [B] (why a row failed; "" otherwise),
   "valid": bool [B] (False on the padding after `hi`)}.
  """

  reader: FileReader | TfdsReader
  lo: int
  hi: int
  batch_size: int
  geometry: Geometry

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    g, b = self.geometry, self.batch_size
    start = self.lo + int(index) * b
    positions = np.arange(start, min(start + b, self.hi))
    batch = np.zeros((b, g.size, g.size, g.channels), np.uint8)
    ok = np.zeros(b, bool)
    reasons = [""] * b
    for i, item in enumerate(self.reader.read(positions)):
      image, reasons[i] = cut(item, g)
      if image is not None:
        batch[i], ok[i], reasons[i] = image, True, ""
    valid = np.arange(b) < len(positions)
    return {"image": batch, "ok": ok, "reason": np.asarray(reasons, dtype=str), "valid": valid}
