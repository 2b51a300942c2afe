"""The L-BFGS solvers behind `temperature.fit_temperatures`.

  * "jaxopt" (default): `jaxopt.LBFGS` with its zoom line search;
  * "optax": `optax.lbfgs` with its zoom line search, in a `lax.while_loop`.

Either way `solve` is one jitted XLA program: the problem goes in, the weights
and a few scalars about the solve come out, all on device. On rows sharded
over devices (or hosts) XLA partitions it and the objective's means become
all-reduces, so the same program serves one device and many. Both stop when
the l2 norm of the gradient with respect to w is ≤ tol, after max_iter
iterations, or when a line search fails (see `_keep_going`).

What makes the solve cheap on large splits (every evaluation of the
objective reads all the data):
  * L-BFGS runs in preconditioned coordinates w = L⁻ᵀ v, where L Lᵀ is the
    Hessian at the start estimated on a sample of rows, so its first step is
    already a Newton step rather than a raw gradient step;
  * a warm start from the same fit on that row sample (on every row for small
    splits), then a restart on all rows from there: the full-data solve
    starts within sampling error of the optimum and needs ~3 evaluations.

The module knows nothing about logits: the objective, the curvature estimate
and the row sample come in as functions of a problem pytree (see `solve`).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import optax

SOLVERS = ("jaxopt", "optax")

# jaxopt warns on import that it is unmaintained; that warning (and only it)
# is silenced while importing.
_JAXOPT_IMPORT_WARNING = r"JAXopt is no longer maintained"


@functools.partial(
  jax.jit, static_argnames=("objective", "curvature", "row_sample", "solver", "max_iter", "tol")
)
def solve(
  init: jax.Array,
  problem,
  *,
  objective,
  curvature,
  row_sample,
  solver: str,
  max_iter: int,
  tol: float,
):
  """Two L-BFGS runs: a warm start on a row sample, then all rows from there.

  Args:
    init: starting weights [m].
    problem: a pytree of arrays, passed through to the functions below.
    objective: objective(w, problem), the scalar to minimise; differentiable
      in w (only first derivatives are taken).
    curvature: curvature(w, problem), a positive definite [m, m] estimate of
      the objective's Hessian at w.
    row_sample: row_sample(problem) -> (sample, rows): a smaller problem of
      the same structure to warm-start on, or None to warm-start on the whole
      problem; rows counts the rows it holds that carry weight. When rows is
      traced and turns out 0 (the sample is all padding), the warm start is
      skipped and the whole problem gives the curvature.
    solver: one of SOLVERS.
    max_iter, tol: per run; see `_keep_going`.

  Returns:
    (weights [m], info): info holds iterations, evaluations, nll and
    grad_norm of the final run, and warm_start_rows, warm_start_iterations
    and warm_start_evaluations.

  The second run restarts from the first one's result with the curvature
  re-estimated there. That makes it cheap (it starts within sampling error of
  the optimum, with a Newton-quality metric) and robust: a poor start, such
  as 1/m for logits so large that the optimum is ≪ 1/m, can make the first
  run's line search give up early, and a restart is the standard remedy.
  On small splits the "sample" is every row; the second run then costs one
  or two evaluations.
  """
  lbfgs = functools.partial(
    _lbfgs_jaxopt if solver == "jaxopt" else _lbfgs_optax,
    objective=objective,
    max_iter=max_iter,
    tol=tol,
  )
  sample, rows = row_sample(problem)
  if sample is None:
    # Same shapes in both runs: one compiled L-BFGS body, run twice by scan,
    # halves the compile time (which dominates for small splits).
    def run(weights, _):
      return lbfgs(weights, problem, curvature(weights, problem))

    weights, infos = jax.lax.scan(run, init, None, length=2)
    warm_info, info = (jax.tree.map(lambda x, i=i: x[i], infos) for i in (0, 1))
    warm = warm_info["iterations"], warm_info["evaluations"]
  else:

    def warm_start(_):
      start, warm_info = lbfgs(init, sample, curvature(init, sample))
      # int32 both ways, so that the two lax.cond branches match.
      return (
        start,
        curvature(start, sample),
        jnp.int32(warm_info["iterations"]),
        jnp.int32(warm_info["evaluations"]),
      )

    def cold_start(_):
      zero = jnp.zeros((), jnp.int32)
      return init, curvature(init, problem), zero, zero

    if isinstance(rows, int):
      start, hessian, *warm = warm_start(None)
    else:
      # lax.cond runs one branch: the full-data curvature pass happens only
      # for a sample that is all padding.
      start, hessian, *warm = jax.lax.cond(rows > 0, warm_start, cold_start, None)
    weights, info = lbfgs(start, problem, hessian)
  info["warm_start_rows"] = rows
  info["warm_start_iterations"], info["warm_start_evaluations"] = warm
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


def _lbfgs_jaxopt(init, problem, hessian, *, objective, max_iter: int, tol: float):
  jaxopt = _import_jaxopt()
  basis, chol, v0 = _preconditioned(init, hessian)

  def objective_v(v, problem):
    return objective(basis @ v, problem)

  # implicit_diff=False: nothing differentiates through the fit, and the
  # implicit-differentiation wrapper would want second derivatives.
  # linesearch_init="max": try the full quasi-Newton step (1.0) first, as
  # optax does; the default "increase" grows from the previous step by 1.5x
  # and wastes iterations after a short first step.
  solver = jaxopt.LBFGS(
    fun=objective_v, maxiter=max_iter, implicit_diff=False, linesearch_init="max"
  )

  # Our own loop rather than solver.run, which always takes a first step: a
  # restart at a point that already meets tol should cost one evaluation,
  # not a line search lost in float32 noise. It also stops on the gradient
  # with respect to w, and when the line search fails (see `_keep_going`).
  def keep_going(carry):
    _, state = carry
    return _keep_going(
      state.iter_num, chol @ state.grad, ~state.failed_linesearch, max_iter=max_iter, tol=tol
    )

  def step(carry):
    v, state = carry
    return tuple(solver.update(v, state, problem))

  v, state = jax.lax.while_loop(keep_going, step, (v0, solver.init_state(v0, problem)))
  # state.num_fun_eval double-counts (the line search adds one per trial on
  # top of its own count); what runs is one evaluation at the start plus one
  # per line-search trial.
  return basis @ v, {
    "iterations": state.iter_num,
    "evaluations": 1 + state.num_linesearch_iter,
    "nll": state.value,
    "grad_norm": jnp.linalg.norm(chol @ state.grad),
  }


def _lbfgs_optax(init, problem, hessian, *, objective, max_iter: int, tol: float):
  basis, chol, v0 = _preconditioned(init, hessian)

  def objective_v(v):
    return objective(basis @ v, problem)

  optimizer = optax.lbfgs()  # zoom line search by default
  # Reuses the value and gradient the line search computed at the accepted
  # point instead of evaluating them again.
  value_and_grad = optax.value_and_grad_from_state(objective_v)

  def keep_going(carry):
    _, state, _ = carry
    count, info = optax.tree.get(state, "count"), optax.tree.get(state, "info")
    # Before the first step the line-search report holds its initial inf.
    line_search_ok = (count == 0) | ((info.decrease_error <= 0) & (info.curvature_error <= 0))
    return _keep_going(
      count, chol @ optax.tree.get(state, "grad"), line_search_ok, max_iter=max_iter, tol=tol
    )

  def step(carry):
    v, state, evaluations = carry
    value, grad = value_and_grad(v, state=state)
    updates, state = optimizer.update(grad, state, v, value=value, grad=grad, value_fn=objective_v)
    trials = optax.tree.get(state, "num_linesearch_steps")
    return optax.apply_updates(v, updates), state, evaluations + trials

  # Evaluate the start up front (as jaxopt's init_state does) so that the
  # loop can stop before the first step; then one evaluation per line-search
  # trial.
  value, grad = jax.value_and_grad(objective_v)(v0)
  state = optax.tree.set(optimizer.init(v0), value=value, grad=grad)
  v, state, evaluations = jax.lax.while_loop(
    keep_going, step, (v0, state, jnp.asarray(1, jnp.int32))
  )
  return basis @ v, {
    "iterations": optax.tree.get(state, "count"),
    "evaluations": evaluations,
    "nll": optax.tree.get(state, "value"),
    "grad_norm": jnp.linalg.norm(chol @ optax.tree.get(state, "grad")),
  }


def _keep_going(iteration, grad_w, line_search_ok, *, max_iter: int, tol: float):
  """The shared stopping rule.

  Stop at max_iter, once ‖∇_w NLL‖ ≤ tol, or when the last line search
  failed. Near the optimum the last happens when float32 cannot get the
  gradient below tol (very large logits: one rounding step of w then moves
  the gradient by more than tol); the NLL is then at its float32 optimum,
  more iterations would only burn evaluations, and the fit reports
  converged=False. A failure far from the optimum (a poor start) is what
  the restart in `solve` recovers from.
  """
  return (iteration < max_iter) & (jnp.linalg.norm(grad_w) > tol) & line_search_ok
