"""The host input pipeline on grain: sharded, prefetched, resumable batches of a `Split`.

`train_batches` / `eval_batches` map a batch maker (`duojax.data.batches`)
over batch indices with grain: `MapDataset.range(...).map(...)`, read ahead by
threads, and by worker processes (`mp_prefetch`) where images are decoded and
cut. Batches hold uint8 images, 4x fewer bytes to move to the device than
float32; the model's step normalises them there
(`duojax.data.preprocess.normalize_on_device`).
Global jax Arrays come out when a sharding is given, each process reading
only the rows its devices hold, one batch placed on the device ahead of use.
Everything random is a pure function of (seed, epoch) or (seed, step), so a
run resumes at any step bit-exactly, with any number of workers.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any, Iterator

import grain
import jax
import numpy as np

from duojax.config_lib import split_list
from duojax.data import images as images_lib
from duojax.data import randaugment as randaugment_lib
from duojax.data.batches import AUGMENTATIONS, EvalBatch, TrainBatch, Transform
from duojax.data.preprocess import normalize
from duojax.data.sources import ArraySource, Split
from duojax.errors import DataError

# Batch indices run to here: "endless" for any training run.
_ENDLESS = 1 << 40
# Launchers' names for the number of processes on this host.
_LOCAL_PROCESS_COUNT_VARS = (
  "LOCAL_WORLD_SIZE",
  "SLURM_NTASKS_PER_NODE",
  "OMPI_COMM_WORLD_LOCAL_SIZE",
)


def _local_rows(
  global_batch_size: int,
  process_index: int,
  process_count: int,
  sharding: jax.sharding.Sharding | None,
) -> slice:
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
    raise DataError(
      f"global_batch_size={global_batch_size} is not divisible by process_count={process_count}"
    )
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
    raise DataError(
      f"global_batch_size={global_batch_size} is not divisible by the {ways} "
      "devices the batch is split over"
    ) from None
  slices = sorted(
    {
      (index[0].start or 0, index[0].stop or global_batch_size)
      for index in sharding.addressable_devices_indices_map((global_batch_size,)).values()
    }
  )
  start, stop = slices[0][0], slices[-1][1]
  if sum(b - a for a, b in slices) != stop - start:
    raise DataError(
      "this process's devices hold non-adjacent rows of the batch; build the "
      "mesh with duojax.parallel.sharding.make_mesh"
    )
  return slice(start, stop)


def _output(batch: dict[str, np.ndarray], sharding, global_batch_size: int) -> dict[str, Any]:
  if sharding is None:
    return batch
  return {
    k: jax.make_array_from_process_local_data(sharding, v, (global_batch_size, *v.shape[1:]))
    for k, v in batch.items()
  }


def _on_device_ahead(
  batches: Iterator[dict], sharding, global_batch_size: int, size: int = 2
) -> Iterator[dict]:
  """Places each batch `size` − 1 batches before it is used.

  Device transfers are asynchronous, so the next batch's copy overlaps the
  current step; placement stays on the caller's thread (JAX calls from other
  threads can crash at exit).
  """
  queue = collections.deque()
  for batch in batches:
    queue.append(_output(batch, sharding, global_batch_size))
    if len(queue) >= size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def usable_cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def local_process_count() -> int:
  """How many processes of this job share the host, from the launcher's environment."""
  for name in _LOCAL_PROCESS_COUNT_VARS:
    value = os.environ.get(name, "").split("(")[0]  # SLURM writes e.g. "4(x2)"
    if value.isdigit() and int(value) > 0:
      return int(value)
  return 1


