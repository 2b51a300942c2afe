"""Every error a user can cause, in one leaf module; anything else is a bug.

A user error is one of the classes below, and its message is one line that
names the problem and, where there is one, the fix; `duojax.cli` prints it as
`error: ...` and exits non-zero. Every class is a `ValueError`, so library
callers can catch them as such; `TrainingDiverged` is a `RuntimeError`
instead (the input was fine, the optimisation was not), and `FileError` is
an `OSError` as well (it keeps the errno of a failed read or write).

Any other exception that escapes, a plain `ValueError` included, is a bug:
the CLIs print its traceback and a last line asking for a report. Where a
library we call raises for the user's input (a missing file, an image PIL
cannot decode), the call is wrapped where it is made and the error re-raised
as one of these classes.

The classes live here rather than next to the code that raises them so that
a module which only needs to *catch* an error (the CLIs, the tests) does not
have to import the data pipeline, the checkpointing or the trainer.
"""


class ConfigError(ValueError):
  """A setting that cannot work: a config key, a command-line flag or argument,
  or an option of a library call (a solver's name, a ratio, a batch size)."""


class InputError(ValueError):
  """Arrays or models handed to a computation that do not fit it: the wrong
  shape, dtype or class count, or bad values (NaN, labels out of range, none)."""


class FileError(OSError, ValueError):
  """A file or folder the user named that cannot be used: missing, of the wrong
  kind or format, unreadable, or not writable (a full disk included).

  An `OSError` first, so `FileError(errno, message)` keeps `errno` and reads
  `[Errno N] message`, and code that catches the `OSError` of a failed write
  still does.
  """


class DataError(ValueError):
  """A data set is missing, corrupt or misconfigured; the message says how to fix it."""


class CheckpointError(ValueError):
  """A checkpoint that is missing, unreadable or of another model."""


class WeightsFileError(ValueError):
  """A pretrained weights file that cannot be read safely."""


class WeightsMismatchError(ValueError):
  """A pretrained weights file that does not fit the model."""


class DistributedError(ValueError):
  """Inconsistent multi-process settings."""


class TrainingDiverged(RuntimeError):
  """The loss became NaN or inf; the message says where the last good state is."""


# What the CLIs turn into one `error:` line; everything else is reported as a bug.
USER_ERRORS = (
  ConfigError,
  InputError,
  FileError,
  DataError,
  CheckpointError,
  WeightsFileError,
  WeightsMismatchError,
  DistributedError,
  TrainingDiverged,
)
