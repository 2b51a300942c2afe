"""Runs a plan of commands on parallel slots, each slot pinned to its own cores.

Why slots: the demo's models are too small to keep two cores busy from one
process (a batch of 32 28×28 images leaves XLA's threads waiting on each other
and on Python), so two runs side by side with one core each finish sooner than
the same runs one after another with two cores each (BENCHMARKS.md, "Where
make demo's time goes"). Each slot is pinned to its cores
(`sched_setaffinity`), which XLA's thread pool sizes itself by, so the runs do
not fight over the same cores.

Why a fixed number of cores per run: XLA's CPU backend splits some sums (the
kernel gradient's sum over the batch, say) by its thread count, so a run's
weights differ in the last bits between one core and two, and the difference
grows over training. With `cores_per_run` fixed, a run's result does not
depend on how many runs share the machine: side by side or one after
another, on 2 cores or 16, the same run gives the same weights.

A run starts as soon as the runs it needs have finished and a slot is free,
taking the first ready run in plan order; a run marked `all_cores` (the
evaluation, which needs every other run) gets every core. A run's output goes
to `{log_dir}/{name}.log` when several slots run at once (the console shows
one line as each run starts and ends), or straight to the console when there
is one slot. If a run fails, the runs still going get SIGTERM (train.py then
checkpoints and exits, so rerunning the demo resumes them) and `RunFailed`
names the failed run and the end of its log.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from typing import Callable, Sequence

from duojax.demo.plan import Run, check_plan
from duojax.errors import ConfigError


class RunFailed(Exception):
  """A run of the plan exited non-zero; the message is one line."""


@dataclasses.dataclass
class Timing:
  name: str
  seconds: float
  start: float  # seconds since the plan started
  cores: list[int]  # the cores its slot was pinned to ([] when not pinned)


def usable_cores() -> list[int]:
  """The cores this process may run on ([] where the OS cannot pin processes)."""
  return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def core_slots(jobs: int, cores_per_run: int = 1) -> list[list[int]]:
  """`jobs` disjoint sets of `cores_per_run` cores each ([[]] * jobs without affinity)."""
  if jobs < 1 or cores_per_run < 1:
    raise ConfigError(f"jobs={jobs} and cores_per_run={cores_per_run} must be >= 1")
  cores = usable_cores()
  if not cores:  # macOS, Windows: no pinning
    return [[] for _ in range(jobs)]
  if jobs * cores_per_run > len(cores):
    raise ConfigError(
      f"{jobs} job(s) of {cores_per_run} core(s) need more than the "
      f"{len(cores)} cores this process may use"
    )
  return [cores[i * cores_per_run : (i + 1) * cores_per_run] for i in range(jobs)]


def _pinned(cores: list[int]):
  return (lambda: os.sched_setaffinity(0, cores)) if cores else None


def _tail(path: str, lines: int = 3) -> str:
  try:
    with open(path, errors="replace") as f:
      text = f.read()[-4000:]
  except OSError:
    return ""
  # tqdm redraws with carriage returns: keep what the last redraw shows.
  last = [line.rsplit("\r", 1)[-1] for line in text.splitlines() if line.strip()]
  return " | ".join(last[-lines:])


def run_plan(
  plan: Sequence[Run],
  *,
  python: str,
  jobs: int,
  cores_per_run: int = 1,
  log_dir: str,
  env: dict[str, str] | None = None,
  report: Callable[[str], None] = print,
) -> list[Timing]:
  """Runs every command of `plan`; returns their wall times in the order they ended."""
  check_plan(plan)
  slots = core_slots(jobs, cores_per_run)
  quiet = jobs > 1
  if quiet:
    os.makedirs(log_dir, exist_ok=True)
  pending = list(plan)
  running: dict[int, tuple[Run, subprocess.Popen, float, list[int], object]] = {}
  done: set[str] = set()
  timings: list[Timing] = []
  t0 = time.perf_counter()

  def start(run: Run, slot: int) -> None:
    cores = usable_cores() if run.all_cores else slots[slot]
    log = open(os.path.join(log_dir, f"{run.name}.log"), "w") if quiet else None
    proc = subprocess.Popen(
      [python, *run.argv],
      env=env,
      stdout=log,
      stderr=log,
      preexec_fn=None if run.all_cores else _pinned(cores),
    )
    running[slot] = (run, proc, time.perf_counter(), cores, log)
    if quiet:
      where = f"core{'s' if len(cores) > 1 else ''} {','.join(map(str, cores))}"
      report(f"[{time.perf_counter() - t0:6.0f} s] {run.name}: started on {where}")

  def stop_all() -> None:
    for _, proc, *_ in running.values():
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    for _, proc, _, _, log in running.values():
      proc.wait()
      if log:
        log.close()

  try:
    while pending or running:
      for slot in range(jobs):
        if slot in running or any(r.all_cores for r, *_ in running.values()):
          continue
        ready = next((r for r in pending if set(r.after) <= done), None)
        if ready is None:
          break
        if ready.all_cores and running:
          break  # it waits for the slots to empty
        pending.remove(ready)
        start(ready, slot)
      if not running:
        raise RunFailed(f"no run can start: {[r.name for r in pending]} wait on each other")
      time.sleep(0.2)
      for slot, (run, proc, began, cores, log) in list(running.items()):
        code = proc.poll()
        if code is None:
          continue
        del running[slot]
        if log:
          log.close()
        seconds = time.perf_counter() - began
        if code:
          stop_all()
          where = os.path.join(log_dir, f"{run.name}.log") if quiet else "the output above"
          detail = _tail(where) if quiet else ""
          raise RunFailed(
            f"{run.name} exited with status {code} after {seconds:.0f} s "
            f"(log: {where}){': ' + detail if detail else ''}"
          )
        done.add(run.name)
        timings.append(Timing(run.name, round(seconds, 1), round(began - t0, 1), cores))
        if quiet:
          report(
            f"[{time.perf_counter() - t0:6.0f} s] {run.name}: done in {seconds:.0f} s"
            f"{' — ' + _tail(os.path.join(log_dir, run.name + '.log'), 1)}"
          )
  except BaseException:
    stop_all()
    raise
  return timings
