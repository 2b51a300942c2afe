"""The transformer families: duojax (XLA) against Hugging Face transformers, the attention
forms, and the memory rematerialisation saves, on this machine's CPU.

    python bench/bench_transformers.py [--quick] [--rounds 5] [--sections eval,attention,remat]
        [--out BENCHMARKS.md]

Eval: images/s of the eval-mode forward at batch 32, float32, 1000 classes, 224×224 (Swin-V2
at its native 256×256): duojax's `models.get_model(name)` as one `jax.jit`, compiled ahead
of time, against the transformers model of the same architecture (random initialisation,
the default sizes of its config with the variant's patch, width and depth), eager, under
`torch.inference_mode()`. CLIP and SigLIP towers are transformers' vision models plus a
linear head, as duojax's are; DeiT is the distilled model with its two heads averaged.

Attention: ViT-S/16 and ViT-B/16 with `attention="explicit"` (two einsums, heads first,
the form `auto` picks on CPU) against `attention="xla"` (`jax.nn.dot_product_attention`,
the form TPU compilers fuse; on GPU `auto` picks cuDNN's fused kernel, which needs a GPU
to time).

Remat: the bytes a ViT-B/16 train step's backward pass reads from its forward (float32
and bfloat16 compute, several batches), with and without `remat=True` (each encoder block
under `nnx.remat`), from shapes alone (`residual_bytes`): what a device holds between the
two passes, the memory that grows with batch × depth.

Contenders alternate call by call (`interleave.interleaved`) and each figure is the
median over the rounds: the machine is shared, and the load average is printed beside
the tables.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
import interleave  # noqa: E402
from bench_convnets import _eager, duojax_forward  # noqa: E402

# duojax name -> (side, the transformers model's builder)
EVAL = {
  "vit_b16_clip": 224,
  "vit_b14_dinov2": 224,
  "deit_b16_distilled": 224,
  "vit_b16_siglip": 224,
  "swin_v2_t": 256,
}
ATTENTION = ("vit_s16", "vit_b16")
REMAT = ("vit_b16", (32, 128), ("float32", "bfloat16"))
QUICK = dict(
  eval={"vit_b16_clip": 32},
  overrides=dict(width=32, depth=1, num_heads=2, mlp_dim=64),
  attention=("vit_mu4",),
  remat=("vit_mu4", (4,), ("float32",)),
)


class _Logits(torch.nn.Module):
  """A transformers classifier called on pixel values, returning its logits."""

  def __init__(self, model, head=None):
    super().__init__()
    self.model, self.head = model, head

  def forward(self, x):
    out = self.model(pixel_values=x)
    if self.head is None:
      return out.logits
    return self.head(out.pooler_output)


def hf_model(name: str, side: int, classes: int, small: dict | None = None) -> torch.nn.Module:
  """transformers' model of duojax's `name` (its architecture, random weights)."""
  import transformers as tf

  small = small or {}
  sizes = {}
  if small:
    sizes = dict(
      hidden_size=small["width"],
      num_hidden_layers=small["depth"],
      num_attention_heads=small["num_heads"],
      intermediate_size=small["mlp_dim"],
    )
  if name.startswith("vit_") and name.endswith("_clip"):
    config = tf.CLIPVisionConfig(image_size=side, patch_size=16, hidden_act="gelu", **sizes)
    model = tf.CLIPVisionModel(config)
    return _Logits(model, torch.nn.Linear(config.hidden_size, classes))
  if "dinov2" in name:
    config = tf.Dinov2Config(image_size=side, patch_size=14, num_labels=classes, **sizes)
    return _Logits(tf.Dinov2ForImageClassification(config))
  if name.startswith("deit_"):
    config = tf.DeiTConfig(image_size=side, patch_size=16, num_labels=classes, **sizes)
    return _Logits(tf.DeiTForImageClassificationWithTeacher(config))
  if name.endswith("_siglip"):
    config = tf.SiglipVisionConfig(image_size=side, patch_size=16, **sizes)
    model = tf.SiglipVisionModel(config)
    return _Logits(model, torch.nn.Linear(config.hidden_size, classes))
  if name.startswith("swin_v2"):
    config = tf.Swinv2Config(image_size=side, window_size=8, num_labels=classes)
    return _Logits(tf.Swinv2ForImageClassification(config))
  raise ValueError(f"no transformers model for {name}")


def _duojax_overrides(name: str, small: dict | None) -> dict:
  if not small:
    return {}
  return dict(small) if name.startswith(("vit_", "deit_")) else {}


def eval_rows(models: dict, batch: int, classes: int, rounds: int, small=None) -> list[list]:
  rows = []
  for name, side in models.items():
    call, compile_s = duojax_forward(name, classes, side, batch, _duojax_overrides(name, small))
    torch.manual_seed(0)
    x = torch.randn(batch, 3, side, side)
    hf = _eager(hf_model(name, side, classes, small), x, "contiguous")
    times = interleave.interleaved(
      {"duojax": (call, lambda r: r.block_until_ready()), "hf": (hf, None)}, rounds
    )
    ours, theirs = (batch / times[k]["median_s"] for k in ("duojax", "hf"))
    rows.append([name, f"{side}", f"{ours:.1f}", f"{theirs:.1f}", f"{ours / theirs:.2f}×",
                 f"{compile_s:.1f}"])  # fmt: skip
    print(rows[-1], flush=True)
  return rows


def attention_rows(models, batch: int, classes: int, rounds: int, small=None) -> list[list]:
  rows = []
  for name in models:
    calls = {}
    for form in ("explicit", "xla"):
      overrides = {"attention": form, **(small or {})}
      calls[form] = duojax_forward(name, classes, 224 if not small else 16, batch, overrides)[0]
    times = interleave.interleaved(
      {form: (call, lambda r: r.block_until_ready()) for form, call in calls.items()}, rounds
    )
    explicit, xla = (batch / times[k]["median_s"] for k in ("explicit", "xla"))
    rows.append([name, f"{explicit:.1f}", f"{xla:.1f}", f"{xla / explicit:.2f}×"])
    print(rows[-1], flush=True)
  return rows


def residual_bytes(name: str, batch: int, dtype: str, remat: bool, small=None) -> dict:
  """Bytes the backward pass of one train step reads from its forward: the residuals of
  `jax.vjp` of the loss w.r.t. the parameters, from shapes alone (no compile, no run).

  They are the activations (and the weights they meet) a device holds between the
  forward and the backward pass, the part of a train step's memory that grows with
  batch × depth and that remat cuts to one block's inputs. (XLA's CPU scheduler may hoist
  the recomputation forward again, so the CPU executable's own memory analysis shows
  no saving; accelerator compilers schedule for memory.)
  """
  import math

  import jax
  import jax.numpy as jnp
  import optax
  from flax import nnx

  from duojax import models

  side = 16 if small else 224
  model = nnx.eval_shape(
    lambda: models.get_model(name, 1000, dtype=dtype, remat=remat, image_size=side, **(small or {}))
  )
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  x = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)

  def loss(p, x, y):
    logits, _ = nnx.merge(graphdef, p, rest)(x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  residuals = jax.eval_shape(lambda p, x, y: jax.vjp(lambda p: loss(p, x, y), p)[1], params, x, y)
  size = lambda leaves: sum(math.prod(a.shape) * jnp.dtype(a.dtype).itemsize for a in leaves)
  return {"residuals": size(jax.tree.leaves(residuals)), "weights": size(jax.tree.leaves(params))}


def remat_rows(spec, small=None) -> list[list]:
  name, batches, dtypes = spec
  rows = []
  mib = 2.0**20
  for dtype in dtypes:
    for batch in batches:
      plain, remat = (residual_bytes(name, batch, dtype, r, small) for r in (False, True))
      rows.append([name, dtype, f"{batch}", f"{plain['weights'] / mib:,.0f}",
                   f"{plain['residuals'] / mib:,.0f}", f"{remat['residuals'] / mib:,.0f}",
                   f"{plain['residuals'] / max(remat['residuals'], 1):.1f}×"])  # fmt: skip
      print(rows[-1], flush=True)
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="one tiny run of each table (test)")
  parser.add_argument("--out", default=str(harness.BENCHMARKS_MD))
  parser.add_argument("--sections", default="eval,attention,remat")
  parser.add_argument("--models", default=",".join(EVAL), help="eval models (duojax names)")
  parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds")
  args = parser.parse_args(argv)
  torch.set_num_threads(os.cpu_count())
  sections = [s for s in args.sections.split(",") if s]
  classes = 1000
  if args.quick:
    small, batch, rounds = QUICK["overrides"], 2, 1
    models, attention, remat = QUICK["eval"], QUICK["attention"], QUICK["remat"]
  else:
    small, batch, rounds = None, 32, args.rounds
    unknown = [n for n in args.models.split(",") if n not in EVAL]
    if unknown:
      parser.error(f"unknown model(s) {unknown}; valid: {', '.join(EVAL)}")
    models = {n: EVAL[n] for n in args.models.split(",")}
    attention, remat = ATTENTION, REMAT
  load_before = interleave.load_line()
  print(load_before, flush=True)
  parts = []
  if "eval" in sections:
    rows = eval_rows(models, batch, classes, rounds, small)
    parts.append(
      harness.md_table(
        ["model", "side", "duojax img/s", "transformers eager img/s", "ratio", "compile s"], rows
      )
      + f"\n\nEval forward, float32, batch {batch}, {classes} classes, random weights: median "
      f"of {rounds} interleaved rounds after a warm-up (duojax: compiling) call."
    )
  if "attention" in sections:
    rows = attention_rows(attention, batch, classes, rounds, small)
    parts.append(
      harness.md_table(["model", "explicit img/s", "xla img/s", "xla / explicit"], rows)
      + f"\n\nThe same ViT with each attention form, batch {batch}, float32, median of "
      f"{rounds} interleaved rounds; `auto` picks the explicit form on CPU."
    )
  if "remat" in sections:
    rows = remat_rows(remat, small)
    parts.append(
      harness.md_table(
        [
          "model",
          "compute",
          "batch",
          "weights MiB",
          "residuals MiB",
          "residuals MiB, remat",
          "saved",
        ],
        rows,
      )
      + "\n\nResiduals: what the backward pass reads from the forward (`jax.vjp` of the "
      "loss, from shapes: activations and the weights they meet), held on the device "
      "between the two; the weights (float32) are held anyway, and AdamW adds two copies."
    )
  load_after = interleave.load_line()
  body = "\n\n".join(parts) + f"\n\nBefore: {load_before}; after: {load_after}."
  harness.print_section("Transformers", body)
  if not args.quick:
    harness.write_section(
      "transformers",
      "The transformer families against transformers, attention forms, remat memory",
      body,
      machine=harness.machine_line(),
      path=args.out,
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
