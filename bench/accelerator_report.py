"""The accelerator benchmark's output folder, rewritten after every part.

An accelerator host is lent for minutes and gives back only a folder, so
nothing waits for the end of the run: before a part starts, the folder says
it is running; after it ends, it holds the part's table or its error. A
run stopped by its time-out or killed outright leaves every finished part,
and names the one it was in. Two files, each replaced atomically:

  accelerator.json  the run (command, device, JAX version) and one record per
                    part: status (running, done, failed), seconds, figures,
                    markdown, error;
  accelerator.md    the BENCHMARKS.md section as far as the run got.

`python bench/bench_accelerator.py --publish DIR` copies a folder's section
into BENCHMARKS.md.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
import time
from pathlib import Path

import harness

JSON, MARKDOWN = "accelerator.json", "accelerator.md"
SECTION = "accelerator"
TITLE = "Accelerator: fused duo, train-step MFU, input pipeline, Hydra latency, timm/torchvision"


class CheckFailed(Exception):
  """A part that measured everything but whose check failed: its table is kept."""

  def __init__(self, message: str, markdown: str):
    super().__init__(message)
    self.markdown = markdown


def write_atomically(path: Path, text: str) -> None:
  with tempfile.NamedTemporaryFile(
    "w", dir=path.parent, delete=False, prefix=f".{path.name}."
  ) as f:
    f.write(text)
  os.replace(f.name, path)


class Report:
  """The run's record in `folder`, written out on every change."""

  def __init__(self, folder: Path, *, command: str, machine: str, device: dict, headings: dict):
    self.folder = Path(folder)
    self.folder.mkdir(parents=True, exist_ok=True)
    self.start = time.perf_counter()
    self.run = {
      "command": command,
      "machine": machine,
      "device": device,
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "headings": headings,  # part key -> heading
      "parts": {},
    }
    self._write()

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def begin(self, key: str) -> None:
    self.run["parts"][key] = {"status": "running", "started_at_s": round(self.elapsed(), 1)}
    self._write()

  def done(self, key: str, markdown: str, figures: dict | None = None) -> None:
    self._end(key, status="done", markdown=markdown, figures=figures or {})

  def failed(self, key: str, error: str, markdown: str = "") -> None:
    self._end(key, status="failed", error=error, markdown=markdown)

  def _end(self, key: str, **fields) -> None:
    record = self.run["parts"][key]
    record.update(fields, seconds=round(max(0.0, self.elapsed() - record["started_at_s"]), 1))
    self._write()

  def failures(self) -> list[str]:
    return [k for k, r in self.run["parts"].items() if r["status"] != "done"]

  def markdown(self) -> str:
    return section_body(self.run)

  def _write(self) -> None:
    self.run["elapsed_s"] = round(self.elapsed(), 1)
    write_atomically(self.folder / JSON, json.dumps(self.run, indent=1, default=float) + "\n")
    write_atomically(self.folder / MARKDOWN, f"## {TITLE}\n\n{self.markdown()}\n")


def section_body(run: dict) -> str:
  """The parts' tables, with a line for each part that failed or did not finish."""
  blocks = [f"{run['device']['count']} × {run['device']['kind']} ({run['machine']})."]
  for key, record in run["parts"].items():
    heading = run["headings"].get(key, key)
    if record["status"] == "done":
      blocks.append(f"### {heading}\n\n{record['markdown']}")
    elif record["status"] == "failed":
      failed = f"**Failed** after {record['seconds']:.0f} s: {record['error']}"
      blocks.append(f"### {heading}\n\n{failed}\n\n{record['markdown']}".rstrip())
    else:
      blocks.append(
        f"### {heading}\n\nDid not finish: the run stopped (time-out or kill) "
        f"{record['started_at_s']:.0f} s into the run, while this part was running."
      )
  return "\n\n".join(blocks)


def publish(folder: Path, benchmarks: Path | None = None) -> Path:
  """BENCHMARKS.md's accelerator section from a finished run's folder."""
  run = json.loads((Path(folder) / JSON).read_text())
  return harness.write_section(
    SECTION, TITLE, section_body(run), machine=run["machine"], path=benchmarks,
    command=run["command"],
  )  # fmt: skip
