"""What train.py and evaluate.py share: one-line errors and non-zero exits."""

from __future__ import annotations

import logging
import os
import sys
import warnings

from absl import app, flags

from duojax import checkpoint, config_lib, data, train_lib

# Errors a user can cause with their input; anything else is a bug and keeps
# its traceback.
USER_ERRORS = (config_lib.ConfigError, data.DataError, checkpoint.CheckpointError,
               train_lib.TrainingDiverged, ValueError, FileNotFoundError, PermissionError,
               OSError)


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
  for name in ("orbax", "orbax.checkpoint", "jax._src.xla_bridge"):
    logging.getLogger(name).setLevel(logging.ERROR)
  warnings.filterwarnings("ignore", message=".*jaxopt.*", category=DeprecationWarning)


def run(main) -> None:
  """`app.run(main)` that turns user errors into one line and exit code 1."""
  def wrapped(argv):
    quiet_libraries()
    try:
      main(argv)
    except USER_ERRORS as e:
      message = " ".join(str(e).split()) or type(e).__name__
      fail(message)
  app.run(wrapped, flags_parser=parse_flags)
