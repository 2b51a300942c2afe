"""Shared pieces of the duos whose weights change with the input.

The weighted duo (`duojax.core.temperature`) fits one weight per member on
validation data and applies it to every input. The per-input duos
(`dynamic_duo`, `entropy_duo`, `guarded_duo`) compute their combination from
each input's own logits or features; what they share is here: log-softmax
and entropy of a member's predictive, the logit summaries that stand in for
features a logits file does not have, standardisation fitted on validation
rows, and one L-BFGS minimisation on the device (jaxopt, as the weighted
duo's fit).
"""

from __future__ import annotations

import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from duojax.errors import InputError

# The solver's per-fit budget: the per-input duos have tens to a few thousand
# parameters; L-BFGS reaches a gradient norm of 1e-5 well within it on
# validation sets of 1e3-1e5 rows.
MAX_ITER = 500
TOL = 1e-5


def log_softmax(logits) -> jax.Array:
  return jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)


def entropy(logits) -> jax.Array:
  """Entropy (nats) of softmax(logits) per row: H = −Σ_c p_c log p_c, [..., N]."""
  log_p = log_softmax(logits)
  return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def logit_summaries(member_logits) -> jax.Array:
  """[N, 3m]: per member its max log-probability, entropy and top-2 margin.

  What a member's logits say about how sure it is, the features the dynamic
  duo falls back to when a member has no pre-logit features (a logits file).
  """
  columns = []
  for z in member_logits:
    log_p = log_softmax(z)
    top2 = jax.lax.top_k(log_p, 2)[0]
    columns += [top2[:, 0], entropy(z), top2[:, 0] - top2[:, 1]]
  return jnp.stack(columns, axis=-1)


def nll_rows(log_probabilities, labels) -> jax.Array:
  """−log p(label) per row from [N, C] log-probabilities."""
  return -jnp.take_along_axis(log_probabilities, labels[:, None], axis=-1)[:, 0]


def check_members(member_logits, labels=None) -> tuple[list[np.ndarray], np.ndarray | None]:
  """float32 member logits, each [N, C] with one N and C, and int labels [N] in range."""
  try:
    arrays = [np.asarray(z, np.float32) for z in member_logits]
  except (TypeError, ValueError) as e:
    raise InputError(f"member logits must be numeric [N, C] arrays ({e})") from None
  if len(arrays) < 2:
    raise InputError(f"a duo needs at least 2 members' logits, got {len(arrays)}")
  shape = arrays[0].shape
  if len(shape) != 2 or not shape[0] or any(z.shape != shape for z in arrays):
    raise InputError(
      f"member logits must be [N, C] arrays of one shape, got {[z.shape for z in arrays]}"
    )
  if not all(np.isfinite(z).all() for z in arrays):
    raise InputError("member logits hold NaN or infinite values")
  if labels is None:
    return arrays, None
  labels = np.asarray(labels)
  if labels.shape != (shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise InputError(f"labels must be int [{shape[0]}], got {labels.dtype} {list(labels.shape)}")
  if labels.min() < 0 or labels.max() >= shape[1]:
    raise InputError(f"labels must lie in [0, {shape[1]}), got {labels.min()}..{labels.max()}")
  return arrays, labels.astype(np.int32)


def standardiser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], scale [D]) of validation features; constant columns get scale 1."""
  features = np.asarray(features, np.float64)
  mean, std = features.mean(0), features.std(0)
  return mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32)


def _import_jaxopt():
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import jaxopt  # noqa: PLC0415 -- jaxopt warns about itself on import
  return jaxopt


def minimise(objective: Callable, init, data, *, max_iter: int = MAX_ITER, tol: float = TOL):
  """argmin over a parameter pytree of objective(params, data), by jaxopt's L-BFGS on
  the device, from `init`; returns (params, final value)."""
  jaxopt = _import_jaxopt()

  @jax.jit
  def run(init, data):
    solver = jaxopt.LBFGS(fun=objective, maxiter=max_iter, tol=tol, implicit_diff=False)
    params, state = solver.run(init, data)
    return params, state.value

  params, value = run(init, data)
  return jax.tree.map(np.asarray, params), float(value)
