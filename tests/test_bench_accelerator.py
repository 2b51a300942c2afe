"""The accelerator benchmark, rehearsed here as it runs on a bare GPU host.

The rehearsal runs `bench/run_on_device.sh --quick` (the documented launch
command) with every import refused that is neither on those hosts nor in the
device kit (`bench/rehearsal/sitecustomize.py`), then kills runs part-way and
reads what they left in the output folder.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import accelerator_report  # noqa: E402
import bench_accelerator  # noqa: E402
import device_kit  # noqa: E402

HEADINGS = dict(bench_accelerator.PARTS)


@pytest.fixture(scope="module")
def host_env(tmp_path_factory):
  """The environment of a host run: only the hosts' and the kit's modules import."""
  folder = tmp_path_factory.mktemp("host")
  allowed = folder / "allowed.txt"
  allowed.write_text("\n".join(sorted(device_kit.allowed_modules())) + "\n")
  (folder / "kit").mkdir()  # no wheels: the kit's packages are those installed here
  return {
    **os.environ,
    "PYTHON": sys.executable,
    "DUOJAX_KIT": str(folder / "kit"),
    "DUOJAX_ALLOWED_MODULES": str(allowed),
    "DUOJAX_REFUSED_LOG": str(folder / "refused.log"),
    "DUOJAX_JAX_CACHE": str(folder / "jax_cache"),
    "PYTHONPATH": str(ROOT / "bench" / "rehearsal"),
    # A SIGTERM lets the benchmark record the part it stopped; on a loaded machine the
    # compile it is in may outlast the launch command's 20 s before its SIGKILL.
    "BENCH_KILL_AFTER": "120",
  }


def launch(env, out, *flags):
  return subprocess.Popen(
    ["bash", "bench/run_on_device.sh", "--quick", *flags],
    cwd=ROOT,
    env={**env, "OUT": str(out)},
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,  # the test kills the whole group, as `timeout` would
  )


def read_run(out):
  return json.loads((out / accelerator_report.JSON).read_text())


def test_the_guard_refuses_what_the_hosts_lack(tmp_path):
  allowed = tmp_path / "allowed.txt"
  allowed.write_text("\n".join(sorted(sys.stdlib_module_names)) + "\n")
  code = (
    "import importlib.util, json\n"
    "assert importlib.util.find_spec('numpy') is None\n"
    "try:\n  import numpy\nexcept ModuleNotFoundError as e:\n  print('refused', e.name)\n"
  )
  env = {
    **os.environ,
    "DUOJAX_ALLOWED_MODULES": str(allowed),
    "PYTHONPATH": str(ROOT / "bench" / "rehearsal"),
    # A SIGTERM lets the benchmark record the part it stopped; on a loaded machine the
    # compile it is in may outlast the launch command's 20 s before its SIGKILL.
    "BENCH_KILL_AFTER": "120",
  }
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  assert result.returncode == 0 and result.stdout.strip() == "refused numpy", result.stderr


@pytest.mark.slow  # the whole quick run through the launch command (spawns loader workers)
def test_rehearsal_runs_every_part_with_only_the_hosts_and_the_kits_packages(host_env, tmp_path):
  out = tmp_path / "out"
  proc = launch(host_env, out, "--cache_dir", str(tmp_path / "cache"))
  log, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, log[-4000:]
  run = read_run(out)
  assert list(run["parts"]) == list(HEADINGS)
  assert all(r["status"] == "done" for r in run["parts"].values()), run["parts"]
  parts = {k: r["figures"] for k, r in run["parts"].items()}
  assert all(f > 0 for f in parts["flops"].values())
  assert all(t > 0 for t in parts["duo"]["seconds"].values())
  assert all(r > 0 for r in parts["train"]["train_images_per_s"].values())
  assert parts["loader"]["images_per_s"] > 0 and all(s > 0 for s in parts["hydra"].values())
  assert all(f["relative_error"] < 1e-1 for k, f in parts["torch"].items() if k != "source")
  text = (out / accelerator_report.MARKDOWN).read_text()
  assert all(f"### {h}" in text for h in HEADINGS.values()) and "Failed" not in text
  saved = (out / "bench_accelerator.log").read_text()
  assert "run_on_device.sh: exit 0" in saved and "kit: no wheels" in saved
  for key in HEADINGS:
    assert f"  {key}: done in" in log  # a line per part, with its time
  # The section goes into BENCHMARKS.md as it was measured.
  target = tmp_path / "B.md"
  accelerator_report.publish(out, target)
  published = target.read_text()
  assert "<!-- bench:accelerator:start -->" in published and run["command"] in published
  assert all(f"### {h}" in published for h in HEADINGS.values())


def wait_for(out, proc, predicate, timeout=300):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    try:
      run = read_run(out)
    except (FileNotFoundError, json.JSONDecodeError):
      run = None  # not written yet (a replace is atomic: never half a file)
    if run and predicate(run["parts"]):
      return run
    time.sleep(0.2)
  raise AssertionError("the run never got there")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_run_stopped_part_way_keeps_its_finished_parts(host_env, tmp_path, sig):
  out = tmp_path / "out"
  proc = launch(host_env, out, "--parts", "flops,duo,train")
  wait_for(out, proc, lambda parts: parts.get("duo", {}).get("status") == "running")
  # SIGKILL: killed outright. SIGTERM: what the launch command's time-out sends.
  os.killpg(proc.pid, sig)
  proc.communicate(timeout=60)
  deadline = time.monotonic() + 150
  with pytest.raises(ProcessLookupError):  # every process of the run has ended
    while time.monotonic() < deadline:
      os.killpg(proc.pid, 0)
      time.sleep(0.1)
  parts = read_run(out)["parts"]
  assert parts["flops"]["status"] == "done" and parts["flops"]["figures"]
  text = (out / accelerator_report.MARKDOWN).read_text()
  assert f"### {HEADINGS['flops']}" in text and "| vit_mu4 |" in text
  if sig == signal.SIGKILL:
    assert parts["duo"]["status"] == "running" and "Did not finish" in text
  else:
    assert parts["duo"] == {**parts["duo"], "status": "failed"}
    assert "stopped by SIGTERM" in parts["duo"]["error"]
  assert "train" not in parts


def test_full_mode_on_a_cpu_says_why_it_measured_nothing(tmp_path):
  if bench_accelerator.jax.default_backend() != "cpu":
    pytest.skip("an accelerator is present")
  out = tmp_path / "out"
  result = subprocess.run(
    [sys.executable, "bench/bench_accelerator.py", "--out", str(out), "--jax_cache", ""],
    cwd=ROOT, capture_output=True, text=True, timeout=120,
  )  # fmt: skip
  assert result.returncode == 1 and "JAX sees no accelerator" in result.stderr
  assert read_run(out)["parts"] == {}


@pytest.mark.slow  # compiles a few tiny models
def test_the_families_part_runs_only_when_named(tmp_path):
  assert "families" not in HEADINGS  # not in a default run: it adds minutes of compiles
  out = tmp_path / "out"
  result = subprocess.run(
    [sys.executable, "bench/bench_accelerator.py", "--quick", "--parts", "families",
     "--out", str(out), "--jax_cache", ""],
    cwd=ROOT, capture_output=True, text=True, timeout=600,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr[-3000:]
  figures = read_run(out)["parts"]["families"]["figures"]
  assert set(figures["attention"]) == {"explicit", "xla", "auto"}
  assert all(r > 0 for group in figures.values() for r in group.values())
  # Every model of the full run builds at its size (shapes only).
  get_model = bench_accelerator.models.get_model
  for name, overrides, size in bench_accelerator.FAMILY_MODELS:
    bench_accelerator.nnx.eval_shape(
      lambda n=name, o=overrides, s=size: get_model(n, 10, image_size=s, **o)
    )


def test_the_full_flop_counts_match_the_published_figures():
  class Args:
    pass

  text, figures = bench_accelerator.flops_part(bench_accelerator.FULL, Args(), {})
  assert set(figures) == {"vit_b16", "resnet18"}
  rows = [l for l in text.splitlines() if l.startswith(("| vit_b16", "| resnet18"))]
  assert len(rows) == 2 and all(r.rstrip(" |").endswith("yes") for r in rows), rows


@pytest.mark.parametrize(
  "kind, tflops",
  [
    ("NVIDIA H100 80GB HBM3", 989.0),
    ("NVIDIA H200", 989.0),
    ("NVIDIA H200 NVL", 835.0),  # not the SXM part
    ("NVIDIA GB200", 2500.0),  # not a B200
    ("NVIDIA RTX 9000 Something", None),  # unknown: no vendor MFU, no guess
  ],
)
def test_peaks_are_matched_by_exact_device_name(kind, tflops):
  class Device:
    device_kind, platform = kind, "gpu"

  peak = bench_accelerator.device_info(Device())["peak"]
  assert peak == (None if tflops is None else tflops * 1e12)


def test_the_kit_is_checked_for_size_names_and_platform(tmp_path, capsys):
  for spec in device_kit.KIT:
    name, version = spec.split("==")
    (tmp_path / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"x")
  assert device_kit.check(tmp_path) == []
  (tmp_path / "grain-0.2.18-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"x")
  (tmp_path / "torch-2.11.0-py3-none-any.whl").write_bytes(b"x")
  problems = device_kit.check(tmp_path)
  assert (
    "two wheels of grain" in problems and "not in KIT: torch-2.11.0-py3-none-any.whl" in problems
  )
  assert any(p.startswith("not for CPython 3.12") and "cp311" in p for p in problems)
  (tmp_path / "torch-2.11.0-py3-none-any.whl").write_bytes(b"\0" * device_kit.LIMIT_BYTES)
  assert any("> 64 MiB" in p for p in device_kit.check(tmp_path))
  assert "together" in capsys.readouterr().out
