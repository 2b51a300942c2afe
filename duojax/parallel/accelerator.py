"""The start-up check: JAX on the CPU on a machine that has a GPU or TPU.

A plain `make install` (or `pip install duojax`) brings the CPU-only jaxlib. On a
GPU or TPU machine JAX then runs on the CPU, and says so only in a log line that
the command-line programs keep quiet: a first real run would train for hours at
CPU speed. `check_backend` prints one warning line instead, naming what it saw
and the install that fixes it (`make install ACCEL=cuda13`, the pyproject extra
pinned in constraints.txt).

It never starts a JAX backend: starting CUDA takes seconds and most of the GPU's
memory (JAX preallocates it), and `jax.distributed.initialize` must come before
it. What it sees comes from files (the NVIDIA driver's /proc and /dev entries, a
TPU VM's /dev/accel* or /dev/vfio/* with a TPU hint) and the environment; which
backend JAX uses, from JAX when the program has started one, else from what is
installed: without a CUDA plugin or libtpu JAX can only run on the CPU. Both the
root directory and the environment are arguments, so tests fake them.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import os
import re
import sys
from typing import Mapping, TextIO

# The first NVIDIA driver for CUDA 13: older ones take the cuda12 extra.
CUDA13_DRIVER = 580
# Environment a Cloud TPU VM sets for its runtime.
TPU_VARIABLES = ("TPU_ACCELERATOR_TYPE", "TPU_NAME", "TPU_WORKER_ID")
GOOGLE_PCI_VENDOR = "0x1ae0"
# Google's PCI device ids of TPU chips (v3 to TPU7x), as JAX's own hardware check
# lists them; the vendor alone is not enough: Google's virtual NICs share it.
TPU_PCI_DEVICES = frozenset(("0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"))
# The distributions that let JAX start each kind of accelerator.
PLUGINS = {
  "gpu": ("jax-cuda12-plugin", "jax-cuda12-pjrt", "jax-cuda13-plugin", "jax-cuda13-pjrt"),
  "tpu": ("libtpu",),
}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  kind: str  # "gpu" (NVIDIA) or "tpu"
  what: str  # how the warning names it: "an NVIDIA GPU (NVIDIA H100 80GB HBM3)"
  evidence: str  # what showed it: "/proc/driver/nvidia/gpus/0000:3b:00.0"
  extra: str  # the pyproject extra that installs JAX for it: cuda12, cuda13 or tpu
  alternative: str = ""  # the other extra, when the driver's version is unknown


def _read(path: str) -> str:
  try:
    with open(path, errors="replace") as f:
      return f.read()
  except OSError:
    return ""


def _nvidia_gpu(root: str) -> Accelerator | None:
  gpus = sorted(glob.glob(os.path.join(root, "proc/driver/nvidia/gpus/*")))
  devices = sorted(
    path
    for path in glob.glob(os.path.join(root, "dev/nvidia*"))
    if re.fullmatch(r"nvidia\d+", os.path.basename(path))
  )
  if not gpus and not devices:
    return None
  evidence = gpus[0] if gpus else devices[0]
  what = "an NVIDIA GPU"
  if gpus:
    model = re.search(r"^Model:\s*(.+?)\s*$", _read(os.path.join(gpus[0], "information")), re.M)
    if model:
      what += f" ({model.group(1)})"
  if len(gpus) > 1:
    evidence += f" and {len(gpus) - 1} more"
  # "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  ..." (or "Open Kernel Module").
  driver = re.search(
    r"NVRM version:.*?\s(\d+)\.\d+(?:\.\d+)?\s",
    _read(os.path.join(root, "proc/driver/nvidia/version")),
  )
  if driver is None:  # JAX recommends CUDA 13; an older driver needs the CUDA 12 wheels
    return Accelerator("gpu", what, evidence, "cuda13", alternative="cuda12")
  extra = "cuda13" if int(driver.group(1)) >= CUDA13_DRIVER else "cuda12"
  return Accelerator("gpu", what, evidence, extra)


def _tpu(root: str, env: Mapping[str, str]) -> Accelerator | None:
  chips = sorted(
    os.path.dirname(vendor)
    for vendor in glob.glob(os.path.join(root, "sys/bus/pci/devices/*/vendor"))
    if _read(vendor).strip() == GOOGLE_PCI_VENDOR
    and _read(os.path.join(os.path.dirname(vendor), "device")).strip() in TPU_PCI_DEVICES
  )
  # TPU v2-v4 VMs show /dev/accel0..3, v5e and later VFIO groups /dev/vfio/0..;
  # both also exist on other hardware, so they count only with a TPU hint.
  devices = sorted(glob.glob(os.path.join(root, "dev/accel*"))) + sorted(
    path for path in glob.glob(os.path.join(root, "dev/vfio/*")) if os.path.basename(path).isdigit()
  )
  hints = [f"{name}={env[name]}" for name in TPU_VARIABLES if env.get(name)]
  hints += [
    path
    for path in sorted(glob.glob(os.path.join(root, "sys/class/accel/*")))
    if _read(os.path.join(path, "device/vendor")).strip() == GOOGLE_PCI_VENDOR
  ]
  if chips:
    return Accelerator("tpu", "a Cloud TPU", f"PCI device {chips[0]}", "tpu")
  if devices and hints:
    return Accelerator("tpu", "a Cloud TPU", f"{devices[0]}, {hints[0]}", "tpu")
  return None


def visible_accelerator(
  root: str = "/", env: Mapping[str, str] | None = None
) -> Accelerator | None:
  """The NVIDIA GPU or Cloud TPU this machine shows, from files and the environment
  only (nothing is started, no subprocess); None when it shows neither."""
  env = os.environ if env is None else env
  return _nvidia_gpu(root) or _tpu(root, env)


def plugin_installed(kind: str) -> bool:
  """Whether a JAX plugin for this kind of accelerator is installed."""
  for name in PLUGINS[kind]:
    try:
      importlib.metadata.distribution(name)
      return True
    except importlib.metadata.PackageNotFoundError:
      pass
  return False


def _started_backend() -> str | None:
  """JAX's default backend if the program has started JAX's backends, else None."""
  jax = sys.modules.get("jax")
  if jax is None:  # not even imported: nothing can have started
    return None
  try:
    # JAX's public API cannot ask this without starting the backends.
    from jax._src import xla_bridge

    started = xla_bridge.backends_are_initialized()
  except (ImportError, AttributeError):
    return None
  return jax.default_backend() if started else None


def jax_backend(seen: Accelerator, env: Mapping[str, str] | None = None) -> str | None:
  """The backend JAX runs on, or will when the program first uses it, found without
  starting one; None when only starting it would tell, or when the user chose the
  platforms (JAX_PLATFORMS)."""
  if env is None:  # the process's own: JAX may have read it already, or been told in code
    jax = sys.modules.get("jax")
    chosen = os.environ.get("JAX_PLATFORMS") or (jax.config.jax_platforms if jax else None)
  else:
    chosen = env.get("JAX_PLATFORMS")
  if chosen:
    # Platforms named by the user: JAX_PLATFORMS=cpu on a GPU machine is a choice,
    # and an accelerator named there that cannot start fails loudly in JAX itself.
    return None
  started = _started_backend()
  if started is not None:
    return started
  if not plugin_installed(seen.kind):
    return "cpu"  # JAX has nothing to start the accelerator with
  return None  # JAX will try the plugin when the program first needs a device


def warning(backend: str | None, seen: Accelerator | None, plugin: bool = False) -> str | None:
  """The warning line for JAX on `backend` with `seen` visible, or None when all is well.
  `plugin`: JAX's plugin for it is installed (and so did not start)."""
  if seen is None or backend != "cpu":
    return None
  if seen.kind == "gpu":
    why = (
      "its CUDA plugin is installed but did not start; JAX_PLATFORMS=cuda shows why"
      if plugin
      else "jaxlib without CUDA"
    )
  else:
    why = (
      "libtpu is installed but did not start; JAX_PLATFORMS=tpu shows why"
      if plugin
      else "no libtpu"
    )
  fix = f"make install ACCEL={seen.extra}"
  if seen.alternative:
    fix += f" (ACCEL={seen.alternative} for an NVIDIA driver older than {CUDA13_DRIVER})"
  fix += f", or pip install -c constraints.txt -e '.[{seen.extra}]'"
  return f"warning: {seen.what} is visible ({seen.evidence}) but JAX runs on the CPU ({why}): {fix}"


def check_backend(
  backend: str | None = None,
  *,
  root: str = "/",
  env: Mapping[str, str] | None = None,
  stream: TextIO | None = None,
) -> str | None:
  """Prints one warning line to `stream` (stderr) when JAX's backend is the CPU
  but the machine shows an accelerator; returns it (None when nothing is printed).

  `backend`: JAX's default backend if the caller knows it; by default it is
  found without starting a backend (`jax_backend`), and nothing is printed when
  only starting one would tell.
  """
  seen = visible_accelerator(root, env)
  if seen is None:
    return None
  if backend is None:
    backend = jax_backend(seen, env)
  line = warning(backend, seen, plugin=backend == "cpu" and plugin_installed(seen.kind))
  if line is not None:
    print(line, file=sys.stderr if stream is None else stream, flush=True)
  return line
