"""Benchmark the joint temperature fit of a duo (m = 2).

    python bench/bench_temperature.py [--n 50000 --c 1000] [--repeats 5]

Fits a large model + sidekick on synthetic logits at 10,000 × 10 and at
N × C (default 50,000 × 1,000) with both solvers of
`duojax.temperature.fit_temperatures`, and with scipy's L-BFGS-B in float64 as
the reference. Each method runs once to compile (JAX) / warm up, then
`--repeats` times (scipy only once above 10^6 logits: it takes seconds); the
table shows the median and the fastest run. "compile s" is the first call's
time minus that median. Iterations and evaluations are "warm-start run +
final run" (see `temperature._solve`); the final NLL is recomputed in float64
at each method's weights so that the methods compare on equal terms.

It then compares the jaxopt time with a memory-bandwidth floor: each
objective + gradient evaluation has to read the m·N·C float32 logits at least
once, realistically twice (value, then gradient); the floor is those bytes
times the evaluations the solve made, over the read bandwidth. The machine may
be shared: the load average is printed with the results.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

from duojax import temperature


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
    z /= mass[:, None]                                   # in place: z is now p
    value = float(np.mean(row_max + np.log(mass) - w @ label_logits))
    grad = np.array([np.vdot(z, z_i) for z_i in stack]) / len(labels) - label_logits.mean(axis=1)
    return value, grad

  m = len(stack)
  result = optimize.minimize(nll_and_grad, np.full(m, 1.0 / m), jac=True, method="L-BFGS-B",
                             options={"ftol": 1e-15, "gtol": 1e-6, "maxiter": 100})
  return result.x, result.nit, result.nfev, float(result.fun)


def nll64(weights, members, labels) -> float:
  """The mean NLL at w in float64, to compare the methods on equal terms."""
  w = np.asarray(weights, np.float64)
  z = sum(w_i * np.asarray(z_i, np.float64) for w_i, z_i in zip(w, members))
  row_max = z.max(axis=1)
  log_mass = np.log(np.exp(z - row_max[:, None]).sum(axis=1))
  return float(np.mean(row_max + log_mass - z[np.arange(len(z)), np.asarray(labels)]))


def time_method(run, repeats: int):
  start = time.perf_counter()
  first = run()
  first_s = time.perf_counter() - start
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    result = run()
    times.append(time.perf_counter() - start)
  median = float(np.median(times))
  return result, max(0.0, first_s - median), median, min(times)


def read_bandwidth_gbs(members) -> float:
  """XLA's read bandwidth right now: a jitted full sum over the logits."""
  total = jax.jit(lambda ms: sum(jnp.sum(z) for z in ms))
  _, _, median, _ = time_method(lambda: jax.block_until_ready(total(members)), 5)
  return sum(z.size * 4 for z in members) / median / 1e9


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--n", type=int, default=50_000)
  parser.add_argument("--c", type=int, default=1_000)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--bandwidth-gbs", type=float, default=27.0,
                      help="read bandwidth for the floor (this CPU's XLA measured 27 GB/s)")
  args = parser.parse_args()

  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}\n")
  rows, floors = [], []
  for n, c in [(10_000, 10), (args.n, args.c)]:
    members, labels = synthetic_duo(n, c)
    size = f"{n:,}×{c:,}"
    for solver in temperature.SOLVERS:
      def run(solver=solver):
        return jax.block_until_ready(temperature.fit_temperatures_with_info(
            members, labels, solver=solver))

      (weights, info), compile_s, median, fastest = time_method(run, args.repeats)
      # Warm-start run (on the rows shown) + final run on all rows.
      iterations = f"{info['warm_start_iterations']} + {info['iterations']}"
      evaluations = (f"{info['warm_start_evaluations']} on {info['warm_start_rows']:,} rows"
                     f" + {info['evaluations']}")
      rows.append((f"{solver} L-BFGS (float32)", size, f"{compile_s:.2f}", f"{median:.3f}",
                   f"{fastest:.3f}", iterations, evaluations,
                   f"{nll64(weights, members, labels):.8f}"))
      if solver == "jaxopt":
        floors.append((size, members, info, median))
      print(f"  {solver} {size}: w = {np.asarray(weights)}, {info}", flush=True)
    (w, nit, nfev, nll), _, median, fastest = time_method(
        lambda: scipy_fit(members, labels), args.repeats if n * c <= 10**6 else 1)
    rows.append(("scipy L-BFGS-B (float64)", size, "–", f"{median:.3f}", f"{fastest:.3f}",
                 f"{nit}", f"{nfev}", f"{nll:.8f}"))
    print(f"  scipy {size}: w = {w}", flush=True)

  print(f"\nload average after: {os.getloadavg()[0]:.1f}\n")
  header = ("method", "N×C", "compile s", "median s", "min s", "iterations", "evaluations",
            "final NLL (float64 at the fitted w)")
  print("| " + " | ".join(header) + " |")
  print("|" + "|".join("---" for _ in header) + "|")
  for row in rows:
    print("| " + " | ".join(row) + " |")

  print("\nMemory-bandwidth floor for the jaxopt duo fit "
        f"(at {args.bandwidth_gbs:g} GB/s; 2 reads of the logits per evaluation):")
  for size, members, info, median in floors:
    logits_bytes = sum(z.size * 4 for z in members)
    sample_fraction = info["warm_start_rows"] / members[0].shape[0]  # 1 on small splits
    evaluations = info["evaluations"] + info["warm_start_evaluations"] * sample_fraction
    floor = 2 * logits_bytes * evaluations / (args.bandwidth_gbs * 1e9)
    # This implementation per evaluation, as XLA compiles it (it does not
    # fuse the m + 1 row sums into one pass): the exp pass reads the m members
    # and writes exp(z − z_label) [N, C]; the row sums read that m + 1 times
    # and each member once more. (3m + 1) reads + 1 write of N·C floats.
    m = len(members)
    modelled = (3 * m + 2) * logits_bytes / m * evaluations / (args.bandwidth_gbs * 1e9)
    bandwidth = read_bandwidth_gbs(members)
    floor_now = floor * args.bandwidth_gbs / bandwidth
    print(f"  {size}: {logits_bytes / 1e6:,.0f} MB of logits, {evaluations:.1f} full-data "
          f"evaluation equivalents -> floor {floor * 1e3:.0f} ms; modelled traffic of this "
          f"implementation {modelled * 1e3:.0f} ms; measured {median * 1e3:.0f} ms "
          f"({median / floor:.1f}x the floor). XLA read bandwidth measured now: "
          f"{bandwidth:.1f} GB/s, at which the floor is {floor_now * 1e3:.0f} ms "
          f"({median / floor_now:.1f}x)")


if __name__ == "__main__":
  main()