def worker_count(requested: int, split: Split) -> int:
  """`requested` worker processes, or for -1: none for data held in memory
  (a numpy gather needs no help), else the host's cores divided among the
  processes that share it."""
  if requested >= 0:
    return requested
  if isinstance(split.source, ArraySource):
    return 0
  return max(1, usable_cores() // local_process_count())


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Runs in each grain worker: exit as soon as the parent process is gone.

  A parent killed with SIGKILL cannot stop its workers; without this they
  would live on, orphaned, holding cores and shared memory.
  """
  del worker_index, worker_count
  parent = os.getppid()

  def watch():
    while True:
      if os.getppid() != parent:
        os._exit(0)
      threading.Event().wait(0.5)

  threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def grain_batches(make_batch, start: int, stop: int, workers: int, threads: int, prefetch: int):
  """A grain iterator over make_batch(start), ..., make_batch(stop − 1), in order."""
  dataset = grain.MapDataset.range(start, stop).map(make_batch)
  if workers == 0:
    return iter(
      dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=prefetch))
    )
  # grain reads some of its settings from absl flags; a library caller (a
  # notebook, a test) may not have parsed any.
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  # In a worker one thread builds one batch at a time: the workers are the parallelism.
  per_worker = dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
  return iter(
    per_worker.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch),
      worker_init_fn=_exit_with_parent,
    )
  )


def _batches(iterator, mean, std, sharding, global_batch_size: int) -> Iterator[dict]:
  """`iterator`'s batches (normalised if `mean` is given) placed on the devices.

  Closing this generator stops grain's threads and worker processes.
  """

  def host():
    for batch in iterator:
      # Out of grain's shared memory at once: a device array on the CPU may
      # alias its host buffer, which grain unmaps when the batch is dropped.
      batch = {k: np.array(v) for k, v in batch.items()}
      if mean is not None:
        batch["image"] = normalize(batch["image"], mean, std)
      yield batch

  try:
    yield from _on_device_ahead(host(), sharding, global_batch_size)
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Training steps per epoch (0 if the batch exceeds the examples).

  Each epoch's last partial batch is dropped, so an epoch is
  num_examples // global_batch_size steps.
  """
  return num_examples // global_batch_size


def train_batches(
  split: Split,
  *,
  global_batch_size: int,
  seed: int,
  start_step: int = 0,
  augment: tuple[str, ...] | str = ("crop", "flip"),
  crop_padding: int = 2,
  rrc_scale: tuple[float, float] | None = None,
  rrc_ratio: tuple[float, float] | None = None,
  randaugment: tuple[int, float] = randaugment_lib.DEFAULT,
  mean=None,
  std=None,
  sharding: jax.sharding.NamedSharding | None = None,
  process_index: int = 0,
  process_count: int = 1,
  workers: int = -1,
  prefetch: int = 2,
) -> Iterator[dict[str, Any]]:
  """Endless training batches {"image": uint8 [B,H,W,C], "label": int32 [B]}.

  Step s holds positions [s*B, (s+1)*B) of the epochs' permutations laid end
  to end, epoch e being `default_rng([seed, e, 0]).permutation(len(split))`
  less its last len % B positions (`duojax.data.batches`, which also gives
  the augmentation draws). `start_step=k` yields steps k, k+1, ... exactly
  as a fresh iterator would. Each process gets its rows of the global batch
  (global jax Arrays if `sharding` is given). `workers` processes decode and
  augment (-1: see `worker_count`), `prefetch` batches ahead each. With
  `mean` and `std` the images come normalised to float32 instead.
  `randaugment` is (ops per image, magnitude 0..10) when `augment` has it
  (`duojax.data.randaugment`).
  """
  if isinstance(augment, str):
    augment = tuple(split_list(augment))
  if set(augment) - set(AUGMENTATIONS):
    raise DataError(f"unknown augmentation in {augment}: use {', '.join(AUGMENTATIONS)}")
  num_ops, magnitude = randaugment
  if not (int(num_ops) == num_ops >= 0 and 0 <= magnitude <= randaugment_lib.MAX_MAGNITUDE):
    raise DataError(
      f"randaugment={tuple(randaugment)} must be (ops per image >= 0, magnitude in [0, 10])"
    )
  if seed < 0 or start_step < 0:
    raise DataError(f"seed={seed} and start_step={start_step} must be non-negative")
  rows = _local_rows(global_batch_size, process_index, process_count, sharding)
  if steps_per_epoch(len(split), global_batch_size) == 0:
    raise DataError(
      f"global_batch_size={global_batch_size} exceeds the {len(split)} examples of the split"
    )
  transform = Transform(
    tuple(augment),
    crop_padding,
    tuple(rrc_scale or images_lib.RRC_SCALE),
    tuple(rrc_ratio or images_lib.RRC_RATIO),
    randaugment=(int(num_ops), float(magnitude)),
  )
  make_batch = TrainBatch(
    split, global_batch_size=global_batch_size, seed=seed, rows=rows, transform=transform
  )
  threads = 1 if isinstance(split.source, ArraySource) else usable_cores()
  iterator = grain_batches(
    make_batch, start_step, start_step + _ENDLESS, worker_count(workers, split), threads, prefetch
  )
  return _batches(iterator, mean, std, sharding, global_batch_size)


def eval_batches(
  split: Split,
  *,
  global_batch_size: int,
  mean=None,
  std=None,
  sharding: jax.sharding.NamedSharding | None = None,
  process_index: int = 0,
  process_count: int = 1,
  workers: int = -1,
  prefetch: int = 2,
) -> Iterator[dict[str, Any]]:
  """One pass over `split` in order, as batches of one shape (uint8 images,
  or normalised float32 with `mean` and `std`).

  The last batch is padded with zero images; `mask` (bool [B]) is False there.
  """
  rows = _local_rows(global_batch_size, process_index, process_count, sharding)
  num_batches = -(-len(split) // global_batch_size)
  workers = min(worker_count(workers, split), num_batches)
  threads = 1 if isinstance(split.source, ArraySource) else usable_cores()
  iterator = grain_batches(
    EvalBatch(split, global_batch_size, rows), 0, num_batches, workers, threads, prefetch
  )
  return _batches(iterator, mean, std, sharding, global_batch_size)
