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
from PIL import Image

from duojax.data import embedded
from duojax.data import images as images_lib
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
  with the image under `image_key` and the label under `label_key`. `encoded`
  images are JPEG/PNG bytes (a tfds `Image` feature read undecoded), decoded
  here with PIL into `channels` channels. `image_size` is the side every image
  is brought to (None: the stored size, which must then be fixed): as it is
  read for evaluation, the centre square of `crop_fraction` of its shorter
  side, resized (`duojax.data.images.center_crop_box`) with `interpolation`
  (training's crops too).
  """

  source: Any
  indices: np.ndarray
  image_key: str = "image"
  label_key: str = "label"
  image_size: int | None = None
  encoded: bool = False
  channels: int = 3
  crop_fraction: float = images_lib.CROP_FRACTION
  interpolation: str = "bilinear"

  def __len__(self) -> int:
    return len(self.indices)

  def sample_positions(self, max_rows: int | None, seed: int) -> np.ndarray:
    """Positions of at most `max_rows` rows (None or < 0: all), drawn as the first
    `max_rows` of `default_rng(seed)`'s permutation and kept in order."""
    n = len(self)
    if max_rows is None or max_rows < 0 or max_rows >= n:
      return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:max_rows])

  def sample(self, max_rows: int | None, seed: int) -> "Split":
    """This split reduced to the rows `sample_positions` draws."""
    return dataclasses.replace(self, indices=self.indices[self.sample_positions(max_rows, seed)])


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


def fixed_size(split: Split) -> bool:
  """Whether `split`'s images are stored at the size the pipeline delivers.

  Such images are gathered, cropped and flipped a whole batch at a time in
  numpy; the others go through PIL one image at a time.
  """
  return not split.encoded and split.image_size is None


def read_record(split: Split, example: dict, key: int):
  """(PIL image, label) of one tfds example: decoded lazily if encoded."""
  image = example[split.image_key]
  try:
    if split.encoded:
      return images_lib.open_encoded(image), example[split.label_key]
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    return Image.fromarray(image), example[split.label_key]
  except images_lib.DECODE_ERRORS as e:
    raise DataError(
      f"record {key} of the data set cannot be decoded ({_first_line(e)}): "
      "prepare it again, or import its folder with duojax.import_folder, "
      "which leaves such files out"
    ) from None


def read_raw(split: Split, rows: np.ndarray) -> list[dict]:
  """The tfds examples (or in-memory rows) of source rows `rows`, in order."""
  keys = [int(r) for r in rows]
  if isinstance(split.source, ArraySource):
    return [
      {split.image_key: split.source.images[k], split.label_key: split.source.labels[k]}
      for k in keys
    ]
  # tfds sources read a batch of records in one call; plain sequences do not.
  get_many = getattr(split.source, "__getitems__", None)
  return get_many(keys) if get_many else [split.source[k] for k in keys]


