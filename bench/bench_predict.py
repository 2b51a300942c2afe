"""`python -m duojax.predict` end to end, against the decoder's ceiling, and the exported
program against the library's jitted forward.

    python bench/bench_predict.py [--quick] [--images 512] [--out BENCHMARKS.md]

Two pairs, random weights (speed does not depend on them): the demo's (a
CIFAR-style ResNet-14 and the small CNN, 28 px grey images as PNGs) and
ViT-B/16 + ResNet-18 at 224 (ImageNet-like JPEGs, `bench_input.photo_like`).
For each, section `predict` of BENCHMARKS.md gets:
  * decode ceiling: the same grain pipeline, workers and batch as predict
    (`PredictionBatch`: read, decode, centre crop, resize), with no model:
    the most images/s predict can reach on these cores;
  * predict: `duojax.bundle.prediction.predict_to_file` writing JSON lines,
    the second of two runs (the first compiles; the persistent compilation
    cache makes the second load it), images/s over the whole run;
  * exported vs jitted: the bundle's serialised CPU program
    (`jax.export.deserialize(...).call`) against `jax.jit` of the same
    function, batch 256, the median of timed calls after one warm-up; goal
    ≥ 0.95× the jitted speed, outputs equal to atol = rtol = 1e-5;
  * the bundle's size on disk (members' float32 safetensors and the cpu,
    cuda and tpu programs).
On an accelerator the same script reports the device's figures (the decode
ceiling is the host's). `--quick` runs a 2-block ViT and a ResNet-8 at 32 px.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_input  # noqa: E402
import harness  # noqa: E402

BATCH = 256


def _pairs(quick: bool):
  """[(label, [(model name, overrides, image shape)], classes, image kind, images)]."""
  if quick:
    return [
      ("ViT-µ/4 + ResNet-8, 32 px (quick)", [("vit_mu4", {}, (32, 32, 3)), ("resnet8", {"width": 4}, (32, 32, 3))], 10, "jpeg", 24),
    ]  # fmt: skip
  return [
    ("demo pair: ResNet-14 + CNN-XS, 28 px grey", [("resnet14", {}, (28, 28, 1)), ("cnn_xs", {}, (28, 28, 1))], 10, "grey"),
    ("ViT-B/16 + ResNet-18, 224 px", [("vit_b16", {}, (224, 224, 3)), ("resnet18", {}, (224, 224, 3))], 1000, "jpeg"),
  ]  # fmt: skip


def _images(folder: Path, kind: str, count: int) -> None:
  rng = np.random.default_rng(0)
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(count):
    if kind == "grey":
      pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
      Image.fromarray(pixels, "L").save(folder / f"{i:05d}.png")
    else:
      bench_input.photo_like(rng).save(folder / f"{i:05d}.jpg", "JPEG", quality=90)


def _bundle(path: Path, members, classes: int):
  import duojax
  from duojax import bundle
  from duojax.data.preprocess import InputSpec
  from duojax.models.spec import ModelSpec

  built = []
  for i, (name, overrides, shape) in enumerate(members):
    spec = ModelSpec(name, overrides, classes, shape)
    stats = (0.5,) * shape[2]
    built.append(bundle.BundleMember(spec.build(i), spec, InputSpec(shape[0], stats, stats)))
  rng = np.random.default_rng(0)
  confidence = rng.uniform(0.2, 1.0, 5000).astype(np.float32)
  duo = duojax.Duo(np.array([1.0, 0.5], np.float32), ("large", "sidekick"))
  bundle.write_bundle(
    path,
    built,
    duo,
    [f"c{i}" for i in range(classes)],
    validation=(confidence, rng.uniform(size=5000) < confidence),
  )
  return duojax.load_bundle(path)  # fmt: skip


def _size_mb(path: Path) -> float:
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def _decode_ceiling(loaded, source, workers: int) -> float:
  from duojax.bundle import prediction
  from duojax.bundle.prediction_input import PredictionBatch
  from duojax.data import pipeline

  make = PredictionBatch(source.reader, 0, len(source), BATCH, prediction.geometry(loaded))
  batches = -(-len(source) // BATCH)
  best = 0.0
  for _ in range(2):  # the first round pays the workers' start-up
    t0 = time.perf_counter()
    iterator = pipeline.grain_batches(
      make, 0, batches, workers, pipeline.usable_cores() if workers == 0 else 1, 2
    )
    for batch in iterator:
      np.array(batch["image"])
    getattr(iterator, "close", lambda: None)()
    best = max(best, len(source) / (time.perf_counter() - t0))
  return best  # fmt: skip


def _exported_vs_jitted(loaded, repeats: int):
  import jax
  import jax.numpy as jnp

  from duojax.bundle import exported

  f, _ = exported.fused_program(
    loaded.models,
    loaded.inputs,
    loaded.duo.weights,
    float(loaded.manifest["input"]["crop_fraction"]),
  )
  arrays = [jnp.asarray(a) for m in loaded.models for a in exported.member_arrays(m)[1]]
  images = jnp.asarray(
    np.random.default_rng(1).integers(0, 256, (BATCH, *loaded.image_shape), dtype=np.uint8)
  )
  program = jax.export.deserialize(
    bytearray((Path(loaded.path) / "exported" / "cpu.bin").read_bytes())
  )
  jitted = jax.jit(f)
  t_jit = harness.time_call(lambda: jitted(arrays, images), repeats=repeats, sync=harness.jax_sync)
  t_exp = harness.time_call(
    lambda: program.call(arrays, images), repeats=repeats, sync=harness.jax_sync
  )
  same = all(
    np.allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
    for a, b in zip(jitted(arrays, images)[:3], program.call(arrays, images)[:3])
  )
  return t_jit.median_s, t_exp.median_s, same  # fmt: skip


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true")
  parser.add_argument(
    "--images", type=int, default=None, help="images per pair (default: 4096, 512)"
  )
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  args = parser.parse_args()
  import jax

  from duojax.bundle import prediction
  from duojax.bundle.prediction_input import open_input

  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = Path(tmp)
    jax.config.update("jax_compilation_cache_dir", str(tmp / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    for p, (label, members, classes, kind, images) in enumerate(_pairs(args.quick)):
      images = args.images or images
      folder = tmp / f"images{p}"
      _images(folder, kind, images)
      loaded = _bundle(tmp / f"bundle{p}", members, classes)
      source = open_input(str(folder))
      # What predict picks by default for this many images (one worker per 500, up to the cores).
      workers = min(harness_cores(), images // prediction.IMAGES_PER_WORKER)
      ceiling = _decode_ceiling(loaded, source, workers)
      for _ in range(2):  # the first compiles
        summary = prediction.predict_to_file(
          loaded,
          source,
          str(tmp / f"rows{p}.jsonl"),
          workers=workers,
          overwrite=True,
          progress=False,
        )
      t_jit, t_exp, same = _exported_vs_jitted(loaded, args.repeats)
      rows.append([
        label, images, workers, f"{ceiling:.1f}", f"{summary.images_per_second:.1f}",
        f"{summary.images_per_second / ceiling:.2f}", f"{BATCH / t_jit:.1f}", f"{BATCH / t_exp:.1f}",
        f"{t_jit / t_exp:.2f}", "yes" if same else "NO", f"{_size_mb(tmp / f'bundle{p}'):.1f}",
      ])  # fmt: skip
      print(rows[-1], flush=True)
  headers = [
    "pair", "images", "decode workers", "decode ceiling img/s", "predict img/s", "of ceiling",
    "jitted img/s (B=256)", "exported img/s (B=256)", "exported / jitted", "outputs equal (1e-5)",
    "bundle MB",
  ]  # fmt: skip
  body = harness.md_table(headers, rows) + (
    "\n\nThe decode ceiling is the same pipeline with no model. predict's rate is the whole "
    "run's (reading, decoding, both members and the top-k, writing rows), its second run, "
    "the compiled program loaded from the persistent cache. The exported program is the "
    "bundle's `exported/cpu.bin`, called with the weights as arguments; jitted is `jax.jit` "
    "of the same function. Bundle size: both members' float32 safetensors plus the three "
    "serialised programs (a few tens of kB each: the weights are arguments, not constants)."
  )
  harness.print_section("Predict: a bundle over images", body)
  harness.write_section("predict", "Predict: a bundle over images", body, machine=harness.machine_line(), path=args.out)  # fmt: skip


def harness_cores() -> int:
  from duojax.data import pipeline

  return pipeline.usable_cores()


if __name__ == "__main__":
  main()
