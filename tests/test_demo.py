"""`python -m duojax.demo` end to end, shrunk: every run of the plan, the
evaluation, the timings in the results and the README block."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT

pytestmark = pytest.mark.slow  # sixteen train.py processes and evaluate.py

TRAIN = (
  "val_size=100",
  "total_steps=3",
  "warmup_steps=1",
  "checkpoint_every=3",
  "eval_batch_size=100",
  "batch_size=50",
  "log_every=1",
  "prune_images=100",
)
EVAL = ("batch_size=100", "bootstrap=20", "shift_max_images=50", "mc_dropout_samples=2")


MARKED = (
  "<!-- results:start (written by `make demo`; do not edit by hand) -->\n<!-- results:end -->\n"
)


def _demo(tmp_path, data_dir, readme, *extra):
  page = tmp_path / "demo_results.md"
  if not page.exists():
    page.write_text("# Results\n" + MARKED)
  args = [
    sys.executable,
    "-m",
    "duojax.demo",
    "--runs",
    str(tmp_path / "runs"),
    "--data_dir",
    str(data_dir),
    "--gatekeeper_alphas",
    "0.3,0.7",
    "--hydra_members",
    "2",
    "--readme",
    str(readme),
    "--results_page",
    str(page),
    "--compile_cache",
    str(tmp_path / "cache"),
    *(f"--train_override={kv}" for kv in TRAIN + (f"data_dir={data_dir}",)),
    *(f"--eval_override={kv}" for kv in EVAL),
    *extra,
  ]
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900)


def test_demo_runs_every_stage_side_by_side_and_reports_its_time(tmp_path, learnable_data_dir):
  readme = tmp_path / "README.md"
  readme.write_text(
    "intro\n<!-- results:start (written by `make demo`; do not edit by hand) -->"
    "\nold\n<!-- results:end -->\nafter\n"
  )
  result = _demo(tmp_path, learnable_data_dir, readme)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  runs = tmp_path / "runs"
  timings = json.loads((runs / "results" / "timings.json").read_text())
  expected = {
    "vit",
    "large",
    "sidekick",
    "hydra_0",
    "hydra_1",
    "soup_1",
    "soup_2",
    "gatekeeper_0.3",
    "gatekeeper_0.7",
    "large_seed1",
    "vit_seed1",
    "evaluate",
  }
  assert set(timings["runs"]) == expected
  assert timings["cores_per_run"] == 1
  for name, run in timings["runs"].items():
    assert run["seconds"] > 0
    if name != "evaluate":
      summary = json.loads((runs / name / "summary.json").read_text())
      # evaluate.py scores the test split; the runs skip their own test pass.
      assert run["val_accuracy"] == summary["val_accuracy"] and summary["test_accuracy"] is None
      # The run's own profile covers its phases and fits inside its wall time.
      assert set(summary["seconds"]) >= {"setup", "first_step", "final_eval"}
      assert sum(summary["seconds"].values()) < run["seconds"]
  # Runs start only after what they need has finished. Starts and durations are rounded to
  # 0.1 s each, so an end computed from them may overshoot the next start by up to 0.1 s.
  ends = {n: r["start"] + r["seconds"] - 0.11 for n, r in timings["runs"].items()}
  assert timings["runs"]["soup_1"]["start"] >= ends["large"]
  assert timings["runs"]["hydra_1"]["start"] >= ends["vit"]
  assert timings["runs"]["evaluate"]["start"] >= max(v for k, v in ends.items() if k != "evaluate")
  results = json.loads((runs / "results" / "results.json").read_text())
  assert results["demo_seconds"] == timings and "paired_vs_reference" in results
  assert set(results["seconds"]) >= {"total", "logits", "section methods", "section paired"}
  text = readme.read_text()
  assert text.startswith("intro\n") and text.endswith("after\n") and "\nold\n" not in text
  # The README: the paired differences and the total wall time; the page: every table.
  assert "### Paired differences vs large+TS" in text and "| duo (weighted) |" in text
  assert "after the install" in text and "| hydra_1 |" not in text
  page = (tmp_path / "demo_results.md").read_text()
  assert page.startswith("# Results\n") and "### Wall time of this `make demo`" in page
  assert "| hydra_1 |" in page and "### Test split (clean)" in page and "| duo (weighted) |" in page
  assert (runs / "logs" / "large.log").exists()
  # The runs shared one compilation cache.
  assert any((tmp_path / "cache").iterdir())

  # The profile benchmark reads the finished demo.
  bench = subprocess.run(
    [
      sys.executable,
      "bench/bench_demo.py",
      "--quick",
      "--runs",
      str(runs),
      "--data_dir",
      str(learnable_data_dir),
      "--val_size",
      "100",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert bench.returncode == 0, bench.stderr[-3000:]
  assert "| hydra_1 |" in bench.stdout and "| section paired |" in bench.stdout
  assert "| resnet14 | 32 |" in bench.stdout and "| cnn_xs | 128 |" in bench.stdout

  # A second demo resumes every run (nothing left to train) and evaluates again.
  again = _demo(tmp_path, learnable_data_dir, readme, "--jobs", "1")
  assert again.returncode == 0, again.stderr[-3000:]
  summary = json.loads((runs / "large" / "summary.json").read_text())
  assert summary["resumed_from"] == summary["steps"]


def test_demo_fails_on_the_first_failed_run_with_one_line(tmp_path, learnable_data_dir):
  readme = tmp_path / "README.md"
  readme.write_text(
    "<!-- results:start (written by `make demo`; do not edit by hand) -->\n<!-- results:end -->\n"
  )
  result = _demo(tmp_path, learnable_data_dir, readme, "--train_override=lr=-1")
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "exited with status" in last and "lr" in last, last
  assert not (tmp_path / "runs" / "results").exists()
  assert "results:start" in readme.read_text()
