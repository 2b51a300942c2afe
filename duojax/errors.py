"""Every error a user can cause with their input, in one leaf module.

Each message is one line that names the problem and, where there is one,
the fix; `duojax.cli` prints it as `error: ...` and exits non-zero. Every
class is a `ValueError` (except `TrainingDiverged`, a `RuntimeError`: the
input was fine, the optimisation was not), so library callers can catch
them as such. Anything else that escapes is a bug and keeps its traceback.

The classes live here rather than next to the code that raises them so that
a module which only needs to *catch* an error (the CLIs, the tests) does not
have to import the data pipeline, the checkpointing or the trainer.
"""


class ConfigError(ValueError):
  """A configuration value that cannot work."""


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


# What the CLIs turn into one `error:` line: the classes above, plus the
# standard errors that bad paths and bad values raise inside libraries.
USER_ERRORS = (
  ConfigError,
  DataError,
  CheckpointError,
  WeightsFileError,
  WeightsMismatchError,
  DistributedError,
  TrainingDiverged,
  ValueError,
  FileNotFoundError,
  PermissionError,
  OSError,
)