def read_examples(split: Split, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [n,H,W,C] and labels int32 [n] of `split.indices[positions]`.

  Images of another size than `split.image_size` are centre-cropped and
  resized to it, as for evaluation.
  """
  rows = split.indices[positions]
  if isinstance(split.source, ArraySource) and fixed_size(split):
    return split.source.images[rows], split.source.labels[rows]
  examples = read_raw(split, rows)
  if fixed_size(split):
    images = [np.asarray(ex[split.image_key]) for ex in examples]
    labels = np.asarray([ex[split.label_key] for ex in examples], dtype=np.int32)
  else:
    images, labels = [], np.zeros(len(examples), np.int32)
    for i, (ex, row) in enumerate(zip(examples, rows)):
      image, labels[i] = read_record(split, ex, int(row))
      box = images_lib.center_crop_box(image.width, image.height, split.crop_fraction)
      images.append(
        images_lib.crop_resize(
          image, box, split.image_size, split.channels, interpolation=split.interpolation
        )
      )
  if not images:
    return np.zeros((0, 0, 0, 0), np.uint8), labels
  return np.stack(images), labels


def materialize(split: Split, chunk: int = 4096) -> ArraySource:
  """Reads all rows of `split.source` into memory, in `split`'s coordinates."""
  everything = dataclasses.replace(split, indices=np.arange(len(split.source), dtype=np.int64))
  parts = [
    read_examples(everything, np.arange(i, min(i + chunk, len(everything))))
    for i in range(0, len(everything), chunk)
  ]
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
    images, _ = read_examples(split, positions[i : i + chunk])
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
  return DataError(
    f"cache file {path} is corrupt ({_first_line(error)}): delete it and it "
    "is rebuilt from the prepared data"
  )


def _read_prepared(folder: Path, read):
  """`read()` of a prepared tfds split, its readers' errors as one DataError line.

  array_record raises RuntimeError on a damaged file, deep in its reader.
  """
  try:
    return read()
  except DataError:
    raise
  except (RuntimeError, OSError) as e:
    raise DataError(
      f"cannot read the prepared data in {folder} ({_first_line(e)}): the "
      "files are damaged; delete the folder and prepare the dataset again"
    ) from None


def _cached_stats(split: Split, folder: Path, split_name: str) -> tuple[np.ndarray, np.ndarray]:
  """`channel_stats` of a tfds split, cached as JSON in `folder`."""
  tag = "" if split_name == "train" else f"_{split_name}"
  if split.image_size:  # the crop changes which pixels are counted
    tag += f"_{split.crop_fraction}"
    tag += "" if split.interpolation == "bilinear" else f"_{split.interpolation}"
  path = folder / f"stats_{split.image_key}_{split.image_size}{tag}.json"
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


def open_builder(name: str, data_dir: str, prepare: bool):
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
    raise DataError(
      f"dataset {name!r} in {data_dir} has unreadable metadata "
      f"({_first_line(e)}): delete {os.path.join(data_dir, tfds_name)} and "
      "prepare it again"
    ) from None
  if builder is not None and builder.is_prepared():
    return builder
  if name in EMBEDDED_DATASETS:
    raise DataError(f"dataset {name!r} is not prepared in {data_dir}: use prepare=True")
  if builder is None:
    raise DataError(
      f"unknown dataset {name!r}: neither embedded ({', '.join(EMBEDDED_DATASETS)}) "
      f"nor prepared in {data_dir}; prepare it there with tfds first"
    )
  raise DataError(
    f"dataset {name!r} is not prepared in {data_dir}: run "
    f"`tfds build {name} --data_dir={data_dir} --file_format=array_record`"
  )


def check_random_access(builder, name: str, data_dir: str) -> None:
  """A one-line error for a data set prepared in a format tfds reads only with TensorFlow."""
  file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
  if file_format and file_format != "array_record":
    raise DataError(
      f"{name} in {data_dir} is prepared as {file_format}, which only TensorFlow reads: "
      f"convert it where TensorFlow is installed with `tfds convert_format "
      f"--dataset_version_dir={builder.data_dir} --out_file_format=array_record`, or "
      f"rebuild it with `tfds build {name} --data_dir={data_dir} --file_format=array_record`"
    )


def _class_label(builder, name: str, image_key: str, label_key: str):
  """The `ClassLabel` feature under `label_key`, once both keys are features."""
  features = builder.info.features
  for key in (image_key, label_key):
    if key not in features:
      raise DataError(
        f"{name} has no feature {key!r} (it has {', '.join(features)}): "
        "set config.image_key / config.label_key"
      )
  label = features[label_key]
  if not isinstance(label, tfds.features.ClassLabel):
    raise DataError(f"{name}'s feature {label_key!r} is not a ClassLabel: set config.label_key")
  return label


def _needed_splits(
  builder, name: str, data_dir: str, train_split: str, test_split: str, val_split: str | None
) -> list[str]:
  """The tfds splits to read, each once, all of them in the prepared data set."""
  needed = list(dict.fromkeys([train_split, test_split] + ([val_split] if val_split else [])))
  missing = [s for s in needed if s not in builder.info.splits]
  if missing:
    raise DataError(
      f"{name} in {data_dir} has no split {missing[0]!r} "
      f"(it has {', '.join(builder.info.splits)}): set config.train_split, "
      "config.val_split and config.test_split"
    )
  return needed


def _read_as(
  features, name: str, image_key: str, label_key: str, image_size: int | None, crop_fraction: float
) -> tuple[Split, tuple[int, int, int]]:
  """(how every split is read: a `Split` with no source or rows yet, the shape
  (H, W, C) of the images delivered).

  Encoded images are decoded to RGB. Without `image_size`, images are
  delivered at their stored size, which must then be fixed; images stored at
  the size asked for are read as they are.
  """
  feature = features[image_key]
  encoded = isinstance(feature, tfds.features.Image)
  shape = tuple(feature.shape)
  if len(shape) != 3:
    raise DataError(
      f"{name}'s feature {image_key!r} has shape {shape}, not (height, width, "
      "channels): set config.image_key"
    )
  channels = 3 if encoded else int(shape[2])
  if image_size is None and (encoded or None in shape[:2]):
    if None in shape[:2]:
      raise DataError(f"{name} has images of varying size {shape}: set config.model.image_size")
    image_size = int(shape[0])
  if image_size is not None and not encoded and tuple(shape[:2]) == (image_size, image_size):
    image_size = None  # stored at the size asked for: read as they are
  image_shape = (image_size, image_size, channels) if image_size else (*shape[:2], channels)
  like = Split(
    None, np.zeros(0, np.int64), image_key, label_key, image_size, encoded, channels, crop_fraction
  )
  return like, image_shape


def _open_splits(
  builder, name: str, data_dir: str, needed: list[str], like: Split
) -> dict[str, Split]:
  """Every row of each tfds split in `needed`, read as `like` says (its source and
  indices aside), from the prepared array_record files."""
  decoders = {like.image_key: tfds.decode.SkipDecoding()} if like.encoded else None
  try:
    sources = builder.as_data_source(split=needed, decoders=decoders)
  except NotImplementedError:  # Prepared, but not in a random-access format.
    raise DataError(
      f"{name} in {data_dir} is not in array_record format: rebuild it with `tfds "
      f"build {name} --data_dir={data_dir} --file_format=array_record`"
    ) from None
  return {
    s: dataclasses.replace(like, source=src, indices=np.arange(len(src), dtype=np.int64))
    for s, src in zip(needed, sources)
  }


def _check_val_size(val_size: int, n: int, name: str) -> None:
  """The val carve-out must leave both val and train at least one row."""
  if not 0 < val_size < n:
    raise DataError(
      f"val_size={val_size} must be in [1, {n - 1}] for the {n} training examples of {name}"
    )


def _in_memory(
  whole: dict[str, Split],
  train_split: str,
  image_shape: tuple[int, int, int],
  cache: bool | None,
  cache_dir: Path,
) -> dict[str, Split]:
  """`whole`, its splits held in memory (cached as .npz in `cache_dir`) if `cache`.

  `cache=None`: if the train split is stored at the delivered size and all
  splits together are under CACHE_LIMIT_BYTES.
  """
  if cache is None:
    # Only images stored at the delivered size: a cached resize would fix the
    # crop that training draws at random from the whole image.
    cache = fixed_size(whole[train_split]) and (
      sum(len(s) for s in whole.values()) * int(np.prod(image_shape)) < CACHE_LIMIT_BYTES
    )
  if not cache:
    return whole
  # Cached images are decoded at the delivered size: read them as they are.
  return {
    s: dataclasses.replace(
      split, source=_cached_arrays(split, cache_dir, s), image_size=None, encoded=False
    )
    for s, split in whole.items()
  }


def _carve_val(whole: Split, val_size: int, split_seed: int) -> tuple[Split, Split]:
  """(train, val) of `whole`: val is the first `val_size` rows under the
  permutation `default_rng(split_seed)`, train the remaining rows, each sorted."""
  perm = np.random.default_rng(split_seed).permutation(len(whole))
  train = dataclasses.replace(whole, indices=np.sort(perm[val_size:]).astype(np.int64))
  val = dataclasses.replace(whole, indices=np.sort(perm[:val_size]).astype(np.int64))
  return train, val


def load_dataset(
  name: str,
  data_dir: str | os.PathLike,
  *,
  val_size: int = 5000,
  split_seed: int = 0,
  prepare: bool = True,
  train_split: str = "train",
  test_split: str = "test",
  val_split: str | None = None,
  image_key: str = "image",
  label_key: str = "label",
  image_size: int | None = None,
  crop_fraction: float = images_lib.CROP_FRACTION,
  interpolation: str = "bilinear",
  cache: bool | None = None,
) -> Dataset:
  """Train/val/test splits of a tfds array_record dataset.

  val is the first `val_size` rows of the tfds split `train_split` under the
  permutation `default_rng(split_seed)`, train the remaining rows (sorted),
  unless `val_split` names a tfds split to use as is. test is the tfds split
  `test_split` (ImageNet's labelled held-out split is "validation").

  Images of a tfds `Image` feature are read as their encoded bytes and decoded
  by the pipeline; `image_size` (required when images vary in size) is the
  side it delivers. `cache=None` holds decoded fixed-size data in memory when
  it is under 2 GiB; encoded images are never cached decoded, since training
  crops them at random from the full image. `crop_fraction` and
  `interpolation` say how images of another size are cut and resized.
  """
  data_dir = os.fspath(Path(data_dir).expanduser())
  builder = open_builder(name, data_dir, prepare)
  label = _class_label(builder, name, image_key, label_key)
  needed = _needed_splits(builder, name, data_dir, train_split, test_split, val_split)
  check_random_access(builder, name, data_dir)
  like, image_shape = _read_as(
    builder.info.features, name, image_key, label_key, image_size, crop_fraction
  )
  like = dataclasses.replace(like, interpolation=interpolation)
  whole = _open_splits(builder, name, data_dir, needed, like)
  if not val_split:
    _check_val_size(val_size, len(whole[train_split]), name)
  # Inside the prepared version folder: tfds never changes it, only deletes
  # it to rebuild, so the caches cannot outlive the data they were made from.
  cache_dir = Path(builder.data_dir) / "duojax_cache"
  whole = _in_memory(whole, train_split, image_shape, cache, cache_dir)
  mean, std = _cached_stats(whole[train_split], cache_dir, train_split)
  if val_split:
    train, val = whole[train_split], whole[val_split]
  else:
    train, val = _carve_val(whole[train_split], val_size, split_seed)
  return Dataset(
    name,
    train,
    val,
    whole[test_split],
    int(label.num_classes),
    tuple(label.names),
    image_shape,
    mean,
    std,
  )
