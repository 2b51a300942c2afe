"""What scoring a classifier costs: the metrics suite, and the evaluation pipeline as N grows.

    python bench/bench_metrics.py [--quick] [--only suite|scaling] [--out BENCHMARKS.md]

Section `metrics_suite`: `duojax.metrics.evaluate` (accuracy, NLL, Brier,
ECE, correctness AUROC, AURC, E-AURC, AUGRC, SAC@90..99) on N × C logits
(default 100,000 × 1,000) against `reference_metrics`, the same suite written
the way uncertainty papers' code usually computes it: scipy softmax in
float64, sklearn's log_loss and roc_auc_score, a one-hot Brier score, a
15-bin ECE loop and the risk-coverage curve from an argsort and a cumsum, all
in numpy. The logits are a synthetic duo (`bench_temperature.synthetic_duo`)
combined at fixed weights (0.4, 0.3). duojax runs on the device array the
forward pass would hand it, and once more on the host numpy array (which
adds the transfer). Each implementation runs once (JAX compiles; numpy warms
up), then `--repeats` (duojax) or `--ref-repeats` (reference) timed runs;
the table shows the first call and the median. Both must agree: the largest
|duojax − reference| over the metrics guards that the two compute the same
numbers (they differ only where float32 and float64 confidences tie or
round differently).

Section `eval_scaling`: the evaluation pipeline of a duo at N samples:
  forward  the fused duo forward (`duo.make_fused_forward`) of the demo pair,
           ResNet-14 + cnn_xs on 28×28×1 at 10 classes, freshly initialised
           (weights do not change the time), over N random images in batches
           of `--batch` (the last one padded), logits concatenated to [2, N, 10];
           compiled first, then timed once;
  fit      `temperature.fit_temperatures` on those [2, N, 10] logits;
  metrics  `duo.combine` at the fitted weights + `metrics.evaluate`;
fit and metrics take the median of `--repeats` runs after a compiling one.
The `--synthetic-n` rows (default 1,000,000) skip the forward and fit and
score `synthetic_duo(N, 10)` logits instead. Per-sample time and
(fit + metrics) / (N log N), both relative to the smallest N, show whether
the cost grows like N log N (the sort) or better.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import softmax
from sklearn.metrics import log_loss, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from bench_temperature import synthetic_duo  # noqa: E402

from duojax import models  # noqa: E402
from duojax.core import duo, metrics, temperature  # noqa: E402

SUITE_WEIGHTS = (0.4, 0.3)  # near-calibrated for synthetic_duo
TARGET_S, TARGET_SPEEDUP = 1.0, 10.0
AGREEMENT_TOL = 1e-4  # on every metric, else the two do not compute the same thing


def reference_metrics(logits, labels, num_bins: int = 15) -> dict[str, float]:
  """The metrics of `metrics.evaluate`, computed with numpy, scipy and sklearn."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  n, c = logits.shape
  probs = softmax(logits.astype(np.float64), axis=1)
  confidence = probs.max(axis=1)
  correct = probs.argmax(axis=1) == labels
  out = {
    "acc": correct.mean(),
    "nll": log_loss(labels, probs, labels=np.arange(c)),
    "brier": np.mean(np.sum((probs - np.eye(c)[labels]) ** 2, axis=1)),
  }
  edges = np.linspace(0.0, 1.0, num_bins + 1)
  ece = 0.0
  for lo, hi in zip(edges[:-1], edges[1:]):
    in_bin = (confidence > lo) & (confidence <= hi)
    if in_bin.any():
      ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
  out["ece"] = ece
  out["auroc"] = roc_auc_score(correct, confidence) if 0 < correct.sum() < n else np.nan
  # Risk-coverage curve: errors among the k most confident, k = 1..N.
  k = np.arange(1, n + 1)
  cum_errors = np.cumsum(~correct[np.argsort(-confidence, kind="stable")])
  risk = cum_errors / k
  out["aurc"] = risk.mean()
  ideal_risk = np.cumsum(np.sort(~correct)) / k  # every correct sample first
  out["eaurc"] = out["aurc"] - ideal_risk.mean()
  out["augrc"] = cum_errors.mean() / n
  for t in metrics.SAC_TARGETS:
    # e/k and (100 − t)/100 are both correctly rounded: the comparison is exact.
    reaches = risk <= (100 - t) / 100
    out[f"sac{t}"] = k[reaches].max() / n if reaches.any() else 0.0
  return {name: float(out[name]) for name in metrics.METRIC_NAMES}


def differences(ours: dict, reference: dict) -> dict[str, float]:
  return {name: abs(ours[name] - reference[name]) for name in reference}


