import os
import pathlib

# Most of the suite's time is XLA compiling small programs. JAX's persistent
# compilation cache keeps them between runs (and for the CLI subprocesses the
# tests start, which inherit the environment), so a rerun in the inner loop
# compiles only what changed. Set before jax is imported; a cache the caller
# chose wins, and JAX_COMPILATION_CACHE_DIR= (empty) turns it off.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  str(pathlib.Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"),
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import helpers  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def learnable_data_dir(tmp_path_factory):
  """A prepared 'fashion_mnist' (600 train / 200 test) that a tiny model can learn."""
  return helpers.prepare_learnable_fashion_mnist(
    tmp_path_factory.mktemp("idx"), tmp_path_factory.mktemp("tfds")
  )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """The environment of a module's train.py children: CPU, and one compilation
  cache they share, so only the first run of a module compiles."""
  cache = tmp_path_factory.mktemp("jax_cache")
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "JAX_COMPILATION_CACHE_DIR": str(cache),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }


# A pytest process keeps every XLA program it compiles, each a few memory maps of
# machine code, and the kernel refuses a process more than vm.max_map_count maps
# (65,530 by default): LLVM then fails inside a compile and the process dies of a
# segmentation fault. The whole suite in one process reaches tens of thousands.
MAPS_BEFORE_CLEARING = 20_000


def _memory_maps() -> int:
  try:
    with open("/proc/self/maps", "rb") as f:
      return f.read().count(b"\n")
  except OSError:  # not Linux: no such limit to keep under
    return 0


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """After a test module, drops JAX's in-memory compiled programs once the process
  holds MAPS_BEFORE_CLEARING maps; the persistent cache above brings back, from
  disk, what a later module compiles again. (Clearing after every module would cost
  the inner loop a fifth more time.)"""
  yield
  if _memory_maps() > MAPS_BEFORE_CLEARING:
    import jax

    jax.clear_caches()
