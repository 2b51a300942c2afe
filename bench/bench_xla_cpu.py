"""What holds duojax back on XLA's CPU backend: A/B timings of the choices made.

    python bench/bench_xla_cpu.py [--quick] [--out BENCHMARKS.md]

Section `xla_cpu_ab`: one ViT-S/16 encoder block's pieces at batch 32 (197
tokens, width 384, 6 heads), each variant timed alternately in one process so
that machine noise hits both alike:
  * attention on token-major [B, T, heads, head_dim] (the natural output of
    the per-head q/k/v projections) vs head-major [B, heads, T, head_dim]
    (what `duojax.models.vit.SelfAttention` does: one explicit relayout, then
    batched dots with the batch axes leading);
  * the MLP with exact GELU written with erfc (`jax.nn.gelu(approximate=False)`)
    vs with erf (`duojax.models.vit._gelu_erf`) vs without activation (floor);
  * the patch embedding as a strided convolution (what the model runs) vs an
    explicit patchify + matmul.
Section `xla_cpu_train_step`: the demo's train steps (ResNet-14 at batch 32
and 128, the cnn_xs sidekick, the ViT-mi/7) with the library convolutions,
with every convolution as im2col + one matmul (`matmul_conv`), with only the
kernel gradients as that matmul (`matmul_kernel_grad_conv`), with the
convolutions asked for in NCHW (`nchw_conv`), with batch norm's backward
written out (`closed_form_batch_norm`), compiled with YNNPACK convolutions,
and for the CNN with flax's windowed max pool (`windowed_max_pool`, what the
reshape pool replaced), interleaved, against PyTorch's eager train step.
Section `xla_cpu_options`: the whole ResNet-18 and ViT-S/16 eval forward
(224×224, batch 32) compiled with XLA CPU compiler options that could route
convolutions and dots to other kernels (oneDNN, YNNPACK) or relax math, each
compiled from the same lowering and timed alternately with the default.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402
from formulations import (  # noqa: E402
  closed_form_batch_norm,
  matmul_conv,
  matmul_kernel_grad_conv,
  nchw_conv,
  windowed_max_pool,
)

from duojax import models  # noqa: E402
from duojax.models import vit  # noqa: E402

OPTIONS = {
  "default": {},
  "oneDNN off": {"xla_cpu_use_onednn": False},
  "XNNPACK off": {"xla_cpu_use_xnnpack": False},
  "YNNPACK convolutions": {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
  },
  "fast math": {"xla_cpu_enable_fast_math": True},
  "512-bit vectors": {"xla_cpu_prefer_vector_width": 512},
}


def alternate(fns: dict, args: dict, repeats: int) -> dict[str, float]:
  """Median seconds per call of each compiled fn, calls interleaved."""
  for name, fn in fns.items():
    jax.block_until_ready(fn(*args[name]))
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args[name]))
      times[name].append(time.perf_counter() - start)
  return {name: float(np.median(t)) for name, t in times.items()}


def _attention(token_major: bool):
  def block(x, wq, wk, wv, wo):
    proj = lambda w: jnp.einsum("btd,dhe->bthe", x, w)
    q, k, v = proj(wq) * wq.shape[-1] ** -0.5, proj(wk), proj(wv)
    if token_major:
      logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
      y = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
    else:
      q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
      logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
      y = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v)
      y = y.transpose(0, 2, 1, 3)
    return jnp.einsum("bthe,hed->btd", y, wo)

  return jax.jit(block)


def _patchify(x, w):
  b, h, wd, c = x.shape
  p = w.shape[0]
  patches = x.reshape(b, h // p, p, wd // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return patches.reshape(b, h // p, wd // p, p * p * c) @ w.reshape(p * p * c, -1)


def kernels_section(
  batch: int, tokens: int, width: int, heads: int, image: int, repeats: int
) -> str:
  keys = iter(jax.random.split(jax.random.key(0), 16))
  normal = lambda shape, s=1.0: s * jax.random.normal(next(keys), shape, jnp.float32)
  hd, mlp = width // heads, 4 * width
  x = normal((batch, tokens, width))
  att = tuple(normal((width, heads, hd), 0.05) for _ in range(3)) + (
    normal((heads, hd, width), 0.05),
  )
  w1, w2 = normal((width, mlp), 0.05), normal((mlp, width), 0.05)
  img, wp = normal((batch, image, image, 3)), normal((16, 16, 3, width), 0.02)
  conv = lambda x, w: jax.lax.conv_general_dilated(
    x, w, (16, 16), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  groups = {
    "attention block (q/k/v/out projections + core)": {
      "token-major [B, T, heads, hd]": (_attention(True), (x,) + att),
      "head-major [B, heads, T, hd] (duojax)": (_attention(False), (x,) + att),
    },
    f"MLP {width}→{mlp}→{width}": {
      "exact GELU via erfc (jax.nn.gelu)": (
        jax.jit(lambda x: jax.nn.gelu(x @ w1, approximate=False) @ w2),
        (x,),
      ),
      "exact GELU via erf (duojax)": (jax.jit(lambda x: vit._gelu_erf(x @ w1) @ w2), (x,)),
      "no activation (floor)": (jax.jit(lambda x: (x @ w1) @ w2), (x,)),
    },
    "patch embedding 16×16": {
      "strided convolution (duojax)": (jax.jit(conv), (img, wp)),
      "patchify + matmul": (jax.jit(_patchify), (img, wp)),
    },
  }
  rows = []
  for group, variants in groups.items():
    outs = [np.asarray(fn(*a)) for fn, a in variants.values()]
    times = alternate(
      {k: fn for k, (fn, _) in variants.items()}, {k: a for k, (_, a) in variants.items()}, repeats
    )
    base = next(iter(times.values()))
    for (name, t), out in zip(times.items(), outs):
      # The floor computes a different function: no agreement to report.
      diff = "n/a" if "floor" in name else f"{float(np.abs(out - outs[0]).max()):.1e}"
      rows.append([group, name, f"{t * 1e3:.1f}", f"{base / t:.2f}×", diff])
  table = harness.md_table(
    ["piece", "variant", "median ms", "speed vs first", "max |Δ| vs first"], rows
  )
  return (
    f"Batch {batch}, {tokens} tokens, width {width}, {heads} heads, float32, "
    f"median of {repeats} interleaved runs.\n\n{table}"
  )


def options_section(names, image: int, batch: int, repeats: int) -> str:
  x = jax.random.normal(jax.random.key(0), (batch, image, image, 3), jnp.float32)
  rows = []
  for name in names:
    graphdef, state = nnx.split(models.get_model(name, 10, rngs=0, image_size=image))
    lowered = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0]).lower(state, x)
    compiled, failed = {}, {}
    for label, opts in OPTIONS.items():
      try:
        compiled[label] = lowered.compile(compiler_options=opts)
      except Exception as e:  # an option this jaxlib does not know
        failed[label] = harness.one_line(str(e))
    times = alternate(compiled, {k: (state, x) for k in compiled}, repeats)
    base = times["default"]
    for label in OPTIONS:
      if label in failed:
        rows.append([name, label, "–", "–", f"rejected: {failed[label]}"])
      else:
        rows.append([name, label, f"{batch / times[label]:.1f}", f"{base / times[label]:.2f}×", ""])
  table = harness.md_table(["model", "XLA CPU options", "img/s", "vs default", "note"], rows)
  return (
    f"{image}×{image}, batch {batch}, float32 eval forward, median of {repeats} "
    f"interleaved runs.\n\n{table}"
  )


def _train_step(name: str, batch: int, conv=None):
  """(jitted step, state, batch) of duojax's train step for the demo's `name`,
  with every convolution's `conv_general_dilated` swapped for `conv` if given."""
  from duojax import config_lib
  from duojax.models import functional, spec
  from duojax.parallel import sharding
  from duojax.train import optim, steps

  config = config_lib.base_config()
  optimizer = optim.make_optimizer(config, num_steps=10_000)
  model = spec.build_model(name, {}, 10, (28, 28, 1), seed=0)
  if conv is not None:
    for _, module in nnx.iter_modules(model):
      if isinstance(module, nnx.Conv):
        module.conv_general_dilated = conv
  graphdef, params, batch_stats = functional.split_model(model)
  mesh = sharding.make_mesh(1)
  state = jax.device_put(
    steps.init_state(params, batch_stats, optimizer), sharding.replicated(mesh)
  )
  step = steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0)
  rng = np.random.default_rng(0)
  data = {
    "image": jnp.asarray(rng.standard_normal((batch, 28, 28, 1), np.float32)),
    "label": jnp.asarray(rng.integers(0, 10, batch, np.int32)),
  }
  return step, state, data


