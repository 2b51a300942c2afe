"""The accelerator installs: the start-up warning for a GPU or TPU that JAX leaves
unused (`duojax.parallel.accelerator`, on faked /proc, /dev, /sys and environments),
and the pyproject extras cuda12, cuda13 and tpu pinned in constraints.txt."""

from __future__ import annotations

import importlib.metadata
import io
import logging
import os
import pathlib
import re
import subprocess
import sys
import tomllib
import types

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from duojax import cli
from duojax.parallel import accelerator

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXTRAS = ("cuda12", "cuda13", "tpu")


def _touch(path: pathlib.Path, text: str = "") -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def fake_nvidia(root: pathlib.Path, driver: str | None = "580.65.06", gpus: int = 1) -> None:
  """What the NVIDIA driver shows: /proc/driver/nvidia and /dev/nvidiaN."""
  for i in range(gpus):
    info = root / f"proc/driver/nvidia/gpus/0000:{0x3B + i:02x}:00.0/information"
    _touch(info, "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 123\n")
    _touch(root / f"dev/nvidia{i}")
  _touch(root / "dev/nvidiactl")
  if driver is not None:
    _touch(
      root / "proc/driver/nvidia/version",
      f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {driver}  Release Build\n"
      "GCC version:  gcc version 12.2.0\n",
    )


def fake_tpu_vm(root: pathlib.Path) -> dict[str, str]:
  """A v5e TPU VM: VFIO groups and the runtime's environment."""
  _touch(root / "dev/vfio/vfio")
  for i in range(4):
    _touch(root / f"dev/vfio/{i}")
  return {"TPU_ACCELERATOR_TYPE": "v5litepod-4", "TPU_WORKER_ID": "0"}


def check(root, backend="cpu", env=None):
  """(returned line, what was printed) of check_backend on a faked machine."""
  out = io.StringIO()
  line = accelerator.check_backend(backend, root=str(root), env=env or {}, stream=out)
  return line, out.getvalue()


# -- The warning ------------------------------------------------------------------------


def test_an_nvidia_gpu_with_a_cpu_backend_warns_once_on_stderr(tmp_path, capsys):
  fake_nvidia(tmp_path)
  line = accelerator.check_backend("cpu", root=str(tmp_path), env={})
  err = capsys.readouterr().err
  assert err == line + "\n"
  assert err.count("\n") == 1
  assert line.startswith("warning: an NVIDIA GPU (NVIDIA H100 80GB HBM3) is visible (")
  assert "/proc/driver/nvidia/gpus/0000:3b:00.0" in line
  assert "but JAX runs on the CPU (jaxlib without CUDA): make install ACCEL=cuda13" in line
  assert "pip install -c constraints.txt -e '.[cuda13]'" in line


@pytest.mark.parametrize(
  "driver, extra",
  [
    ("580.65.06", "cuda13"),
    ("590.44.01", "cuda13"),
    ("575.57.08", "cuda12"),
    ("535.247.01", "cuda12"),
  ],
)
def test_the_driver_picks_the_cuda_extra(tmp_path, driver, extra):
  fake_nvidia(tmp_path, driver=driver)
  line, _ = check(tmp_path)
  assert line.endswith(
    f"make install ACCEL={extra}, or pip install -c constraints.txt -e '.[{extra}]'"
  )


def test_an_unknown_driver_names_both_cuda_extras(tmp_path):
  fake_nvidia(tmp_path, driver=None)
  line, _ = check(tmp_path)
  assert "make install ACCEL=cuda13 (ACCEL=cuda12 for an NVIDIA driver older than 580)" in line


def test_a_gpu_device_file_alone_is_enough_and_several_gpus_are_counted(tmp_path):
  _touch(tmp_path / "dev/nvidia0")
  line, _ = check(tmp_path)
  assert line.startswith(f"warning: an NVIDIA GPU is visible ({tmp_path}/dev/nvidia0)")
  fake_nvidia(tmp_path / "eight", gpus=8)
  line, _ = check(tmp_path / "eight")
  assert "0000:3b:00.0 and 7 more)" in line


def test_the_nvidia_control_device_alone_is_no_gpu(tmp_path):
  # Containers of the NVIDIA runtime show it even when they were given no GPU.
  _touch(tmp_path / "dev/nvidiactl")
  _touch(tmp_path / "dev/nvidia-uvm")
  assert check(tmp_path) == (None, "")


def test_a_tpu_vm_with_a_cpu_backend_warns(tmp_path):
  env = fake_tpu_vm(tmp_path)
  line, printed = check(tmp_path, env=env)
  assert printed == line + "\n"
  assert line == (
    f"warning: a Cloud TPU is visible ({tmp_path}/dev/vfio/0, TPU_ACCELERATOR_TYPE=v5litepod-4) "
    "but JAX runs on the CPU (no libtpu): make install ACCEL=tpu, "
    "or pip install -c constraints.txt -e '.[tpu]'"
  )


