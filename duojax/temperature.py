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

Two solvers sit behind `fit_temperatures`; both run the whole solve as one
jitted XLA program:
  * "jaxopt" (default): `jaxopt.LBFGS` with its zoom line search;
  * "optax": `optax.lbfgs` with its zoom line search, in a `lax.while_loop`.
Both stop when the l2 norm of the gradient of the mean NLL with respect to w
is ≤ tol, after max_iter iterations, or when a line search fails, which in
float32 only happens once the gradient is down to its rounding floor (see
`_keep_going`).

What makes the solve cheap on large splits (50,000 × 1,000 logits per member
is 200 MB; every evaluation of the objective has to read all of it):
  * a fused objective: value and gradient from one set of row sums of
    exp(z − z_label), with no max pass and no log_softmax materialised;
  * L-BFGS runs in preconditioned coordinates w = L⁻ᵀ v, where L Lᵀ is the
    Hessian at the start estimated on a sample of rows, so its first step is
    already a Newton step rather than a raw gradient step;
  * a warm start from the same fit on that row sample (on every row for small
    splits), then a restart on all rows from there: the full-data solve
    starts within sampling error of the optimum and needs ~3 evaluations.
None of these change the optimum, only the path there.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

SOLVERS = ("jaxopt", "optax")

# jaxopt warns on import that it is unmaintained; that warning (and only it)
# is silenced while importing.
_JAXOPT_IMPORT_WARNING = r"JAXopt is no longer maintained"

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
  label_logits: jax.Array         # [m, N]: z_i[n, y_n]


# --------------------------------------------------------------------------
# Public API.


def combine(logits_list: LogitsList, weights) -> jax.Array:
  """Σ_i w_i · z_i as float32 [N, C] (members may be bfloat16). Jittable."""
  weights = jnp.asarray(weights, jnp.float32)
  if _is_array(logits_list):
    stack = jnp.asarray(logits_list)
    _check_weights_shape(weights, stack.shape[0])
    return jnp.einsum("m,mnc->nc", weights, stack.astype(jnp.float32))
  members = [jnp.asarray(z) for z in logits_list]
  _check_weights_shape(weights, len(members))
  return _weighted_sum(weights, members)


def nll(weights, logits_stack: LogitsList, labels) -> jax.Array:
  """Mean NLL of softmax(Σ_i w_i z_i) at the labels: the fitting objective.

  float32 and numerically stable (log_softmax). This is the plain reference
  definition; the solvers minimise the same function through a fused
  evaluation (`_objective`) that is tested against it. Jittable.
  """
  log_probs = jax.nn.log_softmax(combine(logits_stack, weights), axis=-1)
  labels = jnp.asarray(labels, jnp.int32)
  return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))


def fit_temperatures(logits_list: LogitsList, labels, *, solver: str = "jaxopt",
                     init=None, max_iter: int = 100, tol: float = 1e-6) -> jax.Array:
  """Fit w (w_i = 1/T_i) minimising the mean NLL of softmax(Σ w_i z_i).

  Args:
    logits_list: m arrays [N, C] (float32 or bfloat16, upcast once), or one
      stacked [m, N, C] array. m = 1 is temperature scaling.
    labels: int [N], in [0, C).
    solver: "jaxopt" (jaxopt.LBFGS) or "optax" (optax.lbfgs).
    init: starting weights [m]; default 1/m each, see `default_init`.
    max_iter: most L-BFGS iterations (per run; see `_solve`).
    tol: stop once the l2 norm of the gradient of the mean NLL with respect
      to w is ≤ tol (or a line search fails, see the module doc).

  Returns:
    float32 [m]: the weights, unconstrained in sign (see the module doc).

  Raises:
    ValueError: bad inputs (non-finite logits, mismatched members, labels out
      of range, empty split), or an unknown solver.

  Eager calls check values (finite logits, label range). Under an outer
  `jax.jit` only shapes are checked, and non-finite logits give NaN weights.
  """
  weights, _ = _fit(logits_list, labels, solver=solver, init=init,
                    max_iter=max_iter, tol=tol)
  return weights


