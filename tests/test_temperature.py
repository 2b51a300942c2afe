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

from duojax.core import duo, temperature

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
  members = [
    (scale * (true + noise * rng.standard_normal((n, c)))).astype(np.float32)
    for scale, noise in scales_and_noise
  ]
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
  result = optimize.minimize(
    _nll64_and_grad,
    np.full(m, 1.0 / m),
    args=(stack, labels),
    jac=True,
    method="L-BFGS-B",
    options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000},
  )
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
    return (
      jax.value_and_grad(temperature._objective)(weights, problem),
      jax.value_and_grad(temperature.nll)(weights, stack, labels),
    )

  for weights, overflows in (
    ([0.5, 0.5], True),
    ([0.4, 0.0], True),
    ([1.3, -0.2], True),
    ([-0.3, 2.0], False),
    ([0.2, 0.1], False),
  ):
    weights = jnp.asarray(weights, jnp.float32)
    mass, _ = temperature._row_sums(
      weights, problem.members, weights @ problem.label_logits, with_moments=False
    )
    assert bool(jnp.any(mass > temperature._MAX_ROW_MASS)) == overflows
    (value, grad), (ref_value, ref_grad) = fused_and_reference(weights)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-5)
    ref64_value, ref64_grad = _nll64_and_grad(
      np.asarray(weights, np.float64), np.asarray(stack, np.float64), labels
    )
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
  weights, info = temperature._fit(
    [logits], labels, solver="optax", init=None, max_iter=100, tol=1e-6, sample_logits=4096
  )
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
  combined = jax.jit(duo.combine)(low, eager)
  assert combined.dtype == jnp.float32 and combined.shape == (N, C)


def test_stacked_input_equals_list_and_combine_is_the_weighted_sum():
  members, labels = _problem(2)
  from_list = temperature.fit_temperatures(members, labels)
  from_stack = temperature.fit_temperatures(jnp.asarray(np.stack(members)), labels)
  np.testing.assert_allclose(from_list, from_stack, rtol=1e-6)
  weights = np.array([0.7, -0.2], np.float32)
  expected = 0.7 * members[0] - 0.2 * members[1]
  np.testing.assert_allclose(duo.combine(members, weights), expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    duo.combine(np.stack(members), weights), expected, rtol=1e-5, atol=1e-5
  )
  # The old name still works, says where the function lives now, and agrees.
  with pytest.warns(DeprecationWarning, match="duojax.duo.combine"):
    old = temperature.combine(members, weights)
  np.testing.assert_array_equal(old, duo.combine(members, weights))


def _with(members, index, row, col, value):
  members = [z.copy() for z in members]
  members[index][row, col] = value
  return members


@pytest.mark.parametrize(
  "make_args, message",
  [
    (lambda z, y: ([], y), r"no members"),
    (lambda z, y: (z[0], y), r"must be stacked \[m, N, C\]"),
    (lambda z, y: ([z[0], z[1][:, :5]], y), r"member 1 has 5 classes but member 0 has 10"),
    (lambda z, y: ([z[0], z[1][:-1]], y), r"member 1 has 1999 examples but member 0 has 2000"),
    (lambda z, y: ([z[0][0]], y), r"member 0 has shape \(10,\); expected \[N, C\]"),
    (lambda z, y: ([z[0][:0], z[1][:0]], y[:0]), r"empty validation split"),
    (lambda z, y: (z, y[:-1]), r"labels have shape \(1999,\); expected \(2000,\)"),
    (lambda z, y: (z, y.astype(np.float32)), r"labels must be integers"),
    (
      lambda z, y: (z, np.where(np.arange(N) == 5, 10, y)),
      r"labels must lie in \[0, 10\); found .* max 10",
    ),
    (
      lambda z, y: (z, np.where(np.arange(N) == 5, -1, y)),
      r"labels must lie in \[0, 10\); found min -1",
    ),
    (
      lambda z, y: (_with(_with(_with(z, 0, 3, 4, np.nan), 1, 7, 0, np.inf), 1, 8, 1, np.nan), y),
      r"logits contain 3 non-finite values \(NaN or inf\) \(member 0: 1, member 1: 2\)",
    ),
    (
      lambda z, y: (_with(_with(z, 1, 0, 0, -np.inf), 1, 9, 9, -np.inf), y),
      r"logits contain 2 non-finite values .*member 1: 2",
    ),
  ],
)
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
    duo.combine(members, [1.0, 1.0, 1.0])


