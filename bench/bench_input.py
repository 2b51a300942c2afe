"""The host input pipeline's throughput against the JPEG decoder and against PyTorch.

    python bench/bench_input.py [--quick] [--images 600] [--cache_dir DIR] [--out BENCHMARKS.md]

Data: ImageNet-like JPEGs made once (`make_jpegs`): 400-500 × 300-375 pixels,
a fifth of them portrait, quality 90, content that costs a JPEG decoder what a
photograph does (smooth random fields at five scales plus sensor-like noise,
~75 KB a file). They are imported with `duojax.data.folder.import_folder` and
read back with `duojax.data.load_dataset` as a split of encoded images, so the
pipeline reads them as training reads ImageNet. With `--cache_dir` the files
and the import are kept and reused; otherwise both live in a temp folder.

Rows (section `input_pipeline` of BENCHMARKS.md), all on the same images: the
ones the first epoch of training batches reads (the epoch drops its last
len % B images):
  * floors, one thread: PIL's full decode of each file's bytes (what every
    PIL-based loader pays), and the decode with the DCT scaling (`draft`) that
    duojax asks for the random-resized-crop box the train transform draws for
    that image (the least a decoder can do for that crop);
  * the old pipeline's path, one thread: full decode, shorter side resized to
    224, centre crop (what duojax did before grain);
  * duojax's train transform in-process, one thread: `TrainBatch` (decode,
    random-resized crop, flip, uint8 224×224) called batch by batch, with draft
    decoding as shipped and forced off;
  * `train_batches(augment="rrc,flip")` with 0 workers (grain's read threads
    in-process, one per core), 1 and 2 worker processes, batch 64;
  * a PyTorch `DataLoader` over the same files with the same PIL work written
    by hand (full decode, Inception crop box from torch's RNG, one bilinear
    resize of the box, flip, uint8 tensor), 1 and 2 workers, batch 64. It runs
    in a child process that imports no JAX, as a PyTorch user's would, and
    forks its workers (PyTorch's default on Linux).
Per-core loops are timed in `--rounds` interleaved rounds; each loader is
timed in as many rounds, each a fresh iterator: start-up (the call to the
first batch: worker processes starting and importing; median of the rounds)
is reported apart from the steady state (images/s over `--timed` batches
after `--warmup` more). Rates are the best round's: on a shared machine
other work only ever slows a round down, and the medians of identical loops
drifted apart by 20%. Iterators are closed, so no worker outlives its row.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

# duojax (and with it JAX, tfds, grain) is imported in the functions that use
# it: grain's spawned workers and the PyTorch child re-import this file, and
# the PyTorch child is meant to hold no JAX.

SIZE = 224
SEED = 0
DATASET = "bench_input_jpegs"
CLASSES = ("bird", "boat", "car", "dog", "tree")
# An assumption, not a measurement: order of a bfloat16 ViT-B/16 fine-tune's
# training throughput at 224×224 on one modern data-centre GPU.
ACCELERATOR_IMAGES_PER_S = 1000


# ------------------------------------------------------------------ the data
def photo_like(rng: np.random.Generator) -> Image.Image:
  """An RGB image whose JPEG costs about what a photograph's does to decode.

  Flat or smooth content decodes several times faster than a photograph (few
  non-zero DCT coefficients); random fields from coarse to fine, plus noise,
  give every 8×8 block detail, as camera images have.
  """
  width, height = int(rng.integers(400, 501)), int(rng.integers(300, 376))
  if rng.random() < 0.2:
    width, height = height, width
  pixels = np.zeros((height, width, 3), np.float32)
  for cells, weight in ((3, 0.35), (12, 0.2), (40, 0.15), (120, 0.15), (250, 0.15)):
    grid = rng.integers(
      0,
      256,
      (max(2, round(cells * height / 500)), max(2, round(cells * width / 500)), 3),
      dtype=np.uint8,
    )
    pixels += weight * np.asarray(
      Image.fromarray(grid).resize((width, height), Image.BICUBIC), np.float32
    )
  pixels += rng.normal(0, 12, pixels.shape).astype(np.float32)
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_jpegs(folder: Path, count: int) -> None:
  """`count` JPEGs in class subfolders of `folder` (kept if already there)."""
  done = folder / ".complete"
  if done.exists() and int(done.read_text()) == count:
    return
  rng = np.random.default_rng(SEED)
  for i in range(count):
    path = folder / CLASSES[i % len(CLASSES)] / f"{i:05d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    photo_like(rng).save(path, "JPEG", quality=90)
  done.write_text(str(count))


def jpeg_files(folder: Path) -> list[tuple[Path, int]]:
  """(path, label) of the files in class order, as the import stores them."""
  classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
  return [
    (path, label)
    for label, name in enumerate(classes)
    for path in sorted((folder / name).glob("*.jpg"))
  ]


def load_split(folder: Path, data_dir: Path, count: int):
  """The imported images as one training split of all `count` files."""
  from duojax import data
  from duojax.data import folder as folder_lib

  target = data_dir / DATASET
  if target.exists() and int((data_dir / ".count").read_text()) != count:
    raise SystemExit(f"error: {target} holds another import: delete it or use another --cache_dir")
  if not target.exists():
    report = folder_lib.import_folder(folder, dataset=DATASET, data_dir=data_dir, workers=1)
    (data_dir / ".count").write_text(str(count))
    print(report.summary(), flush=True)
  # val and test are the train split itself: every image is a training image.
  dataset = data.load_dataset(
    DATASET, data_dir, val_split="train", test_split="train", image_size=SIZE
  )
  return dataset.train


# ------------------------------------------------------------------ per-core loops
def epoch_plan(split, batch: int) -> tuple[list, list[int], list]:
  """The first epoch's training batches: (TrainBatch, source rows, crop boxes) in order.

  The boxes are the ones `TrainBatch` draws (stream 3, one Generator per row),
  taken from the library itself rather than redrawn here.
  """
  from duojax.data import batches as batches_lib
  from duojax.data import images as images_lib
  from duojax.data import sources

  make = batches_lib.TrainBatch(
    split,
    global_batch_size=batch,
    seed=SEED,
    rows=slice(0, batch),
    transform=batches_lib.Transform(("rrc", "flip")),
  )
  rows, boxes = [], []
  for step in range(make.steps_per_epoch):
    step_rows = split.indices[make.positions(step)]
    for i, example in enumerate(sources.read_raw(split, step_rows)):
      width, height = images_lib.open_encoded(example[split.image_key]).size
      rng = np.random.default_rng([SEED, step, batches_lib.RRC_STREAM, i])
      boxes.append(images_lib.random_resized_crop_box(rng, width, height))
    rows += [int(r) for r in step_rows]
  return make, rows, boxes


def full_decode(blobs: list[bytes]) -> None:
  for blob in blobs:
    with Image.open(io.BytesIO(blob)) as image:
      image.convert("RGB").load()


def draft_decode(blobs: list[bytes], boxes: list) -> None:
  from duojax.data import images as images_lib

  for blob, box in zip(blobs, boxes):
    with images_lib.open_encoded(blob) as image:
      # The library's own choice of DCT scale for this box and output size.
      image, _ = images_lib._draft(image, box, SIZE)  # noqa: SLF001
      image.convert("RGB").load()  # as the full-decode floor, for a like-for-like ratio


def old_path(blobs: list[bytes]) -> None:
  """Full decode, shorter side to 224, centre crop: the pipeline before grain."""
  for blob in blobs:
    with Image.open(io.BytesIO(blob)) as image:
      image = image.convert("RGB")
      scale = SIZE / min(image.size)
      width, height = max(SIZE, round(image.width * scale)), max(SIZE, round(image.height * scale))
      image = image.resize((width, height), Image.BILINEAR)
      left, top = (width - SIZE) // 2, (height - SIZE) // 2
      np.asarray(image)[top : top + SIZE, left : left + SIZE]


def library_crops(blobs: list[bytes], boxes: list) -> None:
  """`images.crop_resize` of each image's train box: the transform's PIL work alone."""
  from duojax.data import images as images_lib

  for blob, box in zip(blobs, boxes):
    images_lib.crop_resize(images_lib.open_encoded(blob), box, SIZE)


def train_transform(make, steps: int) -> None:
  for step in range(steps):
    make(step)


@contextlib.contextmanager
def full_scale_crops():
  """Every crop of `duojax.data.batches` decoded at full scale (no DCT scaling)."""
  from duojax.data import images as images_lib

  original = images_lib.crop_resize
  images_lib.crop_resize = functools.partial(original, draft=False)
  try:
    yield
  finally:
    images_lib.crop_resize = original


def draft_flag_reaches_crops(make) -> bool:
  """Whether `Transform(draft=False)` makes `TrainBatch` decode at full scale."""
  import dataclasses

  from duojax.data import batches as batches_lib
  from duojax.data import images as images_lib

  seen = []
  original = images_lib.crop_resize

  def spy(*args, **kwargs):
    seen.append(kwargs.get("draft", True))
    return original(*args, **kwargs)

  no_draft = batches_lib.TrainBatch(
    make.split,
    global_batch_size=make.global_batch_size,
    seed=SEED,
    rows=make.rows,
    transform=dataclasses.replace(make.transform, draft=False),
  )
  images_lib.crop_resize = spy
  try:
    no_draft(0)
  finally:
    images_lib.crop_resize = original
  return not any(seen)


def per_core_rates(loops: dict, counts: dict, rounds: int) -> dict[str, float]:
  """images/s of each loop in this one thread, best of `rounds` interleaved rounds."""
  times = {name: [] for name in loops}
  for _ in range(rounds):
    for name, loop in loops.items():
      start = time.perf_counter()
      loop()
      times[name].append(time.perf_counter() - start)
  return {name: counts[name] / min(t) for name, t in times.items()}


# ------------------------------------------------------------------ loaders
def time_iterator(start: float, batches, batch: int, warmup: int, timed: int):
  """(start-up s since `start`, steady images/s) of an iterator of batches."""
  next(batches)
  startup = time.perf_counter() - start
  for _ in range(warmup):
    next(batches)
  begin = time.perf_counter()
  for _ in range(timed):
    next(batches)
  return startup, timed * batch / (time.perf_counter() - begin)


def duojax_loader(split, workers: int, batch: int, warmup: int, timed: int) -> tuple[float, float]:
  """(start-up s, steady images/s) of a fresh `train_batches` iterator."""
  from duojax import data

  start = time.perf_counter()
  batches = data.train_batches(
    split, global_batch_size=batch, seed=SEED, augment="rrc,flip", workers=workers
  )
  try:
    return time_iterator(start, batches, batch, warmup, timed)
  finally:
    batches.close()


class TorchRRCImages:
  """Encoded images -> (uint8 [3, S, S] tensor, label), torchvision's recipe by hand.

  Full decode to RGB, an Inception crop box (area U(0.08, 1), log-uniform
  aspect in [3/4, 4/3], 10 tries, then the centre crop) drawn from torch's
  RNG (which DataLoader seeds per worker), the box resized to S×S in one
  bilinear resampling, a flip with probability 1/2.
  """

  def __init__(self, blobs: list[bytes], labels: list[int]):
    self.blobs, self.labels = blobs, labels

  def __len__(self) -> int:
    return len(self.blobs)

  @staticmethod
  def box(torch, width: int, height: int) -> tuple[int, int, int, int]:
    area, log_ratio = width * height, (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
      target = area * torch.empty(1).uniform_(0.08, 1.0).item()
      aspect = math.exp(torch.empty(1).uniform_(*log_ratio).item())
      w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
      if 0 < w <= width and 0 < h <= height:
        top = int(torch.randint(0, height - h + 1, (1,)).item())
        left = int(torch.randint(0, width - w + 1, (1,)).item())
        return left, top, w, h
    w = min(width, round(height * 4 / 3))
    h = min(height, round(width * 4 / 3))
    return (width - w) // 2, (height - h) // 2, w, h

  def __getitem__(self, index: int):
    import torch  # already loaded: only the PyTorch child process builds this class

    image = Image.open(io.BytesIO(self.blobs[index])).convert("RGB")
    left, top, w, h = self.box(torch, image.width, image.height)
    image = image.resize((SIZE, SIZE), Image.BILINEAR, box=(left, top, left + w, top + h))
    if torch.rand(1).item() < 0.5:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1), self.labels[index]


def torch_loader(folder: Path, workers: int, batch: int, warmup: int, timed: int) -> dict:
  """(In the child process) start-up s and steady images/s of a DataLoader."""
  import torch
  from torch.utils.data import DataLoader, RandomSampler

  files = jpeg_files(folder)
  dataset = TorchRRCImages([p.read_bytes() for p, _ in files], [label for _, label in files])
  # One pass of a sampler as long as the run: no epoch boundary (and no
  # worker restart) inside the timed batches, as duojax's endless iterator.
  sampler = RandomSampler(
    dataset, num_samples=(1 + warmup + timed) * batch, generator=torch.Generator().manual_seed(SEED)
  )
  loader = DataLoader(
    dataset, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=True
  )
  start = time.perf_counter()
  batches = iter(loader)
  startup, rate = time_iterator(start, batches, batch, warmup, timed)
  del batches  # shuts its workers down
  return {"startup": startup, "rate": rate}


def torch_loader_in_child(
  folder: Path, workers: int, batch: int, warmup: int, timed: int
) -> tuple[float, float]:
  out = subprocess.run(
    [
      sys.executable,
      __file__,
      "--torch_loader",
      str(folder),
      str(workers),
      str(batch),
      str(warmup),
      str(timed),
    ],
    capture_output=True,
    text=True,
    check=False,
  )
  if out.returncode:
    raise RuntimeError(f"the PyTorch loader failed:\n{out.stderr[-3000:]}")
  result = json.loads(out.stdout.strip().splitlines()[-1])
  return result["startup"], result["rate"]


# ------------------------------------------------------------------ the section
def measure(folder: Path, data_dir: Path, args) -> str:
  count = len(jpeg_files(folder))
  split = load_split(folder, data_dir, count)
  make, rows, boxes = epoch_plan(split, args.batch)
  blobs = [split.source[r][split.image_key] for r in rows]
  steps = make.steps_per_epoch
  drafted = sum(min(b[2], b[3]) >= 2 * SIZE for b in boxes)
  mean_kb = np.mean([len(b) for b in blobs]) / 1024
  sizes = [Image.open(io.BytesIO(b)).size for b in blobs]

  from duojax.data import sources

  batch_images = make(0)["image"]
  flips = np.random.default_rng(SEED).random(len(batch_images)) < 0.5
  crops = [Image.fromarray(image) for image in batch_images]
  per_core_loops = {
    "floor": lambda: full_decode(blobs),
    "draft floor": lambda: draft_decode(blobs, boxes),
    "old": lambda: old_path(blobs),
    "crops": lambda: library_crops(blobs, boxes),
    "transform": lambda: train_transform(make, steps),
    "transform, no draft": lambda: _without_draft(make, steps),
    # The transform's parts beyond the PIL work, timed alone to say where its
    # time goes: the record reads (array_record through tfds) and the flips
    # (`images.crop_resize` mirrors a crop in PIL as it is cut).
    "reads": lambda: [
      sources.read_raw(split, split.indices[make.positions(s)]) for s in range(steps)
    ],
    "flip": lambda: [
      [
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if f else image
        for image, f in zip(crops, flips)
      ]
      for _ in range(steps)
    ],
  }
  per_core_loops["floor"]()  # untimed: PIL loads its plug-ins, the allocator its pages
  rates = per_core_rates(per_core_loops, {name: len(blobs) for name in per_core_loops}, args.rounds)

  loaders = {
    ("duojax", 0): [],
    ("duojax", 1): [],
    ("duojax", 2): [],
    ("PyTorch", 1): [],
    ("PyTorch", 2): [],
  }
  for _ in range(args.rounds):
    for (kind, workers), runs in loaders.items():
      if kind == "duojax":
        runs.append(duojax_loader(split, workers, args.batch, args.warmup, args.timed))
      else:
        runs.append(torch_loader_in_child(folder, workers, args.batch, args.warmup, args.timed))
  loader_rates = {k: max(r for _, r in runs) for k, runs in loaders.items()}
  startups = {k: statistics.median(s for s, _ in runs) for k, runs in loaders.items()}

  floor = rates["floor"]
  threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

  def row(name, where, rate, startup=None):
    return [
      name,
      where,
      f"{rate:,.0f}",
      f"{rate / floor:.2f}",
      "–" if startup is None else f"{startup:.1f}",
    ]

  table = harness.md_table(
    ["path", "runs on", "images/s", "× floor", "start-up s"],
    [
      row("PIL full decode (**floor**)", "1 thread", floor),
      row(
        "PIL decode at the DCT scale of each train crop (draft floor)",
        "1 thread",
        rates["draft floor"],
      ),
      row("old path: full decode, shorter side to 224, centre crop", "1 thread", rates["old"]),
      row(
        "duojax `images.crop_resize` of each train box (no reads, no batch)",
        "1 thread",
        rates["crops"],
      ),
      row("duojax train transform (`TrainBatch`), draft on", "1 thread", rates["transform"]),
      row("duojax train transform, draft off", "1 thread", rates["transform, no draft"]),
      row(
        "duojax `train_batches`, workers=0",
        f"{threads} read threads",
        loader_rates["duojax", 0],
        startups["duojax", 0],
      ),
      row(
        "duojax `train_batches`, workers=1",
        "1 process",
        loader_rates["duojax", 1],
        startups["duojax", 1],
      ),
      row(
        "duojax `train_batches`, workers=2",
        "2 processes",
        loader_rates["duojax", 2],
        startups["duojax", 2],
      ),
      row(
        "PyTorch `DataLoader`, num_workers=1",
        "1 process",
        loader_rates["PyTorch", 1],
        startups["PyTorch", 1],
      ),
      row(
        "PyTorch `DataLoader`, num_workers=2",
        "2 processes",
        loader_rates["PyTorch", 2],
        startups["PyTorch", 2],
      ),
    ],
  )

  per_core = rates["transform"]
  share = per_core / floor
  versus_torch = {w: loader_rates["duojax", w] / loader_rates["PyTorch", w] for w in (1, 2)}
  scaling = {kind: loader_rates[kind, 2] / loader_rates[kind, 1] for kind in ("duojax", "PyTorch")}
  cores = ACCELERATOR_IMAGES_PER_S / per_core
  met = lambda ok: "met" if ok else "**not met**"  # noqa: E731
  longs, shorts = sorted(max(s) for s in sizes), sorted(min(s) for s in sizes)
  portrait = sum(h > w for w, h in sizes)
  ms = {name: 1000 / rates[name] for name in ("transform", "crops", "reads", "flip")}
  lines = [
    f"{len(blobs)} JPEGs (the first epoch's {steps} batches of {args.batch} from {count} "
    f"generated files, {len(CLASSES)} classes), {longs[0]}-{longs[-1]} × "
    f"{shorts[0]}-{shorts[-1]} pixels ({portrait} portrait), quality 90, "
    f"{mean_kb:.0f} KB on average; output uint8 {SIZE}×{SIZE}×3. Per-core rows: best of "
    f"{args.rounds} interleaved rounds over those images in this one thread. Loaders: a "
    f"fresh iterator per round, best of {args.rounds} (start-up: median); images/s over "
    f"{args.timed} batches after {1 + args.warmup} untimed ones, start-up = the call to "
    "the first batch. duojax reads the records from the imported array_record files (the "
    f"reads alone run at {rates['reads']:,.0f} images/s, one thread); the floors, the old "
    "path and PyTorch start from the bytes in memory.",
    "",
    table,
    "",
    f"- Train transform per core: {per_core:,.0f} images/s, {share:.0%} of the full-decode "
    f"floor (target ≥ 80%: {met(share >= 0.8)}). Per image it takes {ms['transform']:.2f} "
    f"ms: decode {1000 / floor:.2f}, decode and crop resize (`crop_resize`) "
    f"{ms['crops']:.2f}, record read {ms['reads']:.2f}, the flips "
    f"{ms['flip']:.2f}, the rest (copies into the batch, Python) "
    f"{ms['transform'] - ms['crops'] - ms['reads'] - ms['flip']:.2f}.",
    f"- duojax against the PyTorch loader: {versus_torch[1]:.2f}× with 1 worker, "
    f"{versus_torch[2]:.2f}× with 2 "
    f"(target ≥ 1.0×: {met(min(versus_torch.values()) >= 1.0)})."
    + (
      f" Each worker does the same PIL work; duojax's adds "
      f"{ms['transform'] - ms['crops']:.2f} ms per image beyond `crop_resize` (the record "
      "read, the flips, copies into the batch)."
      if versus_torch[1] < 1
      else ""
    ),
    f"- 1 → 2 workers, as measured on this {os.cpu_count()}-core machine (the parent "
    f"process, which copies each batch out of shared memory, shares the cores with the "
    f"workers): duojax {scaling['duojax']:.2f}×, PyTorch {scaling['PyTorch']:.2f}×.",
    f"- Draft decoding applied to {drafted} of the {len(boxes)} crops: the decoder scales "
    f"by 1/2, 1/4 or 1/8 only, so a crop needs both sides ≥ {2 * SIZE} pixels before "
    "anything is saved."
    + (
      " At ImageNet's resolution and a 224 output that almost never happens, and the "
      "draft on/off rows differ by noise only; it pays on larger photos."
      if drafted <= 0.05 * len(boxes)
      else ""
    ),
  ]
  if not draft_flag_reaches_crops(make):
    lines.append(
      "- `Transform(draft=False)` does not reach `images.crop_resize` (`TrainBatch` "
      "crops with the default, draft on); the draft-off row wraps `crop_resize` "
      "to force full-scale decoding."
    )
  lines += [
    "",
    f"Host cores per accelerator: a bfloat16 ViT-B/16 fine-tune at 224 trains at the order "
    f"of {ACCELERATOR_IMAGES_PER_S:,} images/s on one modern GPU (an assumption, not "
    f"measured here). At {per_core:,.0f} images/s per core, feeding it takes "
    f"{cores:.1f} cores of train transform per accelerator (≈{math.ceil(cores)} worker "
    f"processes), plus headroom for the parent process, for how workers scale on a larger "
    f"host (measured here: {scaling['duojax']:.2f}× from 1 to 2) and for a busier host; "
    f"eight accelerators on one host would want ≈{8 * math.ceil(cores)} cores for input "
    "alone.",
  ]
  return "\n".join(lines)


def _without_draft(make, steps: int) -> None:
  with full_scale_crops():
    train_transform(make, steps)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--quick", action="store_true", help="60 images, a few batches, one round (for the unit test)"
  )
  parser.add_argument("--images", type=int, help="JPEGs to generate (default 600; quick 60)")
  parser.add_argument("--batch", type=int, help="batch size (default 64; quick 16)")
  parser.add_argument("--rounds", type=int, help="rounds per figure (default 3; quick 1)")
  parser.add_argument("--warmup", type=int, help="untimed batches after the first (default 3)")
  parser.add_argument("--timed", type=int, help="timed batches per loader (default 20)")
  parser.add_argument("--cache_dir", help="keep the JPEGs and their import here and reuse them")
  parser.add_argument("--out", help="the file to write (default BENCHMARKS.md; quick: none)")
  parser.add_argument("--torch_loader", nargs=5, help=argparse.SUPPRESS)  # the child's job
  args = parser.parse_args(argv)
  if args.torch_loader:
    folder, *numbers = args.torch_loader
    print(json.dumps(torch_loader(Path(folder), *map(int, numbers))))
    return 0
  quick = args.quick
  args.images = args.images or (60 if quick else 600)
  args.batch = args.batch or (16 if quick else 64)
  args.rounds = args.rounds or (1 if quick else 3)
  args.warmup = (1 if quick else 3) if args.warmup is None else args.warmup
  args.timed = args.timed or (3 if quick else 20)
  machine = harness.machine_line()
  with contextlib.ExitStack() as stack:
    if args.cache_dir:
      root = Path(args.cache_dir).expanduser().resolve()
    else:
      root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_input_")))
    folder = root / f"jpegs_{args.images}"
    start = time.perf_counter()
    make_jpegs(folder, args.images)
    print(f"{args.images} JPEGs in {folder} ({time.perf_counter() - start:.1f} s)", flush=True)
    body = measure(folder, root / f"data_{args.images}", args)
  title = "Input pipeline: JPEG train transform against the decoder and PyTorch"
  harness.print_section(title, body)
  out = args.out or (None if quick else str(harness.BENCHMARKS_MD))
  if out:
    harness.write_section("input_pipeline", title, body, machine=machine, path=out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
