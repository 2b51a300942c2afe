"""Data sets, splits and the host input pipeline.

* `load_dataset` returns train/val/test splits of a tfds dataset prepared in
  array_record format, read with random access and no TensorFlow. The
  embedded Fashion-MNIST is fetched and prepared on demand (`duojax.datasets`);
  any other tfds dataset prepared in `data_dir` is used by name.
* `load_mnist_ood` returns MNIST, the out-of-distribution set.
* `train_batches` / `eval_batches` yield normalised numpy batches, or global
  jax Arrays when given a sharding. Everything random is a pure function of
  (seed, epoch) or (seed, step), so a run resumes at any step bit-exactly.
"""

import dataclasses
import itertools
import json
import os
import queue
import threading
import zipfile
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
import tensorflow_datasets as tfds
from google.protobuf import json_format


class DataError(ValueError):
  """A data set is missing, corrupt or misconfigured; the message says how to fix it."""


# User-facing name -> tfds builder name, for data sets duojax prepares itself.
EMBEDDED_DATASETS = {"fashion_mnist": "duojax_fashion_mnist"}
# Hold splits in memory below this size: the array_record reader plus tfds's
# decoding cost ~70us per example in Python, a numpy gather next to nothing.
CACHE_LIMIT_BYTES = 2 << 30
# The last word of a seed [seed, counter, stream] keeps shuffling, augmentation
# and sampling draws apart (numpy ignores trailing zero words: [s, e] = [s, e, 0]).
_SHUFFLE_STREAM, _AUGMENT_STREAM, _STATS_STREAM = 0, 1, 2


# duojax.datasets imports DataError from here, so it is imported lazily below.
def fetch_fashion_mnist(data_dir: str | os.PathLike) -> Path:
  """Verified Fashion-MNIST idx files in `data_dir/downloads/fashion_mnist/`."""
  from duojax import datasets
  return datasets.fetch_fashion_mnist(data_dir)


def prepare_fashion_mnist(data_dir: str | os.PathLike) -> None:
  """Fetches and builds Fashion-MNIST as array_record in `data_dir`; idempotent."""
  from duojax import datasets
  datasets.prepare_fashion_mnist(data_dir)