def fit_temperatures_with_info(logits_list: LogitsList, labels, *, solver: str = "jaxopt",
                               init=None, max_iter: int = 100,
                               tol: float = 1e-6) -> tuple[jax.Array, dict[str, Any]]:
  """`fit_temperatures` plus a report of the solve (eager calls only).

  The report holds: solver; iterations and evaluations (objective + gradient,
  line-search trials included) of the final, all-rows L-BFGS run;
  warm_start_rows, warm_start_iterations and warm_start_evaluations of the
  warm-start run before it (on a row sample, or on all N rows for small
  splits); nll, the final mean
  NLL; grad_norm, its gradient's l2 norm at the returned weights; converged,
  grad_norm ≤ tol (False after max_iter, or when float32 rounding kept the
  gradient above tol, see `_keep_going`).
  """
  weights, raw = _fit(logits_list, labels, solver=solver, init=init,
                      max_iter=max_iter, tol=tol)
  grad_norm = float(raw["grad_norm"])
  info = {"solver": solver, "iterations": int(raw["iterations"]),
          "evaluations": int(raw["evaluations"]),
          "warm_start_rows": int(raw["warm_start_rows"]),
          "warm_start_iterations": int(raw["warm_start_iterations"]),
          "warm_start_evaluations": int(raw["warm_start_evaluations"]),
          "nll": float(raw["nll"]), "grad_norm": grad_norm,
          "converged": bool(grad_norm <= tol)}
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


def _fit(logits_list, labels, *, solver, init, max_iter, tol, sample_logits=_SAMPLE_LOGITS):
  if solver not in SOLVERS:
    raise ValueError(f"unknown solver {solver!r}; valid: {', '.join(map(repr, SOLVERS))}")
  if int(max_iter) < 1:
    raise ValueError(f"max_iter must be ≥ 1, got {max_iter}")
  if not float(tol) >= 0:
    raise ValueError(f"tol must be ≥ 0, got {tol}")
  members = _as_members(logits_list)
  n, c = members[0].shape
  labels = _as_labels(labels, n, c)
  init = default_init(len(members)) if init is None else _as_init(init, len(members))

  problem = _Problem(members, _label_logits(members, labels))
  weights, info = _solve(init, problem, solver=solver, max_iter=int(max_iter), tol=float(tol),
                         sample_logits=sample_logits)
  _check_finite(members, info)
  return weights, info


def _is_array(x) -> bool:
  return hasattr(x, "ndim") and hasattr(x, "shape")


def _as_members(logits_list) -> tuple[jax.Array, ...]:
  """m float32 arrays [N, C], shapes validated."""
  if _is_array(logits_list):
    if logits_list.ndim != 3:
      raise ValueError(f"a single logits array must be stacked [m, N, C], got shape "
                       f"{tuple(logits_list.shape)}; pass one [N, C] member as [logits]")
    # Split once here, not inside the solve: each evaluation then reads the
    # members in place.
    logits_list = [logits_list[i] for i in range(logits_list.shape[0])]
  members = list(logits_list)
  if not members:
    raise ValueError("no members: logits_list must hold at least one [N, C] array (m ≥ 1)")
  shapes = [tuple(np.shape(z)) for z in members]
  for i, shape in enumerate(shapes):
    if len(shape) != 2:
      raise ValueError(f"member {i} has shape {shape}; expected [N, C]")
  n, c = shapes[0]
  for i, (n_i, c_i) in enumerate(shapes[1:], start=1):
    if c_i != c:
      raise ValueError(f"member {i} has {c_i} classes but member 0 has {c}")
    if n_i != n:
      raise ValueError(f"member {i} has {n_i} examples but member 0 has {n}")
  if n == 0:
    raise ValueError("empty validation split (N = 0)")
  if c < 2:
    raise ValueError(f"need at least 2 classes, got C = {c}")
  for i, z in enumerate(members):
    if not jnp.issubdtype(jnp.result_type(z), jnp.floating):
      raise ValueError(f"member {i} has dtype {jnp.result_type(z)}; expected floating logits")
  # The one upcast: bfloat16/float16 members become float32 here, once.
  return tuple(jnp.asarray(z, jnp.float32) for z in members)


