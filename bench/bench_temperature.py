"""Benchmark the joint temperature fit of a duo (m = 2).

    python bench/bench_temperature.py [--n 50000 --c 1000] [--repeats 5] [--quick] [--out PATH]

Fits a large model + sidekick on synthetic logits at 10,000 × 10 and at
N × C (default 50,000 × 1,000) with both solvers of
`duojax.temperature.fit_temperatures`, with the reference recipe re-implemented
in PyTorch (a 25 × 25 grid over T in [0.05, 5], then torch.optim.LBFGS with
lr 0.01 and max_iter 50 on (z_L / T_L + z_S / T_S) / 2), and with scipy's
L-BFGS-B in float64. Each method runs once to compile (JAX) / warm up, then
`--repeats` times (the slow methods only once above 10^6 logits); the table
shows the median and the fastest run, and the final NLL recomputed in float64
at each method's weights so that the methods compare on equal terms.

It then compares the jaxopt time with a memory-bandwidth floor: each
objective + gradient evaluation has to read the m·N·C float32 logits at least
twice (value, then gradient); the floor is those bytes times the evaluations
the solve made, over the read bandwidth measured in the same run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from duojax.core import temperature  # noqa: E402


def synthetic_duo(n: int, c: int, seed: int = 0):
  """A calibrated latent model, labels sampled from it, and two distortions.

  Large: overconfident (×2) with little noise; sidekick: underconfident (×0.7)
  and noisier. Generated on device: 50,000 × 1,000 takes well under a second.
  """
  keys = jax.random.split(jax.random.key(seed), 4)

  @jax.jit
  def make(keys):
    true = 3.0 * jax.random.normal(keys[0], (n, c))
    labels = jnp.argmax(true + jax.random.gumbel(keys[1], (n, c)), axis=-1).astype(jnp.int32)
    large = 2.0 * (true + 0.5 * jax.random.normal(keys[2], (n, c)))
    small = 0.7 * (true + 1.5 * jax.random.normal(keys[3], (n, c)))
    return (large, small), labels

  return jax.block_until_ready(make(keys))


def scipy_fit(members, labels):
  """float64 L-BFGS-B, analytic gradient: (w, iterations, evaluations, nll)."""
  stack = [np.asarray(z, np.float64) for z in members]
  labels = np.asarray(labels)
  rows = np.arange(len(labels))
  label_logits = np.stack([z[rows, labels] for z in stack])

  def nll_and_grad(w):
    z = w[0] * stack[0]
    for w_i, z_i in zip(w[1:], stack[1:]):
      z += w_i * z_i
    row_max = z.max(axis=1)
    z -= row_max[:, None]
    np.exp(z, out=z)
    mass = z.sum(axis=1)
    z /= mass[:, None]  # in place: z is now p
    value = float(np.mean(row_max + np.log(mass) - w @ label_logits))
    grad = np.array([np.vdot(z, z_i) for z_i in stack]) / len(labels) - label_logits.mean(axis=1)
    return value, grad

  m = len(stack)
  result = optimize.minimize(
    nll_and_grad,
    np.full(m, 1.0 / m),
    jac=True,
    method="L-BFGS-B",
    options={"ftol": 1e-15, "gtol": 1e-6, "maxiter": 100},
  )
  return result.x, result.nit, result.nfev, float(result.fun)


def nll64(weights, members, labels) -> float:
  """The mean NLL at w in float64, to compare the methods on equal terms."""
  w = np.asarray(weights, np.float64)
  z = sum(w_i * np.asarray(z_i, np.float64) for w_i, z_i in zip(w, members))
  row_max = z.max(axis=1)
  log_mass = np.log(np.exp(z - row_max[:, None]).sum(axis=1))
  return float(np.mean(row_max + log_mass - z[np.arange(len(z)), np.asarray(labels)]))


def torch_reference_fit(members, labels, grid: int = 25, t_range=(0.05, 5.0)):
  """The reference recipe in PyTorch: (w, iterations, evaluations, nll).

  A grid × grid search over (T_L, T_S) in `t_range` for the lowest NLL of
  (z_L / T_L + z_S / T_S) / 2, then torch.optim.LBFGS(lr=0.01, max_iter=50)
  from the best grid point. Returned as the equivalent weights w_i = 1 / (m T_i).
  """
  import torch
  import torch.nn.functional as F

  stack = [torch.from_numpy(np.array(z, np.float32)) for z in members]  # writable copies
  target = torch.from_numpy(np.asarray(labels, np.int64))
  m = len(stack)

  def loss(temps):
    z = sum(z_i / t_i for z_i, t_i in zip(stack, temps)) / m
    return F.cross_entropy(z, target)

  values = np.linspace(*t_range, grid)
  with torch.inference_mode():
    best = min(
      ((float(loss((t_l, t_s))), (t_l, t_s)) for t_l in values for t_s in values),
      key=lambda pair: pair[0],
    )[1]
  temps = torch.tensor(best, dtype=torch.float32, requires_grad=True)
  optimizer = torch.optim.LBFGS([temps], lr=0.01, max_iter=50)

  def closure():
    optimizer.zero_grad()
    value = loss(temps)
    value.backward()
    return value

  optimizer.step(closure)
  state = optimizer.state[optimizer._params[0]]
  t = temps.detach().numpy().astype(np.float64)
  return 1.0 / (m * t), int(state.get("n_iter", 0)), grid * grid + int(state.get("func_evals", 0))


def read_bandwidth_gbs(members) -> float:
  """XLA's read bandwidth right now: a jitted full sum over the logits."""
  total = jax.jit(lambda ms: sum(jnp.sum(z) for z in ms))
  timing = harness.time_call(lambda: total(members), repeats=5, sync=harness.jax_sync)
  return sum(z.size * 4 for z in members) / timing.median_s / 1e9