def suite_section(n: int, c: int, repeats: int, ref_repeats: int) -> str:
  members, labels = synthetic_duo(n, c)
  logits = jax.block_until_ready(duo.combine(jnp.stack(members), jnp.array(SUITE_WEIGHTS)))
  del members
  host_logits, host_labels = np.asarray(logits), np.asarray(labels)

  timings = {
    "duojax `evaluate`, device arrays": harness.time_call(
      lambda: metrics.evaluate(logits, labels), repeats=repeats
    ),
    "duojax `evaluate`, numpy arrays": harness.time_call(
      lambda: metrics.evaluate(host_logits, host_labels), repeats=repeats
    ),
    "reference (numpy + scipy + sklearn, float64)": harness.time_call(
      lambda: reference_metrics(host_logits, host_labels), repeats=ref_repeats
    ),
  }
  ours, reference = metrics.evaluate(logits, labels), reference_metrics(host_logits, host_labels)
  diffs = differences(ours, reference)
  worst = max(diffs, key=lambda name: -1.0 if math.isnan(diffs[name]) else diffs[name])
  for name, d in diffs.items():
    print(f"  |duojax − reference| {name}: {d:.3g}", flush=True)

  base = timings["reference (numpy + scipy + sklearn, float64)"].median_s
  size = f"{n:,}×{c:,}"
  rows = []
  for name, t in timings.items():
    agree = "–" if name.startswith("reference") else f"{diffs[worst]:.2g} ({worst})"
    rows.append(
      [name, size, f"{t.first_s:.3f}", f"{t.median_s:.3f}", f"{base / t.median_s:.1f}×", agree]
    )
  table = harness.md_table(
    [
      "implementation",
      "N×C",
      "first call s (compile)",
      "median s",
      "speed-up",
      r"\|duojax − reference\|",
    ],
    rows,
  )
  metric_rows = [
    [name, f"{ours[name]:.6g}", f"{reference[name]:.6g}", f"{diffs[name]:.2g}"]
    for name in metrics.METRIC_NAMES
  ]
  metric_table = harness.md_table(["metric", "duojax", "reference", r"\|difference\|"], metric_rows)
  best = timings["duojax `evaluate`, device arrays"].median_s
  met = best <= TARGET_S and base / best >= TARGET_SPEEDUP
  return (
    f"Synthetic duo logits combined at w = {SUITE_WEIGHTS}; median of {repeats} timed "
    f"runs (duojax) and {ref_repeats} (reference) after a first call.\n\n{table}\n\n"
    f"Target: ≤ {TARGET_S:g} s and ≥ {TARGET_SPEEDUP:g}× faster than the reference on "
    f"{size} (device arrays): {best:.3f} s, {base / best:.1f}×: "
    f"**{'met' if met else 'missed'}**.\n\nAgreement per metric (largest "
    f"{diffs[worst]:.2g}, on {worst}; tolerance {AGREEMENT_TOL:g}: "
    f"**{'agree' if diffs[worst] <= AGREEMENT_TOL else 'DISAGREE'}**):\n\n{metric_table}"
  )


