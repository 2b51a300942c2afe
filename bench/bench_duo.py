"""What the fused duo forward costs, and how close the models run to the CPU's peak.

    python bench/bench_duo.py [--quick] [--out BENCHMARKS.md]

Section `duo_cost`: for each (large, sidekick) pair, the wall time per batch of
  * the large model alone (one jitted call),
  * the sidekick alone,
  * the duo as ONE jitted function (`duo.make_fused_forward`, as evaluate.py runs it),
  * the duo as two separate jitted calls (dispatch both, then wait),
next to the FLOPs XLA counts for each program. The target is
duo / large ≤ 1 + FLOPs_S / FLOPs_L + 0.02: fusing must cost no more than the
sidekick's arithmetic.

Section `roofline`: the CPU's measured matmul peak (a large square matmul in
float32 and bfloat16, JAX and, when installed, PyTorch) and the FLOP/s that
the large models' eval forward achieves (XLA flop count / median time).

Models are freshly initialised: weights do not change the time. Each figure is
the median of `--repeats` runs after a first call that compiles; compile time
is reported separately.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from duojax import models  # noqa: E402
from duojax.core import duo  # noqa: E402

# (label, large (name, overrides), sidekick (name, overrides), image shape HWC, batch)
PAIRS = {
  "demo": (
    "demo pair: ResNet-14 + cnn_xs, 28×28×1",
    ("resnet14", {"in_channels": 1, "image_size": 28}),
    ("cnn_xs", {"in_channels": 1, "image_size": 28}),
    (28, 28, 1),
    512,
    10,
  ),
  "vitb_r18": (
    "ViT-B/16 + ResNet-18, 224×224×3",
    ("vit_b16", {}),
    ("resnet18", {}),
    (224, 224, 3),
    64,
    1000,
  ),
  # --quick: tiny stand-ins so that the unit test runs in seconds.
  "tiny": (
    "tiny pair: vit_mu4 + cnn_xs, 32×32×3",
    ("vit_mu4", {"image_size": 32}),
    ("cnn_xs", {"image_size": 32}),
    (32, 32, 3),
    8,
    10,
  ),
}


def _forward(graphdef):
  return jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False)[0])


def measure_pair(key: str, repeats: int):
  label, (large_name, large_kw), (small_name, small_kw), shape, batch, classes = PAIRS[key]
  large = models.get_model(large_name, classes, rngs=0, **large_kw)
  small = models.get_model(small_name, classes, rngs=1, **small_kw)
  (g_l, s_l), (g_s, s_s) = nnx.split(large), nnx.split(small)
  images = jax.random.normal(jax.random.key(0), (batch, *shape), jnp.float32)
  f_large, f_small = _forward(g_l), _forward(g_s)
  fused = duo.make_fused_forward((g_l, g_s))

  def separate():
    return f_large(s_l, images), f_small(s_s, images)

  timings = {
    "large alone": harness.time_call(
      lambda: f_large(s_l, images), repeats=repeats, sync=harness.jax_sync
    ),
    "sidekick alone": harness.time_call(
      lambda: f_small(s_s, images), repeats=repeats, sync=harness.jax_sync
    ),
    "duo, one jit (fused)": harness.time_call(
      lambda: fused((s_l, s_s), images), repeats=repeats, sync=harness.jax_sync
    ),
    "duo, two jitted calls": harness.time_call(separate, repeats=repeats, sync=harness.jax_sync),
  }
  flops_l = harness.xla_flops(f_large, s_l, images)
  flops_s = harness.xla_flops(f_small, s_s, images)
  flops = {
    "large alone": flops_l,
    "sidekick alone": flops_s,
    "duo, one jit (fused)": harness.xla_flops(fused, (s_l, s_s), images),
    "duo, two jitted calls": flops_l + flops_s,
  }
  return label, batch, timings, flops


def duo_section(keys, repeats: int) -> tuple[str, dict]:
  parts, large_rates = [], {}
  for key in keys:
    label, batch, timings, flops = measure_pair(key, repeats)
    base = timings["large alone"].median_s
    flops_l = flops["large alone"]
    rows = []
    for name, t in timings.items():
      rows.append(
        [
          name,
          f"{t.median_s * 1e3:.1f}",
          f"{t.min_s * 1e3:.1f}",
          f"{t.compile_s:.2f}",
          f"{flops[name] / batch / 1e6:,.1f}",
          f"{flops[name] / flops_l:.3f}",
          f"{t.median_s / base:.3f}",
          f"{batch / t.median_s:,.0f}",
        ]
      )
    fused = timings["duo, one jit (fused)"].median_s / base
    target = 1 + flops["sidekick alone"] / flops_l + 0.02
    verdict = "met" if fused <= target else "missed"
    parts.append(
      f"**{label}**, batch {batch}\n\n"
      + harness.md_table(
        [
          "program",
          "median ms",
          "min ms",
          "compile s",
          "MFLOPs/img (XLA)",
          "FLOPs ×large",
          "time ×large",
          "img/s",
        ],
        rows,
      )
      + f"\n\nFused duo / large = {fused:.3f}; target 1 + FLOPs_S/FLOPs_L + 0.02 = "
      f"{target:.3f}: **{verdict}**."
    )
    large_rates[label.split(":")[0] if ":" in label else label] = (
      PAIRS[key][1][0],
      flops_l / base,
      batch,
    )
  return "\n\n".join(parts), large_rates


def matmul_peak(n: int, dtype, repeats: int) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
  mm = jax.jit(lambda a, b: a @ b)
  t = harness.time_call(lambda: mm(a, b), repeats=repeats, sync=harness.jax_sync)
  return 2 * n**3 / t.median_s


def torch_matmul_peak(n: int, dtype_name: str, repeats: int) -> float | None:
  try:
    import torch
  except ImportError:
    return None
  dtype = getattr(torch, dtype_name)
  a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
  with torch.inference_mode():
    t = harness.time_call(lambda: a @ b, repeats=repeats)
  return 2 * n**3 / t.median_s


def roofline_section(large_rates: dict, n: int, repeats: int) -> str:
  peaks = {}
  rows = []
  for dtype_name in ("float32", "bfloat16"):
    if dtype_name == "bfloat16" and not harness.cpu_bf16_flags():
      rows.append(
        [
          f"{n}² matmul, bfloat16",
          "skipped: no AMX / AVX-512 BF16 on this CPU",
          "(emulated in float32 by both)",
        ]
      )
      continue
    jax_peak = matmul_peak(n, getattr(jnp, dtype_name), repeats)
    torch_peak = torch_matmul_peak(n, dtype_name, repeats)
    peaks[dtype_name] = jax_peak
    rows.append(
      [
        f"{n}² matmul, {dtype_name}",
        f"{jax_peak / 1e9:,.0f}",
        "–" if torch_peak is None else f"{torch_peak / 1e9:,.0f}",
      ]
    )
  table = harness.md_table(["kernel", "JAX (XLA) GFLOP/s", "PyTorch GFLOP/s"], rows)
  model_rows = []
  for label, (name, rate, batch) in large_rates.items():
    model_rows.append(
      [
        f"{name} eval forward ({label}), batch {batch}, float32",
        f"{rate / 1e9:,.1f}",
        f"{rate / peaks['float32']:.0%}",
      ]
    )
  model_table = harness.md_table(
    ["large model", "achieved GFLOP/s (XLA flops / median time)", "of float32 matmul peak"],
    model_rows,
  )
  return (
    f"{table}\n\n{model_table}\n\nTarget: ≥ 40% of the float32 matmul peak for the large "
    "model's eval forward."
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes (for the unit test)")
  parser.add_argument("--pairs", default="demo,vitb_r18", help=f"comma list of {list(PAIRS)}")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--matmul", type=int, default=4096, help="side of the peak matmul")
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  args = parser.parse_args(argv)
  keys = ["tiny"] if args.quick else [k.strip() for k in args.pairs.split(",") if k.strip()]
  unknown = [k for k in keys if k not in PAIRS]
  if unknown:
    parser.error(f"unknown pair(s) {unknown}; valid: {', '.join(PAIRS)}")
  repeats = 1 if args.quick else args.repeats
  n = 256 if args.quick else args.matmul
  machine = harness.machine_line()

  body, large_rates = duo_section(keys, repeats)
  harness.print_section("Fused duo cost", body)
  harness.write_section("duo_cost", "Fused duo cost", body, machine=machine, path=args.out)
  body = roofline_section(large_rates, n, repeats)
  harness.print_section("Roofline", body)
  harness.write_section(
    "roofline",
    "Roofline: achieved FLOP/s against the matmul peak",
    body,
    machine=machine,
    path=args.out,
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