def load_mnist_ood(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
  """MNIST: images uint8 [N,28,28,1], labels int32 [N] (test: N = 10,000)."""
  from duojax import datasets
  return datasets.load_mnist_ood(split)


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
      prepare_fashion_mnist(data_dir)
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


# ------------------------------------------------------------- input pipeline
def _local_rows(global_batch_size: int, process_index: int, process_count: int,
                sharding: jax.sharding.Sharding | None) -> slice:
  """This process's rows of every global batch.

  With a sharding, the rows are the ones its devices in this process hold
  (so any mesh layout works, on one host or many); without one, the batch
  is cut into `process_count` equal blocks.
  """
  if global_batch_size < 1:
    raise DataError(f"global_batch_size={global_batch_size} must be positive")
  if sharding is not None:
    return _rows_of_sharding(global_batch_size, sharding)
  if not 0 <= process_index < process_count:
    raise DataError(f"process_index={process_index} is not in [0, {process_count})")
  if global_batch_size % process_count:
    raise DataError(f"global_batch_size={global_batch_size} is not divisible by "
                    f"process_count={process_count}")
  local = global_batch_size // process_count
  return slice(process_index * local, (process_index + 1) * local)


def _rows_of_sharding(global_batch_size: int, sharding: jax.sharding.Sharding) -> slice:
  try:
    sharding.shard_shape((global_batch_size,))
  except ValueError:  # jax's IndivisibleError names the tiling, not the batch
    ways = len(sharding.device_set)
    if isinstance(sharding, jax.sharding.NamedSharding) and len(sharding.spec):
      axes = sharding.spec[0]
      axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
      ways = int(np.prod([sharding.mesh.shape[a] for a in axes], dtype=np.int64))
    raise DataError(f"global_batch_size={global_batch_size} is not divisible by the {ways} "
                    "devices the batch is split over") from None
  slices = sorted({(index[0].start or 0, index[0].stop or global_batch_size)
                   for index in sharding.addressable_devices_indices_map(
                       (global_batch_size,)).values()})
  start, stop = slices[0][0], slices[-1][1]
  if sum(b - a for a, b in slices) != stop - start:
    raise DataError("this process's devices hold non-adjacent rows of the batch; build the "
                    "mesh with duojax.sharding.make_mesh")
  return slice(start, stop)


def _normalize(images: np.ndarray, mean, std) -> np.ndarray:
  mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
  return (images.astype(np.float32) * np.float32(1 / 255) - mean) / std


def _augment(images: np.ndarray, seed: int, step: int, global_batch_size: int,
             rows: slice, augment: tuple[str, ...], crop_padding: int) -> np.ndarray:
  """Random crop of the zero-padded image and horizontal flip, on the host.

  Draws are made for the whole global batch and then sliced, so every process
  applies to a row exactly what a single process would.
  """
  rng = np.random.default_rng([seed, step, _AUGMENT_STREAM])
  offsets = rng.integers(0, 2 * crop_padding + 1, size=(global_batch_size, 2))[rows]
  flips = (rng.random(global_batch_size) < 0.5)[rows]
  if "crop" in augment and crop_padding > 0:
    p, (h, w) = crop_padding, images.shape[1:3]
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    images = np.stack([padded[i, y:y + h, x:x + w] for i, (y, x) in enumerate(offsets)])
  if "flip" in augment:
    images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
  return images


def _output(batch: dict[str, np.ndarray], sharding, global_batch_size: int) -> dict[str, Any]:
  if sharding is None:
    return batch
  return {k: jax.make_array_from_process_local_data(sharding, v, (global_batch_size, *v.shape[1:]))
          for k, v in batch.items()}


def _prefetch(iterator: Iterator, size: int) -> Iterator:
  """Runs `iterator` in a background thread, at most `size` items ahead.

  One producer fills a FIFO queue, so the order (hence determinism) is kept.
  """
  if size <= 0:
    yield from iterator
    return
  items, stop = queue.Queue(maxsize=size), threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        items.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for item in iterator:
        if not put((True, item)):
          return
      put((False, StopIteration))
    except BaseException as e:  # Re-raised in the consumer.
      put((False, e))

  producer = threading.Thread(target=produce, daemon=True)
  producer.start()
  try:
    while True:
      ok, item = items.get()
      if not ok:
        if item is StopIteration:
          return
        raise item
      yield item
  finally:
    stop.set()
    producer.join(timeout=10)


def steps_per_epoch(split: Split, global_batch_size: int) -> int:
  """Training steps per epoch; each epoch's last partial batch is dropped."""
  return len(split) // global_batch_size


def train_batches(split: Split, *, global_batch_size: int, seed: int, start_step: int = 0,
                  augment: tuple[str, ...] | str = ("crop", "flip"), crop_padding: int = 2,
                  mean, std, sharding: jax.sharding.NamedSharding | None = None,
                  process_index: int = 0, process_count: int = 1,
                  prefetch: int = 2) -> Iterator[dict[str, Any]]:
  """Infinite training batches {"image": float32 [B,H,W,C], "label": int32 [B]}.

  Step s holds positions [s*B, (s+1)*B) of the epochs' permutations laid end
  to end, epoch e being `default_rng([seed, e, 0]).permutation(len(split))`
  (the same as `default_rng([seed, e])`) less its last len % B positions.
  Augmentation draws come from `default_rng([seed, s, 1])`. `start_step=k`
  yields steps k, k+1, ... exactly as a fresh iterator would. Each process
  gets its rows of the global batch (global jax Arrays if `sharding` is given);
  a background thread prepares up to `prefetch` batches ahead.
  """
  if isinstance(augment, str):
    augment = tuple(a.strip() for a in augment.split(",") if a.strip())
  if set(augment) - {"crop", "flip"}:
    raise DataError(f"unknown augmentation in {augment}: use 'crop' and/or 'flip'")
  if seed < 0 or start_step < 0:
    raise DataError(f"seed={seed} and start_step={start_step} must be non-negative")
  rows = _local_rows(global_batch_size, process_index, process_count, sharding)
  per_epoch = steps_per_epoch(split, global_batch_size)
  if per_epoch == 0:
    raise DataError(f"global_batch_size={global_batch_size} exceeds the {len(split)} "
                    "examples of the split")

  def host_batches():
    epoch, order = -1, None
    for step in itertools.count(start_step):
      if step // per_epoch != epoch:
        epoch = step // per_epoch
        order = np.random.default_rng([seed, epoch, _SHUFFLE_STREAM]).permutation(len(split))
      start = (step % per_epoch) * global_batch_size
      images, labels = read_examples(split, order[start:start + global_batch_size][rows])
      images = _augment(images, seed, step, global_batch_size, rows, augment, crop_padding)
      yield {"image": _normalize(images, mean, std), "label": labels}

  # Only host work runs in the prefetch thread; device placement stays on the
  # caller's thread (JAX calls from a daemon thread can crash at exit).
  def device_batches():
    for batch in _prefetch(host_batches(), prefetch):
      yield _output(batch, sharding, global_batch_size)

  return device_batches()


def eval_batches(split: Split, *, global_batch_size: int, mean, std,
                 sharding: jax.sharding.NamedSharding | None = None,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, Any]]:
  """One pass over `split` in order, as batches of one shape.

  The last batch is padded with zero images; `mask` (bool [B]) is False there.
  """
  rows = _local_rows(global_batch_size, process_index, process_count, sharding)

  def host_batches():
    for start in range(0, len(split), global_batch_size):
      positions = np.arange(start, start + global_batch_size)[rows]
      mask = positions < len(split)
      images, labels = read_examples(split, positions[mask])
      pad = len(mask) - len(labels)
      if pad:  # Valid rows come first: positions are ascending.
        # A process whose rows are all padding reads one image for its shape.
        shape = (images if len(labels) else read_examples(split, np.arange(1))[0]).shape[1:]
        images = np.concatenate([images.reshape(-1, *shape), np.zeros((pad, *shape), np.uint8)])
        labels = np.concatenate([labels, np.zeros(pad, np.int32)])
      batch = {"image": _normalize(images, mean, std), "label": labels, "mask": mask}
      yield _output(batch, sharding, global_batch_size)

  return host_batches()
