"""`python -m duojax.demo` (what `make demo` runs): data, every training run, the
evaluation, then the wall times of each, written into the results and the README.

The trainings run side by side, each pinned to `--cores_per_run` cores (see
`duojax.demo.runner` for why the results do not depend on `--jobs`), the
evaluation on every core; all share one JAX compilation cache
(`--compile_cache`), so the runs that share shapes (seeds, soups, Hydra
members) compile once.
Every run resumes if its workdir already holds a checkpoint, so rerunning after
a failure or a Ctrl-C continues where it stopped.

Outputs: `{runs}/results/` (results.json with a `demo_seconds` entry,
results.md, plots, timings.json), `{runs}/logs/` (one log per run when
jobs > 1), the results page's block (`--results_page`, every table) and the
README's (`--readme`, the paired differences and the wall time); empty leaves
either alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

from duojax import files
from duojax.demo import pages, runner, timings
from duojax.demo.plan import demo_runs
from duojax.errors import ConfigError
from duojax.parallel import accelerator

_RUNS = flags.DEFINE_string("runs", "runs/demo", "Folder for the workdirs and results.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data", "Where the embedded data are prepared.")
_ALPHAS = flags.DEFINE_list(
  "gatekeeper_alphas",
  ["0.1", "0.3", "0.5", "0.7", "0.9"],
  "Gatekeeper α of the sidekick's fine-tunes.",
)
_HYDRA = flags.DEFINE_integer("hydra_members", 2, "Hydra members and ViT seeds (0: no ViTs).")
_JOBS = flags.DEFINE_integer(
  "jobs", None, "Trainings run side by side (default: as many as the cores allow)."
)
_CORES_PER_RUN = flags.DEFINE_integer(
  "cores_per_run",
  1,
  "Cores each training is pinned to; a run's weights depend on it "
  "(XLA splits some sums by thread count), not on how many runs share the machine.",
)
_CACHE = flags.DEFINE_string(
  "compile_cache",
  None,
  "JAX compilation cache shared by the runs (default {runs}/.jax_cache; empty: none).",
)
_TRAIN_OVERRIDES = flags.DEFINE_multi_string(
  "train_override", [], "KEY=VALUE: --config.KEY=VALUE for every training (repeatable)."
)
_EVAL_OVERRIDES = flags.DEFINE_multi_string(
  "eval_override", [], "KEY=VALUE: --config.KEY=VALUE for the evaluation (repeatable)."
)
_README = flags.DEFINE_string(
  "readme", "README.md", "README whose results block gets the headline (empty: none)."
)
_RESULTS_PAGE = flags.DEFINE_string(
  "results_page",
  "docs/demo_results.md",
  "Page whose results block gets every table and the wall times (empty: none).",
)


def _child_env(cache_dir: str) -> dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  if cache_dir:
    env.update(
      JAX_COMPILATION_CACHE_DIR=os.path.abspath(cache_dir),
      # The demo's programs compile in well under JAX's 1 s default
      # threshold for caching, which would keep nearly all of them out.
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
  return env


def _child_output(args: list[str]) -> str:
  """stdout of `python ARGS`; its last stderr line as a one-line error if it fails."""
  done = subprocess.run(
    [sys.executable, *args],
    capture_output=True,
    text=True,
    env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
  )
  if done.returncode:
    lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
    sys.exit(lines[-1] if lines[-1].startswith("error:") else f"error: {lines[-1]}")
  return done.stdout


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments: {' '.join(argv[1:])}")
  runs = _RUNS.value
  per_run = _CORES_PER_RUN.value
  jobs = _JOBS.value or max(1, len(runner.usable_cores()) // max(1, per_run))
  try:
    runner.core_slots(jobs, per_run)
  except ConfigError as e:
    sys.exit(f"error: --jobs/--cores_per_run: {e}")
  for name, path in (("--readme", _README.value), ("--results_page", _RESULTS_PAGE.value)):
    if path and not os.path.isfile(path):
      sys.exit(f"error: {name} {path!r} does not exist")
  for kv in _TRAIN_OVERRIDES.value + _EVAL_OVERRIDES.value:
    if "=" not in kv:
      sys.exit(f"error: override {kv!r} is not KEY=VALUE")
  cache = os.path.join(runs, ".jax_cache") if _CACHE.value is None else _CACHE.value
  # Once here, from files and the installed packages: this process imports no JAX.
  accelerator.check_backend()
  t0 = time.perf_counter()
  # JAX runs in child processes only: this one starts the trainings with a
  # CPU affinity set between fork and exec, which is safe only in a process
  # without threads (importing JAX starts its thread pools).
  peak = float(
    _child_output(
      ["-c", "from duojax.demo import timings; print(timings.matmul_peak_gflops())"]
    ).split()[-1]
  )
  print(
    f"{timings.machine_line(peak)}; trainings side by side: {jobs}, on {per_run} "
    f"core{'s' if per_run > 1 else ''} each",
    flush=True,
  )
  t_data = time.perf_counter()
  print(_child_output(["-m", "duojax.data", _DATA_DIR.value]).strip(), flush=True)
  data_seconds = time.perf_counter() - t_data

  plan = demo_runs(
    runs,
    _ALPHAS.value,
    _HYDRA.value,
    train_overrides=_TRAIN_OVERRIDES.value,
    eval_overrides=_EVAL_OVERRIDES.value,
  )
  try:
    ran = runner.run_plan(
      plan,
      python=sys.executable,
      jobs=jobs,
      cores_per_run=per_run,
      log_dir=os.path.join(runs, "logs"),
      env=_child_env(cache),
    )
  except (runner.RunFailed, ConfigError) as e:  # a run that failed; a plan that cannot run
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit("interrupted: rerun the same command to resume")

  report = timings.report(
    plan,
    ran,
    runs=runs,
    jobs=jobs,
    cores_per_run=per_run,
    peak_gflops=peak,
    data_seconds=data_seconds,
    total_seconds=time.perf_counter() - t0,
  )
  results_dir = os.path.join(runs, "results")
  files.write_atomically(os.path.join(results_dir, "timings.json"), json.dumps(report, indent=2))
  results_json = os.path.join(results_dir, "results.json")
  with open(results_json) as f:
    results = json.load(f)
  results["demo_seconds"] = report
  files.write_atomically(results_json, json.dumps(results, indent=2))
  block = timings.markdown(report)
  print("\n".join(block), flush=True)
  pages.write(results_dir, report, readme=_README.value, page=_RESULTS_PAGE.value)
  updated = [p for p in (_RESULTS_PAGE.value, _README.value) if p]
  print(
    f"demo finished in {report['total']:.0f} s after install; results in {results_dir}/"
    + (f", {' and '.join(updated)} updated" if updated else ""),
    flush=True,
  )


if __name__ == "__main__":
  app.run(main)
