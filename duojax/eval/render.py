"""Rendering results as Markdown: number formatting, the report, the README block.

Each section renders its own tables (`markdown(results) -> lines`); this
module holds what they share and puts the sections together in the order the
evaluation config lists them. `python -m duojax.eval.render --embed
RESULTS_MD README_MD` copies a results.md between the README's markers.
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

from duojax import files
from duojax.errors import ConfigError

README_START = "<!-- results:start (written by `make demo`; do not edit by hand) -->"
README_END = "<!-- results:end -->"


def fmt(x, scale: float = 1.0, digits: int = 4) -> str:
  """`x * scale` with `digits` decimals; "–" for a missing or non-finite value."""
  return "–" if x is None or not math.isfinite(x) else f"{x * scale:.{digits}f}"


def markdown(results: dict, sections: Sequence) -> str:
  """The report: each section's tables in order, separated by blank lines."""
  parts = [lines for lines in (section.markdown(results) for section in sections) if lines]
  if results.get("skipped"):  # what the members could not give (logits files)
    parts.insert(
      0,
      [
        "Not evaluated: "
        + "; ".join(f"{what} ({why})" for what, why in results["skipped"].items())
        + "."
      ],
    )
  return (
    "\n".join(line for i, lines in enumerate(parts) for line in ([""] if i else []) + lines) + "\n"
  )


def embed_in_readme(block: str, readme: str) -> None:
  """Replaces the README's text between the results markers with `block` (Markdown)."""
  with open(readme) as f:
    text = f.read()
  if README_START not in text or README_END not in text:
    raise ConfigError(f"{readme} has no results markers ({README_START!r} ... {README_END!r})")
  before, rest = text.split(README_START, 1)
  _, after = rest.split(README_END, 1)
  files.write_atomically(readme, f"{before}{README_START}\n{block}{README_END}{after}")


if __name__ == "__main__":
  if len(sys.argv) != 4 or sys.argv[1] != "--embed":
    sys.exit("usage: python -m duojax.eval.render --embed RESULTS_MD README_MD")
  with open(sys.argv[2]) as f:
    embed_in_readme(f.read(), sys.argv[3])
