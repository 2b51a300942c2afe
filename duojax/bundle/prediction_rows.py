"""Prediction rows written in chunks that a killed run continues from.

One row per image: id, class, class_index, probability, top_k, uncertainty
(1 − the duo's confidence), abstain (confidence below the threshold) and
disagree (the large model's class is not the sidekick's), as JSON lines or
CSV (top_k there as "class:probability|..."). Rows that could not be read go
to OUT.skipped instead ("id<TAB>reason" lines). With a shift check, each
chunk's verdict goes to OUT.shift.jsonl, one JSON line per chunk: first and
last (input row numbers and ids), images, p_value, shifted, and the chunk's
disagreement rate and mean confidence gap (`duojax.core.shift_alarm`).

Resuming. Rows are appended a chunk at a time; after each chunk both files
(three with a shift check) are flushed to disk, then OUT.progress is replaced atomically with how many
input rows are done and how long each file was at that point. A run killed
at any moment leaves files at least that long; rerun with the same command,
it cuts them back to the recorded lengths and goes on from the recorded row.
Chunks are whole batches of the same rows as in a run never stopped, so the
rows come out byte for byte the same. OUT.progress also holds a fingerprint
of the command (the bundle, the input rows, threshold, batch size, format): a
different command finds it and stops with a one-line error rather than mix
two runs in one file. When the last chunk is written, OUT.progress is removed;
its absence marks OUT as finished.
"""

from __future__ import annotations

import csv
import io
import json
import os

from duojax import files
from duojax.errors import FileError, InputError

FORMATS = (".jsonl", ".csv")
COLUMNS = (
  "id",
  "class",
  "class_index",
  "probability",
  "top_k",
  "uncertainty",
  "abstain",
  "disagree",
)
_DIGITS = 6  # probabilities rounded for the file: float32 holds about 7
SHIFT_SUFFIX = ".shift.jsonl"


def shift_record(
  first: int,
  last: int,
  first_id,
  last_id,
  images: int,
  p_value: float,
  shifted: bool,
  *,
  disagreement: float,
  confidence_gap: float,
) -> str:
  """One chunk's shift-alarm verdict as a JSON line."""
  record = {
    "first": first,
    "last": last,
    "first_id": str(first_id),
    "last_id": str(last_id),
    "images": images,
    "p_value": round(p_value, _DIGITS),
    "shifted": bool(shifted),
    "disagreement": round(disagreement, _DIGITS),
    "confidence_gap": round(confidence_gap, _DIGITS),
  }
  return json.dumps(record) + "\n"


def output_format(path: str) -> str:
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in FORMATS:
    raise InputError(f"--output {path}: give a file ending in {' or '.join(FORMATS)}")
  return suffix


def format_rows(ids, outputs: dict, class_names, fmt: str) -> str:
  """The text of rows `ids` from the batch `outputs` (numpy arrays, one row each):
  class_index [n], confidence [n], top_index [n, k], top_probability [n, k],
  abstain [n], disagree [n]."""
  lines = io.StringIO()
  writer = csv.writer(lines, lineterminator="\n") if fmt == ".csv" else None
  for j, row_id in enumerate(ids):
    top = [
      (class_names[int(c)], round(float(p), _DIGITS))
      for c, p in zip(outputs["top_index"][j], outputs["top_probability"][j])
    ]
    confidence = float(outputs["confidence"][j])
    index = int(outputs["class_index"][j])
    values = {
      "id": row_id if isinstance(row_id, str) else int(row_id),
      "class": class_names[index],
      "class_index": index,
      "probability": round(confidence, _DIGITS),
      "top_k": top,
      "uncertainty": round(1.0 - confidence, _DIGITS),
      "abstain": bool(outputs["abstain"][j]),
      "disagree": bool(outputs["disagree"][j]),
    }
    if writer is None:
      values["top_k"] = [{"class": c, "probability": p} for c, p in top]
      lines.write(json.dumps(values, ensure_ascii=False) + "\n")
    else:
      values["top_k"] = "|".join(f"{c}:{p}" for c, p in top)
      writer.writerow([values[c] for c in COLUMNS])
  return lines.getvalue()


def csv_header() -> str:
  return ",".join(COLUMNS) + "\n"


