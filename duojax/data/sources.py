"""Data sets and splits: tfds array_record sets read with random access.

`load_dataset` returns train/val/test `Split`s of a tfds dataset prepared in
array_record format, read with no TensorFlow. The embedded Fashion-MNIST is
fetched and prepared on demand (`duojax.data.embedded`); any other tfds
dataset prepared in `data_dir` is used by name. Small sets are held in memory
(cached as .npz next to the prepared files), with their channel statistics.
"""

import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import json_format

from duojax.data import embedded
from duojax.errors import DataError

# User-facing name -> tfds builder name, for data sets duojax prepares itself.
EMBEDDED_DATASETS = {"fashion_mnist": "duojax_fashion_mnist"}
# Hold splits in memory below this size: the array_record reader plus tfds's
# decoding cost ~70us per example in Python, a numpy gather next to nothing.
CACHE_LIMIT_BYTES = 2 << 30
# Seed stream of the statistics sample ([0, 0, stream]); streams 0 and 1 are
# the pipeline's shuffling and augmentation (`duojax.data.pipeline`).
_STATS_STREAM = 2


# ------------------------------------------------------------- sources, splits
@dataclasses.dataclass(frozen=True, eq=False)
class ArraySource:
  """A tfds split held in memory: images uint8 [N,H,W,C], labels int32 [N]."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
  """Rows `indices` (int64, ascending) of a random-access `source`.

  `source` is an `ArraySource` or a tfds data source, whose examples are dicts
  with the image under `image_key` and the label under `label_key`. Variable
  size images are resized and centre-cropped to `image_size`.
  """
  source: Any
  indices: np.ndarray
  image_key: str = "image"
  label_key: str = "label"
  image_size: int | None = None

  def __len__(self) -> int:
    return len(self.indices)


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """Splits of a classification data set and what a model needs to know of it."""
  name: str
  train: Split
  val: Split
  test: Split
  num_classes: int
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]  # (H, W, C)
  mean: np.ndarray  # float32 [C], of x/255 over the tfds train split
  std: np.ndarray  # float32 [C]


def _fit_image(image: np.ndarray, size: int | None) -> np.ndarray:
  """Resizes the short side to `size` and centre-crops a square (if needed)."""
  if size is None or image.shape[:2] == (size, size):
    return image
  from PIL import Image
  h, w, c = image.shape
  scale = size / min(h, w)
  new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
  resized = Image.fromarray(image[..., 0] if c == 1 else image).resize(
      (new_w, new_h), Image.BILINEAR)
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return np.asarray(resized).reshape(new_h, new_w, c)[top:top + size, left:left + size]


def read_examples(split: Split, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [n,H,W,C] and labels int32 [n] of `split.indices[positions]`."""
  rows = split.indices[positions]
  if isinstance(split.source, ArraySource):
    return split.source.images[rows], split.source.labels[rows]
  keys = [int(r) for r in rows]
  # tfds sources read a batch of records in one call; plain sequences do not.
  get_many = getattr(split.source, "__getitems__", None)
  examples = get_many(keys) if get_many else [split.source[k] for k in keys]
  images = [_fit_image(np.asarray(ex[split.image_key]), split.image_size) for ex in examples]
  labels = np.asarray([ex[split.label_key] for ex in examples], dtype=np.int32)
  return np.stack(images) if images else np.zeros((0, 0, 0, 0), np.uint8), labels


