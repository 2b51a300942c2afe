"""Writing an evaluation's results: results.json, results.md and the plots.

Every file is written whole or not at all (`files.write_atomically`, plots
rendered beside their target and renamed), and a failed write removes the
folders it made, so a failed run leaves no partial result set. Keys that
start with "_" hold in-memory data for the plots (curves) and stay out of
results.json.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Sequence

from duojax import files
from duojax.errors import FileError
from duojax.eval import render
from duojax.eval import sections as sections_lib


def json_part(results: dict) -> dict:
  """`results` without its in-memory keys (those starting with "_"), at any depth."""
  return {
    k: json_part(v) if isinstance(v, dict) else v
    for k, v in results.items()
    if not k.startswith("_")
  }


def write(results: dict, out_dir: str, sections: Sequence) -> dict[str, str]:
  """results.json, results.md and the sections' plots in `out_dir`; returns their paths.

  If writing fails (a full disk) and `out_dir` did not exist before, the
  folders made for it are removed again.
  """
  new_top = None  # the outermost folder this call creates, if any
  folder = os.path.abspath(out_dir)
  while not os.path.exists(folder):
    new_top, folder = folder, os.path.dirname(folder)
  try:
    return _write_files(results, out_dir, sections)
  except BaseException:
    if new_top is not None:
      shutil.rmtree(new_top, ignore_errors=True)
    raise


def _write_files(results: dict, out_dir: str, sections: Sequence) -> dict[str, str]:
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise FileError(e.errno, f"cannot make the output folder {out_dir}: {e.strerror}") from e
  paths = {
    "json": os.path.join(out_dir, "results.json"),
    "markdown": os.path.join(out_dir, "results.md"),
  }
  files.write_atomically(paths["json"], json.dumps(json_part(results), indent=2))
  files.write_atomically(paths["markdown"], render.markdown(results, sections))
  for section in sections:
    paths.update(sections_lib.section_plots(section, results, out_dir))
  return paths
