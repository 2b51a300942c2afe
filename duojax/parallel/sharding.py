"""Meshes and shardings: data parallel, plus FSDP-style parameter sharding.

Every jitted function in duojax runs over one 2-D mesh with axes
("data", "fsdp") spanning all processes' devices:

  * a batch is split along its first dimension over BOTH axes, so every
    device gets distinct rows (`batch_sharding`);
  * with fsdp = 1 (the default) parameters and optimizer state are
    replicated: plain data parallelism;
  * with fsdp = k > 1 each parameter (and its optimizer moments) is split
    over the k devices of an "fsdp" group along its largest dimension that k
    divides (`state_shardings`). XLA's SPMD partitioner then all-gathers a
    layer's weights where they are used and reduce-scatters their gradients,
    so a device holds about 1/k of the model and optimizer state.

Nothing else changes between 1 device, N devices and N hosts: the same
jitted step, the same global batch size, the same results up to float32
reduction order.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from duojax.errors import ConfigError

DATA, FSDP = "data", "fsdp"
# Parameters smaller than this stay replicated under FSDP: splitting a bias or
# a norm scale saves no memory worth a collective per use.
MIN_SHARDED_ELEMENTS = 1 << 14


def make_mesh(num_devices: int = -1, fsdp: int = 1) -> Mesh:
  """A ("data", "fsdp") mesh of shape (n / fsdp, fsdp) over the first n devices.

  n = -1 takes every device of every process (`jax.devices()` is global
  after `jax.distributed.initialize`). Devices of one process are adjacent,
  so an fsdp group that fits in one host never crosses the network.
  """
  devices = jax.devices()
  n = len(devices) if num_devices in (-1, None) else num_devices
  if not 1 <= n <= len(devices):
    raise ConfigError(f"num_devices={num_devices} but {len(devices)} devices are available")
  if fsdp < 1 or n % fsdp:
    raise ConfigError(f"fsdp={fsdp} must be a positive divisor of the {n} devices in the mesh")
  if n < len(devices) and jax.process_count() > 1:
    raise ConfigError(
      f"num_devices={num_devices}: a multi-process run uses all "
      f"{len(devices)} devices (num_devices=-1)"
    )
  return jax.make_mesh(
    (n // fsdp, fsdp), (DATA, FSDP), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices[:n]
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Rows split over every device of the mesh (all of its axes)."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def stacked_batch_sharding(mesh: Mesh) -> NamedSharding:
  """[m, B, ...] stacks of per-member outputs: rows split as in `batch_sharding`."""
  return NamedSharding(mesh, P(None, tuple(mesh.axis_names)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def num_batch_shards(mesh: Mesh) -> int:
  """How many ways a batch is split: every global batch size must divide by it."""
  return int(mesh.size)


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_elements: int = MIN_SHARDED_ELEMENTS) -> P:
  """The PartitionSpec of one parameter: its largest dimension that `fsdp` divides.

  Ties go to the later dimension (the output features of a kernel), which
  keeps a layer's shard contiguous in its gradient's layout. Parameters
  with no such dimension, or fewer than `min_elements`, are replicated.
  """
  if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_elements:
    return P()
  candidates = [(size, dim) for dim, size in enumerate(shape) if size % fsdp == 0]
  if not candidates:
    return P()
  _, dim = max(candidates)
  return P(*([None] * dim), FSDP)


def state_shardings(tree: Any, mesh: Mesh, *, min_elements: int = MIN_SHARDED_ELEMENTS) -> Any:
  """NamedShardings for a train state (params, batch stats, optimizer state).

  The rule looks at shapes only, so optimizer moments (which have their
  parameter's shape) are split exactly like their parameter, and scalars
  such as the step counter are replicated. With an "fsdp" axis of size 1
  everything is replicated.
  """
  fsdp = int(dict(mesh.shape).get(FSDP, 1))
  return jax.tree.map(
    lambda x: NamedSharding(mesh, fsdp_spec(tuple(np.shape(x)), fsdp, min_elements)), tree
  )


def bytes_per_device(tree: Any) -> int:
  """The largest number of bytes any one device holds of a tree of jax Arrays."""
  per_device: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return max(per_device.values(), default=0)


def shard_rows(array: np.ndarray, mesh: Mesh, *, fill=0) -> tuple[jax.Array, jax.Array]:
  """A host array [N, ...] as a global array split by rows, plus its row mask.

  N is padded with `fill` up to a multiple of the number of devices (global
  arrays split evenly); `mask` [N_padded] is False on the padding. Every
  process passes the same full array and keeps only its own rows, so this
  also works across hosts.
  """
  array = np.asarray(array)
  shards = num_batch_shards(mesh)
  padded_n = -(-array.shape[0] // shards) * shards
  pad = padded_n - array.shape[0]
  if pad:
    array = np.concatenate([array, np.full((pad, *array.shape[1:]), fill, array.dtype)])
  mask = np.arange(padded_n) < padded_n - pad
  rows = batch_sharding(mesh)
  to_global = lambda host: jax.make_array_from_callback(host.shape, rows, lambda index: host[index])
  return to_global(array), to_global(mask)
