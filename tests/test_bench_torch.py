"""The PyTorch twins of the duojax models, and the JAX-vs-PyTorch benchmark end to end."""

import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
from flax import nnx

from duojax import convert
from duojax.models import get_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import torch_models  # noqa: E402


def duojax_param_count(name, num_classes, **overrides):
  model = nnx.eval_shape(lambda: get_model(name, num_classes, rngs=0, **overrides))
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
  "name,num_classes,image_size,in_channels",
  [
    ("resnet14", 10, 32, 3),
    ("resnet14", 10, 28, 1),
    ("resnet18", 1000, 224, 3),
    ("resnet50", 1000, 224, 3),
    ("cnn_xs", 10, 28, 1),
    ("vit_s16", 1000, 224, 3),
    ("vit_mu4", 10, 32, 3),
  ],
)
def test_torch_models_have_duojax_parameter_counts(name, num_classes, image_size, in_channels):
  expected = duojax_param_count(name, num_classes, image_size=image_size, in_channels=in_channels)
  model = torch_models.build(name, num_classes, image_size, in_channels)
  assert torch_models.count_params(model) == expected


@pytest.mark.parametrize("name,image_size", [("resnet14", 32), ("cnn_xs", 28), ("vit_mu4", 32)])
def test_torch_models_run_in_float32_and_bfloat16_autocast(name, image_size):
  model = torch_models.build(name, 7, image_size).eval()
  x = torch.randn(2, 3, image_size, image_size)
  with torch.inference_mode():
    assert model(x).shape == (2, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
      logits = model(x)
  # The head stays in float32 under autocast, as duojax's does.
  assert logits.shape == (2, 7) and logits.dtype == torch.float32


def port_weights(jax_model, torch_model, tmp_path):
  """Copies a duojax model's parameters and batch statistics into its twin.

  ResNet and ViT twins carry torchvision's and timm's names, so duojax's own
  exporter writes their state dict; the small CNN (no such layout) is mapped here.
  """
  if isinstance(torch_model, torch_models.CNN):
    flat = convert.flat_state(jax_model)
    state = {}
    for name, v in flat.items():
      prefix, leaf = name.rpartition(".")[::2]
      if leaf == "kernel":
        v = v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T  # to [out, in, ...]
      state[f"{prefix}.{'weight' if leaf == 'kernel' else leaf}"] = v
  else:
    layout = "torchvision" if isinstance(torch_model, torch_models.ResNet) else "timm"
    path = str(tmp_path / "weights.safetensors")
    convert.export_pretrained(jax_model, path, layout)
    state = safetensors.torch.load_file(path)
  torch_model.load_state_dict(
    {k: torch.as_tensor(np.array(v)) for k, v in state.items()}, strict=True
  )


@pytest.mark.parametrize(
  "name,image_size,in_channels", [("resnet14", 28, 1), ("cnn_xs", 28, 1), ("vit_mu4", 32, 3)]
)
def test_torch_models_compute_the_duojax_function(name, image_size, in_channels, tmp_path):
  jax_model = get_model(name, 10, rngs=0, image_size=image_size, in_channels=in_channels)
  torch_model = torch_models.build(name, 10, image_size, in_channels).eval()
  port_weights(jax_model, torch_model, tmp_path)
  x = np.random.default_rng(0).standard_normal((3, image_size, image_size, in_channels), np.float32)
  expected, _ = jax_model(x, train=False)
  with torch.inference_mode():
    got = torch_model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
  np.testing.assert_allclose(got.numpy(), np.asarray(expected), rtol=1e-4, atol=1e-4)


def test_unknown_model_name_is_rejected():
  with pytest.raises(ValueError, match="no PyTorch version"):
    torch_models.build("alexnet", 10, 32)


def _table_rows(text, section):
  start = text.index(f"<!-- bench:{section}:start -->")
  end = text.index(f"<!-- bench:{section}:end -->")
  lines = text[start:end].splitlines()
  return [
    [c.strip() for c in l.strip("|").split("|")]
    for l in lines
    if l.startswith("| ") and not l.startswith("| model")
  ]


@pytest.mark.slow  # the script's quick run, as a subprocess
def test_quick_run_writes_both_sections(tmp_path):
  out = tmp_path / "B.md"
  # bfloat16 explicitly: by default it runs only on CPUs with native bfloat16.
  result = subprocess.run(
    [
      sys.executable,
      str(ROOT / "bench" / "bench_torch.py"),
      "--quick",
      "--dtypes",
      "float32,bfloat16",
      "--out",
      str(out),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  text = out.read_text()
  assert "<!-- bench:torch_eval:start -->" in text
  assert "<!-- bench:torch_train:start -->" in text
  eval_rows = _table_rows(text, "torch_eval")
  assert [(r[0], r[1], r[2]) for r in eval_rows] == [
    ("resnet14", "float32", "4"),
    ("resnet14", "bfloat16", "4"),
    ("vit_mu4", "float32", "4"),
    ("vit_mu4", "bfloat16", "4"),
  ]
  for row in eval_rows:
    assert len(row) == 9
    assert float(row[3].replace(",", "")) > 0  # JAX img/s
    assert "(contiguous)" in row[4] or "(channels_last)" in row[4]
    assert row[5] == "skipped (--quick)"
  train_rows = _table_rows(text, "torch_train")
  assert [(r[0], r[1], r[2]) for r in train_rows] == [
    ("resnet14", "28×28×1", "4"),
    ("cnn_xs", "28×28×1", "4"),
  ]
  for row in train_rows:
    assert len(row) == 7
    assert float(row[3].replace(",", "")) > 0 and float(row[5]) > 0
