"""Pre-emption: the stop signals a training run finishes its step on, and `Preempted`.

A scheduler that pre-empts a job sends a signal some seconds before killing
it. While `StopSignals` is active the signal only sets a flag; the training
loop reads it after each step, checkpoints that step and raises `Preempted`,
whose `exit_code` train.py exits with. Rerunning the same command resumes.
"""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np

# Signals that ask a run to stop and come back later: SIGTERM is what SLURM,
# Kubernetes and pre-emptible cloud VMs send some seconds before killing a job;
# SIGUSR1 is the early warning SLURM sends with `--signal=USR1@<seconds>`.
# SIGINT (Ctrl-C) is left alone: a person at the terminal wants it to stop now.
STOP_SIGNALS = tuple(
  getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class Preempted(Exception):
  """Training stopped on a stop signal after checkpointing its last step.

  `exit_code` is the shell's 128 + signal number (143 for SIGTERM), so a job
  scheduler sees a run killed by the signal, not a finished or failed one.
  """

  def __init__(self, signum: int, step: int):
    self.signum, self.step, self.exit_code = signum, step, 128 + signum
    super().__init__(
      f"pre-empted by {signal.Signals(signum).name} at step {step}; "
      "checkpoint saved, rerun the same command to resume"
    )


class StopSignals:
  """While active, STOP_SIGNALS only set a flag, which the training loop reads
  after each step: it finishes the step, checkpoints it and raises Preempted,
  so a signal never lands in the middle of a step or a save.

  Installed from the main thread only (Python allows no other); a run started
  from another thread keeps the signals' usual effect.
  """

  def __init__(self):
    self.signum, self._previous = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in STOP_SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      # None: a handler installed outside Python, which cannot be put back.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    return False

  def _handle(self, signum, frame):
    del frame
    self.signum = self.signum or signum

  def requested(self, at_sync_point: bool) -> int | None:
    """The signal to stop on, if any; with several processes, only at sync points."""
    if jax.process_count() == 1:
      return self.signum
    if not at_sync_point:
      return None
    # All processes must stop after the same step (the others would hang in
    # the next step's collectives) and a signal reaches hosts at different
    # times: they agree at steps every process passes, on any one's signal.
    from jax.experimental import multihost_utils

    signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
    return int(np.max(signums)) or None
