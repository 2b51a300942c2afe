"""The convolutional families: duojax (XLA) against the real torchvision, timm and
Hugging Face models, on this machine's CPU.

    python bench/bench_convnets.py [--quick] [--rounds 7] [--no-compile] [--out BENCHMARKS.md]

Eval: images/s of the eval-mode forward at batch 32, 224×224, float32, 1000 classes:
  * duojax: `models.get_model(name)` as one `jax.jit`, compiled ahead of time;
  * torchvision's own model (`tests/reference_libs.py` imports the pinned source), eager,
    under `torch.inference_mode()`, in the better of NCHW and channels_last;
  * timm's and Hugging Face transformers' model of the same architecture where the
    library has the family, eager, in the same layout;
  * `torch.compile` of the torchvision model (inductor, default mode), in a child process
    with a time limit, where it times compiled and eager calls interleaved.
Weights are each library's random initialisation: they do not change the speed.

Train: one optimizer step (AdamW, gradient clipping at 1) of a small family in float32:
duojax's `steps.make_train_step` against torchvision's model in PyTorch, eager.

Formulations: XLA's CPU convolutions against an alternative written in plain ops, on the
same weights, for the depthwise 7×7 of ConvNeXt (49 shifted multiply-adds) and the grouped
3×3 of RegNet and ResNeXt (nine shifted slices and one batched einsum per group);
`bench/conv_forms.py` holds them, with a check that their logits are the model's.

The machine is shared: every table's contenders alternate call by call
(`interleave.interleaved_timers`), each figure is the median over the rounds, and the
load average is printed and written beside the tables. duojax and PyTorch each run in a
child process of their own (`interleave.Server`), since in one process their thread pools
slow each other's next call; the formulations are JAX against JAX, in this process.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import harness  # noqa: E402
import interleave  # noqa: E402
from bench_torch import LAYOUTS  # noqa: E402

# duojax name -> (torchvision's name, timm's or None, Hugging Face's builder or None)
# The small models first: a run stopped early has most of the table.
MODELS = {
  "efficientnet_b0": ("efficientnet_b0", "efficientnet_b0", "efficientnet_b0"),
  "regnet_y_400mf": ("regnet_y_400mf", "regnety_004", "regnet_y_400mf"),
  "mobilenet_v3_large": ("mobilenet_v3_large", "mobilenetv3_large_100", None),
  "mnasnet1_0": ("mnasnet1_0", "mnasnet_100", None),
  "shufflenet_v2_x1_0": ("shufflenet_v2_x1_0", None, None),
  "convnext_tiny": ("convnext_tiny", "convnext_tiny", "convnext"),
  "resnext50_32x4d": ("resnext50_32x4d", "resnext50_32x4d", None),
}
# (model, overrides, formulation) of the formulation table.
# ConvNeXt's layer scale at 1, not 1e-6: else a block's output is below float32's
# resolution on the residual, and the check of the logits would see nothing.
FORMS = (
  ("efficientnet_b0", {}, "shifts"),
  ("mobilenet_v3_large", {}, "shifts"),
  ("regnet_y_400mf", {}, "einsum"),
  ("convnext_tiny", {"layer_scale": 1.0}, "shifts"),
  ("resnext50_32x4d", {}, "einsum"),
)
TRAIN = ("shufflenet_v2_x1_0", 64, 32)  # model, side, batch
QUICK = dict(
  models=("regnet_y_400mf",),
  size=32,
  batch=2,
  forms=(
    (
      "convnext_tiny",
      {"widths": (8, 16, 24, 32), "depths": (1, 1, 1, 1), "layer_scale": 1.0},
      "shifts",
    ),
  ),
  train=("shufflenet_v2_x0_5", 32, 4),
)


# ----------------------------------------------------------------------------
# The models of each library.


# torchvision's submodule of each family, by the duojax name's prefix.
TV_MODULES = {
  "convnext": "convnext",
  "efficientnet": "efficientnet",
  "regnet": "regnet",
  "mobilenet_v3": "mobilenetv3",
  "mnasnet": "mnasnet",
  "shufflenet": "shufflenetv2",
  "resnext": "resnet",
}


def torchvision_model(name: str, classes: int) -> torch.nn.Module:
  from reference_libs import torchvision_models

  prefix = next(p for p in TV_MODULES if name.startswith(p))
  return getattr(getattr(torchvision_models(), TV_MODULES[prefix]), name)(num_classes=classes)


def timm_model(name: str, classes: int) -> torch.nn.Module:
  from reference_libs import timm

  return timm().create_model(MODELS[name][1], pretrained=False, num_classes=classes)


def hf_model(name: str, classes: int) -> torch.nn.Module:
  """Hugging Face's model of the same architecture (random weights, no download)."""
  import transformers as tr

  kind = MODELS[name][2]
  if kind == "convnext":
    model = tr.ConvNextForImageClassification(tr.ConvNextConfig(num_labels=classes))
  elif kind == "efficientnet_b0":
    # B0's coefficients; hidden_dim is the head conv's width (the default is B7's).
    config = tr.EfficientNetConfig(
      width_coefficient=1.0,
      depth_coefficient=1.0,
      image_size=224,
      hidden_dim=1280,
      num_labels=classes,
    )
    model = tr.EfficientNetForImageClassification(config)
  else:  # pycls's RegNetY-400MF: torchvision's widths, depths and group width
    config = tr.RegNetConfig(
      depths=[1, 3, 6, 6],
      hidden_sizes=[48, 104, 208, 440],
      groups_width=8,
      layer_type="y",
      embedding_size=32,
      num_labels=classes,
    )
    model = tr.RegNetForImageClassification(config)
  return _Logits(model)