class ChunkedRows:
  """The output file, its `.skipped` list and its `.progress` record.

  `plan()` reads and checks without writing (so a bad command writes
  nothing); `open()` then creates or cuts back the files; `append()` adds a
  chunk; `finish()` marks the output finished.
  """

  def __init__(self, path: str, fingerprint: dict, *, overwrite: bool = False, shift=False):
    self.path = os.path.abspath(os.path.expanduser(path))
    self.fmt = output_format(self.path)
    self.skipped_path = self.path + ".skipped"
    self.shift_path = self.path + SHIFT_SUFFIX if shift else None
    self.progress_path = self.path + ".progress"
    self.fingerprint = fingerprint
    self.overwrite = overwrite
    self.record = None  # the progress record resumed from, if any

  def plan(self) -> int:
    """How many input rows are already done (0 for a fresh run); raises for a
    finished output (unless overwriting) or another command's progress file."""
    folder = os.path.dirname(self.path)
    if os.path.isdir(self.path):
      raise FileError(f"--output {self.path} is a folder; give a file path")
    if not os.path.isdir(folder):
      raise FileError(f"--output {self.path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
      raise FileError(f"--output {self.path}: folder {folder} is not writable")
    if self.overwrite:
      return 0
    if os.path.exists(self.progress_path):
      try:
        with open(self.progress_path) as f:
          record = json.load(f)
        done, sizes = int(record["done"]), record["sizes"]
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise FileError(
          f"{self.progress_path} is unreadable ({type(e).__name__}): delete it, or pass "
          "--overwrite to start again"
        ) from None
      if record.get("fingerprint") != self.fingerprint:
        changed = sorted(
          k
          for k in set(self.fingerprint) | set(record.get("fingerprint") or {})
          if (record.get("fingerprint") or {}).get(k) != self.fingerprint.get(k)
        )
        raise InputError(
          f"{self.path} is a stopped run of another command (its {', '.join(changed)} "
          "differ): rerun that command to finish it, or pass --overwrite to start again"
        )
      if done == 0:  # stopped before its first chunk: start it again
        return 0
      for name, size in sizes.items():
        where = self._file(name)
        if not os.path.exists(where) or os.path.getsize(where) < size:
          raise FileError(
            f"{where} is shorter than {self.progress_path} records: pass --overwrite to start again"
          )
      self.record = record
      return done
    if os.path.exists(self.path):
      raise FileError(
        f"--output {self.path} exists (a finished run): pass --overwrite to replace it"
      )
    return 0

  def _file(self, name: str) -> str:
    return {"rows": self.path, "skipped": self.skipped_path, "shift": self.shift_path}[name]

  def _sidecars(self) -> dict[str, str]:
    """{name: path} of the files written beside the rows."""
    out = {"skipped": self.skipped_path}
    if self.shift_path is not None:
      out["shift"] = self.shift_path
    return out

  def open(self) -> None:
    """Creates the files (fresh run) or cuts them back to the recorded lengths."""
    if self.record is None:
      # The progress record comes first: a run killed before its first chunk
      # leaves one saying "nothing done", which a rerun starts again from.
      self._save_progress(0, {"rows": 0, **{name: 0 for name in self._sidecars()}})
      header = csv_header() if self.fmt == ".csv" else ""
      self._write(self.path, "w", header)
      for where in self._sidecars().values():
        self._write(where, "w", "")
      return
    for name, size in self.record["sizes"].items():
      try:
        os.truncate(self._file(name), int(size))
      except OSError as e:
        raise FileError(e.errno, f"cannot resume {self._file(name)}: {e.strerror}") from None

  def append(self, rows: str, skipped: list[tuple[str, str]], done: int, shift: str = "") -> None:
    """Adds a chunk: `rows` (text), the rows `skipped` [(id, reason)], rows `done` in
    all, and the chunk's `shift` verdict line (with a shift check)."""
    self._write(self.path, "a", rows)
    if skipped:
      self._write(self.skipped_path, "a", "".join(f"{i}\t{r}\n" for i, r in skipped))
    if shift and self.shift_path is not None:
      self._write(self.shift_path, "a", shift)
    self._save_progress(done)

  def finish(self) -> None:
    """Marks the output finished; an empty `.skipped` file is removed."""
    os.unlink(self.progress_path)
    if os.path.getsize(self.skipped_path) == 0:
      os.unlink(self.skipped_path)

  def _write(self, where: str, mode: str, text: str) -> None:
    try:
      with open(where, mode, encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())  # on disk before the progress record says so
    except OSError as e:
      raise FileError(e.errno, f"cannot write {where}: {e.strerror}") from None

  def _save_progress(self, done: int, sizes: dict | None = None) -> None:
    if sizes is None:
      files_now = {"rows": self.path, **self._sidecars()}
      sizes = {name: os.path.getsize(where) for name, where in files_now.items()}
    record = {"fingerprint": self.fingerprint, "done": int(done), "sizes": sizes}
    files.write_atomically(self.progress_path, json.dumps(record, indent=1))
