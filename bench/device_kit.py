"""The device kit: the wheels that `bench/bench_accelerator.py` needs on a bare accelerator host.

The GPU hosts duojax borrows for its accelerator benchmark come for minutes,
reach no package index, and give back only an output folder. Their Python
(3.12, JAX 0.11.2 with the CUDA 13 plugin) holds `HOST_DISTRIBUTIONS`; what
duojax imports beyond them travels with the checkout as wheels (`KIT`,
pinned to `constraints.txt`'s versions, each named: nothing is resolved
there). So a run is two steps:

    make device-kit                      # here: the wheels into bench/kit/wheels, size checked
    bash bench/run_on_device.sh          # there: install them, run the benchmark into $OUT

`python bench/device_kit.py modules` prints the top-level modules a host
run may import (the host's and the kit's, as installed here); the rehearsal
test runs the benchmark with every other import refused
(`bench/rehearsal/sitecustomize.py`), so a new import of a package the
hosts lack fails here first.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KIT_DIR = ROOT / "bench" / "kit"
LIMIT_BYTES = 64 * 2**20  # the checkout and the kit travel together, within 64 MiB
HOST_PYTHON = "3.12"
PLATFORMS = (
  "manylinux_2_28_x86_64",
  "manylinux_2_27_x86_64",
  "manylinux_2_17_x86_64",
  "manylinux2014_x86_64",
  "manylinux1_x86_64",
)

# The hosts' image ("cuda"), as listed on 2026-11-17: one NVIDIA H100 or H200.
HOST_DISTRIBUTIONS = tuple(
  """
  absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
  botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
  coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
  diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
  frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
  hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
  jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
  lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
  mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
  ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
  opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
  pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
  psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
  pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
  pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
  scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
  shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
  tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
  torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
  treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
  wheel wrapt xarray xxhash yarl zipp
  """.split()
)

# What duojax's benchmark imports beyond the hosts' packages. Pure-Python
# projects that publish no wheel are built into one here (`pip wheel`).
KIT = (
  "array_record==0.8.6",  # tfds' array_record reader and writer (the loader part)
  "grain==0.2.18",  # the input pipeline
  "portpicker==1.6.0",  # grain
  "tensorflow-datasets==4.9.10",  # the image-folder import and its data source
  "tensorflow-metadata==1.21.0",  # tfds' dataset-info protos
  "dm-tree==0.1.10",  # tfds
  "immutabledict==4.3.1",  # tfds
  "promise==2.3",  # tfds (no wheel on PyPI: built here)
  "simple-parsing==0.1.9",  # tfds
  "docstring_parser==0.18.0",  # simple-parsing
  "termcolor==3.3.0",  # tfds
  "toml==0.10.2",  # tfds
  "importlib_resources==7.1.0",  # tfds, duojax's embedded data
  "ml_collections==1.1.0",  # duojax's training config
  "jaxopt==0.8.5",  # duojax's L-BFGS fits
)


def normalise(name: str) -> str:
  """A distribution name as PEP 503 compares them."""
  return re.sub(r"[-_.]+", "-", name).lower()


def kit_names() -> list[str]:
  return [normalise(spec.split("==")[0]) for spec in KIT]


def allowed_modules() -> set[str]:
  """Modules a host run may import: the standard library's, the hosts' and the kit's.

  Top-level names, and for a namespace package shared by several
  distributions (`google`: protobuf's `google.protobuf`, but
  googleapis-common-protos' `google.api`) the dotted names of the allowed
  distributions' parts. Read from this environment's installed files (a
  distribution not installed here adds none), plus the project's own.
  """
  wanted = {normalise(n) for n in HOST_DISTRIBUTIONS} | set(kit_names())
  modules = set(sys.stdlib_module_names) | {"duojax", "harness", "sitecustomize"}
  modules |= {p.stem for p in (ROOT / "bench").glob("*.py")}
  for dist in importlib.metadata.distributions():
    if normalise(dist.metadata["Name"] or "") not in wanted:
      continue
    files = [f.parts for f in dist.files or ()]
    packages = {parts[0] for parts in files if len(parts) == 2 and parts[1] == "__init__.py"}
    for parts in files:
      top = parts[0]
      if top.endswith((".dist-info", ".data")) or top in ("..", "__pycache__"):
        continue
      if len(parts) == 1:
        if top.endswith(".py") or ".cpython-" in top or top.endswith(".so"):
          modules.add(top.split(".")[0])
      elif top in packages:
        modules.add(top)
      elif len(parts) > 2 or parts[1].endswith(".py"):  # a namespace package's part
        modules |= {top, f"{top}.{parts[1].split('.')[0]}"}
  return modules


def download(dest: Path) -> None:
  """Every wheel of `KIT` for the hosts' Python, into `dest` (one file per distribution)."""
  dest.mkdir(parents=True, exist_ok=True)
  pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
  for spec in KIT:
    name = normalise(spec.split("==")[0])
    if any(normalise(w.name.split("-")[0]) == name for w in dest.glob("*.whl")):
      continue
    platform = [f"--platform={p}" for p in PLATFORMS]
    binary = [
      *pip, "download", "--no-deps", "--only-binary=:all:", f"--python-version={HOST_PYTHON}",
      "--implementation=cp", *platform, "-d", str(dest), spec,
    ]  # fmt: skip
    if subprocess.run(binary).returncode != 0:
      # No wheel published: a pure-Python sdist builds into a py3-none-any wheel.
      built = subprocess.run([*pip, "wheel", "--no-deps", "-w", str(dest), spec])
      if built.returncode != 0:
        sys.exit(f"error: no wheel of {spec} for Python {HOST_PYTHON} could be had")
    print(f"  {spec}", flush=True)


def tracked_bytes() -> int:
  files = subprocess.run(
    ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
  ).stdout.split(b"\0")
  return sum(
    (ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file()
  )


def check(dest: Path) -> list[str]:
  """What is wrong with the kit in `dest` (nothing: an empty list), and a size line."""
  wheels = sorted(dest.glob("*.whl"))
  have = [normalise(w.name.split("-")[0]) for w in wheels]
  problems = [f"missing: {n}" for n in kit_names() if n not in have]
  problems += [f"two wheels of {n}" for n in set(have) if have.count(n) > 1]
  problems += [f"not in KIT: {w.name}" for w, n in zip(wheels, have) if n not in kit_names()]
  problems += [
    f"not for CPython {HOST_PYTHON} on x86-64 Linux: {w.name}"
    for w in wheels
    if not re.search(
      r"-(py3|py2\.py3|cp312)-(none|abi3|cp312)-(any|.*manylinux.*x86_64)\.whl$", w.name
    )
  ]
  kit, tracked = sum(w.stat().st_size for w in wheels), tracked_bytes()
  if kit + tracked > LIMIT_BYTES:
    problems.append(f"kit {kit / 2**20:.1f} MiB + checkout {tracked / 2**20:.1f} MiB > 64 MiB")
  print(
    f"kit: {len(wheels)} wheels, {kit / 2**20:.1f} MiB; tracked files {tracked / 2**20:.1f} MiB; "
    f"together {(kit + tracked) / 2**20:.1f} of 64 MiB"
  )
  return problems


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("command", choices=("build", "check", "modules"))
  parser.add_argument("--dest", default=str(KIT_DIR / "wheels"), help="the wheels' folder")
  args = parser.parse_args(argv)
  dest = Path(args.dest)
  if args.command == "modules":
    print("\n".join(sorted(allowed_modules())))
    return 0
  if args.command == "build":
    download(dest)
  problems = check(dest)
  for problem in problems:
    print(f"error: {problem}", file=sys.stderr)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
