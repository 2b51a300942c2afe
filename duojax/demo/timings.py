"""The demo's wall times: the machine's matmul peak, per-run and per-stage seconds.

Wall times only compare across machines together with the machine's speed, so
the report states the XLA float32 matmul peak measured at the start of the
demo (a 4096² matmul, best of a few), next to the core count.
"""

from __future__ import annotations

import json
import os
import time
from typing import Sequence

from duojax.demo.plan import Run
from duojax.demo.runner import Timing

EVALUATION = "evaluate"


def matmul_peak_gflops(size: int = 4096, repeats: int = 3) -> float:
  """XLA's float32 matmul rate on this host, GFLOP/s (best of `repeats`)."""
  import jax
  import jax.numpy as jnp

  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()  # compile
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best / 1e9


def machine_line(peak_gflops: float) -> str:
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return f"{cores} CPU cores, XLA float32 matmul peak {peak_gflops:.0f} GFLOP/s"


def _val_accuracy(workdir: str) -> float | None:
  try:
    with open(os.path.join(workdir, "summary.json")) as f:
      return json.load(f)["val_accuracy"]
  except (OSError, ValueError, KeyError):
    return None


def report(
  plan: Sequence[Run],
  ran: Sequence[Timing],
  *,
  runs: str,
  jobs: int,
  cores_per_run: int,
  peak_gflops: float,
  data_seconds: float,
  total_seconds: float,
) -> dict:
  """The JSON the demo writes: machine, stage totals and one entry per run."""
  by_name = {t.name: t for t in ran}
  trainings = [by_name[r.name] for r in plan if r.name != EVALUATION]
  evaluation = by_name[EVALUATION]
  return {
    "machine": machine_line(peak_gflops),
    "matmul_peak_gflops": round(peak_gflops, 1),
    "jobs": jobs,
    "cores_per_run": cores_per_run,
    "total": round(total_seconds, 1),
    "data": round(data_seconds, 1),
    # Training's wall time, from the first run's start to the last one's end,
    # against the sum of the runs' own times (what one slot would have taken).
    "training": round(
      max(t.start + t.seconds for t in trainings) - min(t.start for t in trainings), 1
    ),
    "training_sum_of_runs": round(sum(t.seconds for t in trainings), 1),
    "evaluation": evaluation.seconds,
    "runs": {
      t.name: {
        "seconds": t.seconds,
        "start": t.start,
        "cores": t.cores,
        "val_accuracy": _val_accuracy(os.path.join(runs, t.name)),
      }
      for t in (by_name[r.name] for r in plan)
    },
  }


def markdown(report: dict) -> list[str]:
  """The README's timing paragraph and table, from `report`."""
  minutes = lambda s: f"{int(s // 60)} min {int(round(s % 60)):02d} s"
  lines = [
    "### Wall time of this `make demo`",
    "",
    f"On {report['machine']}, up to {report['jobs']} trainings side by side on "
    f"{report['cores_per_run']} core{'s' if report['cores_per_run'] > 1 else ''} each: "
    f"**{minutes(report['total'])}** after the install (data {report['data']:.0f} s, "
    f"training {minutes(report['training'])} for {minutes(report['training_sum_of_runs'])}"
    f" of runs, evaluation {report['evaluation']:.0f} s). Each run's wall time "
    "includes its process start, compilation, validation and checkpoints.",
    "",
    "| run | seconds | started at s | val acc |",
    "|---|---|---|---|",
  ]
  for name, run in report["runs"].items():
    acc = "–" if run["val_accuracy"] is None else f"{run['val_accuracy']:.4f}"
    lines.append(f"| {name} | {run['seconds']:.0f} | {run['start']:.0f} | {acc} |")
  return lines
