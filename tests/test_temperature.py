"""Joint temperature fitting: optimality against scipy, statistics, validation."""

import json
import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, special

from duojax import temperature

N, C = 2000, 10  # most tests share this shape so each solver compiles once per m


def _synthetic(n, c, *, seed, scales_and_noise):
  """Labels drawn from a calibrated model, plus members that distort it.

  A calibrated "true" model has logits u; labels are sampled from softmax(u)
  (Gumbel-max). Member k sees u through noise of std σ_k and a scale s_k:
  z_k = s_k (u + σ_k ε_k). s > 1 is overconfident, s < 1 underconfident.
  """
  rng = np.random.default_rng(seed)
  true = 2.0 * rng.standard_normal((n, c))
  labels = np.argmax(true + rng.gumbel(size=(n, c)), axis=1)
  members = [(scale * (true + noise * rng.standard_normal((n, c)))).astype(np.float32)
             for scale, noise in scales_and_noise]
  return members, labels


LARGE, SMALL, THIRD = (2.5, 0.5), (0.6, 1.5), (1.3, 1.0)


def _problem(m, seed=0):
  return _synthetic(N, C, seed=seed, scales_and_noise=[LARGE, SMALL, THIRD][:m])


# Float64 references ---------------------------------------------------------


def _nll64(weights, members, labels):
  stack = np.asarray(members, np.float64)
  z = np.einsum("m,mnc->nc", np.asarray(weights, np.float64), stack)
  return float(np.mean(special.logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def _nll64_and_grad(weights, stack, labels):
  z = np.einsum("m,mnc->nc", weights, stack)
  log_probs = z - special.logsumexp(z, axis=1, keepdims=True)
  rows = np.arange(len(labels))
  expected = np.einsum("nc,mnc->m", np.exp(log_probs), stack)
  grad = (expected - stack[:, rows, labels].sum(1)) / len(labels)
  return -float(np.mean(log_probs[rows, labels])), grad


def _hessian64(weights, members):
  """Mean over rows of Cov_p(z_i, z_j) at w: the NLL's Hessian."""
  stack = np.asarray(members, np.float64)
  probs = special.softmax(np.einsum("m,mnc->nc", weights, stack), axis=1)
  centred = stack - np.einsum("nc,mnc->mn", probs, stack)[:, :, None]
  return np.einsum("nc,inc,jnc->ij", probs, centred, centred) / stack.shape[1]


def _scipy_fit(members, labels):
  stack = np.asarray(members, np.float64)
  m = len(members)
  result = optimize.minimize(_nll64_and_grad, np.full(m, 1.0 / m), args=(stack, labels),
                             jac=True, method="L-BFGS-B",
                             options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000})
  assert result.success, result.message
  return result.x, result.fun


# Optimality -----------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3])
def test_both_solvers_reach_scipys_optimum_and_agree(m):
  members, labels = _problem(m)
  _, best = _scipy_fit(members, labels)
  fits = {}
  for solver in temperature.SOLVERS:
    weights, info = temperature.fit_temperatures_with_info(members, labels, solver=solver)
    assert weights.shape == (m,) and weights.dtype == jnp.float32
    assert info["converged"], info
    assert info["warm_start_rows"] == N  # a small split: the warm start uses every row
    fits[solver] = (np.asarray(weights), _nll64(weights, members, labels))
    assert abs(fits[solver][1] - best) <= 1e-5, (solver, fits[solver][1], best)
  (w_jaxopt, nll_jaxopt), (w_optax, nll_optax) = fits["jaxopt"], fits["optax"]
  np.testing.assert_allclose(w_jaxopt, w_optax, atol=1e-3)
  assert abs(nll_jaxopt - nll_optax) <= 1e-5


def test_fused_objective_matches_reference_nll_and_its_autodiff_gradient():
  members, labels = _problem(2)
  # In member 0, row 0's label is beaten by 200 logits: for w_0 ≳ 0.4,
  # exp(z − z_label) overflows and the evaluation must switch to the exact
  # row max (the other weights exercise the usual path).
  labels = labels.copy()
  labels[0] = 0
  members[0][0, :] = 0.0
  members[0][0, 0] = -100.0
  members[0][0, 1] = 100.0
  stack = jnp.asarray(np.stack(members))
  members = tuple(stack)
  problem = temperature._Problem(members, temperature._label_logits(members, jnp.asarray(labels)))

  @jax.jit
  def fused_and_reference(weights):
    return (jax.value_and_grad(temperature._objective)(weights, problem),
            jax.value_and_grad(temperature.nll)(weights, stack, labels))

  for weights, overflows in (([0.5, 0.5], True), ([0.4, 0.0], True), ([1.3, -0.2], True),
                             ([-0.3, 2.0], False), ([0.2, 0.1], False)):
    weights = jnp.asarray(weights, jnp.float32)
    mass, _ = temperature._row_sums(weights, problem.members, weights @ problem.label_logits,
                                    with_moments=False)
    assert bool(jnp.any(mass > temperature._MAX_ROW_MASS)) == overflows
    (value, grad), (ref_value, ref_grad) = fused_and_reference(weights)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5)
    ref64_value, ref64_grad = _nll64_and_grad(np.asarray(weights, np.float64),
                                              np.asarray(stack, np.float64), labels)
    np.testing.assert_allclose(value, ref64_value, rtol=1e-5)
    np.testing.assert_allclose(grad, ref64_grad, rtol=1e-4, atol=1e-5)