def timed(fn, repeats: int):
  """(result of the last call, Timing); one call only when repeats <= 1."""
  results = []

  def call():
    results.append(fn())
    return results[-1]

  if repeats <= 1:
    start = time.perf_counter()
    call()
    seconds = time.perf_counter() - start
    return results[-1], harness.Timing(seconds, (seconds,))
  timing = harness.time_call(call, repeats=repeats)
  return results[-1], timing


def fit_rows(n: int, c: int, repeats: int, with_torch: bool):
  """Table rows for one problem size, plus what the bandwidth floor needs."""
  members, labels = synthetic_duo(n, c)
  size = f"{n:,}×{c:,}"
  rows, floor = [], None
  for solver in temperature.SOLVERS:
    fit = lambda solver=solver: temperature.fit_temperatures_with_info(
      members, labels, solver=solver
    )
    timing = harness.time_call(fit, repeats=repeats, sync=harness.jax_sync)
    weights, info = fit()
    # Warm-start run (on the rows shown) + final run on all rows.
    rows.append(
      [
        f"duojax, {solver} L-BFGS (float32)",
        size,
        f"{timing.compile_s:.2f}",
        f"{timing.median_s:.3f}",
        f"{timing.min_s:.3f}",
        f"{info['warm_start_iterations']} + {info['iterations']}",
        f"{info['warm_start_evaluations']} on {info['warm_start_rows']:,} rows"
        f" + {info['evaluations']}",
        f"{nll64(weights, members, labels):.8f}",
      ]
    )
    if solver == "jaxopt":
      floor = (size, members, info, timing.median_s)
    print(f"  {solver} {size}: w = {np.asarray(weights)}", flush=True)
  # The eager methods have nothing to compile: above 10^6 logits a single
  # call is both the timing and the result (the PyTorch grid alone is 625
  # full passes over the logits).
  slow_repeats = repeats if n * c <= 10**6 else 1
  if with_torch:
    (w, nit, nfev), timing = timed(lambda: torch_reference_fit(members, labels), slow_repeats)
    rows.append(
      [
        "reference recipe, PyTorch (25² grid + LBFGS)",
        size,
        "–",
        f"{timing.median_s:.3f}",
        f"{timing.min_s:.3f}",
        f"{nit}",
        f"{nfev}",
        f"{nll64(w, members, labels):.8f}",
      ]
    )
    print(f"  torch reference {size}: w = {w}", flush=True)
  (w, nit, nfev, _), timing = timed(lambda: scipy_fit(members, labels), slow_repeats)
  rows.append(
    [
      "scipy L-BFGS-B (float64)",
      size,
      "–",
      f"{timing.median_s:.3f}",
      f"{timing.min_s:.3f}",
      f"{nit}",
      f"{nfev}",
      f"{nll64(w, members, labels):.8f}",
    ]
  )
  return rows, floor


