"""duojax on one GPU or TPU: fused duo throughput, train-step MFU, input pipeline, Hydra.

On the accelerator machine, from a checkout of this repository:

    pip install -e .                  # plus a JAX build that sees the accelerator, e.g.
                                      # pip install -U "jax[cuda12]" (NVIDIA) or "jax[tpu]"
    python bench/bench_accelerator.py [--out BENCHMARKS.md] [--cache_dir DIR]
    python bench/bench_accelerator.py --quick [--out FILE]   # tiny models, any backend

Full mode needs an accelerator: where `jax.default_backend()` is "cpu" it says
"no accelerator: skipped" and exits 0 without writing anything. It takes a
few minutes on an H100-class GPU, most of it compiling ViT-B/16 programs.
Every device measurement runs on the first device (`jax.devices()[0]`), models
freshly initialised (weights do not change the time) in bfloat16 compute
(float32 parameters, as `get_model(..., dtype="bfloat16")` builds them).
Each program is compiled ahead of time (its compile time is reported apart),
called once more untimed, then timed `--repeats` times with
`jax.block_until_ready`; figures are medians.

Section `accelerator` of BENCHMARKS.md, four parts:
  1. The fused duo's eval throughput: ViT-B/16 + ResNet-18 at 224, batch 256,
     a uint8 batch in and each member's preprocessing (`duojax.data.prepare`)
     inside the one program (`duo.make_fused_forward`), against the large
     model and the sidekick alone in the same form. The fused program should
     cost the large model's time plus about the sidekick's FLOP share.
  2. Train-step images/s and model FLOP utilisation for ViT-B/16 (batch 128)
     and ResNet-18 (batch 256) at 224: duojax's jitted train step (AdamW,
     clipping, uint8 images normalised on the device), `--steps` timed steps
     in groups of `--group` between syncs, median per step. Model FLOPs of a
     step = 3 × forward FLOPs per image (`functional.flops_per_image`, XLA's
     count) × batch; MFU divides the achieved rate by the device's dense
     bfloat16 peak from the vendor's data sheet (`PEAK_BF16_TFLOPS`, by
     `device_kind`) and by the rate of a large bfloat16 matmul measured here.
  3. Whether the host input pipeline keeps up: `train_batches` (rrc, flip,
     uint8 224×224, `workers=-1`: one process per usable core) over generated
     ImageNet-like JPEGs (`bench_input.make_jpegs`, imported with
     `import_folder`), against part 2's ViT-B/16 train rate on every device of
     the host; from the loader's rate per core, the cores that rate needs.
     The loader is warmed up past every batch its workers hold ahead, and
     timed over at least four batches per worker.
  4. The Hydra merged model (M=3 ViT-B/16 members, each pruned to half the
     heads of every layer with random head choices, then `hydra.merge`, both
     MLP modes) against one ViT-B/16: latency at batch 1 and 64. The Hydra
     paper reports about 1.07× one ViT-B/16's latency on a GPU.

`--quick` (the unit test) runs the same code on tiny models (vit_mu4 and a
width-4 resnet8, 32×32, a few images and steps, Hydra at batch 1 only) on
whatever backend there is, and writes only with `--out`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

from duojax import hydra, models  # noqa: E402
from duojax.core import duo  # noqa: E402
from duojax.data import preprocess  # noqa: E402
from duojax.models import functional  # noqa: E402

SECTION = "accelerator"
TITLE = "Accelerator: fused duo, train-step MFU, input pipeline, Hydra latency"
DATASET = "bench_accelerator_jpegs"
# ViTs are commonly trained on inputs scaled to [-1, 1]; ResNets on ImageNet's
# statistics. Two different specs also make the fused program normalise twice,
# as a real duo does.
VIT_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))

# Dense (no sparsity) bfloat16 matmul peaks per JAX device, TFLOP/s, from the
# vendors' data sheets: figures to divide by, not measurements. Matched as
# substrings of the lower-cased `device_kind`, first match wins, so the more
# specific names come first. TPU v2 and v3 expose each of a chip's two cores
# as a device: their figures are half a chip's.
PEAK_BF16_TFLOPS = (
  ("gh200", 989.0),
  ("h200", 989.0),
  ("h100 pcie", 756.0),
  ("h100 nvl", 835.0),
  ("h100", 989.0),
  ("h800", 989.0),
  ("b200", 2250.0),
  ("a100", 312.0),
  ("a800", 312.0),
  ("a30", 165.0),
  ("l40s", 362.0),
  ("l40", 181.0),
  ("l4", 121.0),
  ("tpu v6 lite", 918.0),
  ("tpu v6e", 918.0),
  ("tpu v5 lite", 197.0),
  ("tpu v5e", 197.0),
  ("tpu v5p", 459.0),
  ("tpu v5", 459.0),
  ("tpu v4 lite", None),
  ("tpu v4", 275.0),
  ("tpu v3", 61.5),
  ("tpu v2", 22.5),
)


@dataclasses.dataclass(frozen=True)
class Plan:
  """The sizes of one run: the full benchmark or the quick one."""

  size: int  # image side (pixels) of every model and of the loader
  classes: int
  large: tuple[str, dict]  # (model name, overrides) of the large model
  small: tuple[str, dict]  # ... and of the sidekick
  eval_batch: int
  train_batches: tuple[int, int]  # (large, sidekick)
  hydra_vit: tuple[str, dict]
  hydra_batches: tuple[int, ...]
  members: int
  matmul: int  # side of the square matmul that measures the peak
  images: int  # JPEGs generated for the loader
  loader_batch: int
  loader_timed: int  # timed loader batches (and four per worker at least)


FULL = Plan(
  size=224,
  classes=1000,
  large=("vit_b16", {}),
  small=("resnet18", {}),
  eval_batch=256,
  train_batches=(128, 256),
  hydra_vit=("vit_b16", {}),
  hydra_batches=(1, 64),
  members=3,
  matmul=8192,
  images=512,
  loader_batch=64,
  loader_timed=20,
)
QUICK = Plan(
  size=32,
  classes=10,
  large=("vit_mu4", {}),
  small=("resnet8", {"width": 4}),
  eval_batch=16,
  train_batches=(8, 8),
  hydra_vit=("vit_mu4", {"num_heads": 4}),
  hydra_batches=(1,),
  members=3,
  matmul=256,
  images=32,
  loader_batch=8,
  loader_timed=2,
)


# ------------------------------------------------------------------ helpers
def device_info() -> dict:
  device = jax.devices()[0]
  kind = getattr(device, "device_kind", None) or device.platform
  return {
    "kind": kind,
    "count": jax.device_count(),
    "backend": jax.default_backend(),
    "peak": vendor_peak(kind),
  }


def vendor_peak(kind: str) -> float | None:
  """The data-sheet dense bfloat16 peak (FLOP/s) of `device_kind`, or None if unknown."""
  kind = kind.lower()
  for name, tflops in PEAK_BF16_TFLOPS:
    if name in kind:
      return None if tflops is None else tflops * 1e12
  return None


def build(spec: tuple[str, dict], plan: Plan, seed: int):
  name, overrides = spec
  return models.get_model(
    name, plan.classes, rngs=seed, dtype="bfloat16", image_size=plan.size, **overrides
  )


def input_spec(name: str, size: int) -> preprocess.InputSpec:
  mean, std = (
    VIT_STATS if name.startswith("vit") else (preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD)
  )
  return preprocess.InputSpec(size, tuple(mean), tuple(std))


def uint8_images(batch: int, size: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def float_images(batch: int, size: int, seed: int) -> jax.Array:
  return jax.random.normal(jax.random.key(seed), (batch, size, size, 3), jnp.float32)


def program_flops(compiled) -> float:
  """XLA's FLOP count of a compiled program (NaN where the backend gives none)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - some backends and versions have no cost analysis
    return float("nan")
  if isinstance(cost, (list, tuple)):  # older jax: one dict per device
    cost = cost[0] if cost else None
  value = float((cost or {}).get("flops", float("nan")))
  return value if value > 0 else float("nan")