def demo_forward(batch: int):
  """(forward(n) -> [2, n, 10] logits, compile seconds) for the demo pair."""
  large = models.get_model("resnet14", 10, rngs=0, in_channels=1, image_size=28)
  small = models.get_model("cnn_xs", 10, rngs=1, in_channels=1, image_size=28)
  graphdefs, states = duo.split_members((large, small))
  fused = duo.make_fused_forward(graphdefs)
  pool = [jax.random.normal(jax.random.key(i), (batch, 28, 28, 1)) for i in range(2)]
  compile_timing = harness.time_call(
    lambda: fused(states, pool[0]), repeats=1, sync=harness.jax_sync
  )

  def forward(n: int):
    outs = [fused(states, pool[i % len(pool)]) for i in range(-(-n // batch))]
    return jax.block_until_ready(jnp.concatenate(outs, axis=1)[:, :n])

  return forward, compile_timing.compile_s


def time_stages(stack, labels, repeats: int):
  """Timings of the temperature fit and of combine + evaluate on [m, N, C] logits."""
  fit = harness.time_call(
    lambda: temperature.fit_temperatures(stack, labels), repeats=repeats, sync=harness.jax_sync
  )
  weights = temperature.fit_temperatures(stack, labels)
  score = harness.time_call(
    lambda: metrics.evaluate(duo.combine(stack, weights), labels), repeats=repeats
  )
  return fit, score


def scaling_section(sizes, synthetic_sizes, batch: int, repeats: int) -> str:
  results = []  # (n, source, forward s, fit Timing, metrics Timing)
  forward_compile = None
  if sizes:
    forward, forward_compile = demo_forward(batch)
    for n in sizes:
      labels = jax.random.randint(jax.random.key(n), (n,), 0, 10)
      start = time.perf_counter()
      stack = forward(n)  # once: at 100k it takes tens of seconds on a small CPU
      forward_s = time.perf_counter() - start
      fit, score = time_stages(stack, labels, repeats)
      results.append((n, "demo duo forward", forward_s, fit, score))
      print(
        f"  N = {n:,}: forward {forward_s:.2f} s, fit {fit.median_s:.3f} s, "
        f"metrics {score.median_s:.3f} s",
        flush=True,
      )
  for n in synthetic_sizes:
    members, labels = synthetic_duo(n, 10)
    fit, score = time_stages(jnp.stack(members), labels, repeats)
    results.append((n, "synthetic (no forward)", None, fit, score))
    print(
      f"  N = {n:,} synthetic: fit {fit.median_s:.3f} s, metrics {score.median_s:.3f} s", flush=True
    )

  first_n = results[0][0]
  first_tail = results[0][3].median_s + results[0][4].median_s
  rows, per_n_log_n = [], float("nan")
  for n, source, forward_s, fit, score in results:
    tail = fit.median_s + score.median_s
    total = tail + (forward_s or 0.0)
    compile_s = fit.compile_s + score.compile_s
    per_sample = (tail / n) / (first_tail / first_n)
    per_n_log_n = (tail / (n * math.log(n))) / (first_tail / (first_n * math.log(first_n)))
    rows.append(
      [
        f"{n:,}",
        source,
        "–" if forward_s is None else f"{forward_s:.2f}",
        f"{fit.median_s:.3f}",
        f"{score.median_s:.3f}",
        f"{total:.2f}",
        f"{compile_s:.1f}",
        f"{total / n * 1e6:,.1f}",
        f"{per_sample:.3f}",
        f"{per_n_log_n:.3f}",
      ]
    )
  table = harness.md_table(
    [
      "N",
      "logits",
      "forward s",
      "temperature fit s",
      "metrics s",
      "total s",
      "fit + metrics compile s",
      "µs / sample (total)",
      "fit + metrics per sample, × smallest N",
      "fit + metrics / (N log N), × smallest N",
    ],
    rows,
  )
  forward_note = (
    ""
    if forward_compile is None
    else f" (compiled once first: {forward_compile:.1f} s, not in the table)"
  )
  return (
    f"Forward: fused duo (ResNet-14 + cnn_xs, 28×28×1, 10 classes), batches of "
    f"{batch}, timed once{forward_note}. Fit and metrics (combine + evaluate): "
    f"median of {repeats} after a first, compiling run (its overhead is the compile "
    f"column). Total = forward + fit + metrics.\n\n{table}\n\n"
    f"Fit + metrics at N = {results[-1][0]:,} cost {per_n_log_n:.3f}× the N log N "
    f"extrapolation from N = {first_n:,}: "
    f"**{'N log N or better' if per_n_log_n <= 1.0 else 'worse than N log N'}**."
  )


def _sizes(text: str) -> list[int]:
  return [int(float(s)) for s in text.split(",") if s.strip()]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat (unit test)")
  parser.add_argument("--only", choices=("suite", "scaling"), help="run one section only")
  parser.add_argument("--n", type=int, default=100_000, help="suite: rows of logits")
  parser.add_argument("--c", type=int, default=1_000, help="suite: classes")
  parser.add_argument("--scaling-n", default="10000,100000", help="scaling: N with a forward")
  parser.add_argument("--synthetic-n", default="1000000", help="scaling: N, synthetic logits")
  parser.add_argument("--batch", type=int, default=1024, help="scaling: forward batch size")
  parser.add_argument("--repeats", type=int, default=5, help="timed runs of duojax calls")
  parser.add_argument("--ref-repeats", type=int, default=3, help="timed runs of the reference")
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  args = parser.parse_args(argv)
  n, c = (2_000, 50) if args.quick else (args.n, args.c)
  sizes, synthetic_sizes = (
    ([512, 2048], [8192]) if args.quick else (_sizes(args.scaling_n), _sizes(args.synthetic_n))
  )
  if not sizes and not synthetic_sizes:
    parser.error("no N to run for the scaling section")
  batch = 256 if args.quick else args.batch
  repeats, ref_repeats = (1, 1) if args.quick else (args.repeats, args.ref_repeats)
  machine = harness.machine_line()

  if args.only in (None, "suite"):
    title = "Metrics suite: duojax against the numpy/sklearn reference"
    body = suite_section(n, c, repeats, ref_repeats)
    harness.print_section(title, body)
    harness.write_section("metrics_suite", title, body, machine=machine, path=args.out)
  if args.only in (None, "scaling"):
    title = "Evaluation scaling with N: forward, temperature fit, metrics"
    body = scaling_section(sizes, synthetic_sizes, batch, repeats)
    harness.print_section(title, body)
    harness.write_section("eval_scaling", title, body, machine=machine, path=args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
