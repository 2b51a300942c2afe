"""Shared checks of the torchvision-style families against the libraries' own models.

`compare` writes a PyTorch model's `state_dict` as safetensors (what a user
downloads), loads it with `duojax.convert.load_pretrained`, compares eval
logits on the same images, then exports the duojax model back and loads that
strictly into the PyTorch model. `randomize` gives a reference non-trivial
BatchNorm statistics and affine terms and dense layers of unit-scale output,
so a transposed or misplaced tensor changes the logits well beyond the
tolerance. duojax models are built as zero-filled shells (`shell`): the file
overwrites every tensor, and eager initialisation would compile one sampler
per parameter shape.
"""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.torch
import torch
from flax import nnx

from duojax import convert

TOLERANCE = 1e-4


def num_params(model) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def torch_params(model) -> int:
  return sum(p.numel() for p in model.parameters())


def shell(build):
  """The module `build()` makes, with zeros for every array (built from its shapes)."""
  graphdef, state = nnx.split(nnx.eval_shape(build))
  zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), state)
  return nnx.merge(graphdef, zeros)


def randomize(module, seed=0):
  """Random BatchNorm statistics and affine terms, and unit-scale dense layers."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        n = m.num_features
        m.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
        m.weight.copy_(1 + 0.2 * torch.randn(n, generator=gen))
        m.bias.copy_(0.2 * torch.randn(n, generator=gen))
      elif isinstance(m, torch.nn.Linear) or (
        isinstance(m, torch.nn.Conv2d) and m.bias is not None
      ):
        fan_in = m.weight[0].numel()
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / fan_in**0.5)
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
  return module.eval()


def logits(model, x: np.ndarray) -> np.ndarray:
  """duojax eval logits of NCHW images (one compiled program)."""
  return np.asarray(nnx.jit(lambda m, v: m(v)[0])(model, jnp.asarray(x.transpose(0, 2, 3, 1))))


def compare(
  reference, ours, tmp_path, *, layout, image_size=32, forward=lambda m, x: m(x), reload=True
):
  """Same logits from the reference's file; the export loads back strictly into it."""
  reference.eval()
  path = str(tmp_path / "model.safetensors")
  state = reference.state_dict()
  safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}, path)
  info = convert.load_pretrained(ours, path)
  assert info["layout"] == layout
  x = np.random.default_rng(0).normal(size=(2, 3, image_size, image_size)).astype(np.float32)
  with torch.no_grad():
    expected = forward(reference, torch.from_numpy(x)).numpy()
  assert np.abs(expected).max() > 0.1  # logits that a misplaced tensor would change
  np.testing.assert_allclose(logits(ours, x), expected, atol=TOLERANCE, rtol=TOLERANCE)
  if not reload:
    return
  out = str(tmp_path / "export.safetensors")
  convert.export_pretrained(ours, out, layout)
  exported = collections.OrderedDict(safetensors.torch.load_file(out))
  exported._metadata = getattr(state, "_metadata", None)  # MNASNet reads its version there
  reference.load_state_dict(exported, strict=True)
  with torch.no_grad():
    np.testing.assert_allclose(forward(reference, torch.from_numpy(x)).numpy(), expected, atol=1e-6)


def layout_shapes(model, layout: str) -> dict:
  """{file key: shape} of `model` exported in `layout`; `model` may be abstract
  (`nnx.eval_shape`): the conversions run on zero-strided views, allocating nothing."""
  pure = nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))
  leaves = jax.tree_util.tree_flatten_with_path(pure)[0]
  name = lambda path: ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  shapes = {name(path): tuple(leaf.shape) for path, leaf in leaves}
  out = {}
  for entry in convert.pretrained.entries_for(model, layout, names=list(shapes)):
    arrays = [np.broadcast_to(np.float32(0), shapes[p]) for p in entry.paths]
    for key, value in zip(entry.file_keys, entry.to_file(arrays)):
      out[key] = tuple(value.shape)
  return out


def torch_shapes(module) -> dict:
  """{state_dict key: shape}, without BatchNorm's batch counters."""
  state = module.state_dict()
  return {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
