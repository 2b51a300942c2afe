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
  times: dict[str, list[float]] = {name: [] for name in contenders}
  names = list(contenders)
  for r in range(max(1, rounds)):
    shift = r % len(names)
    for name in names[shift:] + names[:shift]:
      fn, sync = contenders[name]
      times[name].append(_once(fn, sync))
  return {
    name: {"median_s": statistics.median(t), "times_s": tuple(t), "first_s": first[name]}
    for name, t in times.items()
  }


def load_line() -> str:
  """This machine's 1-, 5- and 15-minute load averages and its core count."""
  one, five, fifteen = os.getloadavg()
  return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"