def train_step_section(cases, repeats: int, steps_per_call: int, torch_rates: bool) -> str:
  """The demo's train steps: convolution formulations and compiler options, A/B in
  one process, against PyTorch's eager step on the same CPU."""
  rows = []
  base_label = "library convolutions (duojax)"
  for name, batch in cases:
    # label -> (convolution, compiler options, context the step is traced in)
    variants = {
      base_label: (None, {}, None),
      "im2col + one matmul per convolution": (matmul_conv, {}, None),
      "kernel gradients as one matmul (custom VJP)": (matmul_kernel_grad_conv, {}, None),
      "convolutions asked for in NCHW": (nchw_conv, {}, None),
      "batch norm with a closed-form backward": (None, {}, closed_form_batch_norm),
      "YNNPACK convolutions": (None, OPTIONS["YNNPACK convolutions"], None),
    }
    if name.startswith("vit"):  # one convolution (the patch embedding), no batch norm
      variants = {
        k: v
        for k, v in variants.items()
        if k in (base_label, "im2col + one matmul per convolution")
      }
    if name.startswith("cnn"):  # the only models with the 2×2 pool
      variants["windowed max pool (nnx.max_pool)"] = (None, {}, windowed_max_pool)
    runs, first_loss = {}, {}
    for label, (conv, options, context) in variants.items():
      with context() if context else contextlib.nullcontext():
        step, state, data = _train_step(name, batch, conv)
        lowered = step.lower(state, data)
        compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
      state, metrics = compiled(state, data)
      first_loss[label] = float(metrics["loss"])
      state, _ = compiled(state, data)  # a second call: the timed ones find it compiled
      runs[label] = [compiled, state, data]
    times = {label: [] for label in runs}
    for _ in range(repeats):
      for label, run in runs.items():
        start = time.perf_counter()
        for _ in range(steps_per_call):
          run[1], _ = run[0](run[1], run[2])  # the state is donated
        jax.block_until_ready(run[1])
        times[label].append((time.perf_counter() - start) / steps_per_call)
    torch_rate = None
    if torch_rates:
      import bench_torch

      torch_rate = max(bench_torch.torch_train(name, (28, 28, 1), batch, 10, repeats).values())
    base = float(np.median(times[base_label]))
    for label, t in times.items():
      rate = batch / float(np.median(t))
      vs_torch = "–" if torch_rate is None else f"{rate / torch_rate:.2f}"
      rows.append(
        [
          name,
          batch,
          label,
          f"{rate:,.0f}",
          f"{base / float(np.median(t)):.2f}×",
          vs_torch,
          f"{abs(first_loss[label] - first_loss[base_label]):.1e}",
        ]
      )
  table = harness.md_table(
    ["model", "batch", "variant", "img/s", "vs duojax", "vs PyTorch", "|Δ first loss|"], rows
  )
  return (
    f"28×28×1 Fashion-MNIST-sized batches, 10 classes, duojax's jitted train step "
    f"(AdamW, clipping, batch-norm statistics), float32; median of {repeats} interleaved "
    f"calls of {steps_per_call} steps each, all cores. PyTorch: its best layout's eager "
    f"step (`bench_torch.torch_train`).\n\n{table}"
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes (for the unit test)")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--models", default="resnet18,vit_s16")
  parser.add_argument(
    "--sections", default="ab,options,train_step", help="comma-separated: ab, options, train_step"
  )
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  args = parser.parse_args(argv)
  machine = harness.machine_line()
  wanted = set(args.sections.split(","))
  if wanted - {"ab", "options", "train_step"}:
    parser.error(f"unknown sections {sorted(wanted - {'ab', 'options', 'train_step'})}")
  if args.quick:
    sections = {
      "ab": lambda: kernels_section(2, 17, 32, 4, 32, 1),
      "options": lambda: options_section(["resnet14"], 32, 2, 1),
      "train_step": lambda: train_step_section(
        [("resnet8", 4), ("cnn_xs", 4)], 1, 1, torch_rates=False
      ),
    }
  else:
    sections = {
      "ab": lambda: kernels_section(32, 197, 384, 6, 224, args.repeats),
      "options": lambda: options_section(
        [m.strip() for m in args.models.split(",")], 224, 32, max(3, args.repeats // 2)
      ),
      "train_step": lambda: train_step_section(
        [("resnet14", 32), ("resnet14", 128), ("cnn_xs", 128), ("vit_mi7", 128)],
        args.repeats,
        10,
        torch_rates=True,
      ),
    }
  titles = {
    "ab": ("xla_cpu_ab", "XLA CPU: A/B of the ViT kernels' formulation"),
    "options": ("xla_cpu_options", "XLA CPU: compiler options on whole models"),
    "train_step": ("xla_cpu_train_step", "XLA CPU: the demo's train steps, formulations A/B"),
  }
  for key in sections:
    if key not in wanted:
      continue
    name, title = titles[key]
    body = sections[key]()
    harness.print_section(title, body)
    harness.write_section(name, title, body, machine=machine, path=args.out)
  return 0


if __name__ == "__main__":
  sys.exit(main())