def floor_note(floor, bandwidth_gbs: float) -> str:
  """How far the jaxopt fit is from reading the logits at memory speed."""
  size, members, info, median = floor
  logits_bytes = sum(z.size * 4 for z in members)
  sample_fraction = info["warm_start_rows"] / members[0].shape[0]  # 1 on small splits
  evaluations = info["evaluations"] + info["warm_start_evaluations"] * sample_fraction
  # One objective + gradient evaluation must read the logits at least twice
  # (value, then gradient), whatever the implementation.
  floor_s = 2 * logits_bytes * evaluations / (bandwidth_gbs * 1e9)
  measured = read_bandwidth_gbs(members)
  floor_now = floor_s * bandwidth_gbs / measured
  return (
    f"- {size}: {logits_bytes / 1e6:,.0f} MB of logits, {evaluations:.1f} full-data "
    f"evaluation equivalents → floor {floor_s * 1e3:.0f} ms at {bandwidth_gbs:g} GB/s; "
    f"XLA read bandwidth measured now {measured:.1f} GB/s → floor {floor_now * 1e3:.0f} ms; "
    f"measured fit {median * 1e3:.0f} ms = **{median / floor_now:.1f}× the floor**."
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=50_000)
  parser.add_argument("--c", type=int, default=1_000)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--quick", action="store_true", help="tiny sizes (for the unit test)")
  parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference recipe")
  parser.add_argument(
    "--bandwidth-gbs",
    type=float,
    default=27.0,
    help="read bandwidth for the floor (this CPU's XLA measured 27 GB/s)",
  )
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  args = parser.parse_args(argv)
  sizes = [(500, 10), (2_000, 50)] if args.quick else [(10_000, 10), (args.n, args.c)]
  repeats = 1 if args.quick else args.repeats
  machine = harness.machine_line()

  rows, floors = [], []
  for n, c in sizes:
    size_rows, floor = fit_rows(n, c, repeats, with_torch=not args.no_torch)
    rows += size_rows
    floors.append(floor)
  table = harness.md_table(
    [
      "method",
      "N×C",
      "compile s",
      "median s",
      "min s",
      "iterations",
      "evaluations",
      "final NLL (float64 at the fitted w)",
    ],
    rows,
  )
  notes = "\n".join(floor_note(f, args.bandwidth_gbs) for f in floors)
  body = (
    "Synthetic logits: a large model (overconfident) and a sidekick (underconfident, "
    "noisier). Median of the repeats after one compiling run; the final NLL is recomputed "
    "in float64 at each method's weights (the reference recipe's temperatures as "
    'w = 1 / (2T)). Iterations/evaluations of duojax are "warm-start run on a row sample + '
    "final run on all rows\"; the reference recipe's evaluations include its 625 grid "
    f"points.\n\n{table}\n\nTarget: ≤ 0.5 s for the duo on 50k×1000 after compilation, and "
    "a final NLL at least as low as every other method's.\n\nMemory-bandwidth floor of the "
    f"jaxopt fit:\n\n{notes}"
  )
  harness.print_section("Temperature fit", body)
  harness.write_section(
    "temperature", "Temperature fit (duo, m = 2)", body, machine=machine, path=args.out
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
