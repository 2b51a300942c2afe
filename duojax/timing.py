"""`PhaseClock`: wall seconds per named phase, for the profiles runs and evaluations report."""

import time

import jax


class PhaseClock:
  """Adds the wall time since the last `end` to a phase; phases may recur.

  JAX dispatches work asynchronously, so `end(..., wait=x)` first blocks on x:
  otherwise the next phase would be charged with the work still queued.
  """

  def __init__(self):
    self.seconds, self._t = {}, time.perf_counter()

  def end(self, phase: str, wait=None) -> None:
    if wait is not None:
      jax.block_until_ready(wait)
    now = time.perf_counter()
    self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._t
    self._t = now

  def rounded(self, digits: int = 2) -> dict[str, float]:
    return {k: round(v, digits) for k, v in self.seconds.items()}