# Warnings -------------------------------------------------------------------

_IMPORT_IN_A_FRESH_PROCESS = """
import json, sys, warnings
from duojax.core import solvers
from duojax.core import temperature
assert "jaxopt" not in sys.modules
with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter("always")
  solvers._import_jaxopt()
  warnings.warn("other warnings still show", DeprecationWarning)
print(json.dumps([str(w.message) for w in caught]))
"""


@pytest.mark.slow
def test_jaxopt_import_warning_is_silenced_and_nothing_else():
  # A fresh process, since this one may have imported jaxopt already.
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
    [sys.executable, "-c", _IMPORT_IN_A_FRESH_PROCESS],
    cwd=repo,
    capture_output=True,
    text=True,
    check=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert json.loads(out.stdout.strip().splitlines()[-1]) == ["other warnings still show"]


def test_fitting_emits_no_warnings():
  members, labels = _problem(2)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    temperature.fit_temperatures(members, labels, solver="jaxopt")
    temperature.fit_temperatures(members, labels, solver="optax")
  assert not [str(w.message) for w in caught]


# Padding masks --------------------------------------------------------------

PAD = 37  # padding rows added to the N = 2000 shared shape


def _padded(members, labels, *, seed=4):
  """The split with PAD garbage rows scattered in: (members, labels, mask).

  Padding holds NaN, ±inf, huge logits and out-of-range labels, none of
  which may reach the fit.
  """
  rng = np.random.default_rng(seed)
  n = len(labels) + PAD
  mask = np.ones(n, bool)
  mask[rng.choice(n, PAD, replace=False)] = False
  junk = np.array([np.nan, np.inf, -np.inf, 3e38, -3e38, 1e4], np.float32)
  padded = []
  for z in members:
    full = rng.choice(junk, size=(n, z.shape[1])).astype(np.float32)
    full[mask] = z
    padded.append(full)
  full_labels = rng.choice(np.array([-7, C, 2**31 - 1], np.int32), size=n)
  full_labels[mask] = labels
  return padded, full_labels, mask


@pytest.mark.parametrize("solver", ["jaxopt", "optax"])
def test_masked_fit_equals_the_fit_on_the_valid_rows(solver):
  members, labels = _problem(2)
  padded, padded_labels, mask = _padded(members, labels)
  weights, info = temperature.fit_temperatures_with_info(
    padded, padded_labels, mask=mask, solver=solver
  )
  reference, ref_info = temperature.fit_temperatures_with_info(members, labels, solver=solver)
  np.testing.assert_allclose(weights, reference, atol=1e-5)
  assert info["converged"] and info["warm_start_rows"] == N, info
  assert abs(info["nll"] - ref_info["nll"]) <= 1e-6
  # Stacked input and a mask given as a jax array take the same route.
  stacked = temperature.fit_temperatures(
    jnp.asarray(np.stack(padded)), padded_labels, mask=jnp.asarray(mask), solver=solver
  )
  np.testing.assert_allclose(stacked, reference, atol=1e-5)


