"""Joint temperature fitting: the weights of an Asymmetric Duo (arXiv 2505.18636).

m members' logits z_i [N, C] are combined as

    z = Σ_i w_i · z_i          (w_i = 1 / T_i, the inverse temperatures)

and w is fit on a validation split by minimising the mean negative
log-likelihood of softmax(z). With m = 1 this is classic temperature scaling.

The NLL is convex in w: per example it is logsumexp of a linear function of w
minus a linear function of w. So a quasi-Newton method (L-BFGS) from any
sensible start reaches the global optimum and no grid search is needed.

The weights are unconstrained. We parameterise directly in w, not log w: a
useless member's optimal weight is ~0 and may be slightly negative, which a
log parameterisation cannot reach (it would push log w towards -inf and stall),
and the problem is only convex in w itself.

Two L-BFGS solvers sit behind `fit_temperatures`, "jaxopt" (default) and
"optax"; see `duojax.solvers`, which runs the whole solve as one jitted XLA
program, preconditioned by the Hessian estimated on a row sample and warm-
started from the fit on that sample. This module supplies the problem: a
fused objective (value and gradient from one set of row sums of
exp(z − z_label), with no max pass and no log_softmax materialised), the
curvature estimate and the row sample. None of these change the optimum,
only the path there.

Rows may be split over devices or hosts (global jax Arrays with a
NamedSharding over rows): XLA partitions the solve and its means become
all-reduces, and nothing here fetches per-row values to the host. A mask
marks padding rows (added to make the rows divide evenly); they are left out
of every mean exactly, whatever they hold.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from duojax.core import duo, solvers
from duojax.core import temperature_inputs as inputs
from duojax.errors import ConfigError

SOLVERS = solvers.SOLVERS

# The fused objective normalises each row by its label's logit (see
# `_row_sums`), so a row's sum of exp(z_c − z_label) is ≥ 1 and cannot
# underflow; it overflows float32 (3.4e38) only if some class beats the label
# by ~88 logits. Past this bound, well before that and leaving headroom for
# Σ_c exp(·)·z_i[c], the evaluation switches to the exact row max.
_MAX_ROW_MASS = 1e30

# Row sample for the curvature estimate and the warm start: about this many
# logits per member (16 MB in float32), i.e. ~4,000 rows at C = 1,000.
_SAMPLE_LOGITS = 1 << 22
# Sample rows only when the sample is at most this fraction of them.
_MAX_SAMPLE_FRACTION = 0.25

Logits = Union[jax.Array, np.ndarray]
LogitsList = Union[Sequence[Logits], Logits]


class _Problem(NamedTuple):
  """What the objective reads; float32, on device. A pytree."""

  members: tuple[jax.Array, ...]  # m arrays [N, C]
  label_logits: jax.Array  # [m, N]: z_i[n, y_n]
  # [N]: mask / count(mask), or None when every row is valid (plain means).
  # Rows of weight 0 are padding and may hold anything, NaN included: every
  # per-row term is selected away with `where` before it meets a sum.
  row_weights: Optional[jax.Array] = None


# --------------------------------------------------------------------------
# Public API.


def combine(logits_list: LogitsList, weights) -> jax.Array:
  """Deprecated name of `duojax.core.duo.combine`, the one weighted sum of logits."""
  warnings.warn(
    "duojax.temperature.combine is duojax.duo.combine; call that instead",
    DeprecationWarning,
    stacklevel=2,
  )
  return duo.combine(logits_list, weights)


def nll(weights, logits_stack: LogitsList, labels, *, mask=None) -> jax.Array:
  """Mean NLL of softmax(Σ_i w_i z_i) at the labels: the fitting objective.

  float32 and numerically stable (log_softmax). This is the plain reference
  definition; the solvers minimise the same function through a fused
  evaluation (`_objective`) that is tested against it. With a bool mask [N],
  the mean is over the rows where it is True; the others are ignored, as in
  `fit_temperatures`. Jittable.
  """
  labels = jnp.asarray(labels, jnp.int32)
  if mask is None:
    log_probs = jax.nn.log_softmax(duo.combine(logits_stack, weights), axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
  mask = inputs.as_mask(mask, labels.shape[0])
  # Padded logits are zeroed before the weighted sum, not after: a where on
  # the sum would still send their NaN into the gradient in w (0 · NaN).
  keep = lambda z: jnp.where(mask[:, None], z, 0)  # [N, C] and [m, N, C] alike
  logits_stack = (
    keep(jnp.asarray(logits_stack))
    if inputs.is_array(logits_stack)
    else [keep(jnp.asarray(z)) for z in logits_stack]
  )
  log_probs = jax.nn.log_softmax(duo.combine(logits_stack, weights), axis=-1)
  labels = jnp.where(mask, labels, 0)  # padded labels may be out of range
  per_row = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  return -jnp.sum(jnp.where(mask, per_row, 0.0)) / jnp.sum(mask)


def fit_temperatures(
  logits_list: LogitsList,
  labels,
  *,
  solver: str = "jaxopt",
  init=None,
  max_iter: int = 100,
  tol: float = 1e-6,
  mask=None,
) -> jax.Array:
  """Fit w (w_i = 1/T_i) minimising the mean NLL of softmax(Σ w_i z_i).

  Args:
    logits_list: m arrays [N, C] (float32 or bfloat16, upcast once), or one
      stacked [m, N, C] array. m = 1 is temperature scaling.
    labels: int [N], in [0, C).
    solver: "jaxopt" (jaxopt.LBFGS) or "optax" (optax.lbfgs).
    init: starting weights [m]; default 1/m each, see `default_init`.
    max_iter: most L-BFGS iterations (per run; see `solvers.solve`).
    tol: stop once the l2 norm of the gradient of the mean NLL with respect
      to w is ≤ tol (or a line search fails, see the module doc).
    mask: optional bool [N]; rows where it is False are padding, ignored
      exactly whatever their logits and labels hold: the fit is the fit on
      the True rows alone.

  Logits, labels and mask may be global jax Arrays with their rows sharded
  over devices or processes; the weights come back replicated.

  Returns:
    float32 [m]: the weights, unconstrained in sign (see the module doc).

  Raises:
    InputError: bad inputs (non-finite logits, mismatched members, labels out
      of range, empty split; all checked on unmasked rows only; a mask that
      is not bool [N] or has no True row).
    ConfigError: an unknown solver, max_iter < 1 or tol < 0.

  Eager calls check values (finite logits, label range, a True row in the
  mask). Under an outer `jax.jit` only shapes are checked, and non-finite
  logits or an all-False mask give NaN weights.
  """
  weights, _ = _fit(
    logits_list, labels, solver=solver, init=init, max_iter=max_iter, tol=tol, mask=mask
  )
  return weights


def fit_temperatures_with_info(
  logits_list: LogitsList,
  labels,
  *,
  solver: str = "jaxopt",
  init=None,
  max_iter: int = 100,
  tol: float = 1e-6,
  mask=None,
) -> tuple[jax.Array, dict[str, Any]]:
  """`fit_temperatures` plus a report of the solve (eager calls only).

  The report holds: solver; iterations and evaluations (objective + gradient,
  line-search trials included) of the final, all-rows L-BFGS run;
  warm_start_rows, warm_start_iterations and warm_start_evaluations of the
  warm-start run before it (on a row sample, or on all rows for small splits;
  only unmasked rows count); nll, the final mean NLL; grad_norm, its
  gradient's l2 norm at the returned weights; converged, grad_norm ≤ tol
  (False after max_iter, or when float32 rounding kept the gradient above
  tol, see `solvers._keep_going`).
  """
  weights, raw = _fit(
    logits_list, labels, solver=solver, init=init, max_iter=max_iter, tol=tol, mask=mask
  )
  grad_norm = float(raw["grad_norm"])
  info = {
    "solver": solver,
    "iterations": int(raw["iterations"]),
    "evaluations": int(raw["evaluations"]),
    "warm_start_rows": int(raw["warm_start_rows"]),
    "warm_start_iterations": int(raw["warm_start_iterations"]),
    "warm_start_evaluations": int(raw["warm_start_evaluations"]),
    "nll": float(raw["nll"]),
    "grad_norm": grad_norm,
    "converged": bool(grad_norm <= tol),
  }
  return weights, info


def default_init(m: int) -> jax.Array:
  """w_i = 1/m: the fit starts from the plain average of the members' logits.

  For m = 1 this is the model as trained (T = 1). For m > 1 the average keeps
  the logits on a single model's scale, so the start is about as good as the
  average member, whereas the sum (w_i = 1) is m times overconfident where
  members agree. The solve then only has to shift weight between members and
  rescale.
  """
  return jnp.full((m,), 1.0 / m, jnp.float32)


# --------------------------------------------------------------------------
# Input handling and validation.


def _fit(
  logits_list, labels, *, solver, init, max_iter, tol, mask=None, sample_logits=_SAMPLE_LOGITS
):
  if solver not in SOLVERS:
    raise ConfigError(f"unknown solver {solver!r}; valid: {', '.join(map(repr, SOLVERS))}")
  if int(max_iter) < 1:
    raise ConfigError(f"max_iter must be ≥ 1, got {max_iter}")
  if not float(tol) >= 0:
    raise ConfigError(f"tol must be ≥ 0, got {tol}")
  members = inputs.as_members(logits_list)
  n, c = members[0].shape
  mask = None if mask is None else inputs.as_mask(mask, n)
  labels = inputs.as_labels(labels, n, c, mask)
  init = default_init(len(members)) if init is None else inputs.as_init(init, len(members))

  if mask is None:
    # No row weights at all, rather than all-equal ones: plain means.
    problem = _Problem(members, _label_logits(members, labels))
  else:
    problem = _Problem(members, *_padded_label_logits_and_row_weights(members, labels, mask))
  weights, info = solvers.solve(
    init,
    problem,
    objective=_objective,
    curvature=_curvature,
    row_sample=_row_sampler(sample_logits),
    solver=solver,
    max_iter=int(max_iter),
    tol=float(tol),
  )
  inputs.check_finite(members, info, mask)
  if inputs.is_traced(mask):
    # Unchecked under an outer jit: a fit of no rows says so with NaN rather
    # than returning init as if it had converged.
    weights = jnp.where(jnp.any(mask), weights, jnp.nan)
  return weights, info


# Reductions to replicated scalars: their values can be fetched even when the
# rows are sharded over processes (a non-addressable array).


@jax.jit
def _label_logits(members: tuple[jax.Array, ...], labels: jax.Array) -> jax.Array:
  return jnp.stack([jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0] for z in members])


@jax.jit
def _padded_label_logits_and_row_weights(members, labels, mask):
  """`_Problem`'s label_logits and row_weights for a masked split.

  Padded labels become 0 before the gather (they may be out of range), and
  padded label logits 0 after it, so that w @ label_logits stays finite.
  """
  label_logits = _label_logits(members, jnp.where(mask, labels, 0))
  return jnp.where(mask, label_logits, 0.0), mask.astype(jnp.float32) / jnp.sum(mask)


# --------------------------------------------------------------------------
# The objective, fused for the solvers.
#
# Per row n, with z = Σ_i w_i z_i and any shift a_n:
#   NLL_n          = (a_n − z[n, y_n]) + log s_n,   s_n = Σ_c exp(z[n, c] − a_n)
#   ∂NLL_n / ∂w_i  = t_in / s_n − z_i[n, y_n],      t_in = Σ_c exp(z[n, c] − a_n) z_i[n, c]
# With a_n = z[n, y_n] (the label's combined logit, known from the [m, N]
# label logits without reading the [N, C] ones) the first term vanishes,
# s_n ≥ 1, and value and gradient are row sums of one exp(z − a) array: no
# max pass, no log_softmax [N, C] array, and the NLL of a well-classified
# row is log s_n directly rather than a difference of large numbers.
#
# With a mask the means are weighted means with row_weights (see `_Problem`).


def _weighted_sum(weights: jax.Array, members: Sequence[jax.Array]) -> jax.Array:
  # A Python sum over members, not an einsum over a stack: no [m, N, C]
  # stack is built and XLA fuses the sum into its consumers.
  return sum(weights[i] * z.astype(jnp.float32) for i, z in enumerate(members))


def _row_sums(weights, members, shift, with_moments: bool):
  """s [N] and, if asked, t [m, N] (see the block comment above)."""
  e = jnp.exp(_weighted_sum(weights, members) - shift[:, None])
  mass = e.sum(axis=-1)
  moments = jnp.stack([(e * z).sum(axis=-1) for z in members]) if with_moments else None
  return mass, moments


def _stable_row_sums(weights, problem: _Problem, with_moments: bool):
  """(a − z_label, s, t): shifted by the label logit, or the row max if needed."""
  label_z = weights @ problem.label_logits
  mass, moments = _row_sums(weights, problem.members, label_z, with_moments)

  def exact(_):
    row_max = _weighted_sum(weights, problem.members).max(axis=-1)
    return (row_max - label_z,) + _row_sums(weights, problem.members, row_max, with_moments)

  fits = mass <= _MAX_ROW_MASS
  if problem.row_weights is not None:
    fits |= ~(problem.row_weights > 0)  # padding, whatever its mass, is dropped anyway
  # lax.cond runs one branch: the extra max pass happens only in evaluations
  # where some class beats a label by tens of logits.
  return jax.lax.cond(
    jnp.all(fits), lambda _: (jnp.zeros_like(label_z), mass, moments), exact, None
  )


def _row_mean(per_row: jax.Array, row_weights: Optional[jax.Array]) -> jax.Array:
  """Mean over the last axis (rows), over the unpadded rows only if weighted.

  The where, not the weight 0 alone, drops a padded row: its term may be NaN
  or inf, and 0 · NaN is NaN.
  """
  if row_weights is None:
    return jnp.mean(per_row, axis=-1)
  return jnp.sum(jnp.where(row_weights > 0, per_row, 0.0) * row_weights, axis=-1)


def _objective_value(weights, problem: _Problem) -> jax.Array:
  excess, mass, _ = _stable_row_sums(weights, problem, with_moments=False)
  return _row_mean(excess + jnp.log(mass), problem.row_weights)


def _objective_value_and_grad(weights, problem: _Problem):
  excess, mass, moments = _stable_row_sums(weights, problem, with_moments=True)
  value = _row_mean(excess + jnp.log(mass), problem.row_weights)
  grad = _row_mean(moments / mass - problem.label_logits, problem.row_weights)
  return value, grad


@jax.custom_vjp
def _objective(weights: jax.Array, problem: _Problem) -> jax.Array:
  """Mean NLL (as `nll`), with a fused gradient for both solvers' autodiff."""
  return _objective_value(weights, problem)