class _Logits(torch.nn.Module):
  """A Hugging Face classifier called as the others are: images in, logits out."""

  def __init__(self, model):
    super().__init__()
    self.model = model

  def forward(self, x):
    return self.model(pixel_values=x).logits


def duojax_forward(name: str, classes: int, size: int, batch: int, overrides=None):
  """(call, compile s) of the jitted duojax forward on random images."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  from duojax import models

  model = models.get_model(name, classes, rngs=0, image_size=size, **(overrides or {}))
  graphdef, state = nnx.split(model)
  fwd = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, train=False)[0])
  x = jax.random.normal(jax.random.key(0), (batch, size, size, 3), jnp.float32)
  start = time.perf_counter()
  compiled = fwd.lower(state, x).compile()
  return (lambda: compiled(state, x)), time.perf_counter() - start


def _eager(model: torch.nn.Module, x: torch.Tensor, layout: str):
  fmt = LAYOUTS[layout]
  model = model.eval().to(memory_format=fmt)
  xl = x.contiguous(memory_format=fmt)

  def call():
    with torch.inference_mode():
      return model(xl)

  return call


def better_layout(model: torch.nn.Module, x: torch.Tensor) -> str:
  """The faster memory format for `model`, from two calls of each after a warm-up."""
  best = {}
  for layout in LAYOUTS:
    call = _eager(model, x, layout)
    call()
    best[layout] = min(_seconds(call) for _ in range(2))
  return min(best, key=best.get)


def _seconds(call) -> float:
  start = time.perf_counter()
  call()
  return time.perf_counter() - start


# ----------------------------------------------------------------------------
# Eval.


def compile_worker(spec: dict) -> None:
  """Child process: torch.compile of the torchvision model, timed interleaved with its
  eager calls; prints one JSON line."""
  torch.set_num_threads(os.cpu_count())
  torch.manual_seed(0)
  model = torchvision_model(spec["name"], spec["classes"])
  x = torch.randn(spec["batch"], 3, spec["size"], spec["size"])
  eager = _eager(model, x, spec["layout"])
  compiled_model = torch.compile(model.eval().to(memory_format=LAYOUTS[spec["layout"]]))
  xl = x.contiguous(memory_format=LAYOUTS[spec["layout"]])

  def compiled():
    with torch.inference_mode():
      return compiled_model(xl)

  out = interleave.interleaved(
    {"compiled": (compiled, None), "eager": (eager, None)}, spec["rounds"]
  )
  print(
    json.dumps(
      {
        "img_s": spec["batch"] / out["compiled"]["median_s"],
        "eager_img_s": spec["batch"] / out["eager"]["median_s"],
        "compile_s": out["compiled"]["first_s"],
      }
    )
  )


def torch_compiled(spec: dict, timeout_s: float) -> tuple[float | None, str]:
  """(img/s or None, table cell) of torch.compile, from a child process."""
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
  return out["img_s"], (
    f"{out['img_s']:,.1f} (eager there {out['eager_img_s']:,.1f}; compile {out['compile_s']:.0f} s)"
  )


def side_calls(spec: dict) -> tuple[dict, dict]:
  """In a `--serve` child: ({name: (call, sync)}, notes) of one framework's side."""
  torch.set_num_threads(os.cpu_count())
  name, size, batch, classes = spec["name"], spec["size"], spec["batch"], spec["classes"]
  if spec["side"] == "jax-eval":
    call, compile_s = duojax_forward(name, classes, size, batch)
    return {"duojax": (call, harness.jax_sync)}, {"compile_s": compile_s}
  if spec["side"] == "torch-eval":
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    tv = torchvision_model(name, classes)
    layout = better_layout(tv, x)
    calls, failed = {"torchvision": (_eager(tv, x, layout), None)}, {}
    for library, build in (("timm", timm_model), ("hf", hf_model)):
      if MODELS[name][1 if library == "timm" else 2]:
        try:  # a library that cannot build or run the model is a cell, not the end
          call = _eager(build(name, classes), x, layout)
          call()
          calls[library] = (call, None)
        except Exception as e:  # noqa: BLE001
          failed[library] = f"failed: {harness.one_line(str(e), 60)}"
    return calls, {"layout": layout, "failed": failed}
  if spec["side"] == "jax-train":
    return {"duojax": (jax_train_step(name, size, batch, classes), harness.jax_sync)}, {}
  return {"torch": (torch_train_step(name, size, batch, classes), None)}, {}