@pytest.mark.parametrize("solver", ["jaxopt", "optax"])
def test_masked_fit_on_a_row_sample_and_on_a_sample_of_padding_alone(solver):
  # sample_logits=4096 makes the fit warm-start on every 6th row. Padding on
  # a few sampled rows must leave the sample's weights equal over the rest;
  # padding on every sampled row leaves no warm start at all, and the fit
  # must fall back to the full rows for its curvature.
  members, labels = _problem(2)
  n = N + 500
  stride = n * C // 4096
  for padding in (np.arange(0, n, stride)[1::3], np.arange(0, n, stride)):
    mask = np.ones(n, bool)
    mask[padding] = False
    mask[np.flatnonzero(mask)[N:]] = False  # exactly N valid rows
    padded = [np.full((n, C), np.nan, np.float32) for _ in members]
    for full, z in zip(padded, members):
      full[mask] = z
    padded_labels = np.full(n, -1, np.int32)
    padded_labels[mask] = labels
    weights, info = temperature._fit(
      padded,
      padded_labels,
      solver=solver,
      init=None,
      max_iter=100,
      tol=1e-6,
      mask=mask,
      sample_logits=4096,
    )
    expected_rows = int(mask[::stride].sum())
    assert int(info["warm_start_rows"]) == expected_rows
    assert (int(info["warm_start_iterations"]) == 0) == (expected_rows == 0)
    reference = temperature.fit_temperatures(members, labels, solver=solver)
    np.testing.assert_allclose(weights, reference, atol=1e-5)


def test_masked_fit_under_jit_and_a_mask_of_no_rows_there():
  # Under jit nothing can raise: a mask with no True row must give NaN
  # weights, not init as if converged. optax because it compiles faster.
  members, labels = _problem(2)
  padded, padded_labels, mask = _padded(members, labels)
  fit = jax.jit(lambda z, y, m: temperature.fit_temperatures(z, y, mask=m, solver="optax"))
  reference = temperature.fit_temperatures(members, labels, solver="optax")
  np.testing.assert_allclose(fit(padded, padded_labels, mask), reference, atol=1e-5)
  assert np.all(np.isnan(fit(padded, padded_labels, np.zeros_like(mask))))


def test_masked_nll_equals_nll_on_the_valid_rows_with_finite_gradients():
  members, labels = _problem(2)
  padded, padded_labels, mask = _padded(members, labels)
  weights = jnp.asarray([0.4, 0.1], jnp.float32)
  value_and_grad = jax.value_and_grad(temperature.nll)
  ref_value, ref_grad = value_and_grad(weights, members, labels)
  for logits in (padded, np.stack(padded)):
    value, grad = value_and_grad(weights, logits, padded_labels, mask=mask)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-4, atol=1e-6)
  jitted = jax.jit(lambda w, z, y, m: temperature.nll(w, z, y, mask=m))
  np.testing.assert_allclose(jitted(weights, padded, padded_labels, mask), ref_value, rtol=1e-5)
  low = [jnp.asarray(z, jnp.bfloat16) for z in padded]
  value, grad = value_and_grad(weights, low, padded_labels, mask=mask)
  low_value, low_grad = value_and_grad(weights, [z[mask] for z in low], labels)
  np.testing.assert_allclose(value, low_value, rtol=1e-5)
  np.testing.assert_allclose(grad, low_grad, rtol=1e-4, atol=1e-6)


def _padded_case(edit):
  members, labels = _problem(2)
  padded, padded_labels, mask = _padded(members, labels)
  return edit(padded, padded_labels, mask)


def _first(mask, valid):
  return int(np.flatnonzero(mask == valid)[0])


def _set_label(y, row, value):
  y = y.copy()
  y[row] = value
  return y


@pytest.mark.parametrize(
  "make_args, message",
  [
    (
      lambda z, y, m: (z, _set_label(y, _first(m, True), C), m),
      r"labels must lie in \[0, 10\); found .* max 10",
    ),
    (
      lambda z, y, m: (z, _set_label(y, _first(m, True), -1), m),
      r"labels must lie in \[0, 10\); found min -1",
    ),
    # Padding holds many more non-finite values; only the valid rows' count.
    (
      lambda z, y, m: (
        _with(_with(z, 0, _first(m, True), 3, np.nan), 1, _first(m, True), 4, -np.inf),
        y,
        m,
      ),
      r"logits contain 2 non-finite values \(NaN or inf\) \(member 0: 1, member 1: 1\)",
    ),
    (lambda z, y, m: (z, y, np.zeros_like(m)), r"mask has no valid rows: all 2037 rows"),
    (
      lambda z, y, m: (z, y, m[:-1]),
      r"mask must be a bool array of shape \(2037,\) .*got bool of shape \(2036,\)",
    ),
    (
      lambda z, y, m: (z, y, m.astype(np.int32)),
      r"mask must be a bool array of shape \(2037,\) .*got int32 of shape \(2037,\)",
    ),
  ],
)
def test_masked_checks_see_valid_rows_only(make_args, message):
  logits, labels, mask = _padded_case(make_args)
  with pytest.raises(ValueError, match=message):
    temperature.fit_temperatures(logits, labels, mask=mask)


