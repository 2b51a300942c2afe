"""The demo's plan and its parallel runner, on stand-in commands."""

import json
import os
import subprocess
import sys

import pytest
from helpers import ROOT

from duojax.demo import plan as plan_lib
from duojax.demo import runner, timings


def _writer(name, after=(), seconds=0.0, code=0, all_cores=False):
  """A run that records when it started and ended and the cores it was allowed."""
  script = (
    "import json, os, sys, time; t = time.time(); time.sleep(%r); "
    "cores = sorted(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else []; "
    "open(sys.argv[1], 'w').write(json.dumps([t, time.time(), cores])); sys.exit(%d)"
    % (seconds, code)
  )
  return plan_lib.Run(name, ("-c", script, name + ".json"), tuple(after), all_cores)


def _read(tmp_path, name):
  return json.loads((tmp_path / f"{name}.json").read_text())


def test_demo_plan_is_ordered_and_complete():
  plan = plan_lib.demo_runs("r", ["0.1", "0.5"], hydra_members=2)
  plan_lib.check_plan(plan)
  names = [r.name for r in plan]
  assert names[-1] == "evaluate" and set(plan[-1].after) == set(names[:-1])
  assert plan[-1].all_cores and not any(r.all_cores for r in plan[:-1])
  assert {
    "large",
    "sidekick",
    "vit",
    "hydra_0",
    "hydra_1",
    "vit_seed1",
    "large_seed1",
    "soup_1",
    "soup_2",
    "gatekeeper_0.1",
    "gatekeeper_0.5",
  } == set(names[:-1])
  for run in plan[:-1]:
    assert run.argv[0] == "train.py"
    assert run.argv[run.argv.index("--workdir") + 1] == os.path.join("r", run.name)
    assert "--config.final_test=false" in run.argv
  # A test's overrides come after the demo's own settings, so they win.
  shrunk = plan_lib.demo_runs("r", ["0.1"], hydra_members=0, train_overrides=["eval_batch_size=50"])
  assert shrunk[0].argv[-1] == "--config.eval_batch_size=50"
  assert "hydra=2" in plan[-1].argv[-1] and "gatekeeper=0.1 0.5" in plan[-1].argv[-1]
  no_vit = [r.name for r in plan_lib.demo_runs("r", ["0.1"], hydra_members=0)]
  assert not any(n.startswith(("vit", "hydra")) for n in no_vit)


def test_check_plan_rejects_bad_plans():
  with pytest.raises(ValueError, match="'a' is in the plan twice"):
    plan_lib.check_plan([_writer("a"), _writer("a")])
  with pytest.raises(ValueError, match=r"'b' needs \['c'\], which no earlier run provides"):
    plan_lib.check_plan([_writer("b", after=["c"]), _writer("c")])


@pytest.mark.parametrize("jobs", [1, 2])
def test_runs_wait_for_what_they_need(tmp_path, monkeypatch, jobs):
  monkeypatch.chdir(tmp_path)
  plan = [
    _writer("a", seconds=0.5),
    _writer("b"),
    _writer("c", after=["a", "b"]),
    _writer("d", after=["c"], all_cores=True),
  ]
  ran = runner.run_plan(
    plan, python=sys.executable, jobs=jobs, log_dir=str(tmp_path / "logs"), report=lambda line: None
  )
  assert sorted(t.name for t in ran) == ["a", "b", "c", "d"]
  a, b, c, d = (_read(tmp_path, n) for n in "abcd")
  assert c[0] >= max(a[1], b[1]) and d[0] >= c[1]
  if jobs == 2:
    assert b[0] < a[1]  # b ran beside a
  if runner.usable_cores():
    assert len(a[2]) == len(b[2]) == len(c[2]) == 1  # one core each, side by side or not
    if jobs == 2:
      assert a[2] != b[2]
    assert d[2] == runner.usable_cores()  # the all-cores run


def test_a_failed_run_stops_the_others(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  plan = [_writer("slow", seconds=30), _writer("bad", code=3), _writer("after", after=["bad"])]
  with pytest.raises(runner.RunFailed, match=r"^bad exited with status 3 after \d+ s \(log: "):
    runner.run_plan(
      plan, python=sys.executable, jobs=2, log_dir=str(tmp_path / "logs"), report=lambda line: None
    )
  assert not (tmp_path / "slow.json").exists()  # terminated, not waited for
  assert not (tmp_path / "after.json").exists()


def test_core_slots():
  cores = runner.usable_cores()
  if not cores:
    pytest.skip("no CPU affinity on this platform")
  assert runner.core_slots(1) == [cores[:1]]
  assert runner.core_slots(1, len(cores)) == [cores]
  with pytest.raises(ValueError, match="need more than the"):
    runner.core_slots(len(cores) + 1)


def test_timing_report_and_markdown(tmp_path):
  plan = [
    plan_lib.Run("large", ()),
    plan_lib.Run("sidekick", ()),
    plan_lib.Run("evaluate", (), ("large", "sidekick")),
  ]
  (tmp_path / "large").mkdir()
  (tmp_path / "large" / "summary.json").write_text(json.dumps({"val_accuracy": 0.9}))
  ran = [
    runner.Timing("sidekick", 20.0, 0.0, [1]),
    runner.Timing("large", 100.0, 0.0, [0]),
    runner.Timing("evaluate", 50.0, 100.5, [0, 1]),
  ]
  report = timings.report(
    plan,
    ran,
    runs=str(tmp_path),
    jobs=2,
    cores_per_run=1,
    peak_gflops=250.0,
    data_seconds=2.0,
    total_seconds=160.0,
  )
  assert report["training"] == 100.0 and report["training_sum_of_runs"] == 120.0
  assert report["evaluation"] == 50.0 and list(report["runs"]) == ["large", "sidekick", "evaluate"]
  assert report["runs"]["large"]["val_accuracy"] == 0.9
  assert report["runs"]["sidekick"]["val_accuracy"] is None
  text = "\n".join(timings.markdown(report))
  assert "**2 min 40 s**" in text and "250 GFLOP/s" in text
  assert "| large | 100 | 0 | 0.9000 |" in text and "| sidekick | 20 | 0 | – |" in text


@pytest.mark.parametrize(
  "args,message",
  [
    (["--jobs", "999"], "error: --jobs/--cores_per_run: 999 job"),
    (["--cores_per_run", "0"], "error: --jobs/--cores_per_run: jobs="),
    (["--train_override", "lr"], "error: override 'lr' is not KEY=VALUE"),
    (["--readme", "no/such/README.md"], "error: --readme 'no/such/README.md' does not exist"),
    (["--results_page", "no/such.md"], "error: --results_page 'no/such.md' does not exist"),
  ],
)
def test_demo_bad_command_lines_fail_at_once_with_one_line(tmp_path, args, message):
  runs = tmp_path / "runs"
  result = subprocess.run(
    [sys.executable, "-m", "duojax.demo", "--runs", str(runs), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
  assert not runs.exists()
