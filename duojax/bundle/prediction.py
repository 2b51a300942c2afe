"""The fitted duo over many images: decode in workers, run on every local device, write rows.

    summary = predict_to_file(bundle, open_input("photos/"), "out.jsonl")

The host side is the grain pipeline (`duojax.data.pipeline.grain_batches`):
worker processes read and cut each batch (`prediction_input.PredictionBatch`)
while the devices run the previous one. The device side is one jitted program
(the bundle's fused duo, `exported.fused_program`, plus the top-k), its
weights replicated over a mesh of this process's devices and each batch split
over them by rows. Batches are dispatched one ahead of the one whose results
are read back, so the host formats and writes rows while the devices compute.

Several processes (a multi-host job, `jax.process_count()` > 1) each take a
contiguous block of the rows and write their own file, OUT with
".process-I-of-N" before its suffix; no process waits on another, since a
prediction needs no collective. Rows are written in chunks that a rerun of
the same command continues from (`prediction_rows.ChunkedRows`).

The shift check. A bundle holds its members' shift alarm, calibrated on the
validation rows its duo was fit on. The program then also returns each
member's temperature-scaled confidence, and every chunk of rows (the unit a
rerun resumes at, so a verdict never straddles two runs) is one batch for the
alarm: its p-value and verdict go to OUT.shift.jsonl, and a chunk that alarms
prints a warning. A weighted (dynamic, entropy) duo's rows do not change: the
alarm tells the user when its validation-fitted weights stop being
trustworthy. A guarded duo acts on it: the program computes its rows both
ways, and a chunk the alarm flags is written with the equal mixture of the
duo and large+TS (`duojax.core.guarded_duo`), as its evaluation scored it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from duojax.bundle import exported
from duojax.bundle import prediction_rows as rows_lib
from duojax.bundle.loaded import Bundle, shift_rows
from duojax.bundle.prediction_input import Geometry, PredictionBatch, PredictionInput
from duojax.data import pipeline
from duojax.errors import ConfigError

DEFAULT_BATCH = 256
DEFAULT_TOP_K = 5
DEFAULT_CHUNK_BATCHES = 4
# By default one decoding process per this many images, up to the usable cores
# (as `duojax.import_folder`): fewer are decoded in this process's threads.
IMAGES_PER_WORKER = 500


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a run wrote: rows, skipped images, time, and the files."""

  output: str
  rows: int
  skipped: int
  resumed_from: int
  seconds: float
  images_per_second: float
  # The shift alarm's chunks checked by this run and those it fired on (None: no check).
  shift_chunks: int | None = None
  shifted_chunks: int = 0

  def line(self) -> str:
    resumed = f" (continued from row {self.resumed_from:,})" if self.resumed_from else ""
    skipped = (
      f"; {self.skipped} could not be read, see {self.output}.skipped" if self.skipped else ""
    )
    shift = ""
    if self.shift_chunks:
      shift = (
        f"; shift alarm on {self.shifted_chunks} of {self.shift_chunks} chunks, see "
        f"{self.output}{rows_lib.SHIFT_SUFFIX}"
      )
    return (
      f"predicted {self.rows:,} images into {self.output}{resumed} in {self.seconds:.1f} s "
      f"({self.images_per_second:.1f} images/s){skipped}{shift}"
    )


def shard_path(path: str, process_index: int, process_count: int) -> str:
  """OUT itself for one process; OUT with ".process-I-of-N" before its suffix for several."""
  if process_count == 1:
    return path
  stem, suffix = os.path.splitext(path)
  return f"{stem}.process-{process_index}-of-{process_count}{suffix}"


def process_block(n: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[lo, hi): process `process_index`'s contiguous share of n rows."""
  return n * process_index // process_count, n * (process_index + 1) // process_count


def geometry(bundle: Bundle) -> Geometry:
  """The batch's geometry, resized with the interpolation of the widest member."""
  size, _, channels = bundle.image_shape
  widest = max(bundle.inputs, key=lambda s: s.image_size)
  crop = float(bundle.manifest["input"]["crop_fraction"])
  return Geometry(size, channels, crop, widest.interpolation)


def local_mesh() -> jax.sharding.Mesh:
  """A one-axis mesh of this process's devices: predictions need no other process."""
  return jax.sharding.Mesh(np.asarray(jax.local_devices()), ("rows",))


def guards_shifts(bundle: Bundle) -> bool:
  """Whether the bundle's duo changes its rows on a chunk its alarm flags."""
  return getattr(bundle.duo, "method", None) == "guarded" and bundle.shift_alarm is not None


def device_program(bundle: Bundle, k: int, mesh: jax.sharding.Mesh, *, shift_check: bool = False):
  """(jitted g(arrays, images) -> dict of per-row outputs, the weights on the mesh);
  with `shift_check`, the outputs hold each member's confidence for the alarm and,
  for a guarded duo, its rows on a flagged chunk (keys prefixed "shifted_")."""
  both = shift_check and guards_shifts(bundle)
  f, _ = exported.fused_program(
    bundle.models,
    bundle.inputs,
    bundle.duo,
    float(bundle.manifest["input"]["crop_fraction"]),
    bundle.member_temperatures() if shift_check else None,
    shifted_too=both,
  )

  def row_outputs(logits):
    probabilities = jax.nn.softmax(logits, axis=-1)
    top_probability, top_index = jax.lax.top_k(probabilities, k)
    return {
      "class_index": jnp.argmax(logits, axis=-1),
      "confidence": jnp.max(probabilities, axis=-1),
      "top_index": top_index,
      "top_probability": top_probability,
    }

  def g(arrays, images):
    logits, _, _, member_classes, *extra = f(arrays, images)
    out = {**row_outputs(logits), "member_classes": member_classes}
    if extra:
      out["member_confidence"] = extra[0]
    if both:
      out.update({f"shifted_{key}": v for key, v in row_outputs(extra[1]).items()})
    return out

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("rows"))
  arrays = [a for m in bundle.models for a in exported.member_arrays(m)[1]]
  arrays = jax.device_put(arrays, replicated)
  return jax.jit(g, in_shardings=(replicated, rows)), arrays, rows