def forward_flops(model, size: int, cache: dict) -> float:
  """Eval-forward FLOPs per image (XLA's count on the default backend, else on the CPU).

  A FLOP count is a property of the model, but a backend may leave some
  fused or library kernels out of its cost analysis; the CPU backend's count
  of the same program stands in then. `cache` keeps the counts by model name
  and size (each is one more compilation).
  """
  key = (model.name, functional.count_params(functional.split_model(model)[1]), size)
  if key not in cache:
    cache[key] = _forward_flops(model, size)
  return cache[key]


def _forward_flops(model, size: int) -> float:
  graphdef, params, batch_stats = functional.split_model(model)
  flops = functional.flops_per_image(graphdef, params, batch_stats, (size, size, 3))
  if math.isfinite(flops) and flops > 0:
    return flops
  try:
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  except Exception:  # noqa: BLE001 - a JAX started with the CPU platform disabled
    return float("nan")
  on_cpu = lambda tree: jax.tree.map(  # noqa: E731
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), tree
  )
  apply = functional.make_apply(graphdef)
  forward = jax.jit(lambda p, b, x: apply(p, b, x)[0])
  x = jax.ShapeDtypeStruct((8, size, size, 3), jnp.float32, sharding=cpu)
  return program_flops(forward.lower(on_cpu(params), on_cpu(batch_stats), x).compile()) / 8


