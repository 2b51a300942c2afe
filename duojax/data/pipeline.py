"""The host input pipeline: sharded, prefetched, resumable batches of a `Split`.

`train_batches` / `eval_batches` yield normalised numpy batches, or global jax
Arrays when given a sharding; each process reads only the rows its devices
hold. Everything random is a pure function of (seed, epoch) or (seed, step),
so a run resumes at any step bit-exactly.
"""

from __future__ import annotations

import itertools
import queue
import threading
from typing import Any, Iterator

import jax
import numpy as np

from duojax.config_lib import split_list
from duojax.data.sources import Split, read_examples
from duojax.errors import DataError

# The last word of a seed [seed, counter, stream] keeps shuffling and
# augmentation draws apart from each other and from the statistics sample of
# `sources` (stream 2); numpy ignores trailing zero words: [s, e] = [s, e, 0].
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1

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
                    "mesh with duojax.parallel.sharding.make_mesh")
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


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Training steps per epoch (0 if the batch exceeds the examples).

  Each epoch's last partial batch is dropped, so an epoch is
  num_examples // global_batch_size steps.
  """
  return num_examples // global_batch_size


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
    augment = tuple(split_list(augment))
  if set(augment) - {"crop", "flip"}:
    raise DataError(f"unknown augmentation in {augment}: use 'crop' and/or 'flip'")
  if seed < 0 or start_step < 0:
    raise DataError(f"seed={seed} and start_step={start_step} must be non-negative")
  rows = _local_rows(global_batch_size, process_index, process_count, sharding)
  per_epoch = steps_per_epoch(len(split), global_batch_size)
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
