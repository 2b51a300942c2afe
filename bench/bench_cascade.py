"""What the duo cascade saves in wall time against the always-on duo.

    python bench/bench_cascade.py [--quick] [--batch 500] [--repeats 7] [--out BENCHMARKS.md]

Section `cascade`: for the demo pair (ResNet-14 + cnn_xs on 28×28×1 images,
evaluate.py's batch of 500) and deferral ratios r from 0 to 1, the wall time
per batch of
  * the duo cascade (`duojax.cascade.forward`): the sidekick on every row, the
    large model only on the deferred rows, padded to a bucket size;
  * the always-on duo (`duo.make_fused_forward` + combine + confidence, one
    jitted program, as evaluate.py runs it);
next to the FLOPs ratio the cascade should reach, (F_S + r·F_L) / (F_S + F_L)
with XLA's FLOP counts, and the same with the bucket's padding included.

The threshold is the r-quantile of the sidekick's confidences on the batch, so
that exactly round(r·B) rows are deferred. Models are freshly initialised:
weights do not change the time. Each figure is the median of `--repeats` runs
after a first call that compiles.

If `--results` (default runs/demo/results/results.json) holds the deferral
ratio at which the duo cascade matches the always-on duo's AURC, the section
also measures the cascade at that ratio and states the time saved there.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from duojax import models  # noqa: E402
from duojax.cascade import forward as cascade_forward  # noqa: E402
from duojax.core import duo  # noqa: E402

# (label, large (name, overrides), sidekick (name, overrides), image shape HWC, classes)
PAIRS = {
  # configs/demo_large.py and configs/demo_sidekick.py, on Fashion-MNIST's geometry.
  "demo": (
    "demo pair: ResNet-14 + cnn_xs, 28×28×1",
    ("resnet14", {"in_channels": 1, "image_size": 28, "dropout": 0.1}),
    ("cnn_xs", {"in_channels": 1, "image_size": 28}),
    (28, 28, 1),
    10,
  ),
  # --quick: a tiny stand-in so that the unit test runs in seconds.
  "tiny": (
    "tiny pair: ResNet-8 (width 4) + cnn_xs, 28×28×1",
    ("resnet8", {"in_channels": 1, "image_size": 28, "width": 4}),
    ("cnn_xs", {"in_channels": 1, "image_size": 28}),
    (28, 28, 1),
    10,
  ),
}
RATIOS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
# Any duo weights do: they change the values, not the work.
WEIGHTS = (0.7, 0.3)
DEFAULT_RESULTS = harness.ROOT / "runs" / "demo" / "results" / "results.json"


def ratio_at_duo_aurc(path) -> float | None:
  """results["cascade"]["duo_cascade"]["ratio_at_duo_aurc"], or None when absent."""
  try:
    value = json.loads(Path(path).read_text())["cascade"]["duo_cascade"]["ratio_at_duo_aurc"]
    value = float(value)
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


def threshold_for(confidence, k: int) -> float:
  """A threshold under which exactly k of the confidences fall (barring ties)."""
  conf = np.sort(np.asarray(confidence, np.float64))
  if k <= 0:
    return 0.0
  if k >= conf.size:
    return 2.0
  return float((conf[k - 1] + conf[k]) / 2)


def measure(key: str, batch: int, buckets, repeats: int, ratios=RATIOS):
  label, (large_name, large_kw), (small_name, small_kw), shape, classes = PAIRS[key]
  large = models.get_model(large_name, classes, rngs=0, **large_kw)
  small = models.get_model(small_name, classes, rngs=1, **small_kw)
  (g_l, g_s), (s_l, s_s) = duo.split_members([large, small])
  images = jax.random.normal(jax.random.key(0), (batch, *shape), jnp.float32)

  fused = duo.make_fused_forward((g_l, g_s))

  @jax.jit
  def always_on(states, x):
    z = duo.combine(fused(states, x), WEIGHTS)
    return z, duo.msp_confidence(z)

  duo_t = harness.time_call(
    lambda: always_on((s_l, s_s), images), repeats=repeats, sync=harness.jax_sync
  )
  run = cascade_forward.make_cascade_forward(g_s, g_l, weights=WEIGHTS, buckets=buckets)
  # With threshold 0 nothing is deferred: the output confidence is the sidekick's.
  confidence = run(s_s, s_l, images, 0.0)["confidence"]
  rows, duo_times = [], list(duo_t.times_s)
  for r in ratios:
    threshold = threshold_for(confidence, round(r * batch))
    out = run(s_s, s_l, images, threshold)
    t = harness.time_call(
      lambda: run(s_s, s_l, images, threshold), repeats=repeats, sync=harness.jax_sync
    )
    rows.append(dict(r=r, k=out["num_deferred"], bucket=out["bucket"], t=t))
    # The reference is timed between the rows too, so that a slow spell of
    # this shared machine does not land on one side of every comparison.
    duo_times += harness.time_call(
      lambda: always_on((s_l, s_s), images), repeats=repeats, sync=harness.jax_sync
    ).times_s
  duo_t = harness.Timing(duo_t.first_s, tuple(duo_times))

  def forward(graphdef):
    return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False)[0])

  flops_l = harness.xla_flops(forward(g_l), s_l, images)
  flops_s = harness.xla_flops(forward(g_s), s_s, images)
  return label, duo_t, rows, flops_l, flops_s, run.traces["large"]


def cascade_section(key: str, batch: int, buckets, repeats: int, results_path) -> str:
  ratio = ratio_at_duo_aurc(results_path)
  # The matching ratio is measured itself, not interpolated: with buckets the
  # time is a step function of r.
  ratios = RATIOS if ratio is None else tuple(sorted({*RATIOS, round(ratio, 4)}))
  label, duo_t, rows, flops_l, flops_s, compiles = measure(key, batch, buckets, repeats, ratios)
  t_duo = duo_t.median_s
  total = flops_s + flops_l
  table = []
  for row in rows:
    t = row["t"].median_s
    table.append(
      [
        f"{row['r']:.2f}",
        f"{row['k']}/{batch}",
        str(row["bucket"]),
        f"{t * 1e3:.1f}",
        f"{t_duo * 1e3:.1f}",
        f"{t_duo / t:.2f}×",
        f"{1 - t / t_duo:.0%}",
        f"{t / t_duo:.3f}",
        f"{(flops_s + row['r'] * flops_l) / total:.3f}",
        f"{(flops_s + row['bucket'] / batch * flops_l) / total:.3f}",
      ]
    )
  body = (
    f"**{label}**, batch {batch}, buckets {', '.join(map(str, buckets))}\n\n"
    + harness.md_table(
      [
        "r",
        "deferred",
        "bucket",
        "cascade ms",
        "always-on duo ms",
        "speed-up",
        "time saved",
        "time ratio",
        "FLOPs ratio (F_S + r·F_L)/(F_S + F_L)",
        "FLOPs ratio, bucket padding",
      ],
      table,
    )
    + f"\n\nXLA FLOPs per image: large {flops_l / batch / 1e6:,.1f} M, sidekick "
    f"{flops_s / batch / 1e6:,.2f} M (F_S / F_L = {flops_s / flops_l:.3f}). "
    f"The always-on duo compiles in {duo_t.compile_s:.2f} s; the cascade's "
    f"large-model stage compiled {compiles} times (≤ {len(buckets)} buckets)."
  )
  try:
    where = Path(results_path).resolve().relative_to(harness.ROOT)
  except ValueError:
    where = results_path
  if ratio is None:
    body += (
      f"\n\nNo duo-cascade ratio matching the always-on duo's AURC in `{where}` "
      "(run the demo's evaluation to get one)."
    )
  else:
    t_at = next(row["t"].median_s for row in rows if row["r"] == round(ratio, 4))
    body += (
      f"\n\nAt r = {ratio:.2f}, the deferral ratio at which the duo cascade matches "
      f"the always-on duo's AURC (`{where}`, on the test split), the cascade takes "
      f"{t_at * 1e3:.1f} ms per batch against {t_duo * 1e3:.1f} ms: "
      f"**{1 - t_at / t_duo:.0%} time saved** (FLOPs: "
      f"{1 - (flops_s + ratio * flops_l) / total:.0%} saved)."
    )
  return body


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--quick", action="store_true", help="tiny pair, batch 64, 2 repeats (for the unit test)"
  )
  parser.add_argument("--batch", type=int, default=500, help="rows per batch (evaluate.py's)")
  parser.add_argument(
    "--buckets", default="", help="comma list of sub-batch sizes; default B/8, B/4, B/2, B"
  )
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument(
    "--results",
    default=str(DEFAULT_RESULTS),
    help="results.json holding the duo cascade's AURC-matching ratio",
  )
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  args = parser.parse_args(argv)
  key = "tiny" if args.quick else "demo"
  batch = 64 if args.quick else args.batch
  repeats = 2 if args.quick else args.repeats
  if batch < 1 or repeats < 1:
    parser.error("--batch and --repeats must be positive")
  try:
    buckets = (
      cascade_forward.default_buckets(batch)
      if not args.buckets.strip()
      else tuple(sorted({int(s) for s in args.buckets.split(",") if s.strip()}))
    )
  except ValueError as e:
    parser.error(f"--buckets: {e}")
  if not buckets or buckets[0] < 1 or buckets[-1] < batch:
    parser.error(f"--buckets must be positive and include one ≥ the batch size {batch}")
  machine = harness.machine_line()

  body = cascade_section(key, batch, buckets, repeats, args.results)
  title = "Duo cascade: wall time against the always-on duo"
  harness.print_section(title, body)
  harness.write_section("cascade", title, body, machine=machine, path=args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
