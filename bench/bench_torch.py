"""duojax (JAX/XLA) against the same models written in PyTorch, on this machine.

    python bench/bench_torch.py [--quick] [--out BENCHMARKS.md]

Section `torch_eval`: eval-mode forward throughput (images/s) of ResNet-18,
ResNet-50, ViT-S/16 and ViT-B/16 at 224×224, batch 32, in float32 and
bfloat16.
  * JAX: the duojax model built with `dtype=` (parameters stay float32,
    activations are computed in `dtype`, the head in float32: the library's
    bfloat16 path), as one `jax.jit` of `nnx.merge(graphdef, state)(x)`. It is
    lowered and compiled ahead of time; that wall time is "JAX compile s", and
    XLA's cost analysis of that same executable gives the FLOP count behind
    "XLA GFLOP/s" (flop count / median time). (`duojax.models.functional.flops_per_image`
    would compile a second, batch-8 program; the timed one is counted here.)
  * PyTorch eager: the `torch_models.py` twin (same layers, same parameter
    count) under `torch.inference_mode()` and `model.eval()`; convnets are
    timed with contiguous (NCHW) and `channels_last` tensors and the better
    layout is reported. bfloat16 is `torch.autocast("cpu", torch.bfloat16)`
    (weights float32, as for JAX; the head is kept in float32 on both sides).
  * torch.compile: default (inductor) mode, in the better eager layout, run in
    a child process with a time limit (`--compile-timeout`); a failure or a
    timeout is recorded in the cell. `--quick` and `--no-compile` skip it.
The ratio is JAX img/s over the best PyTorch img/s (eager or compiled).

Section `torch_train`: training-step throughput in float32 with batch-norm
batch statistics. JAX runs duojax's real step (`duojax.train.steps.make_train_step`
on a 1-device mesh, state donated, with `duojax.train.optim.make_optimizer` of the
default config: AdamW lr 1e-3, weight decay 5e-4 on kernels only, gradient
clipping at global norm 1.0); PyTorch runs the eager equivalent: forward,
cross-entropy, backward, `clip_grad_norm_`, `torch.optim.AdamW` with the same
decay groups (constant learning rate: the schedule costs nothing). Models:
the demo pair (resnet14 and cnn_xs on 28×28×1, batch 32) and ResNet-18
(ImageNet stem) and ViT-S/4 on 32×32×3 at batch 32 and 64; 10 classes, no
dropout. PyTorch convnets again try both layouts and report the better.

Every figure is the median of `--repeats` timed calls after one warm-up
(or compiling) call (`harness.time_call`). Inputs are random normal images of
the same shape on both sides (NHWC for JAX, NCHW for PyTorch); weights are
freshly initialised. PyTorch uses `os.cpu_count()` threads; XLA uses its own
default thread pool over all cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
import torch_models  # noqa: E402

EVAL_MODELS = "resnet18,resnet50,vit_s16,vit_b16"
# name -> (image shape HWC, batches)
TRAIN = {
  "resnet14": ((28, 28, 1), (32,)),
  "cnn_xs": ((28, 28, 1), (32,)),
  "resnet18": ((32, 32, 3), (32, 64)),
  "vit_s4": ((32, 32, 3), (32, 64)),
}
QUICK_EVAL = ("resnet14", "vit_mu4")
QUICK_TRAIN = {"resnet14": ((28, 28, 1), (4,)), "cnn_xs": ((28, 28, 1), (4,))}
LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def _layouts(name: str) -> list[str]:
  return list(LAYOUTS) if torch_models.is_convnet(name) else ["contiguous"]


def _autocast(dtype: str):
  return torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16")


# ----------------------------------------------------------------------------
# Eval forward.


def jax_eval(name: str, classes: int, size: int, batch: int, dtype: str, repeats: int):
  """(img/s, compile s, XLA flops per call) of the jitted duojax forward."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from duojax import models

  model = models.get_model(name, classes, rngs=0, dtype=dtype, image_size=size)
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0])
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
  start = time.perf_counter()
  compiled = fwd.lower(state, x).compile()
  compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
    cost = cost[0]
  flops = float(cost.get("flops", float("nan")))
  timing = harness.time_call(lambda: compiled(state, x), repeats=repeats, sync=harness.jax_sync)
  return batch / timing.median_s, compile_s, flops / timing.median_s


