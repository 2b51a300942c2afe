"""bench/bench_metrics.py: its reference agrees with duojax, and --quick runs end to end."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from duojax.core import metrics

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
import bench_metrics  # noqa: E402


@pytest.mark.parametrize("n,c,scale", [(500, 7, 2.0), (300, 2, 4.0)])
def test_reference_matches_evaluate(n, c, scale):
  rng = np.random.default_rng(n + c)
  logits = (rng.normal(size=(n, c)) * scale).astype(np.float32)
  labels = np.where(rng.random(n) < 0.7, logits.argmax(-1), rng.integers(0, c, n))
  ours = metrics.evaluate(logits, labels)
  reference = bench_metrics.reference_metrics(logits, labels)
  assert list(reference) == list(metrics.METRIC_NAMES)
  for name in metrics.METRIC_NAMES:
    assert abs(ours[name] - reference[name]) <= 1e-5, (name, ours[name], reference[name])


@pytest.mark.slow  # the script's quick run, as a subprocess
def test_quick_run_writes_both_sections(tmp_path):
  out = tmp_path / "B.md"
  result = subprocess.run(
    [sys.executable, "bench/bench_metrics.py", "--quick", "--out", str(out)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  text = out.read_text()
  for section in ("metrics_suite", "eval_scaling"):
    assert f"<!-- bench:{section}:start -->" in text
    assert f"<!-- bench:{section}:end -->" in text
  for row in (
    "| duojax `evaluate`, device arrays | 2,000×50 |",
    "| duojax `evaluate`, numpy arrays | 2,000×50 |",
    "| reference (numpy + scipy + sklearn, float64) | 2,000×50 |",
    "| 512 | demo duo forward |",
    "| 2,048 | demo duo forward |",
    "| 8,192 | synthetic (no forward) |",
  ):
    assert row in text, row
  for name in metrics.METRIC_NAMES:
    assert f"| {name} | " in text, name
  assert "Target: ≤ 1 s and ≥ 10× faster" in text
