"""What train.py and evaluate.py share: one-line errors, non-zero exits, multi-process flags."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from absl import app, flags

from duojax import checkpoint, config_lib, data, distributed, train_lib

# Errors a user can cause with their input; anything else is a bug and keeps
# its traceback.
USER_ERRORS = (config_lib.ConfigError, data.DataError, checkpoint.CheckpointError,
               train_lib.TrainingDiverged, distributed.DistributedError, ValueError,
               FileNotFoundError, PermissionError, OSError)

# Multi-process settings shared by train.py and evaluate.py (duojax.distributed).
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", list(distributed.MODES),
    "auto: join a multi-process job when settings are given or a SLURM/Open MPI job is "
    "detected; on: always (JAX detects TPU pods, SLURM, ...); off: single process.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", "", "host:port of process 0 (or JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Number of processes (or JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's index in [0, num_processes) (or JAX_PROCESS_ID).")
_LOCAL_DEVICES = flags.DEFINE_list(
    "local_device_ids", None, "Devices this process drives, e.g. one GPU each: 0 or 0,1.")


def fail(message: str, code: int = 1) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, but a bad flag or config override is one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    message = " ".join(str(e).split()) or type(e).__name__
    fail(f"bad command line: {message}", code=2)


def quiet_libraries() -> None:
  """Keeps library chatter (orbax, absl INFO logs) out of the CLI output."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.getLogger("absl").setLevel(logging.WARNING)
  for name in ("orbax", "orbax.checkpoint", "jax._src.xla_bridge", "jax._src.distributed"):
    logging.getLogger(name).setLevel(logging.ERROR)
  warnings.filterwarnings("ignore", message=".*jaxopt.*", category=DeprecationWarning)


def run(main) -> None:
  """`app.run(main)` that turns user errors into one line and exit code 1."""
  def wrapped(argv):
    quiet_libraries()
    try:
      distributed.initialize(distributed.settings_from(
          _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
          _LOCAL_DEVICES.value))
      main(argv)
    except USER_ERRORS as e:
      message = " ".join(str(e).split()) or type(e).__name__
      fail(message)
  app.run(wrapped, flags_parser=parse_flags)