def _as_labels(labels, n: int, c: int) -> jax.Array:
  shape = tuple(np.shape(labels))
  if shape != (n,):
    raise ValueError(f"labels have shape {shape}; expected ({n},) to match the logits")
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {jnp.result_type(labels)}")
  if not isinstance(labels, jax.core.Tracer):
    host = np.asarray(labels)
    low, high = int(host.min()), int(host.max())
    if low < 0 or high >= c:
      raise ValueError(f"labels must lie in [0, {c}); found min {low}, max {high}")
  return jnp.asarray(labels, jnp.int32)


def _as_init(init, m: int) -> jax.Array:
  init = jnp.asarray(init, jnp.float32)
  if init.shape != (m,):
    raise ValueError(f"init has shape {init.shape}; expected ({m},), one weight per member")
  if not isinstance(init, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(init))):
    raise ValueError(f"init must be finite, got {np.asarray(init)}")
  return init


def _check_weights_shape(weights: jax.Array, m: int) -> None:
  if weights.shape != (m,):
    raise ValueError(f"weights have shape {weights.shape}; expected ({m},), one per member")


def _check_finite(members: tuple[jax.Array, ...], info: dict) -> None:
  """Raise if any logit is NaN or ±inf, using the final evaluation.

  A separate isfinite pass would read all logits once more. Instead: under
  IEEE arithmetic, a NaN or ±inf logit makes every evaluation's value or
  gradient non-finite at any w (NaN and inf propagate through the weighted
  sum and exp; 0·inf and inf − inf are NaN; exp(−inf) = 0 meets 0·inf in the
  gradient). So a finite final NLL and gradient prove the logits finite.
  """
  if isinstance(info["nll"], jax.core.Tracer):
    return
  if bool(jnp.isfinite(info["nll"]) & jnp.isfinite(info["grad_norm"])):
    return
  # Error path only: count them (one more pass over the logits).
  counts = [int(_count_non_finite(z)) for z in members]
  if not sum(counts):
    raise FloatingPointError(f"the fit reached a non-finite NLL ({float(info['nll'])}) "
                             "although every logit is finite; try a smaller init")
  where = ", ".join(f"member {i}: {k}" for i, k in enumerate(counts) if k)
  raise ValueError(f"logits contain {sum(counts)} non-finite values (NaN or inf) ({where})")


@jax.jit
def _count_non_finite(z: jax.Array) -> jax.Array:
  return jnp.sum(~jnp.isfinite(z))


@jax.jit
def _label_logits(members: tuple[jax.Array, ...], labels: jax.Array) -> jax.Array:
  return jnp.stack([jnp.take_along_axis(z, labels[:, None], axis=-1)[:, 0] for z in members])


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

  # lax.cond runs one branch: the extra max pass happens only in evaluations
  # where some class beats a label by tens of logits.
  return jax.lax.cond(jnp.all(mass <= _MAX_ROW_MASS),
                      lambda _: (jnp.zeros_like(label_z), mass, moments), exact, None)


def _objective_value(weights, problem: _Problem) -> jax.Array:
  excess, mass, _ = _stable_row_sums(weights, problem, with_moments=False)
  return jnp.mean(excess + jnp.log(mass))


def _objective_value_and_grad(weights, problem: _Problem):
  excess, mass, moments = _stable_row_sums(weights, problem, with_moments=True)
  value = jnp.mean(excess + jnp.log(mass))
  grad = jnp.mean(moments / mass - problem.label_logits, axis=1)
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


def _row_sample(problem: _Problem, sample_logits: int) -> _Problem:
  """Every k-th row, about sample_logits logits per member; all rows if small.

  Strided rather than the first rows: validation splits are often sorted by
  class, and the first rows would then cover only a few classes. A sample of
  more than a quarter of the rows would cost about as much as it saves.
  """
  n, c = problem.members[0].shape
  stride = (n * c) // sample_logits
  if stride < 1 / _MAX_SAMPLE_FRACTION:
    return problem
  return _Problem(tuple(z[::stride] for z in problem.members), problem.label_logits[:, ::stride])