def _objective_fwd(weights, problem):
  return _objective_value_and_grad(weights, problem)


def _objective_bwd(grad, cotangent):
  # The solvers never differentiate with respect to the logits.
  return cotangent * grad, None


_objective.defvjp(_objective_fwd, _objective_bwd)


# --------------------------------------------------------------------------
# Row sample and curvature.


def _row_sample(problem: _Problem, sample_logits: int):
  """(sample, rows): every k-th row, about sample_logits logits per member.

  sample is None (use all rows) for small splits; rows counts its unpadded
  rows. Strided rather than the first rows: validation splits are often
  sorted by class, and the first rows would then cover only a few classes. A
  sample of more than a quarter of the rows would cost about as much as it
  saves. A sliced sharded array stays sharded, so the sample stays spread.
  """
  n, c = problem.members[0].shape
  stride = (n * c) // sample_logits
  weights = problem.row_weights
  if stride < 1 / _MAX_SAMPLE_FRACTION:
    return None, (n if weights is None else jnp.sum(weights > 0))
  members = tuple(z[::stride] for z in problem.members)
  label_logits = problem.label_logits[:, ::stride]
  if weights is None:
    return _Problem(members, label_logits), members[0].shape[0]
  valid = weights[::stride] > 0
  rows = jnp.sum(valid)
  # Equal weights over the sample's unpadded rows; if it has none, the solver
  # skips the warm start (rows = 0) and the weights here are never used.
  return _Problem(members, label_logits, valid / jnp.maximum(rows, 1)), rows


