"""RegNetX / RegNetY against torchvision's, timm's and Hugging Face's own models.

Full-size models are built only as shapes (`nnx.eval_shape` here, torch's
`meta` device there); logits are compared on tiny RegNets of the same code.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from conv_reference import (
  compare,
  layout_shapes,
  num_params,
  randomize,
  shell,
  torch_params,
  torch_shapes,
)
from flax import nnx
from reference_libs import timm, torchvision_models

from duojax import convert, models
from duojax.convert import layouts_mobile
from duojax.models import regnet

# torchvision's documented parameter counts, for the record beside the computed ones.
DOCUMENTED = {"regnet_x_400mf": 5_495_976, "regnet_y_400mf": 4_344_144, "regnet_y_16gf": 83_590_140}


def torchvision_block_params(name, monkeypatch):
  """torchvision's BlockParams of a named RegNet, from its own builder's numbers."""
  tv = torchvision_models().regnet
  monkeypatch.setattr(tv, "_regnet", lambda params, weights, progress, **kw: params)
  return getattr(tv, name)()


@pytest.mark.parametrize("name", list(regnet.CONFIGS))
def test_widths_and_parameter_counts_are_torchvisions(name, monkeypatch):
  params = torchvision_block_params(name, monkeypatch)
  widths, depths, groups = regnet.block_params(*regnet.CONFIGS[name][:5])
  assert (widths, depths, groups) == (params.widths, params.depths, params.group_widths)
  assert regnet.CONFIGS[name][5] == params.se_ratio
  with torch.device("meta"):
    reference = torchvision_models().regnet.RegNet(params)
  ours = nnx.eval_shape(lambda: models.get_model(name, 1000, rngs=0))
  assert num_params(ours) == torch_params(reference) == DOCUMENTED.get(name, num_params(ours))
  # The full-size export has torchvision's tensor names and shapes.
  assert layout_shapes(ours, "torchvision") == torch_shapes(reference)


@pytest.mark.parametrize(
  "timm_name, name",
  [
    ("regnety_032", "regnet_y_3_2gf"),
    ("regnetx_004", "regnet_x_400mf"),  # timm's own widths: rounding="timm"
    ("regnetx_004_tv", "regnet_x_400mf"),  # torchvision's widths under timm's names
    ("regnety_080", "regnet_y_8gf"),
  ],
)
def test_full_size_timm_names_and_shapes(timm_name, name):
  with torch.device("meta"):
    reference = timm().create_model(timm_name)
  expected = torch_shapes(reference)
  overrides = layouts_mobile.file_overrides(name, "timm", expected)
  assert overrides == (
    {} if timm_name.endswith("_tv") or timm_name == "regnety_032" else {"rounding": "timm"}
  )
  ours = nnx.eval_shape(lambda: models.get_model(name, 1000, rngs=0, **overrides))
  assert num_params(ours) == torch_params(reference)
  assert layout_shapes(ours, "timm") == expected


def tiny(se_ratio, num_classes=5, **kw):
  return shell(
    lambda: regnet.RegNet(
      [16, 32], [1, 2], [8, 8], se_ratio, num_classes, stem_width=8, rngs=nnx.Rngs(0), **kw
    )
  )


@pytest.mark.parametrize("se_ratio", [None, 0.25])
def test_torchvision_logits(tmp_path, se_ratio):
  tv = torchvision_models().regnet
  params = tv.BlockParams([1, 2], [16, 32], [8, 8], [1.0, 1.0], [2, 2], se_ratio)
  torch.manual_seed(0)
  reference = randomize(tv.RegNet(params, num_classes=5, stem_width=8))
  compare(reference, tiny(se_ratio), tmp_path, layout="torchvision")


def test_timm_logits(tmp_path):
  m = timm().models.regnet
  cfg = m.RegNetCfg(depth=5, w0=8, wa=8.0, wm=1.5, group_size=8, se_ratio=0.25, stem_width=8)
  torch.manual_seed(0)
  reference = randomize(m.RegNet(cfg, num_classes=5))
  widths, depths, groups = regnet.block_params(5, 8, 8.0, 1.5, 8)
  ours = shell(
    lambda: regnet.RegNet(widths, depths, groups, 0.25, 5, stem_width=8, rngs=nnx.Rngs(0))
  )
  compare(reference, ours, tmp_path, layout="timm")


@pytest.mark.parametrize("layer_type", ["x", "y"])
def test_hugging_face_logits(tmp_path, layer_type):
  config = transformers.RegNetConfig(
    embedding_size=8,
    hidden_sizes=[16, 32],
    depths=[1, 2],
    groups_width=8,
    layer_type=layer_type,
    num_labels=5,
  )
  torch.manual_seed(0)
  reference = randomize(transformers.RegNetForImageClassification(config))
  ours = tiny(0.25 if layer_type == "y" else None)
  compare(reference, ours, tmp_path, layout="hf", forward=lambda m, x: m(pixel_values=x).logits)
  # The export is a Hugging Face checkpoint: from_pretrained reads it beside the config.
  config.save_pretrained(tmp_path / "export")
  convert.export_pretrained(ours, str(tmp_path / "export" / "model.safetensors"), "hf")
  again = transformers.RegNetForImageClassification.from_pretrained(tmp_path / "export").eval()
  x = torch.randn(1, 3, 32, 32)
  with torch.no_grad():
    np.testing.assert_allclose(
      again(pixel_values=x).logits.numpy(), reference(pixel_values=x).logits.numpy(), atol=1e-6
    )


def test_fresh_head_wrong_class_count_and_wrong_family(tmp_path):
  tv = torchvision_models()
  params = tv.regnet.BlockParams([1, 2], [16, 32], [8, 8], [1.0, 1.0], [2, 2], None)
  path = str(tmp_path / "regnet.safetensors")
  reference = tv.regnet.RegNet(params, num_classes=5, stem_width=8)
  convert_file(reference, path)
  with pytest.raises(convert.WeightsMismatchError, match=r"5-class head but the model has 3"):
    convert.load_pretrained(tiny(None, 3), path)
  ours = tiny(None, 3)
  head = np.asarray(ours.head.kernel[...]).copy()
  assert convert.load_pretrained(ours, path, head="fresh")["fresh_head"]
  np.testing.assert_array_equal(np.asarray(ours.head.kernel[...]), head)
  with pytest.raises(convert.WeightsMismatchError, match=r"holds a RegNet, but the model .* is a"):
    convert.load_pretrained(shell(lambda: models.get_model("resnet18", 5, rngs=0)), path)
  shufflenet = tv.shufflenetv2.ShuffleNetV2([1, 1, 1], [8, 16, 32, 64, 128], num_classes=5)
  convert_file(shufflenet, path)
  with pytest.raises(convert.WeightsMismatchError, match=r"holds a ShuffleNetV2, but the model"):
    convert.load_pretrained(tiny(None), path)
  # RegNetY weights into a RegNetX: the SE tensors are left over, in one line.
  params_y = tv.regnet.BlockParams([1, 2], [16, 32], [8, 8], [1.0, 1.0], [2, 2], 0.25)
  convert_file(tv.regnet.RegNet(params_y, num_classes=5, stem_width=8), path)
  with pytest.raises(convert.WeightsMismatchError, match=r"unexpected \d+: .*se\.fc1") as e:
    convert.load_pretrained(tiny(None), path)
  assert "\n" not in str(e.value)


def convert_file(module, path):
  safetensors.torch.save_file({k: v.contiguous() for k, v in module.state_dict().items()}, path)


def test_bfloat16_compute_and_train_step():
  model = shell(
    lambda: regnet.RegNet(
      [16, 32], [1, 1], [8, 8], 0.25, 5, stem_width=8, dtype="bfloat16", rngs=nnx.Rngs(0)
    )
  )
  logits, out = nnx.jit(lambda m, x: m(x, train=True))(model, jnp.ones((2, 32, 32, 3)))
  assert logits.dtype == jnp.float32 and logits.shape == (2, 5)
  assert out["pre_logits"].shape == (2, 32) and out["pre_logits"].dtype == jnp.float32
  assert model.stem_bn.mean[...].dtype == jnp.float32


def test_full_size_hugging_face_names_and_shapes():
  """A Hugging Face RegNetX-400MF as pycls (and so the hub) makes it: timm's widths."""
  widths, depths, _ = regnet.block_params(*regnet.CONFIGS["regnet_x_400mf"][:5], rounding="timm")
  config = transformers.RegNetConfig(
    hidden_sizes=widths, depths=depths, groups_width=16, layer_type="x", num_labels=1000
  )
  with torch.device("meta"):
    reference = transformers.RegNetForImageClassification(config)
  expected = torch_shapes(reference)
  overrides = layouts_mobile.file_overrides("regnet_x_400mf", "hf", expected)
  assert overrides == {"rounding": "timm"}
  ours = nnx.eval_shape(lambda: models.get_model("regnet_x_400mf", 1000, rngs=0, **overrides))
  assert layout_shapes(ours, "hf") == expected