def fingerprint(bundle: Bundle, source: PredictionInput, **settings) -> dict:
  """What must match for a rerun to continue a stopped run's files."""
  with open(os.path.join(bundle.path, "manifest.json"), "rb") as f:
    manifest = hashlib.sha256(f.read()).hexdigest()
  return {"bundle": manifest, "input": source.fingerprint(), **settings}


def predict_to_file(
  bundle: Bundle,
  source: PredictionInput,
  output: str,
  *,
  threshold: float | None = None,
  top_k: int = DEFAULT_TOP_K,
  batch_size: int = DEFAULT_BATCH,
  workers: int = -1,
  chunk_batches: int = DEFAULT_CHUNK_BATCHES,
  overwrite: bool = False,
  progress: bool | None = None,
  shift_check: bool = True,
) -> Summary:
  """Writes one row per readable image of `source` to `output` (see module docstring).

  `threshold`: abstain below this confidence (None: the bundle's); `workers`:
  decoding processes (-1: one per IMAGES_PER_WORKER images, up to this host's
  cores over its processes; 0: in this process); `progress`: a progress bar on stderr (None: when stderr is a terminal);
  `shift_check`: run the bundle's shift alarm on every chunk of rows written
  (module docstring), when the bundle has one.
  """
  mesh = local_mesh()
  devices = mesh.size
  if batch_size < 1 or top_k < 1 or chunk_batches < 1:
    raise ConfigError(
      f"batch_size ({batch_size}), top_k ({top_k}) and chunk_batches ({chunk_batches}) "
      "must be positive"
    )
  batch = -(-batch_size // devices) * devices  # every device gets as many rows
  k = min(top_k, len(bundle.class_names))
  threshold = bundle.threshold if threshold is None else float(threshold)
  index, count = jax.process_index(), jax.process_count()
  lo, hi = process_block(len(source), index, count)
  path = shard_path(output, index, count)
  alarm = bundle.shift_alarm if shift_check else None
  settings = dict(
    threshold=threshold,
    top_k=k,
    batch_size=batch,
    process=[index, count],
    shift_check=alarm is not None,
    chunk_batches=chunk_batches,
  )
  out = rows_lib.ChunkedRows(
    path, fingerprint(bundle, source, **settings), overwrite=overwrite, shift=alarm is not None
  )
  done = out.plan()  # every check before the first write
  if count > 1:
    print(f"process {index} of {count}: rows {lo:,} to {hi:,} into {path}", file=sys.stderr)
  if source.non_images:
    from duojax.data import listing

    listing.note_non_images(list(source.non_images), source.description)
  if shift_check and alarm is None:
    print(
      f"note: bundle {bundle.path} holds no shift alarm (written before bundles had one): "
      "the chunks are not checked for a shift",
      file=sys.stderr,
    )
  g, arrays, rows_sharding = device_program(bundle, k, mesh, shift_check=alarm is not None)
  out.open()
  start_batch, num_batches = done // batch, -(-(hi - lo) // batch)
  make = PredictionBatch(source.reader, lo, hi, batch, geometry(bundle))
  if workers < 0:  # a worker takes seconds to start: worth it from a few hundred images
    cores = pipeline.usable_cores() // pipeline.local_process_count()
    workers = min(cores, (hi - lo - done) // IMAGES_PER_WORKER)
  workers = min(workers, max(0, num_batches - start_batch))
  threads = pipeline.usable_cores() if workers == 0 else 1
  host = pipeline.grain_batches(make, start_batch, num_batches, workers, threads, 2)
  bar = tqdm.tqdm(
    total=hi - lo,
    initial=min(done, hi - lo),
    unit=" images",
    disable=(not sys.stderr.isatty()) if progress is None else not progress,
    file=sys.stderr,
    mininterval=1.0,
  )
  chunk = _Chunk(source, bundle.class_names, threshold, out, lo, batch, alarm)
  t0, pending = time.perf_counter(), None
  try:
    for b, host_batch in enumerate(host, start=start_batch):
      host_batch = {key: np.array(v) for key, v in host_batch.items()}
      images = jax.device_put(host_batch["image"], rows_sharding)
      current = (b, host_batch, g(arrays, images))  # dispatched: runs while rows are written
      if pending is not None:
        chunk.add(*pending)
        bar.update(int(pending[1]["valid"].sum()))
        if (pending[0] + 1) % chunk_batches == 0:
          chunk.write(min((pending[0] + 1) * batch, hi - lo))
      pending = current
    if pending is not None:
      chunk.add(*pending)
      bar.update(int(pending[1]["valid"].sum()))
    chunk.write(hi - lo)
  finally:
    bar.close()
    close = getattr(host, "close", None)
    if close is not None:
      close()
  out.finish()
  seconds = time.perf_counter() - t0
  return Summary(
    path,
    chunk.rows,
    chunk.skipped,
    done,
    seconds,
    chunk.rows / max(seconds, 1e-9),
    chunk.checked if alarm is not None else None,
    chunk.shifted,
  )


class _Chunk:
  """Rows formatted since the last write, and what this run has written in all."""

  def __init__(self, source, class_names, threshold, out, lo, batch, alarm=None):
    self.source, self.class_names, self.threshold = source, class_names, np.float32(threshold)
    self.out, self.lo, self.batch, self.alarm = out, lo, batch, alarm
    self.rows_kept, self.failed, self.stats, self.positions = [], [], [], []
    self.rows = self.skipped = self.checked = self.shifted = 0

  def add(self, b: int, host_batch: dict, result: dict) -> None:
    """Keeps batch b's rows, to be formatted once the chunk's verdict is known
    (blocks until the device has finished the batch)."""
    result = {key: np.asarray(v) for key, v in result.items()}
    valid, ok = host_batch["valid"], host_batch["ok"]
    positions = self.lo + b * self.batch + np.arange(self.batch)
    keep, bad = valid & ok, valid & ~ok
    classes = result.pop("member_classes")
    member_confidence = result.pop("member_confidence", None)
    if self.alarm is not None:
      self.stats.append(shift_rows(classes[:, keep], member_confidence[:, keep]))
      self.positions.append(positions[keep])
    disagree = (classes[0] != classes[min(1, len(classes) - 1)])[keep]
    ids = [self.source.ids[p] for p in positions[keep]]
    # The rows as written, and a guarded duo's on a chunk its alarm flags.
    variants = {"": {k: v[keep] for k, v in result.items() if not k.startswith("shifted_")}}
    flagged = {k[len("shifted_") :]: v[keep] for k, v in result.items() if k.startswith("shifted_")}
    if flagged:
      variants["shifted_"] = flagged
    for part in variants.values():
      part["abstain"] = part["confidence"] < self.threshold
      part["disagree"] = disagree
    self.rows_kept.append((ids, variants))
    for p, reason in zip(positions[bad], host_batch["reason"][bad]):
      self.failed.append((str(self.source.ids[p]), str(reason)))
      print(f"skipped {self.source.ids[p]}: {reason}", file=sys.stderr, flush=True)
    self.rows += int(keep.sum())
    self.skipped += int(bad.sum())

  def _shift_line(self) -> tuple[str, bool]:
    """The alarm's verdict on the chunk's rows as one JSON line ("" without rows), and
    whether it flags them."""
    if self.alarm is None or not self.stats:
      return "", False
    stats, positions = np.concatenate(self.stats), np.concatenate(self.positions)
    self.stats, self.positions = [], []
    if len(stats) == 0:
      return "", False
    p = float(self.alarm.p_values(stats, np.arange(len(stats))[None])[0])
    shifted = p <= self.alarm.alpha
    first, last = int(positions[0]), int(positions[-1])
    self.checked += 1
    if shifted:
      self.shifted += 1
      print(
        f"warning: images {first:,} to {last:,} ({len(stats):,}) look unlike the validation "
        f"data the duo was fit on (shift alarm p = {p:.4f} <= {self.alarm.alpha:g}): "
        + (
          "the guarded duo mixes equally with its large model on them"
          if any("shifted_" in variants for _, variants in self.rows_kept)
          else "the duo may do worse than its large model alone on them"
        ),
        file=sys.stderr,
        flush=True,
      )
    line = rows_lib.shift_record(
      first,
      last,
      self.source.ids[first],
      self.source.ids[last],
      len(stats),
      p,
      shifted,
      disagreement=float(stats[:, 0].mean()),
      confidence_gap=float(stats[:, 1].mean()),
    )
    return line, shifted

  def write(self, done: int) -> None:
    """Formats and appends the chunk's rows (a guarded duo's as the verdict says);
    `done`: the block's rows finished with it."""
    line, shifted = self._shift_line()
    text = []
    for ids, variants in self.rows_kept:
      kept = variants.get("shifted_" if shifted else "", variants[""])
      text.append(rows_lib.format_rows(ids, kept, self.class_names, self.out.fmt))
    self.out.append("".join(text), self.failed, done, line)
    self.rows_kept, self.failed = [], []
