"""The dynamic duo: each member's temperature computed per input from both members' features.

The Asymmetric Duos reference code (`3dy_duo_temp_scale`) replaces the
weighted duo's fixed temperatures by functions of the input:

    T_i(x) = softplus(a_i · φ(x) + b_i) + T_min,     z(x) = Σ_i z_i(x) / T_i(x),

with φ(x) the concatenated pre-logit features of the members, fit on the
validation NLL of softmax(z) with a small L2 penalty on the a_i. A member
whose features signal that it is unreliable on x gets a high temperature
there, and so a small say in the duo's prediction.

Here φ is standardised with the validation rows' mean and scale and, when it
has more than `components` dimensions, projected on its top principal
directions on those rows (whitened: unit variance each), so that the penalty
λ/2 Σ‖a_i‖² treats every direction alike and the fit has K·m + m parameters
rather than (D_L + D_S)·m, which on a few thousand validation rows would fit
noise. The fit starts at a = 0, b_i = softplus⁻¹(1/w_i − T_min), with w the
weighted duo's fitted weights: it starts exactly at the weighted duo, and
L-BFGS only moves where the penalised validation NLL falls.

Without features (a member is a logits file), φ(x) is each member's logit
summary instead (its max log-probability, entropy and top-2 margin,
`per_input.logit_summaries`): the same model, with what the logits say about
each member's certainty as the signal. The fit is deterministic (no random
draws), so it needs no seed.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from duojax.core import per_input, temperature
from duojax.errors import InputError

T_MIN = 0.05  # no temperature below this: a weight 1/T of at most 20
L2 = 1e-2  # λ on the kernel, per standardised direction
COMPONENTS = 32  # principal directions of φ kept (K)
FEATURES, LOGITS = "features", "logit_summaries"


@dataclasses.dataclass(frozen=True)
class DynamicParams:
  """What the fit learns: φ's standardisation and projection, and the linear map."""

  mean: np.ndarray  # [D] of φ on validation
  scale: np.ndarray  # [D]
  projection: np.ndarray  # [D, K]: whitened principal directions (identity if D ≤ K)
  kernel: np.ndarray  # [K, m]
  bias: np.ndarray  # [m]
  source: str  # FEATURES or LOGITS: what φ is built from


def inputs_of(member_logits, features=None) -> tuple[np.ndarray, str]:
  """(φ [N, D], its source): the members' features concatenated, or, if any is
  missing, their logit summaries."""
  if features is None or any(f is None for f in features):
    return np.asarray(per_input.logit_summaries(member_logits)), LOGITS
  n = np.asarray(member_logits[0]).shape[0]
  arrays = [np.asarray(f, np.float32).reshape(n, -1) if np.size(f) else None for f in features]
  if len(arrays) != len(member_logits) or any(a is None or a.shape[0] != n for a in arrays):
    raise InputError(
      f"features must be one [N, D_i] array per member ({len(member_logits)}) with N = {n}"
    )
  return np.concatenate(arrays, axis=1), FEATURES


def _projection(phi: np.ndarray, mean, scale, components: int) -> np.ndarray:
  x = (phi - mean) / scale
  if x.shape[1] <= components:
    return np.eye(x.shape[1], dtype=np.float32)
  _, singular, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
  # Whitened: each kept direction has unit variance on the validation rows.
  spread = np.maximum(singular[:components] / np.sqrt(len(x)), 1e-6)
  return (vt[:components].T / spread).astype(np.float32)


def temperatures(params: DynamicParams, phi) -> jax.Array:
  """T_i(x) [N, m] for φ [N, D]."""
  x = (jnp.asarray(phi, jnp.float32) - params.mean) / params.scale
  return jax.nn.softplus(x @ params.projection @ params.kernel + params.bias) + T_MIN


def _combine(stack, temps) -> jax.Array:
  return jnp.einsum("mnc,nm->nc", stack, 1.0 / temps)


def combine(params: DynamicParams, stack, features=None) -> jax.Array:
  """`logits` for traced arrays (inside a jitted or exported program): the members'
  logits stack [m, N, C] and their features (a sequence of [N, D_i]) or None."""
  if params.source == FEATURES:
    phi = jnp.concatenate([jnp.reshape(f, (stack.shape[1], -1)) for f in features], axis=1)
  else:
    phi = per_input.logit_summaries(list(stack))
  return _combine(stack, temperatures(params, phi))


def logits(params: DynamicParams, member_logits, features=None) -> jax.Array:
  """The dynamic duo's logits Σ_i z_i(x) / T_i(x), [N, C]."""
  arrays, _ = per_input.check_members(member_logits)
  phi, source = inputs_of(arrays, features)
  if source != params.source:
    raise InputError(
      f"this dynamic duo was fit on {params.source} and is given {source}: pass the same "
      "kind of inputs (features of every member, or none)"
    )
  if phi.shape[1] != params.mean.shape[0]:
    raise InputError(f"φ has {phi.shape[1]} dimensions, the fit {params.mean.shape[0]}")
  return _combine(jnp.stack(arrays), temperatures(params, phi))


def fit(
  member_logits, labels, features=None, *, l2: float = L2, components: int = COMPONENTS,
  init_weights=None,
) -> DynamicParams:  # fmt: skip
  """Fits the dynamic duo on validation logits, labels and (optionally) features."""
  arrays, labels = per_input.check_members(member_logits, labels)
  phi, source = inputs_of(arrays, features)
  mean, scale = per_input.standardiser(phi)
  projection = _projection(phi, mean, scale, components)
  if init_weights is None:
    init_weights = temperature.fit_temperatures(arrays, labels)
  start_t = np.maximum(1.0 / np.maximum(np.asarray(init_weights, np.float64), 1e-2) - T_MIN, 1e-3)
  bias = np.log(np.expm1(start_t)).astype(np.float32)  # softplus⁻¹
  stack = jnp.stack(arrays)
  x = jnp.asarray(((phi - mean) / scale) @ projection, jnp.float32)

  def objective(p, data):
    stack, x, labels = data
    temps = jax.nn.softplus(x @ p["kernel"] + p["bias"]) + T_MIN
    nll = per_input.nll_rows(jax.nn.log_softmax(_combine(stack, temps), -1), labels)
    return nll.mean() + 0.5 * l2 * jnp.sum(p["kernel"] ** 2)

  init = {"kernel": jnp.zeros((projection.shape[1], len(arrays)), jnp.float32), "bias": bias}
  best, _ = per_input.minimise(objective, init, (stack, x, jnp.asarray(labels)))
  return DynamicParams(mean, scale, projection, best["kernel"], best["bias"], source)
