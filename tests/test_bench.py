"""The benchmark scripts run end to end on tiny sizes (their speed is not tested)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import bench_temperature  # noqa: E402
import bench_xla_cpu  # noqa: E402
import harness  # noqa: E402


def run_script(name, *args, timeout=300):
  result = subprocess.run(
    [sys.executable, str(ROOT / "bench" / name), *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_write_section_replaces_only_its_own_section(tmp_path):
  path = tmp_path / "B.md"
  path.write_text("# Benchmarks\n\nIntro kept.\n")
  harness.write_section(
    "one", "One", "| a |\n|---|\n| 1 |", machine="m", path=path, command="python x.py"
  )
  harness.write_section("two", "Two", "second", machine="m", path=path, command="python y.py")
  harness.write_section(
    "one", "One", "| a |\n|---|\n| 2 |", machine="m", path=path, command="python x.py --again"
  )
  text = path.read_text()
  assert text.startswith("# Benchmarks\n\nIntro kept.\n")
  assert text.count("<!-- bench:one:start -->") == 1 and text.count("<!-- bench:two:end -->") == 1
  assert "| 2 |" in text and "| 1 |" not in text
  assert "`python x.py --again`" in text and "second" in text
  assert text.index("bench:one:start") < text.index("bench:two:start")


def test_write_section_rejects_odd_names(tmp_path):
  with pytest.raises(ValueError, match="section name"):
    harness.write_section("has space", "T", "b", machine="m", path=tmp_path / "B.md")


def test_time_call_counts_repeats_and_first_call():
  calls = []
  timing = harness.time_call(lambda: calls.append(1), repeats=3)
  assert len(calls) == 4 and len(timing.times_s) == 3
  assert timing.min_s <= timing.median_s


def test_torch_reference_recipe_reaches_the_scipy_optimum_region():
  members, labels = bench_temperature.synthetic_duo(2000, 10, seed=3)
  w_scipy, _, _, nll_scipy = bench_temperature.scipy_fit(members, labels)
  w_ref, _, evaluations = bench_temperature.torch_reference_fit(members, labels)
  assert evaluations >= 625
  nll_ref = bench_temperature.nll64(w_ref, members, labels)
  # The recipe optimises the same convex NLL (w = 1 / (2T)): never below the
  # optimum, and close to it.
  assert nll_scipy <= nll_ref + 1e-7
  assert nll_ref - nll_scipy < 0.01
  np.testing.assert_allclose(
    bench_temperature.nll64(w_scipy, members, labels), nll_scipy, rtol=1e-9
  )


@pytest.mark.slow  # the script's quick run, as a subprocess
def test_bench_duo_quick(tmp_path):
  out = tmp_path / "B.md"
  run_script("bench_duo.py", "--quick", "--out", str(out))
  text = out.read_text()
  for marker in ("<!-- bench:duo_cost:start -->", "<!-- bench:roofline:end -->"):
    assert marker in text
  for row in (
    "| large alone |",
    "| duo, one jit (fused) |",
    "| duo, two jitted calls |",
    "matmul, float32",
    "matmul, bfloat16",
  ):
    assert row in text
  assert "Command: `python bench/bench_duo.py --quick" in text


@pytest.mark.slow  # the script's quick run, as a subprocess
def test_bench_temperature_quick(tmp_path):
  out = tmp_path / "B.md"
  run_script("bench_temperature.py", "--quick", "--out", str(out))
  text = out.read_text()
  assert "<!-- bench:temperature:start -->" in text
  for row in ("duojax, jaxopt", "duojax, optax", "reference recipe, PyTorch", "scipy L-BFGS-B"):
    assert text.count(f"| {row}") == 2, row
  assert "× the floor" in text


@pytest.mark.slow  # the script's quick run, as a subprocess
def test_bench_xla_cpu_quick(tmp_path):
  out = tmp_path / "B.md"
  run_script("bench_xla_cpu.py", "--quick", "--out", str(out))
  text = out.read_text()
  for marker in (
    "<!-- bench:xla_cpu_ab:end -->",
    "<!-- bench:xla_cpu_options:end -->",
    "<!-- bench:xla_cpu_train_step:end -->",
  ):
    assert marker in text
  rows = [
    l
    for l in text.splitlines()
    if l.startswith("| attention block") or "GELU via" in l or l.startswith("| patch embedding")
  ]
  assert len(rows) == 6
  # Every variant computes the same function as the first of its group.
  for row in rows:
    assert float(row.rstrip(" |").rsplit("|", 1)[1]) < 1e-5, row
  assert text.count("| resnet14 |") == len(bench_xla_cpu.OPTIONS)
  # The train-step A/B: six formulations (seven for the CNN, with the windowed pool),
  # the same first loss within float32 rounding.
  for prefix, count in (("| resnet8 | 4 |", 6), ("| cnn_xs | 4 |", 7)):
    steps = [l for l in text.splitlines() if l.startswith(prefix)]
    assert len(steps) == count, prefix
    for row in steps:
      assert float(row.rstrip(" |").rsplit("|", 1)[1]) < 1e-4, row
  assert "windowed max pool" in text


@pytest.mark.slow  # the script's quick run, as a subprocess
def test_bench_hydra_quick(tmp_path):
  out = tmp_path / "B.md"
  run_script("bench_hydra.py", "--quick", "--out", str(out))
  text = out.read_text()
  assert "<!-- bench:hydra:start -->" in text
  rows = {
    l.split("|")[1].strip(): l.split("|")[2:-1]
    for l in text.splitlines()
    if l.startswith("| ") and not l.startswith("| model")
  }
  assert {"single ViT", "deep ensemble of 3 ViTs"} <= set(rows)
  params = {k: int(v[0].strip().replace(",", "")) for k, v in rows.items()}
  # Exact counts: 3 full ViTs, and the averaged MLP holds fewer weights than
  # the grouped one with the same heads.
  assert params["deep ensemble of 3 ViTs"] == 3 * params["single ViT"]
  assert params["Hydra M=3, 2/4 heads, average MLP"] < params["Hydra M=3, 2/4 heads, grouped MLP"]
  assert "Command: `python bench/bench_hydra.py --quick" in text


@pytest.mark.slow  # the script's quick run, as a subprocess (spawns loader workers)
def test_bench_input_quick(tmp_path):
  out = tmp_path / "B.md"
  run_script("bench_input.py", "--quick", "--cache_dir", str(tmp_path / "cache"), "--out", str(out))
  text = out.read_text()
  assert "<!-- bench:input_pipeline:start -->" in text
  assert "Command: `python bench/bench_input.py --quick" in text
  rates = {
    l.split("|")[1].strip(): float(l.split("|")[3].replace(",", ""))
    for l in text.splitlines()
    if l.startswith("| ") and not l.startswith("| path")
  }
  assert len(rates) == 11 and all(rate > 0 for rate in rates.values()), rates
  for row in (
    "PIL full decode (**floor**)",
    "duojax `train_batches`, workers=2",
    "PyTorch `DataLoader`, num_workers=2",
  ):
    assert row in rates
  assert "host cores per accelerator" in text.lower()


@pytest.mark.slow  # the script's quick run, as a subprocess (a bundle, predict, both programs)
def test_bench_predict_quick(tmp_path):
  out = tmp_path / "B.md"
  run_script("bench_predict.py", "--quick", "--out", str(out))
  text = out.read_text()
  assert "<!-- bench:predict:start -->" in text
  row = next(l for l in text.splitlines() if l.startswith("| ViT-µ/4"))
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert cells[9] == "yes"  # the exported program gives the jitted outputs
  assert all(float(c) > 0 for c in cells[3:9])


@pytest.mark.slow  # the script's quick run, as a subprocess
def test_bench_transformers_quick():
  result = run_script("bench_transformers.py", "--quick")
  assert "| vit_b16_clip | 32 |" in result.stdout  # against transformers' CLIP tower
  assert "| vit_mu4 |" in result.stdout and "xla / explicit" in result.stdout
  assert "residuals MiB, remat" in result.stdout


def test_remat_keeps_a_fraction_of_the_residuals_for_the_backward_pass():
  import bench_transformers

  small = dict(width=64, depth=4, num_heads=2, mlp_dim=128)
  plain, remat = (
    bench_transformers.residual_bytes("vit_mu4", 32, "float32", r, small) for r in (False, True)
  )
  assert remat["weights"] == plain["weights"]
  assert remat["residuals"] < 0.5 * plain["residuals"]