def torch_eval_eager(
  name: str, classes: int, size: int, batch: int, dtype: str, repeats: int
) -> dict[str, float]:
  """img/s of the eager PyTorch forward for each layout tried."""
  torch.manual_seed(0)
  model = torch_models.build(name, classes, size).eval()
  x = torch.randn(batch, 3, size, size)
  rates = {}
  for layout in _layouts(name):
    fmt = LAYOUTS[layout]
    model = model.to(memory_format=fmt)
    xl = x.contiguous(memory_format=fmt)
    with torch.inference_mode(), _autocast(dtype):
      timing = harness.time_call(lambda: model(xl), repeats=repeats)
    rates[layout] = batch / timing.median_s
  return rates


def compile_worker(spec: dict) -> None:
  """Child process: time torch.compile(model); prints one JSON line."""
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  fmt = LAYOUTS[spec["layout"]]
  size, batch = spec["size"], spec["batch"]
  model = torch_models.build(spec["name"], spec["classes"], size).eval().to(memory_format=fmt)
  x = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
  compiled = torch.compile(model)
  with torch.inference_mode(), _autocast(spec["dtype"]):
    timing = harness.time_call(lambda: compiled(x), repeats=spec["repeats"])
  print(json.dumps({"img_s": batch / timing.median_s, "compile_s": timing.compile_s}))


def torch_eval_compiled(spec: dict, timeout_s: float) -> tuple[float | None, str]:
  """(img/s or None, table cell) for torch.compile, run in a child process."""
  cmd = [sys.executable, str(Path(__file__).resolve()), "--compile-worker", json.dumps(spec)]
  try:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
  except subprocess.TimeoutExpired:
    return None, f"failed: no result within {timeout_s:.0f} s"
  if result.returncode != 0:
    return None, f"failed: {harness.one_line(result.stderr or result.stdout)}"
  try:
    out = json.loads(result.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError):
    return None, f"failed: unreadable output: {harness.one_line(result.stdout)}"
  return out["img_s"], f"{out['img_s']:,.1f} (compile {out['compile_s']:.0f} s)"


def eval_section(
  names,
  classes: int,
  size: int,
  batch: int,
  dtypes,
  repeats: int,
  compile_note: str | None,
  compile_timeout: float,
) -> str:
  rows = []
  for name in names:
    for dtype in dtypes:
      jax_rate, compile_s, flop_rate = jax_eval(name, classes, size, batch, dtype, repeats)
      eager = torch_eval_eager(name, classes, size, batch, dtype, repeats)
      layout = max(eager, key=eager.get)
      best = eager[layout]
      eager_cell = f"{best:,.1f} ({layout})"
      if len(eager) > 1:
        other = min(eager, key=eager.get)
        eager_cell += f"; {other} {eager[other]:,.1f}"
      if compile_note is not None:
        compiled_cell = compile_note
      else:
        spec = dict(
          name=name,
          classes=classes,
          size=size,
          batch=batch,
          dtype=dtype,
          layout=layout,
          repeats=repeats,
        )
        rate, compiled_cell = torch_eval_compiled(spec, compile_timeout)
        if rate is not None:
          best = max(best, rate)
      rows.append(
        [
          name,
          dtype,
          batch,
          f"{jax_rate:,.1f}",
          eager_cell,
          compiled_cell,
          f"{jax_rate / best:.2f}",
          f"{compile_s:.1f}",
          f"{flop_rate / 1e9:,.1f}",
        ]
      )
      print(" ", rows[-1], flush=True)
  table = harness.md_table(
    [
      "model",
      "dtype",
      "batch",
      "JAX img/s",
      "PyTorch eager img/s (layout)",
      "torch.compile img/s",
      "JAX / PyTorch-best",
      "JAX compile s",
      "XLA GFLOP/s",
    ],
    rows,
  )
  return (
    f"{table}\n\n{size}×{size}×3 inputs, {classes} classes, eval mode, median of "
    f"{repeats} timed calls after a warm-up. bfloat16: duojax `dtype=bfloat16` (float32 "
    'parameters, bfloat16 compute) against `torch.autocast("cpu", torch.bfloat16)`. '
    "XLA GFLOP/s = XLA's flop count for the compiled forward / median time. "
    "The ratio divides JAX img/s by the better of PyTorch eager and torch.compile. "
    "torch.compile's compile time is its first call, with whatever inductor found in "
    "its on-disk cache from earlier runs."
  )