def _curvature(weights: jax.Array, sample: _Problem) -> jax.Array:
  """Hessian of the mean NLL at w, [m, m]: the mean over rows of Cov_p(z_i, z_j).

  Computed on a row sample (it only preconditions the solve), centred for
  accuracy in float32, plus a small ridge so that it is positive definite
  even for duplicated members (whose Hessian is singular).
  """
  members = sample.members
  n, m = members[0].shape[0], len(members)
  probs = jax.nn.softmax(_weighted_sum(weights, members), axis=-1)
  root_probs = jnp.sqrt(probs)
  # √p · (z_i − E_p[z_i]) per member; H_ij is the sum of products of two.
  scaled = [(z - (probs * z).sum(axis=-1, keepdims=True)) * root_probs for z in members]
  hessian = jnp.stack([jnp.stack([jnp.sum(a * b) for b in scaled]) for a in scaled]) / n
  ridge = 1e-4 * jnp.trace(hessian) / m + 1e-6
  return hessian + ridge * jnp.eye(m, dtype=hessian.dtype)


# --------------------------------------------------------------------------
# Solvers. `_solve` is one jitted program: the problem goes in, the weights
# and a few scalars about the solve come out, all on device.


@functools.partial(jax.jit, static_argnames=("solver", "max_iter", "tol", "sample_logits"))
def _solve(init: jax.Array, problem: _Problem, *, solver: str, max_iter: int, tol: float,
           sample_logits: int):
  """Two L-BFGS runs: a warm start on a row sample, then all rows from there.

  The second run restarts from the first one's result with the curvature
  re-estimated there. That makes it cheap (it starts within sampling error of
  the optimum, with a Newton-quality metric) and robust: a poor start, such
  as 1/m for logits so large that the optimum is ≪ 1/m, can make the first
  run's line search give up early, and a restart is the standard remedy.
  On small splits the "sample" is every row; the second run then costs one
  or two evaluations.
  """
  lbfgs = functools.partial(_lbfgs_jaxopt if solver == "jaxopt" else _lbfgs_optax,
                            max_iter=max_iter, tol=tol)
  sample = _row_sample(problem, sample_logits)
  if sample is problem:
    # Same shapes in both runs: one compiled L-BFGS body, run twice by scan,
    # halves the compile time (which dominates for small splits).
    def run(weights, _):
      return lbfgs(weights, problem, _curvature(weights, problem))

    weights, infos = jax.lax.scan(run, init, None, length=2)
    warm_info, info = (jax.tree.map(lambda x, i=i: x[i], infos) for i in (0, 1))
  else:
    start, warm_info = lbfgs(init, sample, _curvature(init, sample))
    weights, info = lbfgs(start, problem, _curvature(start, sample))
  info["warm_start_rows"] = sample.members[0].shape[0]
  info["warm_start_iterations"] = warm_info["iterations"]
  info["warm_start_evaluations"] = warm_info["evaluations"]
  return weights, info


def _preconditioned(init: jax.Array, hessian: jax.Array):
  """(basis, chol, v0): w = basis @ v, basis = L⁻ᵀ, hessian = L Lᵀ, v0 = Lᵀ init.

  In v the estimated Hessian is the identity, so L-BFGS's first step (a unit
  step along −∇_v) is a Newton step. The gradients relate by ∇_w = L ∇_v.
  The map has no offset (not w = init + basis @ v): in float32 an offset
  would limit the resolution of w to that of init, and when the optimum is
  much smaller than init (large logits, w* ≪ 1/m) the gradient could then
  not get below tol.
  """
  chol = jnp.linalg.cholesky(hessian)
  basis = jax.scipy.linalg.solve_triangular(chol, jnp.eye(init.shape[0]), lower=True).T
  return basis, chol, chol.T @ init


def _import_jaxopt():
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=_JAXOPT_IMPORT_WARNING, category=DeprecationWarning)
    import jaxopt  # pylint: disable=g-import-not-at-top
  return jaxopt


