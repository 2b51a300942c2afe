"""The real timm and torchvision models, loaded through duojax on the accelerator: same logits.

The tests check duojax's timm and torchvision layouts against PyTorch twins
(`bench/torch_models.py`), because neither library imports beside the CPU
PyTorch build of this project's machines. The accelerator hosts have both
installed normally, so there the libraries' own models are the reference:
timm's `vit_base_patch16_224` and torchvision's `resnet50`, random weights
(LayerNorm and BatchNorm affines and running statistics, the class token and
the head redrawn so that a swapped or transposed tensor shows), their state
dicts written as safetensors, loaded with `duojax.convert.load_pretrained`,
and duojax's logits on the device compared with PyTorch's float32 logits on
the CPU, relative to the largest reference logit:

  float32 compute, matmuls at 'highest' precision (no TF32):  ≤ 1e-3;
  bfloat16 compute, float32 parameters (how duojax evaluates): ≤ 1e-1,
  with the top-1 agreement beside it.

`--quick` builds the same families at 32 px (a 2-block ViT, a ResNet-18);
where timm or torchvision does not import, the twins stand in and the table
says so (the rehearsal on a CPU machine), so the path from a PyTorch state
dict to duojax logits still runs end to end.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import accelerator_report
import harness
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax import convert, models

TOLERANCE = {"float32": 1e-3, "bfloat16": 1e-1}
BATCH = 8


def references(full: bool, quick: bool):
  """[(label, torch module, duojax name, image size, classes)] and where they come from."""
  import torch

  try:
    import timm
    import torchvision
  except ImportError:
    if not quick:
      raise
    import torch_models  # the twins, for a machine without the libraries

    torch.manual_seed(0)
    source = "the PyTorch twins of `bench/torch_models.py` (timm or torchvision did not import)"
    return [
      ("timm-layout ViT twin", torch_models.vit("vit_mu4", 10, 32), "vit_mu4", 32, 10),
      (
        "torchvision-layout ResNet-18 twin",
        torch_models.resnet("resnet18", 10),
        "resnet18",
        32,
        10,
      ),
    ], source
  torch.manual_seed(0)
  source = f"timm {timm.__version__}, torchvision {torchvision.__version__}"
  if full:
    return [
      ("timm vit_base_patch16_224", timm.create_model("vit_base_patch16_224", pretrained=False), "vit_b16", 224, 1000),
      ("torchvision resnet50", torchvision.models.resnet50(weights=None), "resnet50", 224, 1000),
    ], source  # fmt: skip
  tiny_vit = timm.models.vision_transformer.VisionTransformer(
    img_size=32, patch_size=4, num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0
  )
  return [
    ("timm VisionTransformer (vit_mu4's sizes)", tiny_vit, "vit_mu4", 32, 10),
    ("torchvision resnet18", torchvision.models.resnet18(num_classes=10), "resnet18", 32, 10),
  ], source


def redraw(module, seed: int = 0):
  """Non-trivial norms, running statistics, class token and head (fresh ones are 0/1 or tiny)."""
  import torch

  gen = torch.Generator().manual_seed(seed)
  normal = lambda t, mean, std: t.copy_(mean + std * torch.randn(t.shape, generator=gen))
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.LayerNorm)):
        normal(m.weight, 1.0, 0.2)
        normal(m.bias, 0.0, 0.2)
      if isinstance(m, torch.nn.BatchNorm2d):
        normal(m.running_mean, 0.0, 0.3)
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
    for name, p in module.named_parameters():
      if name in ("cls_token", "head.weight", "fc.weight"):
        normal(p, 0.0, 0.5 if name == "cls_token" else 0.05)
  return module.eval()


def duojax_logits(name, classes, size, path, images, dtype: str) -> np.ndarray:
  model = models.get_model(name, classes, rngs=0, image_size=size, dtype=dtype)
  convert.load_pretrained(model, path)
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False)[0])
  precision = "highest" if dtype == "float32" else "default"
  with jax.default_matmul_precision(precision):
    compiled = forward.lower(state, images).compile()
  return np.asarray(compiled(state, images), np.float32)


def torch_part(full: bool, quick: bool):
  import safetensors.torch
  import torch

  pairs, source = references(full, quick)
  rows, figures = [], {}
  with tempfile.TemporaryDirectory(prefix="bench_torch_") as tmp:
    for label, module, name, size, classes in pairs:
      redraw(module)
      path = str(Path(tmp) / f"{name}.safetensors")
      state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
      safetensors.torch.save_file(state, path)
      rng = np.random.default_rng(0)
      images = rng.normal(size=(BATCH, size, size, 3)).astype(np.float32)
      with torch.no_grad():
        reference = module(torch.from_numpy(images).permute(0, 3, 1, 2)).float().numpy()
      scale = float(np.abs(reference).max())
      for dtype, tolerance in TOLERANCE.items():
        ours = duojax_logits(name, classes, size, path, jnp.asarray(images), dtype)
        error = float(np.abs(ours - reference).max()) / scale
        agree = float(np.mean(ours.argmax(-1) == reference.argmax(-1)))
        figures[f"{name} {dtype}"] = {"relative_error": error, "top1_agreement": agree}
        verdict = "yes" if error <= tolerance else "**no**"
        rows.append([label, name, dtype, f"{error:.2e}", f"{tolerance:g}", verdict, f"{agree:.0%}"])
        print(f"  {label}, {dtype}: max |Δ| / max |logit| = {error:.2e}", flush=True)
  bad = [r for r in rows if r[5] != "yes"]
  table = harness.md_table(
    ["reference", "duojax model", "compute", "max |Δ logit| / max |logit|", "tolerance", "within", "same top-1"],
    rows,
  )  # fmt: skip
  text = (
    f"Reference models: {source}; random weights, state dict → safetensors → "
    f"`duojax.convert.load_pretrained`; {BATCH} random images, duojax on "
    f"{jax.devices()[0].device_kind}, PyTorch float32 on the CPU.\n\n{table}"
  )
  if bad:
    raise accelerator_report.CheckFailed(f"{len(bad)} comparison(s) outside tolerance", text)
  return text, {"source": source, **figures}
