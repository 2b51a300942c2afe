"""Checking a duojax model against a PyTorch one through a safetensors file, both ways.

    from torch_reference import randomize, same_logits
    torch_model = randomize(tv.convnext.ConvNeXt(...))
    same_logits(torch_model, duojax_model, tmp_path, layout="torchvision", image_size=64)

`randomize` gives every normalisation layer random running statistics and
affine terms, and every layer-scale vector random values: fresh ones are 0/1
(or 1e-6), under which a transposed or misplaced tensor can pass unseen.
`same_logits` writes the model's `state_dict` as the libraries' files are
written, loads it with `duojax.convert.load_pretrained`, compares eval-mode
logits, then exports the duojax model and loads that strictly into the
PyTorch model, which must give its logits again.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import safetensors.torch
import torch

from duojax import convert

TOLERANCE = 1e-4


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  gen = torch.Generator().manual_seed(seed)
  rand = lambda shape: torch.randn(shape, generator=gen)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        m.running_mean.copy_(0.3 * rand(m.num_features))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
      if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm)):
        if m.weight is not None:
          m.weight.copy_(1 + 0.2 * rand(m.weight.shape))
          m.bias.copy_(0.2 * rand(m.bias.shape))
    for name, p in module.named_parameters():
      if name.endswith(("layer_scale", "gamma", "layer_scale_parameter")):
        p.copy_(0.5 * rand(p.shape))
  return module.eval()


def save(torch_model: torch.nn.Module, path: str) -> str:
  tensors = {k: v.contiguous() for k, v in torch_model.state_dict().items()}
  safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
  return path


def images(image_size: int, batch: int = 2, channels: int = 3) -> np.ndarray:
  shape = (batch, channels, image_size, image_size)
  return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def torch_logits(torch_model, x: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    out = torch_model(torch.from_numpy(x))
  return getattr(out, "logits", out).numpy()


def duojax_logits(model, x: np.ndarray) -> np.ndarray:
  return np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1)))[0])


def same_logits(torch_model, model, tmp_path, *, layout: str, image_size: int) -> None:
  info = convert.load_pretrained(model, save(torch_model, str(tmp_path / "model.safetensors")))
  assert info["layout"] == layout
  x = images(image_size)
  expected = torch_logits(torch_model, x)
  np.testing.assert_allclose(duojax_logits(model, x), expected, atol=TOLERANCE, rtol=TOLERANCE)
  out = str(tmp_path / "export.safetensors")
  convert.export_pretrained(model, out, layout)
  torch_model.load_state_dict(safetensors.torch.load_file(out), strict=True)
  np.testing.assert_allclose(torch_logits(torch_model, x), expected, atol=1e-6, rtol=1e-6)