def _server(spec: dict) -> interleave.Server:
  return interleave.Server(
    [sys.executable, str(Path(__file__).resolve()), "--serve", json.dumps(spec)]
  )


def race(specs: dict, rounds: int) -> tuple[dict, dict]:
  """({contender: median s}, {side: its notes}): each side in its own child process,
  their calls interleaved round by round."""
  servers = {}
  try:
    for side, spec in specs.items():
      servers[side] = _server(spec)
    timers = {
      name: server.timer(name) for server in servers.values() for name in server.ready["first_s"]
    }
    out = interleave.interleaved_timers(timers, rounds)
  finally:
    for server in servers.values():
      server.close()
  return {k: v["median_s"] for k, v in out.items()}, {k: s.ready for k, s in servers.items()}


def eval_rows(names, size, batch, classes, rounds, compile_note, compile_timeout):
  """One table row per model, yielded as soon as it is measured."""
  for name in names:
    spec = dict(name=name, size=size, batch=batch, classes=classes)
    medians, ready = race(
      {side: {**spec, "side": side} for side in ("jax-eval", "torch-eval")}, rounds
    )
    rate = {k: batch / v for k, v in medians.items()}
    layout = ready["torch-eval"]["layout"]
    cells = {"timm": "–", "hf": "–", **ready["torch-eval"]["failed"]}
    cells.update({k: f"{rate[k]:,.1f}" for k in ("torchvision", "timm", "hf") if k in rate})
    if compile_note is not None:
      compiled_cell = compile_note
    else:
      compile_spec = {**spec, "layout": layout, "rounds": rounds}
      compiled_rate, compiled_cell = torch_compiled(compile_spec, compile_timeout)
      if compiled_rate is not None:
        rate["compiled"] = compiled_rate
    best = max(v for k, v in rate.items() if k != "duojax")
    row = [
      name,
      f"{rate['duojax']:,.1f}",
      f"{cells['torchvision']} ({layout})",
      cells["timm"],
      cells["hf"],
      compiled_cell,
      f"{rate['duojax'] / best:.2f}",
      f"{ready['jax-eval']['compile_s']:.1f}",
    ]
    print(" ", row, interleave.load_line(), flush=True)
    yield row


