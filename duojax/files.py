"""Files written whole or not at all: results, summaries, logs, the README table."""

import json
import os
import tempfile

from duojax.errors import FileError


def write_atomically(path: str, text: str) -> None:
  """Writes `text` to `path` through a temporary file renamed over it.

  Readers see the old file or the new one, never a part. A failed write (a
  full disk, a missing or read-only folder) removes the temporary file and
  raises a `FileError` (an OSError keeping the errno) naming `path`.
  """
  folder = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    os.chmod(tmp, 0o644)  # mkstemp makes owner-only files; results are for sharing
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException as e:
    if tmp is not None and os.path.exists(tmp):
      os.unlink(tmp)
    # Say which file, not just why: a user's disk or folder, not a bug.
    if isinstance(e, OSError) and e.errno is not None:
      raise FileError(e.errno, f"cannot write {path}: {e.strerror}") from e
    raise


def read_record(path: str, fmt: str, versions: tuple[int, ...], what: str) -> dict:
  """The JSON object of a versioned duojax file (`"format": fmt`, `"version"` one of
  `versions`), or a one-line FileError saying why not: unreadable, foreign, or another
  version. `what` names the kind of file in the messages ("duo file")."""
  try:
    with open(path) as f:
      record = json.load(f)
  except (OSError, ValueError) as e:
    raise FileError(f"cannot read {what} {path!r}: {str(e).splitlines()[0]}") from None
  if not isinstance(record, dict) or record.get("format") != fmt:
    raise FileError(f'{path!r} is not a {what} (no "format": "{fmt}")')
  if record.get("version") not in versions:
    readable = " and ".join(map(str, versions))
    raise FileError(
      f"{path!r} is {what} version {record.get('version')!r}; this duojax reads "
      f"version{'s' if len(versions) > 1 else ''} {readable}"
    )
  return record
