"""The temperature fit's inputs, checked and brought to one form.

Members become a tuple of float32 [N, C] arrays, labels int32 [N], the mask
bool [N]; shapes are checked always (they are static under jit), values
(label range, non-finite logits) only where the arrays are concrete, so no
check adds a host sync to a jitted fit. Each failure is a one-line
InputError that says what is wrong and how many.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from duojax.errors import InputError


def is_array(x) -> bool:
  return hasattr(x, "ndim") and hasattr(x, "shape")


def as_members(logits_list) -> tuple[jax.Array, ...]:
  """m float32 arrays [N, C], shapes validated."""
  if is_array(logits_list):
    if logits_list.ndim != 3:
      raise InputError(
        f"a single logits array must be stacked [m, N, C], got shape "
        f"{tuple(logits_list.shape)}; pass one [N, C] member as [logits]"
      )
    # Split once here, not inside the solve: each evaluation then reads the
    # members in place.
    logits_list = [logits_list[i] for i in range(logits_list.shape[0])]
  # Nested lists become arrays here; jnp.result_type cannot read their dtype,
  # and a string array's TypeError would print the whole array.
  members = [z if is_array(z) else np.asarray(z) for z in logits_list]
  if not members:
    raise InputError("no members: logits_list must hold at least one [N, C] array (m ≥ 1)")
  shapes = [tuple(np.shape(z)) for z in members]
  for i, shape in enumerate(shapes):
    if len(shape) != 2:
      raise InputError(f"member {i} has shape {shape}; expected [N, C]")
  n, c = shapes[0]
  for i, (n_i, c_i) in enumerate(shapes[1:], start=1):
    if c_i != c:
      raise InputError(f"member {i} has {c_i} classes but member 0 has {c}")
    if n_i != n:
      raise InputError(f"member {i} has {n_i} examples but member 0 has {n}")
  if n == 0:
    raise InputError("empty validation split (N = 0)")
  if c < 2:
    raise InputError(f"need at least 2 classes, got C = {c}")
  for i, z in enumerate(members):
    if not jnp.issubdtype(z.dtype, jnp.floating):
      raise InputError(f"member {i} has dtype {z.dtype}; expected floating logits")
  # The one upcast: bfloat16/float16 members become float32 here, once.
  return tuple(jnp.asarray(z, jnp.float32) for z in members)


def as_labels(labels, n: int, c: int, mask: Optional[jax.Array]) -> jax.Array:
  if not is_array(labels):
    labels = np.asarray(labels)
  shape = tuple(labels.shape)
  if shape != (n,):
    raise InputError(f"labels have shape {shape}; expected ({n},) to match the logits")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise InputError(f"labels must be integers, got dtype {labels.dtype}")
  if isinstance(labels, np.ndarray) and labels.dtype.itemsize > 4:
    # Saturate rather than wrap: int32 would turn 2**32 into a valid 0.
    bounds = np.iinfo(np.int32)
    labels = np.clip(labels, bounds.min, bounds.max)
  labels = jnp.asarray(labels, jnp.int32)  # keeps a sharded array's sharding
  if not is_traced(labels, mask):
    # On device: sharded labels cannot be fetched whole, their range can.
    low, high = map(int, _label_range(labels, mask))
    if low < 0 or high >= c:
      raise InputError(f"labels must lie in [0, {c}); found min {low}, max {high}")
  return labels


def as_mask(mask, n: int) -> jax.Array:
  if not is_array(mask):
    mask = np.asarray(mask)
  if tuple(mask.shape) != (n,) or jnp.result_type(mask) != jnp.bool_:
    raise InputError(
      f"mask must be a bool array of shape ({n},) (True for rows to use), got "
      f"{jnp.result_type(mask)} of shape {tuple(mask.shape)}"
    )
  mask = jnp.asarray(mask)
  if not is_traced(mask) and not int(_count_true(mask)):
    raise InputError(f"mask has no valid rows: all {n} rows are False")
  return mask


def is_traced(*arrays) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in arrays)


def as_init(init, m: int) -> jax.Array:
  init = jnp.asarray(init, jnp.float32)
  if init.shape != (m,):
    raise InputError(f"init has shape {init.shape}; expected ({m},), one weight per member")
  if not isinstance(init, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(init))):
    raise InputError(f"init must be finite, got {np.asarray(init)}")
  return init


def check_finite(members: tuple[jax.Array, ...], info: dict, mask: Optional[jax.Array]) -> None:
  """Raise if any logit is NaN or ±inf, using the final evaluation.

  A separate isfinite pass would read all logits once more. Instead: under
  IEEE arithmetic, a NaN or ±inf logit makes every evaluation's value or
  gradient non-finite at any w (NaN and inf propagate through the weighted
  sum and exp; 0·inf and inf − inf are NaN; exp(−inf) = 0 meets 0·inf in the
  gradient). So a finite final NLL and gradient prove the logits finite
  (the unmasked ones: padded rows never reach the NLL).
  """
  if isinstance(info["nll"], jax.core.Tracer):
    return
  if bool(jnp.isfinite(info["nll"]) & jnp.isfinite(info["grad_norm"])):
    return
  # Error path only: count them (one more pass over the logits).
  counts = [int(_count_non_finite(z, mask)) for z in members]
  if not sum(counts):
    raise FloatingPointError(
      f"the fit reached a non-finite NLL ({float(info['nll'])}) "
      "although every logit is finite; try a smaller init"
    )
  where = ", ".join(f"member {i}: {k}" for i, k in enumerate(counts) if k)
  raise InputError(f"logits contain {sum(counts)} non-finite values (NaN or inf) ({where})")


@jax.jit
def _count_non_finite(z: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  bad = ~jnp.isfinite(z)
  return jnp.sum(bad if mask is None else bad & mask[:, None])


@jax.jit
def _count_true(mask: jax.Array) -> jax.Array:
  return jnp.sum(mask)


@jax.jit
def _label_range(labels: jax.Array, mask: Optional[jax.Array]) -> tuple[jax.Array, jax.Array]:
  if mask is None:
    return jnp.min(labels), jnp.max(labels)
  bounds = jnp.iinfo(labels.dtype)
  return jnp.min(jnp.where(mask, labels, bounds.max)), jnp.max(jnp.where(mask, labels, bounds.min))
