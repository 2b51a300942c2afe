"""FLOPs per image of RegNet, MobileNet, MNASNet, ShuffleNetV2, ResNeXt and Wide ResNet
against torchvision's published figures; prints the markdown rows of
docs/conv_families_mobile.md.

    python bench/flops_mobile.py

duojax counts 2 × multiply-adds of every convolution and matmul from the traced
eval program at 224 px (`duojax.models.flops`: shapes only, nothing is
allocated or run). torchvision's model table ("GFLOPS", the `_ops` of each
weight's metadata) counts multiply-adds, so the column compared is duojax's
count halved. torchvision's figures are read from its own source (the pinned
wheel `make install-dev` unpacks beside the environment), parameter counts
from torchvision's models built on PyTorch's `meta` device.
"""

import sys
import time
from pathlib import Path

import torch
from flax import nnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from reference_libs import torchvision_models  # noqa: E402

from duojax import models  # noqa: E402
from duojax.models import functional, mnasnet, mobilenet, regnet, resnext, shufflenet  # noqa: E402

FAMILIES = (regnet, mobilenet, mnasnet, shufflenet, resnext)
MODULES = {
  "regnet": "regnet",
  "mobilenet_v2": "mobilenetv2",
  "mobilenet_v3": "mobilenetv3",
  "mnasnet": "mnasnet",
  "shufflenet": "shufflenetv2",
  "res": "resnet",
  "wide": "resnet",
}


def torchvision_figures(name: str) -> tuple[int, float]:
  """(parameters, published GFLOPS = G multiply-adds) of torchvision's `name`."""
  tv = torchvision_models()
  module = getattr(tv, next(v for k, v in MODULES.items() if name.startswith(k)))
  ops = next(iter(tv._api.get_model_weights(name))).meta["_ops"]
  builder = lambda: getattr(module, name)()
  if name.startswith("regnet"):
    # Its builder computes the widths with tensors, which the meta device has no values for.
    real = module._regnet
    module._regnet = lambda params, weights, progress, **kw: params
    try:
      block_params = getattr(module, name)()
    finally:
      module._regnet = real
    builder = lambda: module.RegNet(block_params)
  with torch.device("meta"):
    params = sum(p.numel() for p in builder().parameters())
  return params, float(ops)


def main():
  print(
    "| model | parameters | duojax GFLOPs (2 × MACs) | duojax GMACs | torchvision GFLOPS (MACs) | ratio |"
  )
  print("|---|---:|---:|---:|---:|---:|")
  start = time.time()
  for family in FAMILIES:
    for name in family.CONFIGS:
      model = nnx.eval_shape(lambda: models.get_model(name, 1000, rngs=0))
      graphdef, params, stats = functional.split_model(model)
      ours = functional.flops_per_image(graphdef, params, stats, (224, 224, 3), batch=1) / 1e9
      n_params, published = torchvision_figures(name)
      assert n_params == functional.count_params(params), name
      print(
        f"| `{name}` | {n_params:,} | {ours:.3f} | {ours / 2:.3f} | {published:.3f} "
        f"| {ours / 2 / published:.3f} |"
      )
  print(f"\n({time.time() - start:.0f} s)", file=sys.stderr)


if __name__ == "__main__":
  main()
