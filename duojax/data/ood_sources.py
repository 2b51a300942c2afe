"""Splits of other data sets, read at the models' size: the OOD sets of an evaluation.

`load_split` opens one split of any prepared tfds data set (labels optional);
`folder_split` reads every image file below a folder into memory, with no
import. Both give a `Split` of encoded images that the pipeline decodes and
centre-crops to `image_size`, like the evaluation splits of the data set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from duojax.data import images as images_lib
from duojax.data.sources import Split, check_random_access, open_builder
from duojax.errors import DataError


def load_split(
  name: str,
  data_dir: str | os.PathLike,
  split: str,
  *,
  image_size: int,
  channels: int,
  image_key: str = "image",
  crop_fraction: float = images_lib.CROP_FRACTION,
) -> Split:
  """One split of any prepared tfds data set, read at `image_size` (an OOD set).

  Labels are not needed: rows get label 0 when the data set has no "label".
  """
  data_dir = os.fspath(Path(data_dir).expanduser())
  builder = open_builder(name, data_dir, prepare=False)
  features = builder.info.features
  if image_key not in features:
    raise DataError(f"{name} has no feature {image_key!r} (it has {', '.join(features)})")
  if split not in builder.info.splits:
    raise DataError(
      f"{name} in {data_dir} has no split {split!r} (it has {', '.join(builder.info.splits)})"
    )
  check_random_access(builder, name, data_dir)
  encoded = isinstance(features[image_key], tfds.features.Image)
  source = builder.as_data_source(
    split=split, decoders={image_key: tfds.decode.SkipDecoding()} if encoded else None
  )
  if "label" not in features:
    source = _Unlabelled(source)
  stored = int(features[image_key].shape[2] or 3)
  if not encoded and stored != channels:
    raise DataError(f"{name} has {stored}-channel images, the models take {channels}")
  return Split(
    source,
    np.arange(len(source), dtype=np.int64),
    image_key,
    "label",
    image_size,
    encoded,
    channels,
    crop_fraction,
  )


class _Unlabelled:
  """A random-access source whose examples get label 0 (OOD sets need none)."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, key):
    return {**self.source[key], "label": 0}


def folder_split(
  folder: str | os.PathLike,
  *,
  image_size: int,
  channels: int,
  crop_fraction: float = images_lib.CROP_FRACTION,
) -> Split:
  """Every image file below `folder` (sorted paths, label 0), read at `image_size`.

  For OOD sets, which need no import: the files are read once into memory
  as encoded bytes; files that do not decode are an error naming them.
  """
  root = Path(folder).expanduser()
  if not root.is_dir():
    raise DataError(f"image folder {str(root)!r} does not exist")
  paths = sorted(
    p
    for p in root.rglob("*")
    if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
  )
  examples, bad = [], []
  for path in paths:
    try:
      encoded = path.read_bytes()
    except OSError as e:  # unreadable (permissions), or gone since the listing
      raise DataError(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
    reason = images_lib.check_decodes(encoded)
    if reason is None:
      examples.append({"image": encoded, "label": 0})
    else:
      bad.append(f"{path.relative_to(root)} ({reason})")
  if bad:
    raise DataError(
      f"{len(bad)} files in {str(root)!r} cannot be decoded: "
      f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}"
    )
  if not examples:
    raise DataError(f"image folder {str(root)!r} holds no images")
  return Split(
    examples,
    np.arange(len(examples), dtype=np.int64),
    "image",
    "label",
    image_size,
    True,
    channels,
    crop_fraction,
  )
