"""Multi-process start-up on JAX's own runtime (`jax.distributed`).

One process per host (or per GPU) runs the same command; after
`jax.distributed.initialize` every process sees all devices of all
processes in `jax.devices()`, the mesh spans them, each process feeds only
its own rows of every batch, and orbax writes each checkpoint once.

How the processes find each other (`Settings.mode`):
  * "auto" (default): explicit settings (flags or the JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES, JAX_PROCESS_ID variables) if given; else a SLURM or
    Open MPI job of more than one task, detected from its environment and
    handed to JAX's own detection; else a single process;
  * "on": always initialize, letting JAX detect the cluster where nothing is
    given (Cloud TPU pod slices, Kubernetes, SLURM, Open MPI);
  * "off": single process, whatever the environment says.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import jax

from duojax.errors import DistributedError

MODES = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class Settings:
  mode: str = "auto"
  coordinator_address: str = ""  # host:port of process 0
  num_processes: int | None = None
  process_id: int | None = None
  local_device_ids: tuple[int, ...] | None = None  # e.g. one GPU per process

  def explicit(self) -> bool:
    return (
      bool(self.coordinator_address)
      or self.num_processes is not None
      or self.process_id is not None
    )


def settings_from(
  mode: str = "auto",
  coordinator_address: str = "",
  num_processes: int | None = None,
  process_id: int | None = None,
  local_device_ids=None,
  env: Mapping[str, str] | None = None,
) -> Settings:
  """Settings from command-line values, completed from the JAX_* variables."""
  env = os.environ if env is None else env
  if mode not in MODES:
    raise DistributedError(f"--distributed={mode!r}; valid: {', '.join(MODES)}")

  def from_env(name, value, cast):
    if value not in (None, "") or not env.get(name):
      return value
    try:
      return cast(env[name])
    except ValueError:
      raise DistributedError(f"{name}={env[name]!r} is not a valid {cast.__name__}") from None

  coordinator_address = from_env("JAX_COORDINATOR_ADDRESS", coordinator_address, str)
  num_processes = from_env("JAX_NUM_PROCESSES", num_processes, int)
  process_id = from_env("JAX_PROCESS_ID", process_id, int)
  if local_device_ids is not None:
    try:
      local_device_ids = tuple(int(i) for i in local_device_ids)
    except ValueError:
      raise DistributedError(
        f"local_device_ids={list(local_device_ids)} must be integers"
      ) from None
  settings = Settings(
    mode, coordinator_address or "", num_processes, process_id, local_device_ids or None
  )
  _check(settings)
  return settings


def _check(settings: Settings) -> None:
  if settings.mode == "off" or not settings.explicit():
    return
  if settings.num_processes is not None and settings.num_processes < 1:
    raise DistributedError(f"num_processes must be >= 1, got {settings.num_processes}")
  if (
    settings.process_id is not None
    and settings.num_processes is not None
    and not 0 <= settings.process_id < settings.num_processes
  ):
    raise DistributedError(
      f"process_id={settings.process_id} is not in [0, {settings.num_processes})"
    )
  if settings.coordinator_address and ":" not in settings.coordinator_address:
    raise DistributedError(
      f"coordinator_address={settings.coordinator_address!r} needs the form host:port"
    )
  if settings.coordinator_address and (
    settings.num_processes is None or settings.process_id is None
  ):
    raise DistributedError(
      "coordinator_address needs num_processes and process_id too "
      "(or none of them, to let JAX detect the cluster)"
    )


def detected_cluster(env: Mapping[str, str] | None = None) -> str | None:
  """'slurm' or 'openmpi' when the environment is a job of more than one task."""
  env = os.environ if env is None else env

  def more_than_one(name):
    try:
      return int(env.get(name, "1")) > 1
    except ValueError:
      return False

  if "SLURM_PROCID" in env and (
    more_than_one("SLURM_STEP_NUM_TASKS") or more_than_one("SLURM_NTASKS")
  ):
    return "slurm"
  if "OMPI_COMM_WORLD_RANK" in env and more_than_one("OMPI_COMM_WORLD_SIZE"):
    return "openmpi"
  return None


def should_initialize(settings: Settings, env: Mapping[str, str] | None = None) -> bool:
  if settings.mode == "off":
    return False
  if settings.mode == "on" or settings.explicit():
    return True
  return detected_cluster(env) is not None


def initialize(settings: Settings) -> bool:
  """Joins the multi-process job `settings` describes; False for a single process.

  Must run before anything touches a JAX backend. On CPU the collectives go
  through gloo (TCP); the option is ignored by GPU and TPU backends.
  """
  if not should_initialize(settings):
    return False
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if settings.explicit():
    kwargs = dict(
      coordinator_address=settings.coordinator_address or None,
      num_processes=settings.num_processes,
      process_id=settings.process_id,
    )
  if settings.local_device_ids is not None:
    kwargs["local_device_ids"] = list(settings.local_device_ids)
  try:
    jax.distributed.initialize(**kwargs)
  except (RuntimeError, ValueError) as e:
    message = " ".join(str(e).split())[:300]
    raise DistributedError(f"jax.distributed.initialize failed: {message}") from e
  return True


def is_main_process() -> bool:
  """Process 0 writes files and prints; the others compute."""
  return jax.process_index() == 0