def test_nll_rejects_a_bad_mask():
  members, labels = _problem(1)
  weights = jnp.ones((1,), jnp.float32)
  with pytest.raises(ValueError, match=r"mask has no valid rows"):
    temperature.nll(weights, members, labels, mask=np.zeros(N, bool))
  with pytest.raises(ValueError, match=r"mask must be a bool array of shape \(2000,\)"):
    temperature.nll(weights, members, labels, mask=np.ones((N, 1), bool))


_SHARDED_SCRIPT = """
import jax
jax.config.update("jax_num_cpu_devices", 2)
import json, sys
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from duojax.core import temperature

split = np.load(sys.argv[1])
members, labels = [split["z0"], split["z1"]], split["labels"].astype(np.int32)
mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
rows = NamedSharding(mesh, P("data"))
# N is odd: one padding row (NaN logits, a label out of range) evens it out.
pad = lambda a, value: np.concatenate([a, np.full((1,) + a.shape[1:], value, a.dtype)])
sharded = [jax.device_put(pad(z, np.nan), rows) for z in members]
sharded_labels = jax.device_put(pad(labels, -3), rows)
mask = jax.device_put(pad(np.ones(len(labels), bool), False), rows)
assert all(len(x.sharding.device_set) == 2 for x in sharded + [sharded_labels, mask])
out = {}
for solver in temperature.SOLVERS:
  # The default sample size fits on all rows; 64 logits per member makes
  # the warm start take a strided sample of the sharded rows (one solver is
  # enough for that path, which the solvers share).
  for sample_logits in (temperature._SAMPLE_LOGITS,) + ((64,) if solver == "optax" else ()):
    weights, _ = temperature._fit(sharded, sharded_labels, solver=solver, init=None,
                                  max_iter=100, tol=1e-6, mask=mask, sample_logits=sample_logits)
    out[f"{solver}/{sample_logits}"] = {
        "weights": np.asarray(weights).tolist(),
        "replicated": weights.sharding.is_fully_replicated,
        "devices": len(weights.sharding.device_set)}
out["nll"] = float(temperature.nll(np.array([0.4, 0.1], np.float32), sharded, sharded_labels,
                                   mask=mask))
print("RESULT", json.dumps(out))
"""


@pytest.mark.slow
def test_fit_on_rows_sharded_over_two_devices_equals_the_unpadded_fit(tmp_path):
  members, labels = _synthetic(301, 7, seed=5, scales_and_noise=[LARGE, SMALL])
  np.savez(tmp_path / "split.npz", z0=members[0], z1=members[1], labels=labels)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  child = subprocess.Popen(
    [sys.executable, "-c", _SHARDED_SCRIPT, str(tmp_path / "split.npz")],
    cwd=repo,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  # The single-device references, computed here while the child compiles.
  try:
    references = {
      solver: temperature.fit_temperatures(members, labels, solver=solver)
      for solver in temperature.SOLVERS
    }
    reference_nll = float(temperature.nll(np.array([0.4, 0.1], np.float32), members, labels))
  finally:
    stdout, stderr = child.communicate(timeout=300)
  assert child.returncode == 0, stderr[-3000:]
  out = json.loads(stdout.split("RESULT")[1])
  assert abs(out.pop("nll") - reference_nll) <= 1e-6
  assert sorted(out) == ["jaxopt/4194304", "optax/4194304", "optax/64"]
  for name, fit in out.items():
    np.testing.assert_allclose(
      fit["weights"], references[name.split("/")[0]], atol=1e-5, err_msg=name
    )
    assert fit["replicated"] and fit["devices"] == 2, (name, fit)