@functools.cache
def _row_sampler(sample_logits: int):
  # One function object per sample size: the solver's jit keys on it.
  return functools.partial(_row_sample, sample_logits=sample_logits)


def _curvature(weights: jax.Array, sample: _Problem) -> jax.Array:
  """Hessian of the mean NLL at w, [m, m]: the mean over rows of Cov_p(z_i, z_j).

  Computed on a row sample (it only preconditions the solve), centred for
  accuracy in float32, plus a small ridge so that it is positive definite
  even for duplicated members (whose Hessian is singular). Weighted by the
  sample's row weights when it has them.
  """
  members = sample.members
  n, m = members[0].shape[0], len(members)
  probs = jax.nn.softmax(_weighted_sum(weights, members), axis=-1)
  root_probs = jnp.sqrt(probs)
  # √p · (z_i − E_p[z_i]) per member; H_ij is the mean over rows of the row
  # sums of products of two.
  scaled = [(z - (probs * z).sum(axis=-1, keepdims=True)) * root_probs for z in members]
  if sample.row_weights is None:
    entry = lambda a, b: jnp.sum(a * b) / n
  else:
    entry = lambda a, b: _row_mean(jnp.sum(a * b, axis=-1), sample.row_weights)
  hessian = jnp.stack([jnp.stack([entry(a, b) for b in scaled]) for a in scaled])
  ridge = 1e-4 * jnp.trace(hessian) / m + 1e-6
  # Where the softmax is saturated (logits far too large for w) the NLL is
  # almost piecewise linear: its curvature is ~0 and a Newton step on the
  # ridge alone overshoots by orders of magnitude, beyond what the line
  # search can recover. A ridge of |∇|/|w| bounds that first step to about
  # |w|; near the optimum ∇ ≈ 0, so the final run's metric is unchanged.
  if sample.row_weights is None:
    mean = lambda per_row: jnp.sum(per_row) / n
  else:
    mean = lambda per_row: _row_mean(per_row, sample.row_weights)
  grad = jnp.stack(
    [mean((probs * z).sum(axis=-1) - label) for z, label in zip(members, sample.label_logits)]
  )
  trust = jnp.linalg.norm(grad) / jnp.maximum(jnp.linalg.norm(weights), 1e-3)
  ridge = jnp.maximum(ridge, trust)
  return hessian + ridge * jnp.eye(m, dtype=hessian.dtype)
