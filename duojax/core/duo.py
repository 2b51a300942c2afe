"""The Asymmetric Duo (arXiv 2505.18636), generalised to m members.

A large model and a small sidekick (or any m members: a large model plus k
sidekicks, an ensemble, soups) run in ONE jitted XLA program per batch; their
logits are combined as

    z = Σ_i w_i · z_i          (w_i = 1 / T_i, fit jointly on validation data)

Prediction is argmax z; the uncertainty score is 1 − max softmax(z). The
reference code's variant, 1 − softmax(z)[argmax z_L] (the duo's confidence in
the large model's prediction), is `confidence_on(z, argmax z_L)`.

Modes (see `combine_mode`):
  * "weighted":   w fit jointly on the validation split (the method);
  * "unweighted": each member temperature-scaled alone, then logits averaged;
  * "uq_only":    prediction from the large model (member 0), uncertainty from
                  the weighted duo.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from duojax.errors import ConfigError, InputError
from duojax.parallel import sharding

MODES = ("weighted", "unweighted", "uq_only")


def split_members(members: Sequence[nnx.Module]):
  """(graphdefs, states) of NNX models; states are what the fused forward takes."""
  graphdefs, states = zip(*(nnx.split(m) for m in members))
  return tuple(graphdefs), tuple(states)


def make_fused_forward(
  graphdefs,
  *,
  mesh: Mesh | None = None,
  with_features: bool | str = False,
  preprocess: Sequence[Callable] | None = None,
) -> Callable:
  """Jitted `(states, images) -> logits [m, B, C]` running every member at once.

  All members' forward passes live in one XLA program, so the small models
  add their FLOPs and nothing else (one dispatch, one host sync, XLA free to
  overlap them). With a mesh, images are split by rows over every device and
  the member states replicated. `with_features=True` also returns member
  0's pre-logit features [B, D] (for last-layer MC dropout without a second
  backbone pass); `with_features="all"` a tuple of every member's [B, D_i]
  (the dynamic duo's per-input temperatures read both members'). `preprocess[i]` turns the batch into member i's input
  inside the program (e.g. a uint8 batch resized and normalised its own way,
  `duojax.data.prepare`); members that share one callable share its output.
  """

  def forward(states, images):
    logits, features, prepared = [], [], {}
    for i, (graphdef, state) in enumerate(zip(graphdefs, states)):
      fn = None if preprocess is None else preprocess[i]
      if fn is not None and id(fn) not in prepared:
        prepared[id(fn)] = fn(images)
      x = images if fn is None else prepared[id(fn)]
      z, out = nnx.merge(graphdef, state)(x, train=False)
      logits.append(z.astype(jnp.float32))
      features.append(out["pre_logits"])
    if with_features == "all":
      return jnp.stack(logits), tuple(features)
    return (jnp.stack(logits), features[0]) if with_features else jnp.stack(logits)

  if mesh is None:
    return jax.jit(forward)
  rows, out_logits = sharding.batch_sharding(mesh), sharding.stacked_batch_sharding(mesh)
  if with_features == "all":
    # Members' features need not be [B, D] (a merged Hydra model's are [M, B, D]):
    # their layouts are left to the compiler.
    return jax.jit(forward, in_shardings=(sharding.replicated(mesh), rows))
  return jax.jit(
    forward,
    in_shardings=(sharding.replicated(mesh), rows),
    out_shardings=(out_logits, rows) if with_features else out_logits,
  )


def _as_stack(logits_stack) -> jax.Array:
  """float32 [m, N, C] from a stack or a list of m [N, C] members.

  Checks shapes and dtypes only, never values: free under jit, and a clear
  error instead of numpy's "inhomogeneous shape" or an einsum subscript one.
  """
  if isinstance(logits_stack, (list, tuple)):
    shapes = [tuple(np.shape(z)) for z in logits_stack]
    if not shapes:
      raise InputError("no members: give at least one [N, C] logits array")
    for i, shape in enumerate(shapes):
      if len(shape) != 2:
        raise InputError(f"member {i}'s logits have shape {shape}; expected [N, C]")
      if shape[1] != shapes[0][1]:
        raise InputError(
          f"member {i}'s logits have {shape[1]} classes but member 0's have {shapes[0][1]}"
        )
      if shape[0] != shapes[0][0]:
        raise InputError(
          f"member {i}'s logits have {shape[0]} rows but member 0's have {shapes[0][0]}"
        )
  dtypes = [
    z.dtype if hasattr(z, "dtype") else np.asarray(z).dtype
    for z in (logits_stack if isinstance(logits_stack, (list, tuple)) else [logits_stack])
  ]
  for dtype in dtypes:
    # Integer logits are accepted (cast to float32), as metrics.evaluate does.
    if not (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)):
      raise InputError(f"logits must be real numbers, got dtype {dtype}")
  logits_stack = jnp.asarray(logits_stack, jnp.float32)
  if logits_stack.ndim != 3:
    raise InputError(
      f"logits must be stacked [m, N, C] (one [N, C] array per member), got "
      f"shape {tuple(logits_stack.shape)}"
    )
  return logits_stack


def as_stack(logits_stack) -> jax.Array:
  """float32 [m, N, C] from a stack or a list of m [N, C] members, shapes checked."""
  return _as_stack(logits_stack)


def _as_weights(weights, m: int, what: str) -> jax.Array:
  # Host weights (numpy, lists: what a fit hands back) are checked for NaN on
  # the host; device or traced ones are not, so no sync is added to a jitted
  # or benchmarked path.
  host = None if isinstance(weights, jax.Array) else np.asarray(weights, np.float32)
  weights = jnp.asarray(weights, jnp.float32)
  if weights.shape != (m,):
    raise InputError(f"{what} have shape {tuple(weights.shape)}; expected ({m},), one per member")
  if host is not None and not np.isfinite(host).all():
    raise InputError(f"{what} must be finite, got {host.tolist()} (a fit on no valid rows?)")
  return weights


def combine(logits_stack, weights) -> jax.Array:
  """z = Σ_i w_i z_i for logits [m, N, C] and weights [m] (one pass, float32)."""
  logits_stack = _as_stack(logits_stack)
  weights = _as_weights(weights, logits_stack.shape[0], "weights")
  return jnp.einsum("m,mnc->nc", weights, logits_stack)


def msp_confidence(logits) -> jax.Array:
  """Max softmax probability; the uncertainty score is 1 minus this."""
  return jnp.max(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1), axis=-1)


def confidence_on(logits, predictions) -> jax.Array:
  """softmax(logits)[n, predictions[n]]: confidence in a given prediction."""
  probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return jnp.take_along_axis(probs, jnp.asarray(predictions)[:, None], axis=-1)[:, 0]


def combine_mode(logits_stack, mode: str, *, joint_weights=None, single_weights=None):
  """(logits, confidence) of a duo in `mode`; member 0 is the large model.

  Args:
    logits_stack: [m, N, C] member logits.
    mode: "weighted" | "unweighted" | "uq_only".
    joint_weights: [m] weights fit jointly (weighted, uq_only).
    single_weights: [m] per-member temperature-scaling weights (unweighted).

  Returns:
    logits [N, C] whose argmax is the prediction, and confidence [N] in [0, 1]
    (1 − confidence is the uncertainty score).
  """
  if mode not in MODES:
    raise ConfigError(f"unknown duo mode {mode!r}; valid: {', '.join(MODES)}")
  logits_stack = _as_stack(logits_stack)
  m = logits_stack.shape[0]
  if single_weights is not None:
    single_weights = _as_weights(single_weights, m, "single_weights")
  if joint_weights is not None:
    joint_weights = _as_weights(joint_weights, m, "joint_weights")
  if mode == "unweighted":
    if single_weights is None:
      raise ConfigError("mode 'unweighted' needs single_weights (per-member temperatures)")
    z = combine(logits_stack, single_weights / m)
    return z, msp_confidence(z)
  if joint_weights is None:
    raise ConfigError(f"mode {mode!r} needs joint_weights (fit on validation data)")
  z = combine(logits_stack, joint_weights)
  if mode == "weighted":
    return z, msp_confidence(z)
  # uq_only: the large model's prediction, scored by the duo's belief in it.
  # Its logits are the large model's own, temperature-scaled by its joint
  # weight's single-model counterpart when given, so acc/NLL are the large model's.
  large = logits_stack[0] * (1.0 if single_weights is None else single_weights[0])
  return large, confidence_on(z, jnp.argmax(logits_stack[0], axis=-1))