# ----------------------------------------------------------------------------
# Train step.


def jax_train_step(name: str, size: int, batch: int, classes: int):
  """duojax's jitted train step on one batch, as a call (the state donated and kept)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from duojax import config_lib
  from duojax.models import functional, spec
  from duojax.parallel import sharding
  from duojax.train import optim, steps

  config = config_lib.base_config()
  optimizer = optim.make_optimizer(config, num_steps=10_000)
  model = spec.build_model(name, {}, classes, (size, size, 3), seed=0)
  graphdef, params, batch_stats = functional.split_model(model)
  mesh = sharding.make_mesh(1)
  holder = [
    jax.device_put(steps.init_state(params, batch_stats, optimizer), sharding.replicated(mesh))
  ]
  step = steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0)
  rng = np.random.default_rng(0)
  data = {
    "image": jnp.asarray(rng.standard_normal((batch, size, size, 3), np.float32)),
    "label": jnp.asarray(rng.integers(0, classes, batch, np.int32)),
  }
  data = jax.device_put(data, sharding.batch_sharding(mesh))

  def jax_step():
    holder[0], metrics = step(holder[0], data)  # the old state is donated
    return holder[0], metrics

  return jax_step


def torch_train_step(name: str, size: int, batch: int, classes: int):
  """The same step of torchvision's model in eager PyTorch: AdamW with decay on the
  kernels only and clipping at global norm 1, as duojax's default config."""
  from duojax import config_lib

  config = config_lib.base_config()
  torch.manual_seed(0)
  tv = torchvision_model(name, classes).train()
  weights = list(tv.parameters())
  groups = [
    {"params": [p for p in weights if p.ndim > 1], "weight_decay": config.weight_decay},
    {"params": [p for p in weights if p.ndim <= 1], "weight_decay": 0.0},
  ]
  opt = torch.optim.AdamW(groups, lr=config.lr)
  x, y = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))

  def torch_step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(tv(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(weights, config.grad_clip_norm)
    opt.step()
    return loss.item()

  return torch_step


def train_rows(name: str, size: int, batch: int, classes: int, rounds: int):
  spec = dict(name=name, size=size, batch=batch, classes=classes)
  medians, ready = race(
    {side: {**spec, "side": side} for side in ("jax-train", "torch-train")}, rounds
  )
  rate = {k: batch / v for k, v in medians.items()}
  first = ready["jax-train"]["first_s"]["duojax"]
  row = [
    name,
    f"{size}×{size}×3",
    batch,
    f"{rate['duojax']:,.1f}",
    f"{rate['torch']:,.1f}",
    f"{rate['duojax'] / rate['torch']:.2f}",
    f"{max(0.0, first - medians['duojax']):.1f}",
  ]
  print(" ", row, interleave.load_line(), flush=True)
  yield row


HEADERS = {
  "eval": [
    "model",
    "duojax img/s",
    "torchvision eager (layout)",
    "timm eager",
    "HF eager",
    "torch.compile (torchvision)",
    "duojax / best PyTorch",
    "duojax compile s",
  ],
  "train": ["model", "input", "batch", "duojax img/s", "PyTorch eager img/s", "ratio", "compile s"],
  "forms": [
    "model",
    "alternative",
    "convs replaced",
    "XLA conv img/s",
    "alternative img/s",
    "speed-up",
    "max abs Δ logit / max abs logit",
  ],
}


# ----------------------------------------------------------------------------
# Formulations.


def form_rows(forms, size: int, batch: int, classes: int, rounds: int):
  import conv_forms  # JAX only: both forms in this process

  for name, overrides, form in forms:
    result = conv_forms.compare(name, overrides, form, classes, size, batch, rounds)
    row = [
      name,
      conv_forms.DESCRIPTIONS[form],
      f"{result['convs']}",
      f"{batch / result['xla_s']:,.1f}",
      f"{batch / result['form_s']:,.1f}",
      f"{result['xla_s'] / result['form_s']:.2f}",
      f"{result['max_diff']:.1e}",
    ]
    print(" ", row, interleave.load_line(), flush=True)
    yield row


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="one tiny run of each table (test)")
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  parser.add_argument("--models", default=",".join(MODELS), help="eval models (duojax names)")
  parser.add_argument("--sections", default="eval,train,forms")
  parser.add_argument("--rounds", type=int, default=7, help="interleaved timed rounds")
  parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
  parser.add_argument("--compile-timeout", type=float, default=300.0)
  parser.add_argument("--compile-worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--serve", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.compile_worker is not None:
    compile_worker(json.loads(args.compile_worker))
    return 0
  if args.serve is not None:
    interleave.serve(*side_calls(json.loads(args.serve)))
    return 0
  torch.set_num_threads(os.cpu_count())
  sections = [s for s in args.sections.split(",") if s]
  classes = 1000
  if args.quick:
    names, size, batch, rounds = QUICK["models"], QUICK["size"], QUICK["batch"], 1
    forms, train, compile_note = QUICK["forms"], QUICK["train"], "skipped (--quick)"
  else:
    names, size, batch, rounds = args.models.split(","), 224, 32, args.rounds
    forms, train = FORMS, TRAIN
    compile_note = "skipped (--no-compile)" if args.no_compile else None
  unknown = [n for n in names if n not in MODELS]
  if unknown:
    parser.error(f"unknown model(s) {unknown}; valid: {', '.join(MODELS)}")
  load_before = interleave.load_line()
  print(load_before, flush=True)
  tables = {}  # section -> rows so far; the section is written after every row
  notes = {
    "eval": f"Eval forward, float32, batch {batch}, {size}×{size}×3, {classes} classes: "
    f"median of {rounds} interleaved rounds after a warm-up (duojax: compiling) call. "
    "timm and Hugging Face run in torchvision's better layout; – where the library lacks "
    "the family. torch.compile's cell also gives the eager torchvision rate timed beside "
    "it in its child process.",
    "train": "One AdamW step (decay on kernels, clipping at 1), float32, 10 classes, "
    f"batch-norm batch statistics, median of {rounds} interleaved rounds.",
    "forms": f"The same weights either way, batch {batch}, {size}×{size}×3, float32, median "
    f"of {rounds} interleaved rounds.",
  }
  title = "Convolutional families on the CPU"

  def publish(final: bool = False):
    parts = [harness.md_table(HEADERS[k], rows) + "\n\n" + notes[k] for k, rows in tables.items()]
    load = interleave.load_line()
    body = (
      "\n\n".join(parts)
      + f"\n\nBefore: {load_before}; "
      + (f"after: {load}." if final else f"so far (the run goes on): {load}.")
    )
    if final:
      harness.print_section(title, body)
    harness.write_section("convnets", title, body, machine=harness.machine_line(), path=args.out)

  jobs = {
    "eval": lambda: eval_rows(
      names, size, batch, classes, rounds, compile_note, args.compile_timeout
    ),
    "train": lambda: train_rows(train[0], train[1], train[2], 10, rounds),
    "forms": lambda: form_rows(forms, size, batch, classes, rounds),
  }
  for section in [s for s in jobs if s in sections]:
    for row in jobs[section]():
      tables.setdefault(section, []).append(row)
      publish()
  publish(final=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
