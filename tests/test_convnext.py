"""ConvNeXt: torchvision's parameter counts, and the logits of the real torchvision,
timm and Hugging Face models through their files (random weights, small widths)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from reference_libs import timm, torchvision_models
from torch_reference import images, randomize, same_logits, save, torch_logits

from duojax import convert, models
from duojax.errors import ConfigError, WeightsMismatchError
from duojax.models import convnext, functional

# torchvision's model table: parameters and GFLOPS (multiply-adds) at 224 px.
PUBLISHED = {
  "convnext_tiny": (28_589_128, 4.46),
  "convnext_small": (50_223_688, 8.68),
  "convnext_base": (88_591_464, 15.36),
  "convnext_large": (197_767_336, 34.36),
}
WIDTHS, DEPTHS, SIZE = (8, 16, 24, 32), (1, 1, 2, 1), 64


def count(model) -> int:
  return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def small(num_classes=5, **overrides):
  return models.get_model(
    "convnext_tiny", num_classes, rngs=1, **{"widths": WIDTHS, "depths": DEPTHS, **overrides}
  )


def test_every_size_has_torchvisions_parameter_count_and_flops():
  tv = torchvision_models()
  for name, (params, gmacs) in PUBLISHED.items():
    model = nnx.eval_shape(lambda name=name: models.get_model(name, 1000, rngs=0))
    with torch.device("meta"):
      reference = getattr(tv.convnext, name)()
    assert count(model) == sum(p.numel() for p in reference.parameters()) == params, name
    flops = functional.flops_per_image(*functional.split_model(model), (224, 224, 3))
    assert flops / 2 == pytest.approx(gmacs * 1e9, rel=0.01), name


def test_torchvision_file_gives_torchvisions_logits_and_exports_back(tmp_path):
  tv = torchvision_models().convnext
  setting = [tv.CNBlockConfig(w, nxt, d) for w, nxt, d in zip(WIDTHS, (*WIDTHS[1:], None), DEPTHS)]
  reference = randomize(tv.ConvNeXt(setting, num_classes=5))
  same_logits(reference, small(), tmp_path, layout="torchvision", image_size=SIZE)


def test_timm_file_gives_timms_logits_and_exports_back(tmp_path):
  reference = timm().create_model(
    "convnext_tiny", pretrained=False, dims=WIDTHS, depths=DEPTHS, num_classes=5
  )
  same_logits(randomize(reference), small(), tmp_path, layout="timm", image_size=SIZE)


def test_hugging_face_file_gives_its_logits_and_exports_back(tmp_path):
  config = transformers.ConvNextConfig(hidden_sizes=list(WIDTHS), depths=list(DEPTHS), num_labels=5)
  reference = randomize(transformers.ConvNextForImageClassification(config))
  same_logits(reference, small(), tmp_path, layout="hf", image_size=SIZE)


def test_one_line_errors_for_another_family_size_or_class_count(tmp_path):
  tv = torchvision_models()
  setting = [
    tv.convnext.CNBlockConfig(w, nxt, d) for w, nxt, d in zip(WIDTHS, (*WIDTHS[1:], None), DEPTHS)
  ]
  path = save(tv.convnext.ConvNeXt(setting, num_classes=5), str(tmp_path / "c.safetensors"))
  with pytest.raises(WeightsMismatchError, match="has a 5-class head.*head='fresh'") as e:
    convert.load_pretrained(small(7), path)
  assert "\n" not in str(e.value)
  # A fresh head for other classes: everything else loads.
  model = small(7)
  assert convert.load_pretrained(model, path, head="fresh")["fresh_head"]
  with pytest.raises(WeightsMismatchError, match="does not fit convnext_tiny") as e:
    convert.load_pretrained(small(depths=(1, 1, 3, 1)), path)
  assert "\n" not in str(e.value)
  resnet = models.get_model("resnet18", 5, rngs=0, width=8)
  with pytest.raises(WeightsMismatchError, match="holds a ConvNeXt, but the model resnet18"):
    convert.load_pretrained(resnet, path)
  other = save(tv.resnet.resnet18(num_classes=5), str(tmp_path / "r.safetensors"))
  with pytest.raises(WeightsMismatchError, match="holds a ResNet, but the model convnext_tiny"):
    convert.load_pretrained(small(), other)


def test_bfloat16_compute_and_stochastic_depth_in_training():
  x = jnp.asarray(images(32).transpose(0, 2, 3, 1))
  # Layer scale 1 (not 1e-6), so that each residual branch shows in the logits.
  model = small(dtype="bfloat16", drop_path=0.5, layer_scale=1.0)
  reference = small(layer_scale=1.0)
  forward = nnx.jit(lambda m, x: m(x)[0])
  logits = forward(model, x)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, forward(reference, x), atol=0.05 * np.abs(logits).max())
  with pytest.raises(ConfigError, match="needs rngs"):
    model(x, train=True)
  train = nnx.jit(lambda m, x, key: m(x, train=True, rngs=key)[0])
  a, b = train(model, x, jax.random.key(0)), train(model, x, jax.random.key(1))
  assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b)


def test_registry_and_overrides():
  assert set(convnext.CONFIGS) <= set(models.list_models())
  with pytest.raises(ConfigError, match="unknown override"):
    models.get_model("convnext_tiny", 3, rngs=0, padding="same")
  model = nnx.eval_shape(lambda: models.get_model("convnext_base", 3, rngs=0))
  assert model.input_shape == (None, None, 3) and model.image_size == (224, 224)
  assert model.num_features == 1024 and model.drop_path_rate == 0.5


def test_timm_reference_matches_torchvision_reference_on_the_same_weights(tmp_path):
  # The two libraries' ConvNeXts are one function: a duojax model loaded from one
  # exports the other's layout.
  model = small()
  convert.load_pretrained(
    model,
    save(
      randomize(
        timm().create_model("convnext_tiny", dims=WIDTHS, depths=DEPTHS, num_classes=5), seed=3
      ),
      str(tmp_path / "t.safetensors"),
    ),
  )
  convert.export_pretrained(model, str(tmp_path / "tv.safetensors"), "torchvision")
  tv = torchvision_models().convnext
  setting = [tv.CNBlockConfig(w, nxt, d) for w, nxt, d in zip(WIDTHS, (*WIDTHS[1:], None), DEPTHS)]
  reference = tv.ConvNeXt(setting, num_classes=5).eval()
  import safetensors.torch

  reference.load_state_dict(safetensors.torch.load_file(str(tmp_path / "tv.safetensors")))
  x = images(SIZE)
  np.testing.assert_allclose(
    torch_logits(reference, x),
    np.asarray(model(jnp.asarray(x.transpose(0, 2, 3, 1)))[0]),
    atol=1e-4,
    rtol=1e-4,
  )


def test_images_too_small_for_the_stages_are_refused_in_one_line():
  from duojax.errors import InputError

  with pytest.raises(InputError, match=r"at least 32×32 pixels, got \(28, 28\)"):
    small()(jnp.zeros((1, 28, 28, 3)))