# Statistics -----------------------------------------------------------------


def test_temperature_scaling_recovers_the_overconfidence_factor():
  # Logits T × (calibrated logits), labels drawn from the calibrated model:
  # the population optimum is w = 1/T. A small row sample makes this fit take
  # the warm-start path (sample fit, then full-data fit); optax because it
  # compiles faster and the path is the same for both solvers.
  n, t = 20_000, 2.5
  rng = np.random.default_rng(1)
  calibrated = 2.0 * rng.standard_normal((n, C))
  labels = np.argmax(calibrated + rng.gumbel(size=(n, C)), axis=1)
  logits = (t * calibrated).astype(np.float32)
  weights, info = temperature._fit([logits], labels, solver="optax", init=None, max_iter=100,
                                   tol=1e-6, sample_logits=4096)
  assert 0 < int(info["warm_start_rows"]) < n
  w = float(weights[0])
  # Asymptotic standard error of the maximum-likelihood w: 1/√(N·I), with I
  # the Fisher information per example (the NLL's curvature at w).
  standard_error = 1.0 / np.sqrt(n * _hessian64(np.array([w]), [logits])[0, 0])
  assert abs(w - 1 / t) <= 4 * standard_error, (w, 1 / t, standard_error)
  _, best = _scipy_fit([logits], labels)
  assert abs(_nll64(weights, [logits], labels) - best) <= 1e-5


def test_useless_sidekick_gets_about_zero_weight_and_never_hurts():
  members, labels = _synthetic(N, C, seed=2, scales_and_noise=[LARGE])
  noise = (3.0 * np.random.default_rng(3).standard_normal((N, C))).astype(np.float32)
  duo = temperature.fit_temperatures([members[0], noise], labels)
  single = temperature.fit_temperatures(members, labels)
  # Noise independent of the labels has population weight exactly 0 (its
  # gradient there has mean 0 and the NLL is convex), so the fitted w_S is
  # ~ N(0, (H⁻¹)_SS / N): allow 4 standard errors.
  hessian = _hessian64(np.asarray(duo, np.float64), [members[0], noise])
  standard_error = np.sqrt(np.linalg.inv(hessian)[1, 1] / N)
  assert abs(float(duo[1])) <= 4 * standard_error, (duo, standard_error)
  # The duo can always set w_S = 0, so it is never worse than TS alone.
  assert _nll64(duo, [members[0], noise], labels) <= _nll64(single, members, labels) + 1e-6


def test_duplicated_member_splits_the_single_model_weight():
  members, labels = _problem(1)
  single = temperature.fit_temperatures(members, labels)
  twice = temperature.fit_temperatures([members[0], members[0]], labels)
  np.testing.assert_allclose(float(twice.sum()), float(single[0]), rtol=1e-4)


# Inputs ---------------------------------------------------------------------


def test_bfloat16_inputs_eager_and_under_jit():
  members, labels = _problem(2)
  low = [jnp.asarray(z, jnp.bfloat16) for z in members]
  eager = temperature.fit_temperatures(low, labels)
  # Same problem as the bfloat16 values upcast to float32 by hand.
  upcast = temperature.fit_temperatures([np.asarray(z, np.float32) for z in low], labels)
  np.testing.assert_allclose(eager, upcast, rtol=1e-6)
  # optax only because it compiles faster; the jit-compatibility is shared.
  fit = jax.jit(lambda a, b, y: temperature.fit_temperatures([a, b], y, solver="optax"))
  jitted = fit(*low, jnp.asarray(labels))
  assert jitted.dtype == jnp.float32
  np.testing.assert_allclose(jitted, eager, atol=1e-5)
  value = jax.jit(temperature.nll)(eager, jnp.stack(low), labels)
  assert value.dtype == jnp.float32 and np.isfinite(value)
  combined = jax.jit(temperature.combine)(low, eager)
  assert combined.dtype == jnp.float32 and combined.shape == (N, C)