def compile_timed(jitted, *args):
  """(compiled program, compile seconds): compiled once, ahead of the timed calls."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def time_program(compiled, args, repeats: int, min_total_s: float) -> harness.Timing:
  return harness.time_call(
    lambda: compiled(*args), repeats=repeats, sync=harness.jax_sync, min_total_s=min_total_s
  )


def fmt_rate(value: float) -> str:
  return "–" if not math.isfinite(value) else f"{value:,.0f}"


def fmt_share(value: float | None) -> str:
  return "–" if value is None or not math.isfinite(value) else f"{value:.0%}"


# ------------------------------------------------------------------ 1. fused duo
def duo_part(plan: Plan, args, results: dict) -> str:
  large, small = build(plan.large, plan, 0), build(plan.small, plan, 1)
  prep = {
    name: functools.partial(preprocess.prepare, spec=input_spec(name, plan.size))
    for name in (plan.large[0], plan.small[0])
  }
  cache = results.setdefault("flops", {})
  flops_l, flops_s = forward_flops(large, plan.size, cache), forward_flops(small, plan.size, cache)
  images = jnp.asarray(uint8_images(plan.eval_batch, plan.size, seed=0))
  programs = {
    f"{plan.large[0]} alone": ((large,), (prep[plan.large[0]],)),
    f"{plan.small[0]} alone": ((small,), (prep[plan.small[0]],)),
    "duo, one fused program": ((large, small), (prep[plan.large[0]], prep[plan.small[0]])),
  }
  timings, counts, compiles = {}, {}, {}
  for label, (members, prepare) in programs.items():
    graphdefs, states = duo.split_members(members)
    forward = duo.make_fused_forward(graphdefs, preprocess=prepare)
    compiled, compiles[label] = compile_timed(forward, states, images)
    counts[label] = program_flops(compiled) / plan.eval_batch
    timings[label] = time_program(compiled, (states, images), args.repeats, args.min_time)
    print(f"  {label}: {timings[label].median_s * 1e3:.2f} ms / batch", flush=True)
  base = timings[f"{plan.large[0]} alone"].median_s
  rows = [
    [
      label,
      f"{t.median_s * 1e3:.2f}",
      f"{plan.eval_batch / t.median_s:,.0f}",
      f"{t.median_s / base:.3f}",
      f"{counts[label] / 1e9:.3g}",
      f"{compiles[label]:.1f}",
    ]
    for label, t in timings.items()
  ]
  share = flops_s / flops_l
  fused = timings["duo, one fused program"].median_s / base
  alone = timings[f"{plan.small[0]} alone"].median_s / base
  target = 1 + share + 0.02
  table = harness.md_table(
    [
      "program",
      "ms / batch",
      "images/s",
      "time × large",
      "GFLOPs / image (XLA, program)",
      "compile s",
    ],
    rows,
  )
  return "\n".join(
    [
      f"{plan.large[0]} + {plan.small[0]}, {plan.size}×{plan.size}, batch {plan.eval_batch}, "
      f"bfloat16; a uint8 batch in, each member's `prepare` (its own normalisation) inside the "
      f"program; median of {args.repeats} calls.",
      "",
      table,
      "",
      f"- Model forward FLOPs per image: {plan.large[0]} {flops_l / 1e9:.3g} G, "
      f"{plan.small[0]} {flops_s / 1e9:.3g} G: the sidekick's share is {share:.1%}.",
      f"- Fused duo / large alone = {fused:.3f}: the sidekick adds {fused - 1:.1%} "
      f"(target ≤ 1 + FLOP share + 0.02 = {target:.3f}: "
      f"{'met' if fused <= target else '**missed**'}).",
      f"- The sidekick alone takes {alone:.1%} of the large model's time: fused, it costs "
      + (
        "no more than running it alone (within 2 points)."
        if fused - 1 <= alone + 0.02
        else f"{fused - 1 - alone:.1%} of the large model's time more than running it alone."
      ),
    ]
  )


# ------------------------------------------------------------------ 2. train step, MFU
def matmul_rate(n: int, repeats: int, min_total_s: float) -> float:
  """FLOP/s of an n×n bfloat16 matmul (float32 accumulation, XLA's default)."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(jnp.bfloat16) for k in keys)
  compiled, _ = compile_timed(jax.jit(jnp.matmul), a, b)
  return 2 * n**3 / time_program(compiled, (a, b), repeats, min_total_s).median_s


def train_step(model, name: str, batch: int, plan: Plan, seed: int):
  """(jitted duojax train step, its state, one uint8 batch) on the first device."""
  from duojax import config_lib
  from duojax.parallel import sharding
  from duojax.train import optim, steps

  optimizer = optim.make_optimizer(config_lib.base_config(), num_steps=10_000)
  graphdef, params, batch_stats = functional.split_model(model)
  mesh = sharding.make_mesh(1)
  state = jax.device_put(
    steps.init_state(params, batch_stats, optimizer), sharding.replicated(mesh)
  )
  spec = input_spec(name, plan.size)
  step = steps.make_train_step(
    graphdef, optimizer, mesh=mesh, seed=seed, image_stats=(spec.mean, spec.std)
  )
  rng = np.random.default_rng(seed)
  data = jax.device_put(
    {
      "image": uint8_images(batch, plan.size, seed),
      "label": rng.integers(0, plan.classes, batch).astype(np.int32),
    },
    sharding.batch_sharding(mesh),
  )
  return step, state, data


def time_steps(compiled, state, data, steps_: int, group: int) -> tuple[float, float]:
  """(median seconds per step, first loss): two untimed steps, then `steps_` timed ones.

  Steps run back to back in groups of `group` with one sync at the end, as a
  training loop dispatches them; the state is donated, so it is threaded through.
  """
  state, metrics = compiled(state, data)
  loss = float(metrics["loss"])
  state, metrics = compiled(state, data)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(max(1, steps_ // group)):
    start = time.perf_counter()
    for _ in range(group):
      state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / group)
  return statistics.median(times), loss


def train_part(plan: Plan, args, results: dict, info: dict) -> str:
  measured = matmul_rate(plan.matmul, args.repeats, args.min_time)
  peak = info["peak"]
  print(f"  {plan.matmul}² bfloat16 matmul: {measured / 1e12:.3g} TFLOP/s", flush=True)
  rows = []
  for seed, (spec, batch) in enumerate(zip((plan.large, plan.small), plan.train_batches)):
    model = build(spec, plan, seed)
    flops = forward_flops(model, plan.size, results.setdefault("flops", {}))
    step, state, data = train_step(model, spec[0], batch, plan, seed)
    compiled, compile_s = compile_timed(step, state, data)
    counted = program_flops(compiled)
    seconds, loss = time_steps(compiled, state, data, args.steps, args.group)
    if not math.isfinite(loss):
      raise RuntimeError(f"{spec[0]}: the first train step's loss is {loss}")
    achieved = 3 * flops * batch / seconds
    results.setdefault("train_rate", {})[spec[0]] = batch / seconds
    rows.append(
      [
        spec[0],
        batch,
        f"{seconds * 1e3:.2f}",
        f"{batch / seconds:,.0f}",
        f"{3 * flops / 1e9:.3g}",
        f"{achieved / 1e12:.3g}",
        fmt_share(None if peak is None else achieved / peak),
        fmt_share(achieved / measured),
        f"{counted / (3 * flops * batch):.2f}",
        f"{compile_s:.1f}",
      ]
    )
    print(f"  {spec[0]} train step: {batch / seconds:,.0f} images/s", flush=True)
    del state, data, compiled, step
  table = harness.md_table(
    [
      "model",
      "batch",
      "ms / step",
      "images/s",
      "model GFLOPs / image (3 × fwd)",
      "achieved TFLOP/s",
      "MFU (vendor peak)",
      "MFU (measured matmul)",
      "XLA step FLOPs / model FLOPs",
      "compile s",
    ],
    rows,
  )
  vendor = (
    f"{peak / 1e12:,.0f} TFLOP/s (data sheet, dense bfloat16)"
    if peak is not None
    else f"unknown for `{info['kind']}` (add it to `PEAK_BF16_TFLOPS`)"
  )
  lines = [
    f"duojax's train step ({plan.size}×{plan.size}, bfloat16 compute, float32 parameters, "
    f"AdamW with clipping, uint8 images normalised on the device) on one device; "
    f"{args.steps} timed steps in groups of {args.group}, median per step, after two "
    "untimed ones. Model FLOPs of a step = 3 × the forward's (XLA's count of the eval "
    "forward) × batch.",
    "",
    f"Peak of this device ({info['kind']}): {vendor}; measured {plan.matmul}×{plan.matmul} "
    f"bfloat16 matmul: {measured / 1e12:,.4g} TFLOP/s"
    + (f" ({measured / peak:.0%} of the data sheet)." if peak is not None else "."),
    "",
    table,
    "",
    "The last but one column is XLA's FLOP count of the whole compiled step over the "
    "3 × forward estimate (the optimizer, the loss and the normalisation add to it; a "
    "backend whose cost analysis leaves library kernels out shows less than 1).",
  ]
  return "\n".join(lines)


# ------------------------------------------------------------------ 3. input pipeline
def loader_part(plan: Plan, args, results: dict, info: dict) -> str:
  import bench_input  # the JPEG generator and loader timing of the input benchmark

  from duojax import data
  from duojax.data import folder as folder_lib
  from duojax.data import pipeline

  with contextlib.ExitStack() as stack:
    if args.cache_dir:
      root = Path(args.cache_dir).expanduser().resolve()
    else:
      root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench_accel_")))
    jpegs, data_dir = root / f"jpegs_{plan.images}", root / f"data_{plan.images}"
    start = time.perf_counter()
    bench_input.make_jpegs(jpegs, plan.images)
    if not (data_dir / DATASET).exists():
      folder_lib.import_folder(jpegs, dataset=DATASET, data_dir=data_dir)
    print(
      f"  {plan.images} JPEGs generated and imported ({time.perf_counter() - start:.1f} s)",
      flush=True,
    )
    # Every image of the import is a training image: val and test are the split itself.
    split = data.load_dataset(
      DATASET, data_dir, val_split="train", test_split="train", image_size=plan.size
    ).train
    workers = pipeline.worker_count(-1, split)
    cores = pipeline.usable_cores()
    # Each worker holds up to prefetch (2) + 1 batches ahead and the parent two
    # more: warming up past them all leaves the timed batches to what the
    # workers make while they are timed, not to what they had made before.
    warmup = workers * 3 + 2
    timed = max(plan.loader_timed, 4 * workers)
    startup, rate = bench_input.duojax_loader(split, -1, plan.loader_batch, warmup, timed)
  per_core = rate / cores
  train = results.get("train_rate", {}).get(plan.large[0])
  print(f"  loader: {rate:,.0f} images/s on {cores} cores", flush=True)
  rows = [
    [
      "`train_batches`, workers=-1",
      f"{workers} processes on {cores} cores",
      f"{rate:,.0f}",
      f"{per_core:,.0f}",
      f"{startup:.1f}",
    ]
  ]
  table = harness.md_table(
    ["loader", "runs on", "images/s", "images/s per core", "start-up s"], rows
  )
  lines = [
    f"{plan.images} generated ImageNet-like JPEGs (`bench_input.make_jpegs`), random-resized "
    f"crop and flip to uint8 {plan.size}×{plan.size}, batch {plan.loader_batch}; rate over "
    f"{timed} batches after {1 + warmup} untimed ones (more than the workers hold ahead).",
    "",
    table,
    "",
  ]
  if train is None:
    lines.append(f"- No {plan.large[0]} train rate to compare with (part 2 was not run or failed).")
  else:
    host = train * info["count"]
    need = host / per_core
    verdict = "keeps up" if rate >= host else "**does not keep up**"
    lines += [
      f"- {plan.large[0]} trains at {train:,.0f} images/s per device (part 2); "
      f"{info['count']} device(s) on this host want {host:,.0f} images/s: the loader "
      f"({rate:,.0f} images/s on all {cores} cores) {verdict}"
      f" ({rate / host:.2f}× the demand).",
      f"- At {per_core:,.0f} images/s per core that demand needs ≈{math.ceil(need)} "
      f"cores ({train / per_core:.1f} per device), plus headroom for the process that "
      "runs the steps. Host cores per accelerator: "
      f"{cores / info['count']:.0f} here, {train / per_core:.1f} needed.",
    ]
  return "\n".join(lines)


# ------------------------------------------------------------------ 4. Hydra latency
def hydra_part(plan: Plan, args) -> str:
  name = plan.hydra_vit[0]
  vit = build(plan.hydra_vit, plan, 0)
  heads, keep = vit.num_heads, max(1, vit.num_heads // 2)
  rng = np.random.default_rng(0)
  # Latency depends on shapes only: random head choices stand in for the
  # Taylor-importance ones, and the members share the source's weights.
  pruned = [
    hydra.prune(vit, hydra.select_heads(rng.random((vit.depth, heads)), keep))
    for _ in range(plan.members)
  ]
  candidates = [(f"{name}", vit)] + [
    (f"Hydra M={plan.members}, {keep}/{heads} heads, {mlp} MLP", hydra.merge(pruned, mlp=mlp))
    for mlp in hydra.MLP_MODES
  ]
  params = {label: functional.count_params(functional.split_model(m)[1]) for label, m in candidates}
  rows = []
  for batch in plan.hydra_batches:
    images = float_images(batch, plan.size, seed=batch)
    base, base_flops = None, None
    for label, model in candidates:
      graphdefs, states = duo.split_members([model])
      compiled, _ = compile_timed(duo.make_fused_forward(graphdefs), states, images)
      flops = program_flops(compiled) / batch
      seconds = time_program(compiled, (states, images), args.repeats, args.min_time).median_s
      base, base_flops = base or seconds, base_flops or flops
      rows.append(
        [
          label,
          batch,
          f"{seconds * 1e3:.2f}",
          f"{seconds / base:.2f}",
          f"{flops / base_flops:.2f}",
          f"{params[label] / params[name]:.2f}",
        ]
      )
      print(f"  {label}, batch {batch}: {seconds * 1e3:.2f} ms", flush=True)
  table = harness.md_table(
    ["model", "batch", "latency ms", "time × ViT", "FLOPs × ViT (XLA)", "params × ViT"], rows
  )
  return "\n".join(
    [
      f"{plan.members} members of {name} ({plan.size}×{plan.size}, bfloat16), each pruned to "
      f"{keep} of the {heads} heads of every layer and merged (`hydra.merge`), against the "
      f"ViT alone; one jitted forward, float32 images in, median of {args.repeats} calls"
      + (f" (at least {args.min_time:g} s of calls)" if args.min_time > 0 else "")
      + ". The Hydra paper reports its merged model at about "
      "1.07× one ViT-B/16's latency on a GPU.",
      "",
      table,
    ]
  )


# ------------------------------------------------------------------ main
PARTS = (
  ("duo", "1. Fused duo eval throughput"),
  ("train", "2. Train step and model FLOP utilisation"),
  ("loader", "3. Input pipeline against the train step"),
  ("hydra", "4. Hydra merged model latency"),
)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="tiny models at 32×32, few repeats, any backend (for the unit test)",
  )
  parser.add_argument("--repeats", type=int, help="timed calls per program (default 20; quick 2)")
  parser.add_argument("--steps", type=int, help="timed train steps (default 20; quick 2)")
  parser.add_argument("--group", type=int, help="train steps between syncs (default 5; quick 1)")
  parser.add_argument(
    "--min_time",
    type=float,
    help="seconds of timed calls per program at least (default 0.2; quick 0)",
  )
  parser.add_argument(
    "--parts",
    default=",".join(key for key, _ in PARTS),
    help="comma list of " + ", ".join(key for key, _ in PARTS),
  )
  parser.add_argument("--cache_dir", help="keep the generated JPEGs and their import here")
  parser.add_argument("--out", help="the file to write (default BENCHMARKS.md; quick: none)")
  args = parser.parse_args(argv)
  wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
  unknown = sorted(set(wanted) - {key for key, _ in PARTS})
  if unknown:
    parser.error(f"unknown parts {unknown}; valid: {', '.join(key for key, _ in PARTS)}")
  quick = args.quick
  args.repeats = args.repeats or (2 if quick else 20)
  args.steps = args.steps or (2 if quick else 20)
  args.group = max(1, min(args.group or (1 if quick else 5), args.steps))
  args.min_time = (0.0 if quick else 0.2) if args.min_time is None else args.min_time

  info = device_info()
  if info["backend"] == "cpu" and not quick:
    print(
      "no accelerator: skipped (JAX's default backend is the CPU; run with --quick for "
      "the tiny sizes)",
      flush=True,
    )
    return 0
  plan = QUICK if quick else FULL
  machine = f"{harness.machine_line()}; {info['count']} × {info['kind']}"
  print(f"{info['count']} × {info['kind']} ({info['backend']}), JAX {jax.__version__}", flush=True)

  results, bodies, failed = {}, [], []
  runners = {
    "duo": lambda: duo_part(plan, args, results),
    "train": lambda: train_part(plan, args, results, info),
    "loader": lambda: loader_part(plan, args, results, info),
    "hydra": lambda: hydra_part(plan, args),
  }
  for key, heading in PARTS:
    if key not in wanted:
      continue
    print(f"{heading} ...", flush=True)
    start = time.perf_counter()
    try:
      body = runners[key]()
    except Exception as e:  # noqa: BLE001 - the other parts still run and report
      traceback.print_exc()
      failed.append(key)
      body = f"Failed: {harness.one_line(f'{type(e).__name__}: {e}')}"
    bodies.append(f"### {heading}\n\n{body}")
    print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
  body = "\n\n".join(bodies)
  harness.print_section(TITLE, body)
  if failed:
    print(f"error: part(s) {', '.join(failed)} failed; nothing written", file=sys.stderr)
    return 1
  out = args.out or (None if quick else str(harness.BENCHMARKS_MD))
  if out:
    harness.write_section(SECTION, TITLE, body, machine=machine, path=out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