def _lbfgs_jaxopt(init, problem: _Problem, hessian, *, max_iter: int, tol: float):
  jaxopt = _import_jaxopt()
  basis, chol, v0 = _preconditioned(init, hessian)

  def objective(v, problem):
    return _objective(basis @ v, problem)

  # implicit_diff=False: nothing differentiates through the fit, and the
  # implicit-differentiation wrapper would want second derivatives.
  # linesearch_init="max": try the full quasi-Newton step (1.0) first, as
  # optax does; the default "increase" grows from the previous step by 1.5x
  # and wastes iterations after a short first step.
  solver = jaxopt.LBFGS(fun=objective, maxiter=max_iter, implicit_diff=False,
                        linesearch_init="max")

  # Our own loop rather than solver.run, which always takes a first step: a
  # restart at a point that already meets tol should cost one evaluation,
  # not a line search lost in float32 noise. It also stops on the gradient
  # with respect to w, and when the line search fails (see `_keep_going`).
  def keep_going(carry):
    _, state = carry
    return _keep_going(state.iter_num, chol @ state.grad, ~state.failed_linesearch,
                       max_iter=max_iter, tol=tol)

  def step(carry):
    v, state = carry
    return tuple(solver.update(v, state, problem))

  v, state = jax.lax.while_loop(keep_going, step, (v0, solver.init_state(v0, problem)))
  # state.num_fun_eval double-counts (the line search adds one per trial on
  # top of its own count); what runs is one evaluation at the start plus one
  # per line-search trial.
  return basis @ v, {"iterations": state.iter_num,
                     "evaluations": 1 + state.num_linesearch_iter,
                     "nll": state.value, "grad_norm": jnp.linalg.norm(chol @ state.grad)}


def _lbfgs_optax(init, problem: _Problem, hessian, *, max_iter: int, tol: float):
  basis, chol, v0 = _preconditioned(init, hessian)

  def objective(v):
    return _objective(basis @ v, problem)

  optimizer = optax.lbfgs()  # zoom line search by default
  # Reuses the value and gradient the line search computed at the accepted
  # point instead of evaluating them again.
  value_and_grad = optax.value_and_grad_from_state(objective)

  def keep_going(carry):
    _, state, _ = carry
    count, info = optax.tree.get(state, "count"), optax.tree.get(state, "info")
    # Before the first step the line-search report holds its initial inf.
    line_search_ok = (count == 0) | ((info.decrease_error <= 0) & (info.curvature_error <= 0))
    return _keep_going(count, chol @ optax.tree.get(state, "grad"), line_search_ok,
                       max_iter=max_iter, tol=tol)

  def step(carry):
    v, state, evaluations = carry
    value, grad = value_and_grad(v, state=state)
    updates, state = optimizer.update(grad, state, v, value=value, grad=grad,
                                      value_fn=objective)
    trials = optax.tree.get(state, "num_linesearch_steps")
    return optax.apply_updates(v, updates), state, evaluations + trials

  # Evaluate the start up front (as jaxopt's init_state does) so that the
  # loop can stop before the first step; then one evaluation per line-search
  # trial.
  value, grad = jax.value_and_grad(objective)(v0)
  state = optax.tree.set(optimizer.init(v0), value=value, grad=grad)
  v, state, evaluations = jax.lax.while_loop(
      keep_going, step, (v0, state, jnp.asarray(1, jnp.int32)))
  return basis @ v, {"iterations": optax.tree.get(state, "count"),
                     "evaluations": evaluations,
                     "nll": optax.tree.get(state, "value"),
                     "grad_norm": jnp.linalg.norm(chol @ optax.tree.get(state, "grad"))}


def _keep_going(iteration, grad_w, line_search_ok, *, max_iter: int, tol: float):
  """The shared stopping rule.

  Stop at max_iter, once ‖∇_w NLL‖ ≤ tol, or when the last line search
  failed. Near the optimum the last happens when float32 cannot get the
  gradient below tol (very large logits: one rounding step of w then moves
  the gradient by more than tol); the NLL is then at its float32 optimum,
  more iterations would only burn evaluations, and the fit reports
  converged=False. A failure far from the optimum (a poor start) is what
  the restart in `_solve` recovers from.
  """
  return (iteration < max_iter) & (jnp.linalg.norm(grad_w) > tol) & line_search_ok
