"""Shared benchmark plumbing: timing, machine description, BENCHMARKS.md sections.

Every benchmark script times with `time_call` (one first call that compiles or
warms up, then `repeats` timed calls; the median is the headline figure) and
writes its tables into its own section of BENCHMARKS.md with `write_section`,
which stamps the command that produced them, the machine and the date.
Sections are delimited by HTML comments, so re-running one script replaces
its own tables and leaves the others alone.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


@dataclasses.dataclass(frozen=True)
class Timing:
  first_s: float  # the first call: compilation (JAX) or warm-up
  times_s: tuple[float, ...]

  @property
  def median_s(self) -> float:
    return statistics.median(self.times_s)

  @property
  def min_s(self) -> float:
    return min(self.times_s)

  @property
  def compile_s(self) -> float:
    """Time of the first call beyond a steady-state call."""
    return max(0.0, self.first_s - self.median_s)


def time_call(
  fn: Callable[[], object], *, repeats: int = 5, sync: Callable = None, min_total_s: float = 0.0
) -> Timing:
  """Times `fn()` once (compile / warm-up), then `repeats` more times.

  `sync(result)` blocks until the result exists (e.g. jax.block_until_ready);
  without it the call must itself be synchronous. With `min_total_s`, more
  repeats run until that much time has been measured (for very fast calls).
  """
  sync = sync or (lambda r: r)

  def once():
    start = time.perf_counter()
    sync(fn())
    return time.perf_counter() - start

  first = once()
  times = [once() for _ in range(max(1, repeats))]
  while sum(times) < min_total_s and len(times) < 1000:
    times.append(once())
  return Timing(first, tuple(times))


def jax_sync(result):
  import jax

  return jax.block_until_ready(result)


def xla_flops(jitted, *args) -> float:
  """FLOPs of one call of `jitted(*args)`, from XLA's cost analysis."""
  cost = jitted.lower(*args).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device
    cost = cost[0]
  return float(cost.get("flops", float("nan")))


def cpu_name() -> str:
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_bf16_flags() -> list[str]:
  """This CPU's native bfloat16 matmul instructions (AMX, AVX-512 BF16), if any.

  Without them bfloat16 is emulated in float32 by both XLA and PyTorch: slower
  than float32 and not what the comparison is about, so the scripts skip it.
  """
  try:
    text = Path("/proc/cpuinfo").read_text()
  except OSError:
    return []
  flags = set()
  for line in text.splitlines():
    if line.startswith("flags"):
      flags.update(line.split(":", 1)[1].split())
  return [f for f in ("amx_bf16", "avx512_bf16") if f in flags]


def machine_line() -> str:
  """One line naming the machine and the library versions behind a table."""
  import jax

  parts = [
    f"{cpu_name()}, {os.cpu_count()} cores",
    f"JAX {jax.__version__} on {jax.default_backend()}",
  ]
  try:
    import torch

    parts.append(f"PyTorch {torch.__version__} ({torch.get_num_threads()} threads)")
  except ImportError:
    pass
  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  parts.append(f"load average {load:.1f} at start")
  return "; ".join(parts)


def command_line() -> str:
  """The command that ran this script, relative to the repository root."""
  script = Path(sys.argv[0]).resolve()
  try:
    script = script.relative_to(ROOT)
  except ValueError:
    pass
  return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
  def cell(v):
    return v if isinstance(v, str) else (f"{v:.4g}" if isinstance(v, float) else str(v))

  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def one_line(text: str, limit: int = 140) -> str:
  """The last non-empty line of `text`, safe for a markdown table cell."""
  lines = [l.strip() for l in text.strip().splitlines() if l.strip()]
  line = lines[-1] if lines else "no output"
  line = line.replace("|", "/")
  return line if len(line) <= limit else line[: limit - 1] + "…"


def _markers(name: str) -> tuple[str, str]:
  if not re.fullmatch(r"[a-z0-9_]+", name):
    raise ValueError(f"section name must be lowercase letters, digits, _: {name!r}")
  return f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"


def write_section(
  name: str,
  title: str,
  body: str,
  *,
  machine: str,
  path: Path | str | None = None,
  command: str | None = None,
) -> Path:
  """Writes (or replaces) section `name` of BENCHMARKS.md, atomically.

  The section starts with `title`, the command, the machine and today's date;
  `body` is the markdown (tables and notes) the script produced.
  """
  path = Path(path) if path is not None else BENCHMARKS_MD
  start, end = _markers(name)
  stamp = (
    f"Command: `{command or command_line()}`, {datetime.date.today().isoformat()}.  \n"
    f"Machine: {machine}."
  )
  block = f"{start}\n## {title}\n\n{stamp}\n\n{body.strip()}\n{end}"
  text = path.read_text() if path.exists() else "# Benchmarks\n"
  pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
  if pattern.search(text):
    text = pattern.sub(lambda _: block, text)
  else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
  with tempfile.NamedTemporaryFile(
    "w", dir=path.parent, delete=False, prefix=f".{path.name}."
  ) as tmp:
    tmp.write(text)
  os.replace(tmp.name, path)
  return path


def print_section(title: str, body: str) -> None:
  print(f"\n## {title}\n\n{body}\n", flush=True)
