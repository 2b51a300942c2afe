"""The demo's results in the repository's pages, between their results markers.

Every table of the evaluation and the wall-time report go to the results page
(`docs/demo_results.md`); the README gets the headline, the paired differences
against the temperature-scaled large model with their bootstrap intervals, the
summary of the shifts section (each method's worst shifted cell, the cells
where it is worse than large+TS), and the one sentence that says how long the
demo took. Both are written whole
(atomically), never by hand.
"""

from __future__ import annotations

import json
import os

from duojax.demo import timings
from duojax.eval import render


def write(results_dir: str, report: dict, *, readme: str = "", page: str = "") -> None:
  """Fills the results blocks of `page` (every table) and `readme` (the headline)."""
  timing = timings.markdown(report)
  if page:
    with open(os.path.join(results_dir, "results.md")) as f:
      tables = f.read()
    render.embed_in_readme(tables + "\n" + "\n".join(timing) + "\n", page)
  if readme:
    # Imported here: this process starts the trainings between fork and exec,
    # which is safe only before JAX (which the sections import) starts threads.
    from duojax.eval.sections import paired, shift_paired

    with open(os.path.join(results_dir, "results.json")) as f:
      results = json.load(f)
    total = timing[2]  # the paragraph with the machine and the total wall time
    # Under shift: the per-method summary, the first table of the shifts section.
    summary = shift_paired.summary_markdown(results)
    blocks = [*paired.markdown(results), "", *([*summary, ""] if summary else []), total]
    render.embed_in_readme("\n".join(blocks) + "\n", readme)