# ----------------------------------------------------------------------------
# Training step.


def jax_train(name: str, shape, batch: int, classes: int, repeats: int):
  """(img/s, compile s) of duojax's jitted train step."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from duojax import config_lib
  from duojax.models import functional, spec
  from duojax.parallel import sharding
  from duojax.train import optim, steps

  config = config_lib.base_config()
  optimizer = optim.make_optimizer(config, num_steps=10_000)
  model = spec.build_model(name, {}, classes, tuple(shape), seed=0)
  graphdef, params, batch_stats = functional.split_model(model)
  mesh = sharding.make_mesh(1)
  state = jax.device_put(
    steps.init_state(params, batch_stats, optimizer), sharding.replicated(mesh)
  )
  step = steps.make_train_step(
    graphdef, optimizer, mesh=mesh, seed=0, label_smoothing=config.label_smoothing
  )
  rng = np.random.default_rng(0)
  data = {
    "image": jnp.asarray(rng.standard_normal((batch, *shape), np.float32)),
    "label": jnp.asarray(rng.integers(0, classes, batch, np.int32)),
  }
  data = jax.device_put(data, sharding.batch_sharding(mesh))
  holder = [state]

  def run():
    holder[0], metrics = step(holder[0], data)  # the old state is donated
    return holder[0], metrics

  timing = harness.time_call(run, repeats=repeats, sync=harness.jax_sync)
  return batch / timing.median_s, timing.compile_s


def torch_train(name: str, shape, batch: int, classes: int, repeats: int) -> dict[str, float]:
  """img/s of the eager PyTorch train step for each layout tried."""
  from duojax import config_lib

  config = config_lib.base_config()
  h, w, c = shape
  rates = {}
  for layout in _layouts(name):
    torch.manual_seed(0)
    fmt = LAYOUTS[layout]
    model = torch_models.build(name, classes, h, c).train().to(memory_format=fmt)
    params = list(model.parameters())
    groups = [
      {"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
      {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=config.lr)
    x = torch.randn(batch, c, h, w).contiguous(memory_format=fmt)
    y = torch.randint(0, classes, (batch,))

    def step():
      opt.zero_grad(set_to_none=True)
      loss = F.cross_entropy(model(x), y)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, config.grad_clip_norm)
      opt.step()
      return loss

    timing = harness.time_call(step, repeats=repeats, sync=lambda loss: loss.item())
    rates[layout] = batch / timing.median_s
  return rates


def train_section(configs: dict, classes: int, repeats: int, batch_override: int | None) -> str:
  rows = []
  for name, (shape, batches) in configs.items():
    for batch in (batch_override,) if batch_override else batches:
      jax_rate, compile_s = jax_train(name, shape, batch, classes, repeats)
      rates = torch_train(name, shape, batch, classes, repeats)
      layout = max(rates, key=rates.get)
      cell = f"{rates[layout]:,.1f} ({layout})"
      if len(rates) > 1:
        other = min(rates, key=rates.get)
        cell += f"; {other} {rates[other]:,.1f}"
      rows.append(
        [
          name,
          "×".join(map(str, shape)),
          batch,
          f"{jax_rate:,.1f}",
          cell,
          f"{jax_rate / rates[layout]:.2f}",
          f"{compile_s:.1f}",
        ]
      )
      print(" ", rows[-1], flush=True)
  table = harness.md_table(
    [
      "model",
      "input",
      "batch",
      "JAX img/s",
      "PyTorch img/s (layout)",
      "JAX / PyTorch",
      "JAX compile s",
    ],
    rows,
  )
  return (
    f"{table}\n\nOne optimizer step per call, float32, {classes} classes, batch-norm "
    f"batch statistics, median of {repeats} timed steps after a warm-up (JAX: compiling) "
    "step. JAX: `steps.make_train_step` with the default config's AdamW and "
    "gradient clipping; PyTorch: eager forward + cross-entropy + backward + "
    "`clip_grad_norm_` + `AdamW.step()`. Models without dropout on both sides."
  )


def _names(text: str) -> list[str]:
  return [s.strip() for s in text.split(",") if s.strip()]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--quick",
    action="store_true",
    help="tiny models and sizes, 1 repeat, no torch.compile (unit test)",
  )
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  parser.add_argument("--sections", default="eval,train", help="comma list of eval, train")
  parser.add_argument("--models", default=EVAL_MODELS, help="eval models (duojax names)")
  parser.add_argument("--image-size", type=int, default=224, help="eval image side")
  parser.add_argument("--batch", type=int, default=32, help="eval batch")
  parser.add_argument("--classes", type=int, default=1000, help="eval classes")
  parser.add_argument(
    "--dtypes",
    default="auto",
    help="comma list of float32, bfloat16; auto: bfloat16 only on CPUs with "
    "native bfloat16 matmuls (AMX or AVX-512 BF16)",
  )
  parser.add_argument("--train-models", default=",".join(TRAIN), help=f"subset of {list(TRAIN)}")
  parser.add_argument(
    "--train-batch",
    type=int,
    default=None,
    help="one batch size for every train model (default: the table's)",
  )
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  parser.add_argument(
    "--compile-timeout",
    type=float,
    default=300.0,
    help="seconds allowed per torch.compile measurement",
  )
  parser.add_argument("--compile-worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.compile_worker is not None:
    compile_worker(json.loads(args.compile_worker))
    return 0

  torch.set_num_threads(os.cpu_count())
  sections = _names(args.sections)
  bf16_note = ""
  if args.dtypes == "auto":
    dtypes = ["float32"] + (["bfloat16"] if harness.cpu_bf16_flags() else [])
    if "bfloat16" not in dtypes:
      bf16_note = (
        "\n\nbfloat16 rows skipped: this CPU has no native bfloat16 matmuls (no AMX, "
        "no AVX-512 BF16), so both frameworks would emulate it in float32 "
        "(`--dtypes float32,bfloat16` forces them)."
      )
  else:
    dtypes = _names(args.dtypes)
  bad = [s for s in sections if s not in ("eval", "train")] + [
    d for d in dtypes if d not in ("float32", "bfloat16")
  ]
  if bad:
    parser.error(f"unknown section(s) or dtype(s): {bad}")
  if args.quick:
    eval_models, size, batch, classes, repeats = list(QUICK_EVAL), 32, 4, 10, 1
    train_configs, compile_note = QUICK_TRAIN, "skipped (--quick)"
  else:
    eval_models, size, batch = _names(args.models), args.image_size, args.batch
    classes, repeats = args.classes, args.repeats
    unknown = [n for n in _names(args.train_models) if n not in TRAIN]
    if unknown:
      parser.error(f"unknown train model(s) {unknown}; valid: {', '.join(TRAIN)}")
    train_configs = {n: TRAIN[n] for n in _names(args.train_models)}
    compile_note = "skipped (--no-compile)" if args.no_compile else None
  machine = harness.machine_line()

  if "eval" in sections:
    title = "Eval throughput: JAX vs PyTorch"
    body = (
      eval_section(
        eval_models, classes, size, batch, dtypes, repeats, compile_note, args.compile_timeout
      )
      + bf16_note
    )
    harness.print_section(title, body)
    harness.write_section("torch_eval", title, body, machine=machine, path=args.out)
  if "train" in sections:
    title = "Training step: JAX vs PyTorch"
    body = train_section(train_configs, 10, repeats, None if args.quick else args.train_batch)
    harness.print_section(title, body)
    harness.write_section("torch_train", title, body, machine=machine, path=args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