def test_stacked_input_equals_list_and_combine_is_the_weighted_sum():
  members, labels = _problem(2)
  from_list = temperature.fit_temperatures(members, labels)
  from_stack = temperature.fit_temperatures(jnp.asarray(np.stack(members)), labels)
  np.testing.assert_allclose(from_list, from_stack, rtol=1e-6)
  weights = np.array([0.7, -0.2], np.float32)
  expected = 0.7 * members[0] - 0.2 * members[1]
  np.testing.assert_allclose(temperature.combine(members, weights), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(temperature.combine(np.stack(members), weights), expected,
                             rtol=1e-5, atol=1e-5)


def _with(members, index, row, col, value):
  members = [z.copy() for z in members]
  members[index][row, col] = value
  return members


@pytest.mark.parametrize("make_args, message", [
    (lambda z, y: ([], y), r"no members"),
    (lambda z, y: (z[0], y), r"must be stacked \[m, N, C\]"),
    (lambda z, y: ([z[0], z[1][:, :5]], y), r"member 1 has 5 classes but member 0 has 10"),
    (lambda z, y: ([z[0], z[1][:-1]], y), r"member 1 has 1999 examples but member 0 has 2000"),
    (lambda z, y: ([z[0][0]], y), r"member 0 has shape \(10,\); expected \[N, C\]"),
    (lambda z, y: ([z[0][:0], z[1][:0]], y[:0]), r"empty validation split"),
    (lambda z, y: (z, y[:-1]), r"labels have shape \(1999,\); expected \(2000,\)"),
    (lambda z, y: (z, y.astype(np.float32)), r"labels must be integers"),
    (lambda z, y: (z, np.where(np.arange(N) == 5, 10, y)),
     r"labels must lie in \[0, 10\); found .* max 10"),
    (lambda z, y: (z, np.where(np.arange(N) == 5, -1, y)),
     r"labels must lie in \[0, 10\); found min -1"),
    (lambda z, y: (_with(_with(_with(z, 0, 3, 4, np.nan), 1, 7, 0, np.inf), 1, 8, 1, np.nan), y),
     r"logits contain 3 non-finite values \(NaN or inf\) \(member 0: 1, member 1: 2\)"),
    (lambda z, y: (_with(_with(z, 1, 0, 0, -np.inf), 1, 9, 9, -np.inf), y),
     r"logits contain 2 non-finite values .*member 1: 2"),
])
def test_bad_inputs_raise_one_value_error_each(make_args, message):
  members, labels = _problem(2)
  logits, labels = make_args(members, labels)
  with pytest.raises(ValueError, match=message):
    temperature.fit_temperatures(logits, labels)


def test_bad_options_raise():
  members, labels = _problem(2)
  with pytest.raises(ValueError, match=r"unknown solver 'bfgs'; valid: 'jaxopt', 'optax'"):
    temperature.fit_temperatures(members, labels, solver="bfgs")
  with pytest.raises(ValueError, match=r"init has shape \(3,\); expected \(2,\)"):
    temperature.fit_temperatures(members, labels, init=[1.0, 1.0, 1.0])
  with pytest.raises(ValueError, match=r"weights have shape \(3,\); expected \(2,\)"):
    temperature.combine(members, [1.0, 1.0, 1.0])


# Warnings -------------------------------------------------------------------

_IMPORT_IN_A_FRESH_PROCESS = """
import json, sys, warnings
from duojax import temperature
assert "jaxopt" not in sys.modules
with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter("always")
  temperature._import_jaxopt()
  warnings.warn("other warnings still show", DeprecationWarning)
print(json.dumps([str(w.message) for w in caught]))
"""


def test_jaxopt_import_warning_is_silenced_and_nothing_else():
  # A fresh process, since this one may have imported jaxopt already.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", _IMPORT_IN_A_FRESH_PROCESS], cwd=repo,
                       capture_output=True, text=True, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert json.loads(out.stdout.strip().splitlines()[-1]) == ["other warnings still show"]


def test_fitting_emits_no_warnings():
  members, labels = _problem(2)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    temperature.fit_temperatures(members, labels, solver="jaxopt")
    temperature.fit_temperatures(members, labels, solver="optax")
  assert not [str(w.message) for w in caught]
