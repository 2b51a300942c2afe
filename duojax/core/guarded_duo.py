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
So the gate is cut to 0 where an input is unlike validation in the way a
shift that breaks the sidekick makes the duo worse than its large model:

  * a conflict: the members disagree, and κ(x) = min(c_L, c_S) ("both sure,
    of different classes") is at least κ_max, the lower of the 95th percentile
    (GUARD_LEVEL = 5%, fixed in advance) of κ over validation's disagreements
    and the level from which up the duo's NLL summed over those rows exceeds
    large+TS's most (where the large model wins in distribution, guarding
    costs nothing). Such a shift leaves the large model as sure as usual and
    makes the sidekick contradict it, sure of itself: one input shows it.

A shift that breaks only the large model (noise, blur) leaves the sidekick
sure and the large model unsure: no conflict, and disagreements that the
sidekick keeps its say on, as the duo meant. Rows the guard cannot tell apart
(a broken sidekick against an unsure large model) keep the mixture's bound.

What no rule on one input can see. Under a shift that breaks both members
alike, they agree on wrong classes at confidences validation shows often:
each such row looks like a clean one, and on clean rows sharpening their
common answer (adding two members' logits, which pays when their errors are
nearly independent) is where a third of the duo's gain lies. A batch shows
what a row cannot: the shift alarm (`shift_alarm`, fit on the same validation
rows with the members' own temperatures) tests a batch of inputs against
validation. On a batch it flags, the fitted gate is no longer evidence, and
the guarded duo is the equal mixture, g(x) = 1/2 for every row:

    −log(½·p_duo(y) + ½·p_LTS(y)) ≤ ½·(−log p_duo(y)) + ½·(−log p_LTS(y))
                                   ≤ min(−log p_duo(y), −log p_LTS(y)) + log 2.

So on a flagged batch, row by row, the guarded duo keeps at least half of the
duo's gain over large+TS, loses at most half of its excess, and at most log 2
to whichever of the two is right: the Bayes mixture of two experts under a
uniform prior, the least a predictor can commit to when validation no longer
says which expert to follow. On a batch the alarm passes (in distribution,
all but about α of batches), the conflict guard and the fitted gate apply.

Without an alarm (`fit(..., agreement_guard=True)`; version 2 duo files) one
more cut stands in for it, per input: a weak agreement, where the members
agree and c_L is below the 5th percentile of c_L over validation's
agreements, the rows on which that regime shows most. It costs a tenth to a
quarter of the duo's clean gain (measured in docs/evaluation.md) and still
misses most of the regime's loss, which is why the alarm replaces it.
`batch_verdicts` gives the flags of consecutive batches of rows.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from duojax.core import per_input, shift_alarm, temperature
from duojax.errors import InputError

L2 = 1e-3
GATE_FEATURES = 5
GUARD_LEVEL = 0.05  # the share of validation's disagreements (agreements) past each guard


@dataclasses.dataclass(frozen=True)
class GuardedParams:
  duo_weights: np.ndarray  # [m]: the weighted duo's
  single_weights: np.ndarray  # [m]: each member's own temperature weight
  theta: np.ndarray  # [GATE_FEATURES]: the fitted gate
  conflict_limit: np.ndarray  # κ_max (0-d): a disagreement from it up is guarded
  agreement_limit: np.ndarray  # (0-d): an agreement with c_L below it is guarded (0: none)


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


def _guarded(psi, params) -> jax.Array:
  """[N] bool: the rows past either guard (module docstring), where g = 0."""
  agree, kappa = psi[:, 1] == 1, conflict(psi)
  return jnp.where(agree, psi[:, 2] < params.agreement_limit, kappa >= params.conflict_limit)


def _log_mixture(theta, duo_log_p, large_log_p, psi, guarded, shifted=False) -> jax.Array:
  """log p_g; `guarded` [N] marks the rows past either guard (g = 0), `shifted`
  (scalar or [N]) those of a batch the alarm flags (g = 1/2)."""
  log_g = jax.nn.log_sigmoid(psi @ theta)[:, None]
  log_not_g = jax.nn.log_sigmoid(-(psi @ theta))[:, None]
  mixed = jnp.logaddexp(log_g + duo_log_p, log_not_g + large_log_p)
  fitted = jnp.where(guarded[:, None], large_log_p, mixed)
  half = jnp.logaddexp(duo_log_p, large_log_p) - jnp.log(2.0)
  return jnp.where(jnp.reshape(jnp.asarray(shifted), (-1, 1)), half, fitted)


def _parts(params: GuardedParams, arrays):
  stack = jnp.stack(arrays)
  duo_log_p = jax.nn.log_softmax(jnp.einsum("m,mnc->nc", params.duo_weights, stack), -1)
  large_log_p = jax.nn.log_softmax(params.single_weights[0] * stack[0], -1)
  psi = gate_inputs(params.single_weights, arrays)
  return duo_log_p, large_log_p, psi, _guarded(psi, params)


def gate(params: GuardedParams, member_logits, shifted=False) -> jax.Array:
  """g(x) [N]: the weight of the duo in the mixture (0 past either guard, 1/2 on
  the rows of a flagged batch)."""
  arrays, _ = per_input.check_members(member_logits)
  psi = gate_inputs(params.single_weights, arrays)
  g = jnp.where(_guarded(psi, params), 0.0, jax.nn.sigmoid(psi @ params.theta))
  return jnp.where(jnp.asarray(shifted), 0.5, g)


def combine(params: GuardedParams, members, shifted=False) -> jax.Array:
  """`log_probabilities` for traced arrays (inside a jitted or exported program)."""
  return _log_mixture(params.theta, *_parts(params, members), shifted)


def log_probabilities(params: GuardedParams, member_logits, shifted=False) -> jax.Array:
  """log p_g [N, C] (also the guarded duo's logits: softmax of it is p_g). `shifted`:
  a bool, or bool [N], true on the rows of batches the shift alarm flags."""
  arrays, _ = per_input.check_members(member_logits)
  return combine(params, arrays, _check_shifted(shifted, len(arrays[0])))


def _check_shifted(shifted, n: int) -> np.ndarray:
  shifted = np.asarray(shifted)
  if shifted.dtype != bool or shifted.shape not in ((), (n,)):
    raise InputError(
      f"shifted must be a bool or bool [{n}] (one per row), got {shifted.dtype} {shifted.shape}"
    )
  return shifted


def fit_alarm(params: GuardedParams, member_logits, **options) -> shift_alarm.ShiftAlarm:
  """The shift alarm of the guarded duo: fit on the same validation logits, with
  the large model's and the sidekick's own temperatures (1 / single_weights);
  `options` are `shift_alarm.fit_shift_alarm`'s (alpha, batch_size, resamples, seed)."""
  arrays, _ = per_input.check_members(member_logits)
  temperatures = shift_alarm.temperatures_from_weights(params.single_weights)
  return shift_alarm.fit_shift_alarm(arrays[:2], temperatures=temperatures, **options)


def batch_verdicts(alarm: shift_alarm.ShiftAlarm, member_logits, *, order=None) -> np.ndarray:
  """bool [N]: true on the rows of the batches the alarm flags.

  The N rows, taken in `order` (a permutation of them; default: as given, a
  deployment stream), are cut into ⌈N / alarm.batch_size⌉ consecutive batches of
  nearly equal size (a batch of 500 alone would leave a short last one with
  little power), and each is tested on its own."""
  arrays, _ = per_input.check_members(member_logits)
  n = len(arrays[0])
  order = np.arange(n) if order is None else np.asarray(order)
  if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
    raise InputError(f"order must be a permutation of the {n} rows")
  rows = alarm.statistics(arrays[:2])
  flags = np.zeros(n, bool)
  batches = np.array_split(order, max(1, -(-n // alarm.batch_size))) if n else []
  for size in sorted({len(b) for b in batches}):
    same = np.stack([b for b in batches if len(b) == size])
    flagged = alarm.p_values(rows, same) <= alarm.alpha
    flags[same[flagged].ravel()] = True
  return flags


def conflict_limit(kappa: np.ndarray, excess: np.ndarray) -> float:
  """κ_max from validation's disagreements (κ > 0) and the duo's NLL minus
  large+TS's, row by row (module docstring); 2 (never reached) when the members
  never disagree."""
  disagree = kappa > 0
  if not disagree.any():
    return 2.0
  order = np.argsort(-kappa[disagree], kind="stable")
  ranked, cumulative = kappa[disagree][order], np.cumsum(excess[disagree][order])
  best = int(np.argmax(cumulative))
  by_loss = ranked[best] if cumulative[best] > 0 else 2.0
  return float(min(by_loss, np.quantile(kappa[disagree], 1 - GUARD_LEVEL)))


def agreement_limit(psi: np.ndarray) -> float:
  """The 5th percentile of c_L over validation's agreements (0: none)."""
  agree = psi[:, 1] == 1
  return float(np.quantile(psi[agree, 2], GUARD_LEVEL)) if agree.any() else 0.0


def fit(
  member_logits, labels, *, solver: str = "jaxopt", l2: float = L2, agreement_guard: bool = False
) -> GuardedParams:
  """Fits the duo's weights, each member's temperature and then the gate, on
  validation; with `agreement_guard`, the weak-agreement cut of a guarded duo
  without a shift alarm (module docstring)."""
  arrays, labels = per_input.check_members(member_logits, labels)
  duo_weights = np.asarray(temperature.fit_temperatures(arrays, labels, solver=solver), np.float32)
  single = np.asarray(
    [temperature.fit_temperatures([z], labels, solver=solver)[0] for z in arrays], np.float32
  )
  theta = np.zeros(GATE_FEATURES, np.float32)
  start = GuardedParams(duo_weights, single, theta, np.float32(2), np.float32(0))
  duo_log_p, large_log_p, psi, _ = _parts(start, arrays)
  excess = per_input.nll_rows(duo_log_p, labels) - per_input.nll_rows(large_log_p, labels)
  start = dataclasses.replace(
    start,
    conflict_limit=np.float32(conflict_limit(np.asarray(conflict(psi)), np.asarray(excess))),
    agreement_limit=np.float32(agreement_limit(np.asarray(psi)) if agreement_guard else 0.0),
  )
  data = (*_parts(start, arrays), jnp.asarray(labels))

  def objective(theta, data):
    duo_log_p, large_log_p, psi, guarded, labels = data
    log_p = _log_mixture(theta, duo_log_p, large_log_p, psi, guarded)
    return per_input.nll_rows(log_p, labels).mean() + 0.5 * l2 * jnp.sum(theta[1:] ** 2)

  theta, _ = per_input.minimise(objective, jnp.zeros(GATE_FEATURES, jnp.float32), data)
  return dataclasses.replace(start, theta=np.asarray(theta, np.float32))
