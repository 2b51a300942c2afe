"""The guarded duo: per input, a mixture of the duo and the large model alone.

    p_g(y | x) = g(x) · p_duo(y | x) + (1 − g(x)) · p_LTS(y | x)

with p_duo the weighted duo's predictive and p_LTS the temperature-scaled
large model's. Mixing probabilities, not logits, is what makes it a guard:
−log is convex, so for every input and every label

    −log p_g(y) ≤ g(x) · (−log p_duo(y)) + (1 − g(x)) · (−log p_LTS(y)),

i.e. NLL_g − NLL_LTS ≤ g(x) · (NLL_duo − NLL_LTS) input by input. Where the
duo is worse than the large model, the guarded duo loses at most the
fraction g(x) of that; where it is better, it keeps at least that fraction
of the gain; and it never loses more than −log(1 − g(x)) to the large model.

The gate has two parts. Inside what validation data shows, a fitted gate:

    g_fit(x) = σ(θ₀ + θ₁·a + θ₂·a·c_L + θ₃·(1 − a)·c_L + θ₄·(1 − a)·c_S),

a = 1 where the members' predicted classes agree, c_L and c_S the members'
temperature-scaled confidences, θ fit on the validation NLL of p_g (small L2
penalty) after the duo's and the large model's temperatures. It learns where
on clean data the sidekick's say helps (mostly: where the large model is
unsure). But a fitted gate extrapolates: it would trust a confident sidekick
that contradicts a confident large model if clean data happened to reward
that, and a shift that breaks the sidekick produces such inputs in numbers.
So, outside what validation data shows, the guard:

    κ(x) = (1 − a) · min(c_L, c_S)      ("both sure, of different classes"),
    g(x) = g_fit(x) if κ(x) ≤ κ_max else 0,

κ_max the 95th percentile of κ over the validation rows where the members
disagree. Such a conflict is rare in distribution (a few percent of the
disagreements, themselves a minority of rows), so the duo's gain there is
small; under a shift it is what marks the sidekick being confidently wrong
(or the large model: then the guarded duo is the large model, no worse than
large+TS by construction). Where the large model is unsure (noise, blur: a
shift that breaks it) κ stays low and the sidekick keeps its say.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from duojax.core import per_input, temperature

L2 = 1e-3
GATE_FEATURES = 5
CONFLICT_QUANTILE = 0.95  # of κ over the validation rows where the members disagree


@dataclasses.dataclass(frozen=True)
class GuardedParams:
  duo_weights: np.ndarray  # [m]: the weighted duo's
  single_weights: np.ndarray  # [m]: each member's own temperature weight
  theta: np.ndarray  # [GATE_FEATURES]: the fitted gate
  conflict_limit: np.ndarray  # κ_max (a 0-d array): above it the guarded duo is large+TS


def gate_inputs(single_weights, member_logits) -> jax.Array:
  """ψ(x) [N, 5]: 1, a, a·c_L, (1 − a)·c_L, (1 − a)·c_S (see the module docstring)."""
  large, sidekick = (s * jnp.asarray(z) for s, z in zip(single_weights[:2], member_logits[:2]))
  c_l = jnp.max(jax.nn.softmax(large, -1), -1)
  c_s = jnp.max(jax.nn.softmax(sidekick, -1), -1)
  a = (jnp.argmax(large, -1) == jnp.argmax(sidekick, -1)).astype(jnp.float32)
  return jnp.stack([jnp.ones_like(a), a, a * c_l, (1 - a) * c_l, (1 - a) * c_s], axis=-1)


def conflict(psi) -> jax.Array:
  """κ(x) [N] = (1 − a) · min(c_L, c_S), from the gate inputs ψ."""
  return jnp.minimum(psi[:, 3], psi[:, 4])


def _log_mixture(theta, duo_log_p, large_log_p, psi, guarded) -> jax.Array:
  """log p_g; `guarded` [N] marks the rows past the conflict limit (g = 0)."""
  log_g = jax.nn.log_sigmoid(psi @ theta)[:, None]
  log_not_g = jax.nn.log_sigmoid(-(psi @ theta))[:, None]
  mixed = jnp.logaddexp(log_g + duo_log_p, log_not_g + large_log_p)
  return jnp.where(guarded[:, None], large_log_p, mixed)


def _parts(params: GuardedParams, arrays):
  stack = jnp.stack(arrays)
  duo_log_p = jax.nn.log_softmax(jnp.einsum("m,mnc->nc", params.duo_weights, stack), -1)
  large_log_p = jax.nn.log_softmax(params.single_weights[0] * stack[0], -1)
  psi = gate_inputs(params.single_weights, arrays)
  return duo_log_p, large_log_p, psi, conflict(psi) > params.conflict_limit


def gate(params: GuardedParams, member_logits) -> jax.Array:
  """g(x) [N]: the weight of the duo in the mixture (0 past the conflict limit)."""
  arrays, _ = per_input.check_members(member_logits)
  psi = gate_inputs(params.single_weights, arrays)
  g = jax.nn.sigmoid(psi @ params.theta)
  return jnp.where(conflict(psi) > params.conflict_limit, 0.0, g)


def log_probabilities(params: GuardedParams, member_logits) -> jax.Array:
  """log p_g [N, C] (also the guarded duo's logits: softmax of it is p_g)."""
  arrays, _ = per_input.check_members(member_logits)
  return _log_mixture(params.theta, *_parts(params, arrays))


def fit(member_logits, labels, *, solver: str = "jaxopt", l2: float = L2) -> GuardedParams:
  """Fits the duo's weights, each member's temperature and then the gate, on validation."""
  arrays, labels = per_input.check_members(member_logits, labels)
  duo_weights = np.asarray(temperature.fit_temperatures(arrays, labels, solver=solver), np.float32)
  single = np.asarray(
    [temperature.fit_temperatures([z], labels, solver=solver)[0] for z in arrays], np.float32
  )
  kappa = np.asarray(conflict(gate_inputs(single, arrays)))
  disagree = kappa[kappa > 0]
  # No validation row where the members disagree: any conflict is new, and guarded.
  limit = np.quantile(disagree, CONFLICT_QUANTILE) if disagree.size else 0.0
  start = GuardedParams(duo_weights, single, np.zeros(GATE_FEATURES, np.float32), np.float32(limit))
  data = (*_parts(start, arrays), jnp.asarray(labels))

  def objective(theta, data):
    duo_log_p, large_log_p, psi, guarded, labels = data
    log_p = _log_mixture(theta, duo_log_p, large_log_p, psi, guarded)
    return per_input.nll_rows(log_p, labels).mean() + 0.5 * l2 * jnp.sum(theta[1:] ** 2)

  theta, _ = per_input.minimise(objective, jnp.zeros(GATE_FEATURES, jnp.float32), data)
  return dataclasses.replace(start, theta=np.asarray(theta, np.float32))