def test_tpu_devices_count_with_a_google_accel_class_entry_or_pci_chip(tmp_path):
  # TPU v4: /dev/accel*, and the accel class's device is Google's.
  v4 = tmp_path / "v4"
  _touch(v4 / "dev/accel0")
  _touch(v4 / "sys/class/accel/accel0/device/vendor", "0x1ae0\n")
  assert "a Cloud TPU is visible" in check(v4)[0]
  # A TPU chip on the PCI bus is enough on its own (what JAX's own check reads).
  pci = tmp_path / "pci"
  _touch(pci / "sys/bus/pci/devices/0000:00:04.0/vendor", "0x1ae0\n")
  _touch(pci / "sys/bus/pci/devices/0000:00:04.0/device", "0x0063\n")
  assert "PCI device" in check(pci)[0]


@pytest.mark.parametrize("case", ["no hint", "control file only", "intel npu", "google nic"])
def test_accel_and_vfio_devices_without_a_tpu_hint_are_no_tpu(tmp_path, case):
  if case == "no hint":
    _touch(tmp_path / "dev/accel0")
    _touch(tmp_path / "dev/vfio/0")
    env = {}
  elif case == "control file only":  # /dev/vfio/vfio exists wherever VFIO is loaded
    _touch(tmp_path / "dev/vfio/vfio")
    env = {"TPU_NAME": "my-tpu"}
  elif case == "intel npu":  # the accel class holds other vendors' chips too
    _touch(tmp_path / "dev/accel/accel0")
    _touch(tmp_path / "sys/class/accel/accel0/device/vendor", "0x8086\n")
    env = {}
  else:  # Google's vendor id on a virtual NIC, not a TPU
    _touch(tmp_path / "sys/bus/pci/devices/0000:00:05.0/vendor", "0x1ae0\n")
    _touch(tmp_path / "sys/bus/pci/devices/0000:00:05.0/device", "0x0042\n")
    env = {}
  assert check(tmp_path, env=env) == (None, "")


@pytest.mark.parametrize("backend", ["gpu", "cuda", "tpu"])
def test_no_warning_when_jax_runs_on_an_accelerator(tmp_path, backend):
  fake_nvidia(tmp_path)
  env = fake_tpu_vm(tmp_path / "tpu")
  assert check(tmp_path, backend) == (None, "")
  assert check(tmp_path / "tpu", backend, env=env) == (None, "")


def test_no_warning_when_no_accelerator_is_visible(tmp_path):
  assert check(tmp_path) == (None, "")
  assert accelerator.visible_accelerator(str(tmp_path), {"TPU_NAME": "x"}) is None


def test_an_installed_plugin_that_did_not_start_is_named(tmp_path, monkeypatch):
  monkeypatch.setattr(accelerator, "plugin_installed", lambda kind: True)
  fake_nvidia(tmp_path)
  line, _ = check(tmp_path)
  assert "(its CUDA plugin is installed but did not start; JAX_PLATFORMS=cuda shows why)" in line
  env = fake_tpu_vm(tmp_path / "tpu")
  line, _ = check(tmp_path / "tpu", env=env)
  assert "(libtpu is installed but did not start; JAX_PLATFORMS=tpu shows why)" in line


# -- Which backend, without starting one -------------------------------------------------


@pytest.mark.parametrize(
  "started, plugin, env, expected",
  [
    (None, False, {}, "cpu"),  # nothing to start a GPU with: JAX will run on the CPU
    (None, True, {}, None),  # JAX will try the plugin: only starting it would tell
    ("cpu", True, {}, "cpu"),  # started, and fell back
    ("gpu", True, {}, "gpu"),
    (None, False, {"JAX_PLATFORMS": "cpu"}, None),  # the user chose the CPU
    ("cpu", False, {"JAX_PLATFORMS": "cpu"}, None),
  ],
)
def test_the_backend_is_found_without_starting_one(monkeypatch, started, plugin, env, expected):
  monkeypatch.setattr(accelerator, "_started_backend", lambda: started)
  monkeypatch.setattr(accelerator, "plugin_installed", lambda kind: plugin)
  seen = accelerator.Accelerator("gpu", "an NVIDIA GPU", "/dev/nvidia0", "cuda13")
  assert accelerator.jax_backend(seen, env) == expected


def test_by_default_the_process_environment_and_jax_config_tell_the_choice(monkeypatch):
  def jax_with_platforms(value):
    # Only what is read of it: the config the program (or JAX_PLATFORMS at import) set.
    return types.SimpleNamespace(config=types.SimpleNamespace(jax_platforms=value))

  monkeypatch.setattr(accelerator, "_started_backend", lambda: None)
  monkeypatch.setattr(accelerator, "plugin_installed", lambda kind: False)
  monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  seen = accelerator.Accelerator("tpu", "a Cloud TPU", "/dev/vfio/0", "tpu")
  monkeypatch.setitem(sys.modules, "jax", jax_with_platforms(None))
  assert accelerator.jax_backend(seen) == "cpu"
  monkeypatch.setitem(sys.modules, "jax", jax_with_platforms("cpu"))
  assert accelerator.jax_backend(seen) is None
  monkeypatch.delitem(sys.modules, "jax")
  assert accelerator.jax_backend(seen) == "cpu"
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert accelerator.jax_backend(seen) is None