def materialize(split: Split, chunk: int = 4096) -> ArraySource:
  """Reads all rows of `split.source` into memory, in `split`'s coordinates."""
  everything = dataclasses.replace(split, indices=np.arange(len(split.source), dtype=np.int64))
  parts = [read_examples(everything, np.arange(i, min(i + chunk, len(everything))))
           for i in range(0, len(everything), chunk)]
  return ArraySource(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def channel_stats(split: Split, max_examples: int = 10_000, chunk: int = 4096):
  """Per-channel mean and std (float32 [C]) of x/255 over `split`.

  In-memory splits use every example; streamed ones a fixed random sample of
  `max_examples`, which pins the statistics to ~3 decimals at a fraction of
  the cost of a pass over e.g. ImageNet.
  """
  positions = np.arange(len(split))
  if not isinstance(split.source, ArraySource) and len(split) > max_examples:
    rng = np.random.default_rng([0, 0, _STATS_STREAM])
    positions = np.sort(rng.choice(len(split), max_examples, replace=False))
  total = total_sq = count = 0
  for i in range(0, len(positions), chunk):
    images, _ = read_examples(split, positions[i:i + chunk])
    pixels = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    total, total_sq = total + pixels.sum(0), total_sq + (pixels**2).sum(0)
    count += len(pixels)
  mean = total / count
  return mean.astype(np.float32), np.sqrt(total_sq / count - mean**2).astype(np.float32)


def _write_atomically(path: Path, write) -> None:
  """Writes a cache file whole or not at all; skipped where `path` is read-only."""
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  try:
    path.parent.mkdir(exist_ok=True)
    with open(tmp, "wb") as f:
      write(f)
    os.replace(tmp, path)
  except OSError:
    tmp.unlink(missing_ok=True)


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _corrupt_cache(path: Path, error: BaseException) -> DataError:
  return DataError(f"cache file {path} is corrupt ({_first_line(error)}): delete it and it "
                   "is rebuilt from the prepared data")


def _read_prepared(folder: Path, read):
  """`read()` of a prepared tfds split, its readers' errors as one DataError line.

  array_record raises RuntimeError on a damaged file, deep in its reader.
  """
  try:
    return read()
  except DataError:
    raise
  except (RuntimeError, OSError) as e:
    raise DataError(f"cannot read the prepared data in {folder} ({_first_line(e)}): the "
                    "files are damaged; delete the folder and prepare the dataset again") from None


def _cached_stats(split: Split, folder: Path) -> tuple[np.ndarray, np.ndarray]:
  """`channel_stats` of a tfds split, cached as JSON in `folder`."""
  path = folder / f"stats_{split.image_key}_{split.image_size}.json"
  if path.is_file():
    try:
      stats = json.loads(path.read_text())
      return np.float32(stats["mean"]), np.float32(stats["std"])
    except (ValueError, KeyError, TypeError, OSError) as e:
      raise _corrupt_cache(path, e) from None
  mean, std = _read_prepared(folder.parent, lambda: channel_stats(split))
  text = json.dumps({"mean": mean.tolist(), "std": std.tolist()})
  _write_atomically(path, lambda f: f.write(text.encode()))
  return mean, std


def _cached_arrays(split: Split, folder: Path, name: str) -> ArraySource:
  """`materialize` of a tfds split, cached as .npz in `folder`.

  Loading it takes ~0.1 s instead of ~70us an example through tfds's decoding.
  """
  path = folder / f"{name}_{split.image_key}_{split.label_key}_{split.image_size}.npz"
  if path.is_file():
    try:
      with np.load(path) as arrays:
        return ArraySource(arrays["images"], arrays["labels"])
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as e:
      raise _corrupt_cache(path, e) from None
  source = _read_prepared(folder.parent, lambda: materialize(split))
  _write_atomically(path, lambda f: np.savez(f, images=source.images, labels=source.labels))
  return source


def _open_builder(name: str, data_dir: str, prepare: bool):
  """The tfds builder of `name`, prepared in array_record format in `data_dir`."""
  tfds_name = EMBEDDED_DATASETS.get(name, name)
  try:
    if name in EMBEDDED_DATASETS and prepare:
      embedded.prepare_fashion_mnist(data_dir)
    try:
      builder = tfds.builder(tfds_name, data_dir=data_dir)
    except ValueError:  # tfds's DatasetNotFoundError, or a malformed name.
      builder = None
  except json_format.ParseError as e:  # a damaged dataset_info.json, deep in tfds
    raise DataError(f"dataset {name!r} in {data_dir} has unreadable metadata "
                    f"({_first_line(e)}): delete {os.path.join(data_dir, tfds_name)} and "
                    "prepare it again") from None
  if builder is not None and builder.is_prepared():
    return builder
  if name in EMBEDDED_DATASETS:
    raise DataError(f"dataset {name!r} is not prepared in {data_dir}: use prepare=True")
  if builder is None:
    raise DataError(f"unknown dataset {name!r}: neither embedded ({', '.join(EMBEDDED_DATASETS)}) "
                    f"nor prepared in {data_dir}; prepare it there with tfds first")
  raise DataError(f"dataset {name!r} is not prepared in {data_dir}: run "
                  f"`tfds build {name} --data_dir={data_dir} --file_format=array_record`")


def load_dataset(name: str, data_dir: str | os.PathLike, *, val_size: int = 5000,
                 split_seed: int = 0, prepare: bool = True, val_split: str | None = None,
                 image_key: str = "image", label_key: str = "label",
                 image_size: int | None = None, cache: bool | None = None) -> Dataset:
  """Train/val/test splits of a tfds array_record dataset.

  val is the first `val_size` rows of the tfds train split under the
  permutation `default_rng(split_seed)`, train the remaining rows (sorted),
  unless `val_split` names a tfds split to use as is. test is the tfds test
  split. `cache=None` holds the data in memory when it is under 2 GiB.
  """
  data_dir = os.fspath(Path(data_dir).expanduser())
  builder = _open_builder(name, data_dir, prepare)
  features = builder.info.features
  for key in (image_key, label_key):
    if key not in features:
      raise DataError(f"{name} has no feature {key!r} (it has {', '.join(features)}): "
                      "pass image_key=/label_key=")
  label = features[label_key]
  if not isinstance(label, tfds.features.ClassLabel):
    raise DataError(f"{name}'s feature {label_key!r} is not a ClassLabel: pass label_key=")
  needed = ["train", "test"] + ([val_split] if val_split else [])
  missing = [s for s in needed if s not in builder.info.splits]
  if missing:
    raise DataError(f"{name} in {data_dir} has no split {missing[0]!r} "
                    f"(it has {', '.join(builder.info.splits)})")
  shape = tuple(features[image_key].shape)
  if None in shape[:2] and image_size is None:
    raise DataError(f"{name} has images of varying size {shape}: pass image_size=")
  image_shape = (image_size, image_size, shape[2]) if image_size else shape
  try:
    sources = builder.as_data_source(split=needed)
  except NotImplementedError:  # Prepared, but not in a random-access format.
    raise DataError(f"{name} in {data_dir} is not in array_record format: rebuild it with `tfds "
                    f"build {name} --data_dir={data_dir} --file_format=array_record`") from None
  whole = {s: Split(src, np.arange(len(src), dtype=np.int64), image_key, label_key, image_size)
           for s, src in zip(needed, sources)}
  # Inside the prepared version folder: tfds never changes it, only deletes
  # it to rebuild, so the caches cannot outlive the data they were made from.
  cache_dir = Path(builder.data_dir) / "duojax_cache"
  n = len(whole["train"])
  if not val_split and not 0 < val_size < n:
    raise DataError(f"val_size={val_size} must be in [1, {n - 1}] for the {n} training "
                    f"examples of {name}")
  if cache is None:
    cache = sum(len(s) for s in whole.values()) * int(np.prod(image_shape)) < CACHE_LIMIT_BYTES
  if cache:
    whole = {s: dataclasses.replace(split, source=_cached_arrays(split, cache_dir, s))
             for s, split in whole.items()}
  mean, std = _cached_stats(whole["train"], cache_dir)
  if val_split:
    train, val = whole["train"], whole[val_split]
  else:
    perm = np.random.default_rng(split_seed).permutation(n)
    train = dataclasses.replace(whole["train"], indices=np.sort(perm[val_size:]).astype(np.int64))
    val = dataclasses.replace(whole["train"], indices=np.sort(perm[:val_size]).astype(np.int64))
  return Dataset(name, train, val, whole["test"], int(label.num_classes), tuple(label.names),
                 image_shape, mean, std)


