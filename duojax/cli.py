"""What the command-line programs share: one-line errors, non-zero exits, multi-process flags.

A user error (a class of `duojax.errors.USER_ERRORS`) is one `error:` line on
stderr and exit 1 (2 for a bad command line). Anything else is a bug: its
traceback stays, followed by `BUG_LINE`, and the exit status is 1. Before
the work starts, a GPU or TPU that JAX leaves unused gets one `warning:` line
(`duojax.parallel.accelerator`).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings

from absl import app, flags

from duojax.errors import USER_ERRORS, FileError
from duojax.parallel import accelerator, distributed

# Multi-process settings shared by train.py and evaluate.py (duojax.distributed).
_DISTRIBUTED = flags.DEFINE_enum(
  "distributed",
  "auto",
  list(distributed.MODES),
  "auto: join a multi-process job when settings are given or a SLURM/Open MPI job is "
  "detected; on: always (JAX detects TPU pods, SLURM, ...); off: single process.",
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address", "", "host:port of process 0 (or JAX_COORDINATOR_ADDRESS)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Number of processes (or JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "This process's index in [0, num_processes) (or JAX_PROCESS_ID)."
)
_LOCAL_DEVICES = flags.DEFINE_list(
  "local_device_ids", None, "Devices this process drives, e.g. one GPU each: 0 or 0,1."
)


# The last stderr line of a program that stopped on a bug rather than on bad input.
BUG_LINE = "duojax: internal error (a bug, please report it with the traceback above)"


def fail(message: str, code: int = 1) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  # The error line stays the last one: objects a failed library call left
  # behind (e.g. Orbax's read coroutines after a damaged checkpoint) would
  # otherwise print "Exception ignored in ..." as the interpreter exits.
  sys.unraisablehook = lambda unraisable: None
  sys.exit(code)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing, but a bad flag or config override is one line, exit 2."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
    fail(f"bad command line: {_flag_error_message(e)}", code=2)


def _flag_error_message(error: Exception) -> str:
  """One line for a flag error, without the traceback config_flags embeds."""
  if isinstance(error, AttributeError) and error.args and isinstance(error.args[0], KeyError):
    error = error.args[0]  # ml_collections: an unknown --config.KEY, as AttributeError(KeyError)
  if isinstance(error, KeyError) and error.args:
    # A KeyError's str() is the repr of its message: quotes inside quotes.
    return "unknown key " + " ".join(str(error.args[0]).split())
  message = str(error)
  marker = "Traceback (most recent call last):"
  if marker in message:
    # A config file's get_config raised: config_flags puts the whole traceback
    # in the message; what the user needs is its last line, the error itself.
    head = message.split(marker, 1)[0].split("Error whilst parsing config file:")[0]
    last = message.strip().splitlines()[-1]
    message = head.rstrip(": ") + ": " + re.sub(r"^[\w.]+(Error|Exception): ", "", last)
  return " ".join(message.split()) or type(error).__name__


def check_output_dir(path: str, what: str) -> None:
  """Fails early, before any work, if `path` cannot be (or be made) a writable directory.

  Nothing is created: the path is only inspected up to its nearest existing
  ancestor, so a run that fails here leaves no trace on disk.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not os.path.isdir(path):
    raise FileError(f"{what} {path!r} is a file, not a directory")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise FileError(f"{what} {path!r} cannot be created: {existing!r} is a file, not a directory")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise FileError(f"{what} {path!r} cannot be written: {existing!r} is not writable")


def quiet_libraries() -> None:
  """Keeps library chatter (orbax, absl INFO logs) out of the CLI output."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.getLogger("absl").setLevel(logging.WARNING)
  for name in ("orbax", "orbax.checkpoint", "jax._src.distributed"):
    logging.getLogger(name).setLevel(logging.ERROR)
  # JAX's backend set-up keeps one warning: a CUDA plugin that is installed but
  # failed to start, after which JAX runs on the CPU (`accelerator.check_backend`
  # covers the case of no plugin at all, and says it in one line of its own).
  bridge = logging.getLogger("jax._src.xla_bridge")
  bridge.setLevel(logging.WARNING)
  if not any(isinstance(f, _OnlyFailedBackends) for f in bridge.filters):
    bridge.addFilter(_OnlyFailedBackends())
  warnings.filterwarnings("ignore", message=".*jaxopt.*", category=DeprecationWarning)
  sys.unraisablehook = _without_damaged_restore_leftovers(sys.unraisablehook)


class _OnlyFailedBackends(logging.Filter):
  """Errors, and the warning of a backend that failed to start; nothing else."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or "backend failed to initialize" in record.getMessage()


def _without_damaged_restore_leftovers(hook):
  """`hook`, silent for what a failed restore of a damaged checkpoint leaves.

  When Orbax fails on a damaged step, tensorstore still completes the reads
  of the other arrays; their callbacks into the event loop Orbax has closed
  ("Event loop is closed") and the read coroutines Orbax abandoned reach
  sys.unraisablehook from other threads, and would bury the one-line error
  (or the resume warning) under tracebacks. The failure itself is raised and
  reported as usual.
  """

  def filtered(unraisable):
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      return
    if "Encountered error while reading array index" in str(value):
      return
    hook(unraisable)

  return filtered


def report_errors(main, argv: list[str]) -> None:
  """`main(argv)`; a user error becomes one `error:` line and exit 1, a bug its
  traceback and `BUG_LINE` (exit 1)."""
  try:
    main(argv)
  except USER_ERRORS as e:
    fail(" ".join(str(e).split()) or type(e).__name__)
  except Exception:
    # Not one line: whoever reads the report needs where it happened.
    traceback.print_exc()
    print(BUG_LINE, file=sys.stderr, flush=True)
    sys.exit(1)


def run(main) -> None:
  """`app.run(main)` after joining a multi-process job, with `report_errors`."""

  def joined(argv):
    distributed.initialize(
      distributed.settings_from(
        _DISTRIBUTED.value,
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        _LOCAL_DEVICES.value,
      )
    )
    # After joining (which must come before any backend starts) and before the
    # work: a GPU or TPU left unused is worth knowing before hours on the CPU.
    accelerator.check_backend()
    main(argv)

  def wrapped(argv):
    quiet_libraries()
    report_errors(joined, argv)

  app.run(wrapped, flags_parser=parse_flags)