@pytest.mark.slow
def test_the_check_starts_no_backend_and_runs_before_the_cli_main(tmp_path):
  """In a fresh process (this one has started its backends long ago): the check
  on a faked GPU, with JAX imported, leaves JAX's backends unstarted; and
  `cli.run` calls it after joining the job and before the program's main."""
  fake_nvidia(tmp_path)
  script = f"""
import sys
import jax
from jax._src import xla_bridge
from duojax import cli
from duojax.parallel import accelerator, distributed

line = accelerator.check_backend(root={str(tmp_path)!r})
print("warned" if line else "silent", xla_bridge.backends_are_initialized())
order = []
distributed.initialize = lambda settings: order.append("join")
accelerator.check_backend = lambda: order.append("check")
cli.run(lambda argv: print(order + ["main"]))
"""
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  done = subprocess.run(
    [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT
  )
  assert done.returncode == 0, done.stderr
  plugin = accelerator.plugin_installed("gpu")
  assert done.stdout.splitlines() == [
    f"{'silent' if plugin else 'warned'} False",
    "['join', 'check', 'main']",
  ]


def test_the_cli_keeps_only_the_failed_backend_warning_of_jax():
  keep = cli._OnlyFailedBackends().filter

  def record(level, message):
    return logging.LogRecord("jax._src.xla_bridge", level, __file__, 1, message, None, None)

  assert keep(record(logging.WARNING, "CUDA backend failed to initialize: no driver."))
  assert keep(record(logging.ERROR, "anything"))
  assert not keep(record(logging.WARNING, "Platform 'METAL' is experimental"))
  assert not keep(record(logging.WARNING, "An NVIDIA GPU may be present on this machine"))


# -- The extras and their pins -----------------------------------------------------------


def constraints() -> dict[str, str]:
  pins = {}
  for line in (ROOT / "constraints.txt").read_text().splitlines():
    line = line.split("#", 1)[0].strip()
    if not line:
      continue
    name, sep, version = line.partition("==")
    assert sep and version, f"constraints.txt: {line!r} is not NAME==VERSION"
    name = canonicalize_name(name)
    assert name not in pins, f"constraints.txt pins {name} twice"
    pins[name] = version
  return pins


def extras() -> dict[str, list[Requirement]]:
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  optional = project["optional-dependencies"]
  return {extra: [Requirement(r) for r in optional[extra]] for extra in EXTRAS}


def exact(requirement: Requirement) -> str | None:
  specs = list(requirement.specifier)
  if len(specs) == 1 and specs[0].operator == "==" and "*" not in specs[0].version:
    return specs[0].version
  return None


@pytest.mark.parametrize("extra", EXTRAS)
def test_every_requirement_of_an_accelerator_extra_is_pinned_exactly(extra):
  pins = constraints()
  for requirement in extras()[extra]:
    name = canonicalize_name(requirement.name)
    assert name in pins, f"[{extra}] {requirement}: {name} is not pinned in constraints.txt"
    assert exact(requirement) == pins[name], (
      f"[{extra}] {requirement}: pyproject.toml must pin {name}=={pins[name]}, "
      "as constraints.txt does"
    )


@pytest.mark.parametrize("extra", EXTRAS)
def test_an_accelerator_extra_is_jax_s_own_at_the_core_s_jax(extra):
  pins = constraints()
  assert pins["jax"] == pins["jaxlib"], "the core pins jax and jaxlib at one version"
  by_name = {canonicalize_name(r.name): r for r in extras()[extra]}
  assert by_name["jax"].extras == {extra}, f"[{extra}] builds on jax[{extra}]"
  assert exact(by_name["jax"]) == pins["jax"]
  assert exact(by_name["jaxlib"]) == pins["jaxlib"]
  plugin = {"cuda12": "jax-cuda12-plugin", "cuda13": "jax-cuda13-plugin", "tpu": "libtpu"}[extra]
  assert plugin in by_name, f"[{extra}] names {plugin}"


@pytest.mark.parametrize("extra", EXTRAS)
def test_what_jax_s_own_extra_requires_is_pinned_within_its_ranges(extra):
  """jax's metadata (the installed jax is the pinned one) is the reference: each
  requirement of its extra of the same name is pinned, inside the range it asks."""
  pins = constraints()
  assert importlib.metadata.version("jax") == pins["jax"], "reinstall: make install"
  wanted = [
    Requirement(r)
    for r in importlib.metadata.requires("jax")
    if re.search(rf"""extra\s*==\s*["']{extra}["']""", r)
  ]
  assert wanted, f"jax {pins['jax']} has no extra {extra!r}"
  for requirement in wanted:
    name = canonicalize_name(requirement.name)
    assert name in pins, f"jax[{extra}] needs {requirement.name}: pin it in constraints.txt"
    assert requirement.specifier.contains(pins[name], prereleases=True), (
      f"jax[{extra}] asks {requirement}, constraints.txt pins {name}=={pins[name]}"
    )
