"""What a Hydra ensemble costs against the single ViT and a deep ensemble.

    python bench/bench_hydra.py [--quick] [--members 3] [--repeats 5] [--out BENCHMARKS.md]

Section `hydra`: for each ViT below, M members pruned to a fraction of the
heads of every layer and merged (`duojax.hydra.merge`), against the single ViT
and a deep ensemble of M full ViTs run in one jitted program
(`duo.make_fused_forward`, as evaluate.py runs ensembles):
parameters, XLA forward FLOPs per image and the median wall time of a batch.
Two keep fractions: 1/2 of the heads, and 1/M (the members then hold as many
heads in all as the single ViT). Weights are random: they do not change the
time; the kept heads are drawn at random per member (structure only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from duojax import hydra, models  # noqa: E402
from duojax.core import duo  # noqa: E402
from duojax.models import functional  # noqa: E402

# key -> (label, model name, overrides, image shape HWC, classes, batch)
VITS = {
  "demo": (
    "demo ViT-mi/7 (configs/demo_vit.py), 28×28×1",
    "vit_mi7",
    {"image_size": 28, "in_channels": 1},
    (28, 28, 1),
    10,
    500,
  ),
  "s16": ("ViT-S/16, 224×224×3", "vit_s16", {}, (224, 224, 3), 1000, 8),
  # --quick: a tiny stand-in so that the unit test runs in seconds.
  "tiny": (
    "tiny ViT-mu/4 with 4 heads, 16×16×1",
    "vit_mu4",
    {"image_size": 16, "in_channels": 1, "num_heads": 4},
    (16, 16, 1),
    10,
    16,
  ),
}


def _params(model) -> int:
  return functional.count_params(functional.split_model(model)[1])


def _time(models_, images, repeats):
  graphdefs, states = duo.split_members(models_)
  forward = duo.make_fused_forward(graphdefs)
  return harness.time_call(lambda: forward(states, images), repeats=repeats, sync=harness.jax_sync)


def _flops(models_, images) -> float:
  graphdefs, states = duo.split_members(models_)
  return harness.xla_flops(duo.make_fused_forward(graphdefs), states, images) / len(images)


def measure(key: str, members: int, repeats: int) -> list[list]:
  label, name, overrides, shape, classes, batch = VITS[key]
  vits = [models.get_model(name, classes, rngs=seed, **overrides) for seed in range(members)]
  heads = vits[0].num_heads
  images = jax.random.normal(jax.random.key(0), (batch, *shape), jnp.float32)
  rng = np.random.default_rng(0)
  candidates = [("single ViT", vits[:1]), (f"deep ensemble of {members} ViTs", vits)]
  for keep in sorted({max(1, heads // 2), max(1, heads // members)}, reverse=True):
    pruned = [
      hydra.prune(vits[0], hydra.select_heads(rng.random((vits[0].depth, heads)), keep))
      for _ in range(members)
    ]
    for mlp in hydra.MLP_MODES:
      candidates.append(
        (f"Hydra M={members}, {keep}/{heads} heads, {mlp} MLP", [hydra.merge(pruned, mlp=mlp)])
      )
  rows, base = [], None
  for row_label, group in candidates:
    t = _time(group, images, repeats)
    flops = _flops(group, images)
    params = sum(_params(m) for m in group)
    base = base or (params, flops, t.median_s)
    rows.append(
      [
        row_label,
        f"{params:,}",
        f"{params / base[0]:.2f}",
        f"{flops / 1e6:,.1f}",
        f"{flops / base[1]:.2f}",
        f"{t.median_s * 1e3:.1f}",
        f"{t.median_s / base[2]:.2f}",
      ]
    )
  return label, batch, rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny ViT, 2 repeats (unit test)")
  parser.add_argument("--members", type=int, default=3)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  args = parser.parse_args(argv)
  if args.members < 2 or args.repeats < 1:
    parser.error("--members must be >= 2 and --repeats >= 1")
  keys = ("tiny",) if args.quick else ("demo", "s16")
  repeats = 2 if args.quick else args.repeats
  machine = harness.machine_line()
  parts = []
  for key in keys:
    label, batch, rows = measure(key, args.members, repeats)
    parts.append(
      f"**{label}**, batch {batch}\n\n"
      + harness.md_table(
        ["model", "params", "params ×ViT", "MFLOPs/img", "FLOPs ×ViT", "ms / batch", "time ×ViT"],
        rows,
      )
    )
  body = "\n\n".join(parts) + (
    "\n\nThe grouped merge holds every member's weights and runs every member's tokens, "
    "so with 1/M of the heads its attention costs about one ViT's, while its MLPs (one "
    "per member) cost M ViTs'. Averaging the MLPs shares their weights, not their work: "
    "each member's residual stream still passes through the shared MLP."
  )
  title = "Hydra ensembles: cost against the single ViT and a deep ensemble"
  harness.print_section(title, body)
  harness.write_section("hydra", title, body, machine=machine, path=args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
