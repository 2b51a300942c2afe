"""Where `make demo`'s time goes: every run's phases, the evaluation's, and the
host pipeline against the device step of the demo's models.

    python bench/bench_demo.py [--runs runs/demo] [--quick] [--out BENCHMARKS.md]

Reads a finished demo (`make demo` first): `{runs}/results/timings.json` (each
run's process wall time), each run's `summary.json` (`seconds`: setup, first
step with its compilation, the other steps, per-epoch validation, checkpoint
writes, final evaluation; the process start-up and imports are the wall time
less their sum) and `results.json` (`seconds`: the evaluation's phases).

Then measures, for the demo's ResNet-14 (batch 32) and ViT-mi/7 (batch 128),
the training-batch pipeline alone (host: gather, augment, transfer) and the
jitted train step alone on one batch already on the device; the loop's
steps/s can only be as high as the slower of the two (they overlap, since a
background thread prepares batches ahead). And the case for the demo's
runner: the train step's img/s of one process on every core, of one process
pinned to one core, and of one pinned process per core at once (summed).

Section `demo_profile` of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__" and "--step_rate" in sys.argv:
  # A child of `side_by_side`: pinned before JAX sizes its thread pool by the
  # cores it may use (that happens on import of the modules below).
  _core = int(sys.argv[sys.argv.index("--step_rate") + 4])
  if _core >= 0:
    os.sched_setaffinity(0, [_core])

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from duojax import config_lib, data  # noqa: E402
from duojax.models import functional  # noqa: E402
from duojax.models.spec import ModelSpec  # noqa: E402
from duojax.parallel import sharding  # noqa: E402
from duojax.train import optim, steps  # noqa: E402

PHASES = ("setup", "first_step", "steps", "validation", "checkpoint", "final_eval")
# (config file, model, batch size) of the demo's two big trainings.
MODELS = (("configs/demo_large.py", "resnet14", 32), ("configs/demo_vit.py", "vit_mi7", 128))


def run_phases(runs: Path) -> str:
  timing = json.loads((runs / "results" / "timings.json").read_text())
  rows = []
  for name, run in timing["runs"].items():
    summary_path = runs / name / "summary.json"
    if not summary_path.exists():  # the evaluation
      continue
    phases = json.loads(summary_path.read_text()).get("seconds", {})
    startup = run["seconds"] - sum(phases.values())
    rows.append(
      [
        name,
        f"{run['seconds']:.0f}",
        f"{startup:.1f}",
        *(f"{phases.get(p, 0.0):.1f}" for p in PHASES),
      ]
    )
  evaluation = json.loads((runs / "results" / "results.json").read_text())["seconds"]
  eval_rows = [[phase, f"{seconds:.1f}"] for phase, seconds in evaluation.items()]
  eval_rows.insert(0, ["process (wall)", f"{timing['runs']['evaluate']['seconds']:.1f}"])
  return "\n".join(
    [
      f"The demo of `{runs}` on {timing['machine']}, {timing['jobs']} runs side by side: "
      f"{timing['total']:.0f} s in all (training {timing['training']:.0f} s for "
      f"{timing['training_sum_of_runs']:.0f} s of runs, evaluation {timing['evaluation']:.0f} s).",
      "",
      "Each training run's wall seconds by phase (start-up: process start and imports "
      "until the config is read; first step: its compilation included):",
      "",
      harness.md_table(["run", "wall", "start-up", *PHASES], rows),
      "",
      "The evaluation's phases (sections include the fits and outputs they first ask for):",
      "",
      harness.md_table(["phase", "seconds"], eval_rows),
    ]
  )


def pipeline_vs_step(
  config_file: str,
  model_name: str,
  batch_size: int,
  num_steps: int,
  data_dir: str | None = None,
  val_size: int | None = None,
) -> list:
  config = _load_config(config_file)
  config.data_dir = data_dir or config.data_dir
  config.val_size = config.val_size if val_size is None else val_size
  dataset = data.load_dataset_of(config)
  mesh = sharding.make_mesh(1)
  batches = data.train_batches(
    dataset.train,
    global_batch_size=batch_size,
    seed=0,
    augment=config_lib.augmentations(config),
    mean=dataset.mean,
    std=dataset.std,
    sharding=sharding.batch_sharding(mesh),
  )
  next(batches)
  start = time.perf_counter()
  for _ in range(num_steps):
    jax.block_until_ready(next(batches))
  host = num_steps * batch_size / (time.perf_counter() - start)
  batch = next(batches)
  batches.close()

  spec = ModelSpec(
    model_name, config_lib.model_overrides(config), dataset.num_classes, tuple(dataset.image_shape)
  )
  graphdef, params, batch_stats = functional.split_model(spec.build(seed=0))
  optimizer = optim.make_optimizer(config, 10 * num_steps)
  state = steps.init_state(params, batch_stats, optimizer)
  train_step = steps.make_train_step(
    graphdef, optimizer, mesh=mesh, seed=0, loss_fn=steps.make_loss(config)
  )
  for _ in range(2):  # compiles for the host state, then for the state it returns
    state, _ = train_step(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(num_steps):
    state, _ = train_step(state, batch)
  jax.block_until_ready(state)
  device = num_steps * batch_size / (time.perf_counter() - start)
  return [
    model_name,
    batch_size,
    f"{host:,.0f}",
    f"{device:,.0f}",
    "device step" if device < host else "host pipeline",
  ]


def step_rate(model_name: str, batch_size: int, seconds: float) -> float:
  """img/s of the demo's train step for `model_name` on one device batch, for
  `seconds` after compiling (in whatever cores this process may use)."""
  from duojax.models import spec as spec_lib

  config = config_lib.base_config()
  model = spec_lib.build_model(model_name, {}, 10, (28, 28, 1), seed=0)
  graphdef, params, batch_stats = functional.split_model(model)
  optimizer = optim.make_optimizer(config, 100_000)
  state = steps.init_state(params, batch_stats, optimizer)
  train_step = steps.make_train_step(graphdef, optimizer, mesh=sharding.make_mesh(1), seed=0)
  rng = np.random.default_rng(0)
  batch = jax.device_put(
    {
      "image": rng.standard_normal((batch_size, 28, 28, 1), np.float32),
      "label": rng.integers(0, 10, batch_size).astype(np.int32),
    }
  )
  # Two calls before timing: the first compiles for the initial (host) state,
  # the second for the state as the step returns it, placed on the device.
  for _ in range(2):
    state, _ = train_step(state, batch)
  jax.block_until_ready(state)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    for _ in range(5):
      state, _ = train_step(state, batch)
    jax.block_until_ready(state)
    count += 5
  return count * batch_size / (time.perf_counter() - start)


def side_by_side(model_name: str, batch_size: int, seconds: float, rounds: int = 2) -> list:
  """One process on every core against one process per core at once (summed)."""
  cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []

  def launch(core):
    # The child pins itself before JAX starts its thread pools (this process
    # has them already, and forking it with a pre-exec hook is unsafe).
    return subprocess.Popen(
      [
        sys.executable,
        __file__,
        "--step_rate",
        model_name,
        str(batch_size),
        str(seconds),
        str(-1 if core is None else core),
      ],
      stdout=subprocess.PIPE,
      text=True,
    )

  def rate(procs):
    return sum(float(p.communicate()[0].split()[-1]) for p in procs)

  # Best of `rounds`, alternating: a shared machine's speed drifts by tens of
  # percent over minutes, and the three figures compare only if measured together.
  alone = one_core = together = 0.0
  for _ in range(rounds):
    alone = max(alone, rate([launch(None)]))
    if len(cores) < 2:
      continue
    one_core = max(one_core, rate([launch(cores[0])]))
    together = max(together, rate([launch(c) for c in cores]))
  if len(cores) < 2:
    return [model_name, batch_size, f"{alone:,.0f}", "–", "–"]
  return [
    model_name,
    batch_size,
    f"{alone:,.0f}",
    f"{one_core:,.0f}",
    f"{together:,.0f} ({together / alone:.2f}×)",
  ]


def _load_config(path: str):
  """`get_config()` of a config file, as train.py would read it without arguments."""
  import importlib.util

  spec = importlib.util.spec_from_file_location("demo_config", harness.ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(None)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--runs", default="runs/demo", help="a finished `make demo`'s folder")
  parser.add_argument("--quick", action="store_true", help="fewer steps, no BENCHMARKS.md")
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  parser.add_argument("--data_dir", help="the data set's folder (default: the configs')")
  parser.add_argument("--val_size", type=int, help="default: the configs'")
  parser.add_argument("--step_rate", nargs=4, help=argparse.SUPPRESS)  # a child's job
  args = parser.parse_args()
  if args.step_rate:
    name, batch, seconds, _ = args.step_rate  # the core: pinned at the top of the file
    print(step_rate(name, int(batch), float(seconds)))
    return
  runs = Path(args.runs)
  if not (runs / "results" / "timings.json").exists():
    sys.exit(f"error: {runs}/results/timings.json does not exist: run `make demo` first")
  machine = harness.machine_line()
  os.chdir(harness.ROOT)  # the demo configs name data/ relative to the repository
  rates = [
    pipeline_vs_step(
      *m, num_steps=20 if args.quick else 200, data_dir=args.data_dir, val_size=args.val_size
    )
    for m in MODELS
  ]
  cases = (
    (("cnn_xs", 128),) if args.quick else (("resnet14", 32), ("vit_mi7", 128), ("cnn_xs", 128))
  )
  slots = [
    side_by_side(name, batch, 1.0 if args.quick else 10.0, 1 if args.quick else 2)
    for name, batch in cases
  ]
  body = "\n".join(
    [
      run_phases(runs.resolve() if runs.is_absolute() else harness.ROOT / runs),
      "",
      "Training-batch pipeline alone against the train step alone (images/s, one process "
      "with all cores; the loop overlaps them):",
      "",
      harness.md_table(
        ["model", "batch", "host pipeline img/s", "train step img/s", "bound by"], rates
      ),
      "",
      f"One training on all {os.cpu_count()} cores against one per core side by side (the "
      "demo's runner), train step img/s: the second column is the machine's total when the "
      "cores each run their own training.",
      "",
      harness.md_table(
        ["model", "batch", "one run, all cores", "one run, one core", "one run per core, summed"],
        slots,
      ),
    ]
  )
  harness.print_section("Where make demo's time goes", body)
  if not args.quick:
    harness.write_section(
      "demo_profile", "Where make demo's time goes", body, machine=machine, path=args.out
    )


if __name__ == "__main__":
  main()
