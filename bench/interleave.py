"""Interleaved timing: contenders alternate call by call, so a shared machine's load
falls on all of them alike.

    rates = interleaved({"duojax": (fn, jax_sync), "torch": (fn, None)}, rounds=5)

Each contender runs once untimed (compiling, warming up), then each round times one
call of every contender in turn (the order rotating by one each round, so none always
follows the same neighbour); the figure is the median over rounds. A load spike then
lands in one round of each contender rather than in all the rounds of one.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable


def _once(fn: Callable, sync: Callable | None) -> float:
  start = time.perf_counter()
  result = fn()
  if sync is not None:
    sync(result)
  return time.perf_counter() - start


def interleaved(
  contenders: dict[str, tuple[Callable, Callable | None]], rounds: int = 5
) -> dict[str, dict]:
  """{name: {"median_s", "times_s", "first_s"}}: each contender's call timed in
  alternating rounds; `sync(result)` blocks until the result exists (None: `fn` is
  synchronous)."""
  first = {name: _once(fn, sync) for name, (fn, sync) in contenders.items()}
  timers = {
    name: (lambda fn=fn, sync=sync: _once(fn, sync)) for name, (fn, sync) in contenders.items()
  }
  out = interleaved_timers(timers, rounds)
  for name in out:
    out[name]["first_s"] = first[name]
  return out


def interleaved_timers(timers: dict[str, Callable[[], float]], rounds: int = 5) -> dict[str, dict]:
  """{name: {"median_s", "times_s"}}: `timers[name]()` runs one call and returns its
  seconds (measured where it ran: another process, say), in alternating rounds."""
  times: dict[str, list[float]] = {name: [] for name in timers}
  names = list(timers)
  for r in range(max(1, rounds)):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      times[name].append(float(timers[name]()))
  return {
    name: {"median_s": statistics.median(t), "times_s": tuple(t)} for name, t in times.items()
  }


class Server:
  """A child process that builds its contenders once (`command` + its spec) and then
  times one call of the one named on each line of its stdin, answering the seconds.

  The frameworks then never share a process: XLA's and PyTorch's thread pools in one
  process slow each other's next call (measured here: both 1.3-1.7× slower when their
  calls alternate in one process, on 2 cores), which would bias an interleaved race."""

  def __init__(self, command: list[str]):
    import json
    import subprocess

    self._json = json
    self.process = subprocess.Popen(
      command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    line = self.process.stdout.readline()
    if not line:
      self.process.wait()
      raise RuntimeError(
        f"{command[-2]} {command[-1][:80]}: the child exited before its ready line"
      )
    self.ready = json.loads(line)  # what the child says of itself: first calls, notes

  def timer(self, name: str) -> Callable[[], float]:
    def run() -> float:
      self.process.stdin.write(name + "\n")
      self.process.stdin.flush()
      line = self.process.stdout.readline()
      if not line:
        raise RuntimeError(f"the child timing {name} exited")
      return float(self._json.loads(line))

    return run

  def close(self) -> None:
    if self.process.poll() is None:
      self.process.stdin.close()
      self.process.wait()


def serve(calls: dict[str, tuple[Callable, Callable | None]], notes: dict) -> None:
  """The child's side of `Server`: one untimed call of each contender, the ready line
  (their seconds and `notes`), then one timed call per name read from stdin."""
  import json
  import sys

  first = {name: _once(fn, sync) for name, (fn, sync) in calls.items()}
  print(json.dumps({"first_s": first, **notes}), flush=True)
  for line in sys.stdin:
    name = line.strip()
    if not name:
      break
    fn, sync = calls[name]
    print(json.dumps(_once(fn, sync)), flush=True)


def load_line() -> str:
  """This machine's 1-, 5- and 15-minute load averages and its core count."""
  one, five, fifteen = os.getloadavg()
  return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"
