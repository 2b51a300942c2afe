"""duojax on one GPU or TPU, every figure in one run: FLOPs, fused duo, train-step MFU, loader, Hydra.

On a bare GPU host (no package index; only an output folder comes back):

    make device-kit                     # here, once: the wheels those hosts lack
    bash bench/run_on_device.sh         # there: installs them, runs this into $OUT

Anywhere JAX sees an accelerator and duojax imports:

    python bench/bench_accelerator.py [--out DIR]   # default: $OUT, else runs/accelerator
    python bench/bench_accelerator.py --publish DIR # DIR's results into BENCHMARKS.md
    python bench/bench_accelerator.py --quick       # tiny models, any backend (the rehearsal)

The output folder holds `accelerator.json` and `accelerator.md`, rewritten
before and after every part (`accelerator_report`): a time-out or a kill
loses only the part it stopped. Full mode needs an accelerator; on a CPU it
writes why it measured nothing and exits 1. Every device measurement runs on
this process's first device, models freshly initialised (weights do not
change the time) in bfloat16 compute with float32 parameters. Each program
is compiled ahead of time (its compile time reported apart; the persistent
compilation cache `--jax_cache` makes a rerun skip them), called once more
untimed, then timed. Throughputs are medians over `--groups` groups of
`--group` back-to-back calls with one sync per group, as a loop dispatches
them; latencies are medians of `--repeats` single synced calls. Model states
go to the programs as flat lists of arrays, flattened once: a 300-leaf NNX
state flattened at every call costs more than a batch-1 forward.

Parts, in this order (`--parts` picks some):
  flops   forward FLOPs per image from the traced program (`duojax.models.flops`,
          no device: XLA's GPU cost analysis scores cuBLAS/cuDNN calls as −1),
          checked within 5% against the published ViT-B/16 and ResNet-18 figures;
  duo     the fused ViT-B/16 + ResNet-18 program at 224, batch 256, a uint8 batch
          in and each member's own preprocessing inside, against each model alone;
          target: fused ≤ 1.02 × (large + sidekick);
  train   a bfloat16 matmul's rate (the measured peak), then duojax's train step
          for ViT-B/16 and ResNet-18 at batch 256: images/s and model FLOP
          utilisation (3 × forward FLOPs × batch over time, against the data
          sheet's dense bfloat16 peak and the measured one);
  torch   the real timm ViT-B/16 and torchvision ResNet-50 with random weights,
          their state dicts loaded through duojax, logits compared in float32
          and bfloat16 with PyTorch's on the CPU (`accelerator_torch`);
  loader  `train_batches` on generated JPEGs against the train part's rate;
  hydra   the merged Hydra model (3 ViT-B/16 members at half the heads) against
          one ViT-B/16, latency at batch 1 and 64.

Behind `--parts families` only (it adds minutes of compiles to the run's budget):
  families  ViT-B/16's attention forms (the explicit einsums, XLA's
          `dot_product_attention`, and `auto`: cuDNN's fused kernel on a GPU); eval
          throughput at batch 256 of the large models the Asymmetric Duos pairs (CLIP,
          DINOv2, DeiT and SigLIP ViT-B, Swin-V2-B at 256, ConvNeXt-B, EfficientNetV2-L);
          and ViT-L/14 (DINOv2) train steps with and without rematerialisation.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import math
import os
import shlex
import signal
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accelerator_report  # noqa: E402
import accelerator_torch  # noqa: E402
import harness  # noqa: E402

from duojax import hydra, models  # noqa: E402
from duojax.core import duo  # noqa: E402
from duojax.data import preprocess  # noqa: E402
from duojax.models import flops as flops_lib  # noqa: E402
from duojax.models import functional  # noqa: E402
from duojax.parallel import sharding  # noqa: E402

DATASET = "bench_accelerator_jpegs"
# ViTs are commonly trained on inputs scaled to [-1, 1]; ResNets on ImageNet's
# statistics. Two different specs also make the fused program normalise twice,
# as a real duo does.
VIT_STATS = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
# 2 × the multiply-adds of the models' published tables (timm, torchvision) at 224 px.
PUBLISHED_FLOPS = {"vit_b16": 2 * 17.56e9, "resnet18": 2 * 1.814e9, "resnet50": 2 * 4.089e9}

# Dense (no sparsity) bfloat16 matmul peaks, TFLOP/s, from the vendors' data
# sheets, by the exact `device_kind` JAX reports: figures to divide by, not
# measurements. A name not here has no vendor MFU (only the measured one):
# H200 NVL is not an H200 SXM, nor a GB200 a B200. TPU v2 and v3 expose each
# of a chip's two cores as a device: their figures are half a chip's.
PEAK_BF16_TFLOPS = {
  "NVIDIA H100 80GB HBM3": 989.0,  # SXM
  "NVIDIA H100 PCIe": 756.0,
  "NVIDIA H100 NVL": 835.0,
  "NVIDIA H200": 989.0,  # SXM
  "NVIDIA H200 NVL": 835.0,
  "NVIDIA GH200 480GB": 989.0,
  "NVIDIA B200": 2250.0,
  "NVIDIA GB200": 2500.0,
  "NVIDIA A100-SXM4-80GB": 312.0,
  "NVIDIA A100-SXM4-40GB": 312.0,
  "NVIDIA A100 80GB PCIe": 312.0,
  "NVIDIA A100-PCIE-40GB": 312.0,
  "NVIDIA L40S": 362.0,
  "NVIDIA L4": 121.0,
  "TPU v2": 22.5,
  "TPU v3": 61.5,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v5": 459.0,  # v5p
  "TPU v5p": 459.0,
  "TPU v6 lite": 918.0,
  "TPU v6e": 918.0,
}


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
  train_batches=(256, 256),
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


class Stopped(BaseException):
  """SIGTERM (the launch command's time-out): the running part is recorded as stopped."""


# ------------------------------------------------------------------ helpers
def device_info(device) -> dict:
  kind = getattr(device, "device_kind", None) or device.platform
  peak = PEAK_BF16_TFLOPS.get(kind)
  return {
    "kind": kind,
    "count": jax.device_count(),
    "local": jax.local_device_count(),
    "backend": jax.default_backend(),
    "peak": None if peak is None else peak * 1e12,
  }


def build(spec: tuple[str, dict], plan: Plan, seed: int, dtype: str = "bfloat16"):
  name, overrides = spec
  return models.get_model(
    name, plan.classes, rngs=seed, dtype=dtype, image_size=plan.size, **overrides
  )


def model_flops(spec: tuple[str, dict], plan: Plan) -> float:
  """Forward FLOPs per image from shapes alone (no device, no weights)."""
  model = nnx.eval_shape(lambda: build(spec, plan, 0))
  return functional.flops_per_image(*functional.split_model(model), (plan.size, plan.size, 3))


def input_spec(name: str, size: int) -> preprocess.InputSpec:
  mean, std = (
    VIT_STATS if name.startswith("vit") else (preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD)
  )
  return preprocess.InputSpec(size, tuple(mean), tuple(std))


def uint8_images(batch: int, size: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def flat_program(forward, states):
  """(jitted `(leaves, images) -> out`, leaves): the state flattened once, not at every call."""
  leaves, treedef = jax.tree.flatten(states)
  return jax.jit(lambda leaves, x: forward(jax.tree.unflatten(treedef, leaves), x)), leaves


def compile_timed(jitted, *args):
  """(compiled program, compile seconds): compiled once, ahead of the timed calls."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def per_call_seconds(call, groups: int, per_group: int) -> float:
  """Median seconds per call over `groups` groups of `per_group` calls, one sync per group.

  One untimed call first. With `per_group=1` each call is synced: a latency.
  """
  jax.block_until_ready(call())
  times = []
  for _ in range(groups):
    start = time.perf_counter()
    for _ in range(per_group):
      out = call()
    jax.block_until_ready(out)
    times.append((time.perf_counter() - start) / per_group)
  return statistics.median(times)


def single_device_mesh(device) -> jax.sharding.Mesh:
  """duojax's ("data", "fsdp") mesh over one local device (also on one host of many)."""
  auto = jax.sharding.AxisType.Auto
  return jax.sharding.Mesh(
    np.array([device]).reshape(1, 1), (sharding.DATA, sharding.FSDP), axis_types=(auto, auto)
  )


def fmt_share(value: float | None) -> str:
  return "–" if value is None or not math.isfinite(value) else f"{value:.0%}"


def gflops(value: float) -> str:
  return "–" if not math.isfinite(value) else f"{value / 1e9:.3g}"


# ------------------------------------------------------------------ flops (no device)
def flops_part(plan: Plan, args, results: dict):
  rows, figures = [], {}
  for spec in (plan.large, plan.small):
    name = spec[0]
    counted = figures[name] = model_flops(spec, plan)
    published = PUBLISHED_FLOPS.get(name) if plan.size == 224 else None
    ratio = counted / published if published else float("nan")
    rows.append(
      [
        name,
        gflops(counted),
        gflops(published or float("nan")),
        "–" if not published else f"{ratio:.3f}",
        "–" if not published else ("yes" if abs(ratio - 1) <= 0.05 else "**no**"),
      ]
    )
  results["flops"] = figures
  table = harness.md_table(
    ["model", "GFLOPs / image (traced)", "published (2 × MACs)", "ratio", "within 5%"], rows
  )
  text = (
    f"Forward FLOPs per image at {plan.size}×{plan.size}: 2 × the multiply-adds of every "
    "matmul and convolution of the traced program, padding included "
    "(`duojax.models.flops`), counted from shapes on the host, not by the device's cost "
    "analysis (which scores library matmuls and convolutions as −1 on a GPU).\n\n" + table
  )
  return text, figures


# ------------------------------------------------------------------ duo
def duo_part(plan: Plan, args, results: dict):
  large, small = build(plan.large, plan, 0), build(plan.small, plan, 1)
  names = (plan.large[0], plan.small[0])
  prep = {n: functools.partial(preprocess.prepare, spec=input_spec(n, plan.size)) for n in names}
  counts = results.get("flops") or {
    n: model_flops(s, plan) for n, s in zip(names, (plan.large, plan.small))
  }
  images = jnp.asarray(uint8_images(plan.eval_batch, plan.size, seed=0))
  programs = {
    f"{names[0]} alone": ((large,), (prep[names[0]],), counts[names[0]]),
    f"{names[1]} alone": ((small,), (prep[names[1]],), counts[names[1]]),
    "duo, one fused program": (
      (large, small),
      (prep[names[0]], prep[names[1]]),
      sum(counts.values()),
    ),
  }
  seconds, rows = {}, []
  for label, (members, prepare, program_flops) in programs.items():
    graphdefs, states = duo.split_members(members)
    program, leaves = flat_program(duo.make_fused_forward(graphdefs, preprocess=prepare), states)
    compiled, compile_s = compile_timed(program, leaves, images)
    t = seconds[label] = per_call_seconds(lambda: compiled(leaves, images), args.groups, args.group)
    rows.append(
      [
        label,
        f"{t * 1e3:.2f}",
        f"{plan.eval_batch / t:,.0f}",
        gflops(program_flops),
        f"{compile_s:.1f}",
      ]
    )
    print(f"  {label}: {t * 1e3:.2f} ms / batch (compiled in {compile_s:.1f} s)", flush=True)
  t_large, t_small = seconds[f"{names[0]} alone"], seconds[f"{names[1]} alone"]
  t_fused = seconds["duo, one fused program"]
  bound = 1.02 * (t_large + t_small)
  share = counts[names[1]] / counts[names[0]]
  for row, t in zip(rows, seconds.values()):
    row.insert(3, f"{t / t_large:.3f}")
  table = harness.md_table(
    ["program", "ms / batch", "images/s", "time × large", "GFLOPs / image", "compile s"], rows
  )
  figures = {
    "seconds": seconds,
    "flop_share": share,
    "fused_over_sum": t_fused / (t_large + t_small),
  }
  text = "\n".join(
    [
      f"{names[0]} + {names[1]}, {plan.size}×{plan.size}, batch {plan.eval_batch}, bfloat16; a "
      "uint8 batch in, each member's `prepare` (its own normalisation) inside the program; "
      f"median over {args.groups} groups of {args.group} calls.",
      "",
      table,
      "",
      f"- Fused: {t_fused * 1e3:.2f} ms against {(t_large + t_small) * 1e3:.2f} ms for the two "
      f"programs one after the other ({t_fused / (t_large + t_small):.3f}×; target ≤ 1.02×: "
      f"{'met' if t_fused <= bound else '**missed**'}).",
      f"- The sidekick adds {t_fused / t_large - 1:.1%} to the large model's time; its FLOP "
      f"share is {share:.1%} (a small convnet uses an accelerator's FLOPs less fully than a "
      "ViT, so its time share exceeds its FLOP share).",
    ]
  )
  return text, figures


# ------------------------------------------------------------------ train step, MFU
def matmul_rate(n: int, groups: int) -> float:
  """FLOP/s of an n×n bfloat16 matmul (float32 accumulation, XLA's default)."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(k, (n, n), jnp.float32).astype(jnp.bfloat16) for k in keys)
  compiled, _ = compile_timed(jax.jit(jnp.matmul), a, b)
  return 2 * n**3 / per_call_seconds(lambda: compiled(a, b), groups, 20)


def train_step(model, name: str, batch: int, plan: Plan, seed: int, device):
  """(jitted duojax train step, its state, one uint8 batch) on `device`."""
  from duojax import config_lib
  from duojax.train import optim, steps

  optimizer = optim.make_optimizer(config_lib.base_config(), num_steps=10_000)
  graphdef, params, batch_stats = functional.split_model(model)
  mesh = single_device_mesh(device)
  state = jax.device_put(
    steps.init_state(params, batch_stats, optimizer), sharding.replicated(mesh)
  )
  spec = input_spec(name, plan.size)
  step = steps.make_train_step(
    graphdef, optimizer, mesh=mesh, seed=seed, image_stats=(spec.mean, spec.std)
  )
  rng = np.random.default_rng(seed)
  data = {
    "image": uint8_images(batch, plan.size, seed),
    "label": rng.integers(0, plan.classes, batch).astype(np.int32),
  }
  return step, state, jax.device_put(data, sharding.batch_sharding(mesh))


def time_steps(compiled, state, data, groups: int, group: int) -> tuple[float, float]:
  """(median seconds per step, first loss): two untimed steps, then `groups` groups of `group`.

  The state is donated, so it is threaded through; one sync per group.
  """
  state, metrics = compiled(state, data)
  loss = float(metrics["loss"])
  state, metrics = compiled(state, data)
  jax.block_until_ready((state, metrics))
  times = []
  for _ in range(groups):
    start = time.perf_counter()
    for _ in range(group):
      state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    times.append((time.perf_counter() - start) / group)
  return statistics.median(times), loss


def train_part(plan: Plan, args, results: dict, info: dict, device):
  measured = matmul_rate(plan.matmul, args.groups)
  peak = info["peak"]
  print(f"  {plan.matmul}² bfloat16 matmul: {measured / 1e12:.4g} TFLOP/s", flush=True)
  rows, rates = [], {}
  for seed, (spec, batch) in enumerate(zip((plan.large, plan.small), plan.train_batches)):
    name = spec[0]
    forward = (results.get("flops") or {}).get(name) or model_flops(spec, plan)
    step, state, data = train_step(build(spec, plan, seed), name, batch, plan, seed, device)
    traced = flops_lib.count_flops(step, state, data)
    compiled, compile_s = compile_timed(step, state, data)
    seconds, loss = time_steps(compiled, state, data, args.groups, args.group)
    if not math.isfinite(loss):
      raise RuntimeError(f"{name}: the first train step's loss is {loss}")
    achieved = 3 * forward * batch / seconds
    rates[name] = batch / seconds
    rows.append(
      [
        name, batch, f"{seconds * 1e3:.2f}", f"{batch / seconds:,.0f}", gflops(3 * forward),
        f"{achieved / 1e12:.4g}", fmt_share(None if peak is None else achieved / peak),
        fmt_share(achieved / measured), f"{traced / (3 * forward * batch):.2f}", f"{compile_s:.1f}",
      ]
    )  # fmt: skip
    print(
      f"  {name} train step: {batch / seconds:,.0f} images/s ({compile_s:.1f} s compile)",
      flush=True,
    )
    del state, data, compiled, step
  results["train_rate"] = rates
  table = harness.md_table(
    [
      "model", "batch", "ms / step", "images/s", "model GFLOPs / image (3 × fwd)",
      "achieved TFLOP/s", "MFU (vendor peak)", "MFU (measured matmul)",
      "traced step FLOPs / model FLOPs", "compile s",
    ],
    rows,
  )  # fmt: skip
  vendor = (
    f"{peak / 1e12:,.0f} TFLOP/s (data sheet, dense bfloat16)"
    if peak is not None
    else f"not known for `{info['kind']}` (add its exact name to `PEAK_BF16_TFLOPS`)"
  )
  text = "\n".join(
    [
      f"duojax's train step ({plan.size}×{plan.size}, bfloat16 compute, float32 parameters, "
      "AdamW with clipping, uint8 images normalised on the device) on one device; median "
      f"over {args.groups} groups of {args.group} steps (one sync per group) after two untimed "
      "ones. Model FLOPs of a step = 3 × the traced forward's × batch.",
      "",
      f"Peak of this device ({info['kind']}): {vendor}; measured {plan.matmul}×{plan.matmul} "
      f"bfloat16 matmul: {measured / 1e12:,.4g} TFLOP/s"
      + (f" ({measured / peak:.0%} of the data sheet)." if peak is not None else "."),
      "",
      table,
      "",
      "The last but one column counts the whole traced step (forward, backward, the "
      "normalisation, the loss; the optimizer's elementwise work is not counted) over the "
      "3 × forward convention: about 1.",
    ]
  )
  return text, {"matmul_flops_per_s": measured, "train_images_per_s": rates}


# ------------------------------------------------------------------ families
# (name, overrides, side): the full run's large models, and the quick run's stand-ins.
FAMILY_MODELS = (
  ("vit_b16_clip", {}, 224),
  ("vit_b14_dinov2", {}, 224),
  ("deit_b16_distilled", {}, 224),
  ("vit_b16_siglip", {}, 224),
  ("swin_v2_b", {}, 256),
  ("convnext_base", {}, 224),
  ("efficientnet_v2_l", {}, 224),
)
QUICK_FAMILY = dict(width=32, depth=2, num_heads=2, mlp_dim=64)


def _forward_rate(spec, size: int, plan: Plan, args) -> tuple[float, float]:
  """(images/s of the bfloat16 eval forward at plan.eval_batch, compile s)."""
  name, overrides = spec
  model = models.get_model(name, plan.classes, rngs=0, dtype="bfloat16", image_size=size,
                           **overrides)  # fmt: skip
  graphdef, state = nnx.split(model)
  program, leaves = flat_program(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0], state)
  images = jnp.zeros((plan.eval_batch, size, size, 3), jnp.bfloat16)
  compiled, compile_s = compile_timed(program, leaves, images)
  seconds = per_call_seconds(lambda: compiled(leaves, images), args.groups, args.group)
  return plan.eval_batch / seconds, compile_s


def families_part(plan: Plan, args, device):
  quick = plan is QUICK
  vit = ("vit_mu4", dict(QUICK_FAMILY)) if quick else ("vit_b16", {})
  forms, figures = [], {"attention": {}, "eval": {}, "remat": {}}
  for form in ("explicit", "xla", "auto"):
    spec = (vit[0], {**vit[1], "attention": form})
    rate, compile_s = _forward_rate(spec, plan.size, plan, args)
    figures["attention"][form] = rate
    forms.append([form, f"{rate:,.0f}", f"{compile_s:.1f}"])
    print(f"  {vit[0]} attention={form}: {rate:,.0f} images/s", flush=True)
  from duojax.models import attention

  chosen = attention.pick(jnp.bfloat16, 64 if not quick else 16)
  rows = []
  family = [("vit_b16_clip", dict(QUICK_FAMILY), plan.size)] if quick else list(FAMILY_MODELS)
  for name, overrides, size in family:
    rate, compile_s = _forward_rate((name, overrides), size, plan, args)
    figures["eval"][name] = rate
    rows.append([name, f"{size}", f"{rate:,.0f}", f"{compile_s:.1f}"])
    print(f"  {name}: {rate:,.0f} images/s", flush=True)
  remat_rows = []
  large = ("vit_mu4", dict(QUICK_FAMILY)) if quick else ("vit_l14_dinov2", {})
  batch = plan.train_batches[0] // 2 if not quick else plan.train_batches[0]
  for remat in (False, True):
    spec = (large[0], {**large[1], "remat": remat})
    step, state, data = train_step(build(spec, plan, 0), large[0], batch, plan, 0, device)
    compiled, compile_s = compile_timed(step, state, data)
    memory = compiled.memory_analysis()
    temp = getattr(memory, "temp_size_in_bytes", float("nan")) if memory else float("nan")
    seconds, _ = time_steps(compiled, state, data, args.groups, args.group)
    figures["remat"][str(remat)] = batch / seconds
    remat_rows.append(
      [large[0], f"{remat}", f"{batch}", f"{batch / seconds:,.0f}", f"{temp / 2**30:.2f}",
       f"{compile_s:.1f}"]
    )  # fmt: skip
    del state, data, compiled, step
  text = "\n".join(
    [
      f"Attention forms of {vit[0]} (bfloat16, batch {plan.eval_batch}, {plan.size}×"
      f"{plan.size}); `auto` picks `{chosen}` for a 64-wide head on this backend.",
      "",
      harness.md_table(["attention", "images/s", "compile s"], forms),
      "",
      f"Eval forward of the large models users pair, bfloat16, batch {plan.eval_batch}:",
      "",
      harness.md_table(["model", "side", "images/s", "compile s"], rows),
      "",
      f"Train step of {large[0]} with and without `remat` (each block under `nnx.remat`), "
      f"bfloat16 compute, batch {batch}; temp = the compiled step's temporary buffers "
      "(activations kept for the backward pass).",
      "",
      harness.md_table(
        ["model", "remat", "batch", "images/s", "temp GiB", "compile s"], remat_rows
      ),
    ]
  )
  return text, figures


# ------------------------------------------------------------------ input pipeline
def loader_part(plan: Plan, args, results: dict, info: dict):
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
      f"  {plan.images} JPEGs made and imported ({time.perf_counter() - start:.1f} s)", flush=True
    )
    # Every image of the import is a training image: val and test are the split itself.
    split = data.load_dataset(
      DATASET, data_dir, val_split="train", test_split="train", image_size=plan.size
    ).train
    workers, cores = pipeline.worker_count(-1, split), pipeline.usable_cores()
    # Each worker holds up to prefetch (2) + 1 batches ahead and the parent two
    # more: warming up past them all leaves the timed batches to what the
    # workers make while they are timed, not to what they had made before.
    warmup, timed = workers * 3 + 2, max(plan.loader_timed, 4 * workers)
    startup, rate = bench_input.duojax_loader(split, -1, plan.loader_batch, warmup, timed)
  per_core = rate / cores
  train = results.get("train_rate", {}).get(plan.large[0])
  print(f"  loader: {rate:,.0f} images/s on {cores} cores", flush=True)
  table = harness.md_table(
    ["loader", "runs on", "images/s", "images/s per core", "start-up s"],
    [["`train_batches`, workers=-1", f"{workers} processes on {cores} cores", f"{rate:,.0f}", f"{per_core:,.0f}", f"{startup:.1f}"]],
  )  # fmt: skip
  lines = [
    f"{plan.images} generated ImageNet-like JPEGs (`bench_input.make_jpegs`), random-resized "
    f"crop and flip to uint8 {plan.size}×{plan.size}, batch {plan.loader_batch}; rate over "
    f"{timed} batches after {1 + warmup} untimed ones (more than the workers hold ahead).",
    "",
    table,
    "",
  ]
  if train is None:
    lines.append(f"- No {plan.large[0]} train rate to compare with (the train part did not run).")
  else:
    host = train * info["local"]
    verdict = "keeps up" if rate >= host else "**does not keep up**"
    lines += [
      f"- {plan.large[0]} trains at {train:,.0f} images/s per device (train part); "
      f"{info['local']} device(s) on this host want {host:,.0f} images/s: the loader "
      f"({rate:,.0f} images/s on all {cores} cores) {verdict} ({rate / host:.2f}× the demand).",
      f"- At {per_core:,.0f} images/s per core that demand needs ≈{math.ceil(host / per_core)} "
      f"cores ({train / per_core:.1f} per device), plus headroom for the process that runs the "
      f"steps. Host cores per accelerator: {cores / info['local']:.0f} here, "
      f"{train / per_core:.1f} needed.",
    ]
  return "\n".join(lines), {"images_per_s": rate, "per_core": per_core, "cores": cores}


# ------------------------------------------------------------------ Hydra latency
def hydra_part(plan: Plan, args):
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
  candidates = [(name, vit)] + [
    (f"Hydra M={plan.members}, {keep}/{heads} heads, {mlp} MLP", hydra.merge(pruned, mlp=mlp))
    for mlp in hydra.MLP_MODES
  ]
  shape = (plan.size, plan.size, 3)
  params, counts = {}, {}
  for label, model in candidates:
    parts = functional.split_model(model)
    params[label], counts[label] = (
      functional.count_params(parts[1]),
      functional.flops_per_image(*parts, shape),
    )
  rows, figures = [], {}
  for batch in plan.hydra_batches:
    images = jax.random.normal(jax.random.key(batch), (batch, *shape), jnp.float32)
    base = None
    for label, model in candidates:
      graphdefs, states = duo.split_members([model])
      program, leaves = flat_program(duo.make_fused_forward(graphdefs), states)
      compiled, _ = compile_timed(program, leaves, images)
      seconds = per_call_seconds(lambda: compiled(leaves, images), args.repeats, 1)
      base = base or seconds
      figures[f"{label}, batch {batch}"] = seconds
      rows.append(
        [
          label, batch, f"{seconds * 1e3:.2f}", f"{seconds / base:.2f}",
          f"{counts[label] / counts[name]:.2f}", f"{params[label] / params[name]:.2f}",
        ]
      )  # fmt: skip
      print(f"  {label}, batch {batch}: {seconds * 1e3:.2f} ms", flush=True)
  table = harness.md_table(
    ["model", "batch", "latency ms", "time × ViT", "FLOPs × ViT (traced)", "params × ViT"], rows
  )
  text = (
    f"{plan.members} members of {name} ({plan.size}×{plan.size}, bfloat16), each pruned to "
    f"{keep} of the {heads} heads of every layer and merged (`hydra.merge`), against the ViT "
    f"alone; one jitted forward, float32 images in, median of {args.repeats} synced calls. The "
    "Hydra paper reports its merged model at about 1.07× one ViT-B/16's latency on a GPU.\n\n"
    + table
  )
  return text, figures


# ------------------------------------------------------------------ main
def _stop(signum, frame):
  raise Stopped()


# Run only when named in --parts.
EXTRA_PARTS = (("families", "7. The model families users pair, attention forms, remat"),)
PARTS = (
  ("flops", "1. Forward FLOPs per image (traced, no device)"),
  ("duo", "2. Fused duo eval throughput"),
  ("train", "3. Train step and model FLOP utilisation"),
  ("torch", "4. The real timm and torchvision models through duojax"),
  ("loader", "5. Input pipeline against the train step"),
  ("hydra", "6. Hydra merged model latency"),
)


def parse(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny models at 32×32, any backend")
  parser.add_argument("--out", help="the output folder (default: $OUT, else runs/accelerator)")
  parser.add_argument("--publish", metavar="DIR", help="write DIR's results into BENCHMARKS.md")
  parser.add_argument(
    "--parts",
    default=",".join(k for k, _ in PARTS),
    help="comma list of " + ", ".join(k for k, _ in PARTS + EXTRA_PARTS),
  )
  parser.add_argument(
    "--groups", type=int, help="timed groups per throughput (default 10; quick 2)"
  )
  parser.add_argument(
    "--group", type=int, help="calls or train steps per group (default 5; quick 1)"
  )
  parser.add_argument("--repeats", type=int, help="synced calls per latency (default 30; quick 2)")
  parser.add_argument("--cache_dir", help="keep the generated JPEGs and their import here")
  parser.add_argument(
    "--jax_cache",
    default=os.environ.get("DUOJAX_JAX_CACHE", str(Path.home() / ".cache" / "duojax" / "jax")),
    help="JAX's persistent compilation cache ('' for none)",
  )
  args = parser.parse_args(argv)
  wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
  unknown = sorted(set(wanted) - {k for k, _ in PARTS + EXTRA_PARTS})
  if unknown:
    parser.error(f"unknown parts {unknown}; valid: {', '.join(k for k, _ in PARTS + EXTRA_PARTS)}")
  args.wanted = wanted
  args.groups = args.groups or (2 if args.quick else 10)
  args.group = args.group or (1 if args.quick else 5)
  args.repeats = args.repeats or (2 if args.quick else 30)
  return args


def run_parts(plan: Plan, args, report, info: dict, device) -> None:
  results = {}
  runners = {
    "flops": lambda: flops_part(plan, args, results),
    "duo": lambda: duo_part(plan, args, results),
    "train": lambda: train_part(plan, args, results, info, device),
    "torch": lambda: accelerator_torch.torch_part(plan.size == 224, args.quick),
    "loader": lambda: loader_part(plan, args, results, info),
    "hydra": lambda: hydra_part(plan, args),
    "families": lambda: families_part(plan, args, device),
  }
  for key, heading in PARTS + EXTRA_PARTS:
    if key not in args.wanted:
      continue
    print(f"{heading} ... ({report.elapsed():.0f} s into the run)", flush=True)
    report.begin(key)
    try:
      with jax.default_device(device):
        text, figures = runners[key]()
    except Stopped:
      report.failed(key, "stopped by SIGTERM (the launch command's time-out)")
      raise
    except accelerator_report.CheckFailed as e:
      report.failed(key, str(e), e.markdown)
    except Exception as e:  # noqa: BLE001 - the other parts still run and report
      traceback.print_exc()
      report.failed(key, harness.one_line(f"{type(e).__name__}: {e}", limit=300))
    else:
      report.done(key, text, figures)
    print(
      f"  {key}: {report.run['parts'][key]['status']} in {report.run['parts'][key]['seconds']:.0f} s",
      flush=True,
    )


def main(argv=None) -> int:
  args = parse(argv)
  if args.publish:
    print(f"wrote {accelerator_report.publish(Path(args.publish))}")
    return 0
  out = Path(args.out or os.environ.get("OUT") or harness.ROOT / "runs" / "accelerator")
  if args.jax_cache:
    jax.config.update("jax_compilation_cache_dir", str(Path(args.jax_cache).expanduser()))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  device = jax.local_devices()[0]
  info = device_info(device)
  command = "python bench/bench_accelerator.py " + " ".join(
    map(shlex.quote, argv if argv is not None else sys.argv[1:])
  )
  machine = f"{harness.machine_line()}; {info['count']} × {info['kind']}"
  report = accelerator_report.Report(
    out, command=command.strip(), machine=machine, device=info, headings=dict(PARTS)
  )
  print(
    f"{info['count']} × {info['kind']} ({info['backend']}), JAX {jax.__version__}; results in {out}",
    flush=True,
  )
  if info["backend"] == "cpu" and not args.quick:
    print(
      "error: JAX sees no accelerator (its default backend is the CPU): nothing measured; --quick runs the tiny sizes",
      file=sys.stderr,
    )
    return 1
  signal.signal(signal.SIGTERM, _stop)
  try:
    run_parts(QUICK if args.quick else FULL, args, report, info, device)
  except Stopped:
    print(
      f"stopped by SIGTERM after {report.elapsed():.0f} s; finished parts are in {out}",
      file=sys.stderr,
    )
    return 124
  harness.print_section(accelerator_report.TITLE, report.markdown())
  failed = report.failures()
  if failed:
    print(f"error: part(s) {', '.join(failed)} failed (their errors are in {out})", file=sys.stderr)
    return 1
  print(
    f"done in {report.elapsed():.0f} s; `python bench/bench_accelerator.py --publish {out}` puts it in BENCHMARKS.md"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
