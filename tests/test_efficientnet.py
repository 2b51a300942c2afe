"""EfficientNet B0–B7 and V2 S/M/L: torchvision's parameter counts and FLOPs, and the
logits of the real torchvision, timm (also its TensorFlow-padded `tf_` models) and
Hugging Face models through their files (random weights, reduced widths and depths)."""

import functools
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
from duojax.convert import layouts_efficientnet
from duojax.errors import ConfigError, WeightsMismatchError
from duojax.models import common, efficientnet, functional

# torchvision's model table: parameters and GFLOPS (multiply-adds) at the weights' own
# resolution (the model's nominal `image_size`: 224 for B0 up to 600 for B7).
PUBLISHED = {
  "efficientnet_b0": (5_288_548, 0.39),
  "efficientnet_b1": (7_794_184, 0.69),
  "efficientnet_b2": (9_109_994, 1.09),
  "efficientnet_b3": (12_233_232, 1.83),
  "efficientnet_b4": (19_341_616, 4.39),
  "efficientnet_b5": (30_389_784, 10.27),
  "efficientnet_b6": (43_040_704, 19.07),
  "efficientnet_b7": (66_347_960, 37.75),
  "efficientnet_v2_s": (21_458_488, 8.37),
  "efficientnet_v2_m": (54_139_356, 24.58),
  "efficientnet_v2_l": (118_515_272, 56.08),
}
# Tracing the forward of a full-size model takes seconds: the FLOPs of the sizes other
# than these run with the slow tests.
FAST = ("efficientnet_b0", "efficientnet_v2_s")
SIZE = 64
# B0 at a quarter of the width and 0.3 of the depth: 8 blocks in 7 stages.
B0_SMALL = dict(width_mult=0.25, depth_mult=0.3)
# A V2 with both block kinds, each with and without expansion or residual.
V2_STAGES = (("fused", 1, 3, 1, 8, 2), ("fused", 4, 3, 2, 16, 1), ("mb", 4, 3, 2, 24, 2))


def count(model) -> int:
  return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def full_size(name):
  return nnx.eval_shape(lambda: models.get_model(name, 1000, rngs=0))


def test_every_size_has_torchvisions_parameter_count():
  tv = torchvision_models().efficientnet
  for name, (params, _) in PUBLISHED.items():
    with torch.device("meta"):
      reference = getattr(tv, name)()
    assert count(full_size(name)) == sum(p.numel() for p in reference.parameters()) == params


def check_flops(name):
  model, gmacs = full_size(name), PUBLISHED[name][1]
  side = model.image_size[0]
  flops = functional.flops_per_image(*functional.split_model(model), (side, side, 3))
  # The table rounds to 10 MMACs, and leaves out elementwise work as the count here does.
  assert flops / 2 == pytest.approx(gmacs * 1e9, rel=0.002, abs=5e6)


@pytest.mark.parametrize("name", FAST)
def test_flops_are_torchvisions(name):
  check_flops(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PUBLISHED if n not in FAST])
def test_flops_are_torchvisions_for_every_size(name):
  check_flops(name)


def tv_v2_small(num_classes=5):
  tv = torchvision_models().efficientnet
  config = {"fused": tv.FusedMBConvConfig, "mb": tv.MBConvConfig}
  setting, d_in = [], V2_STAGES[0][4]
  for block, e, k, s, c, n in V2_STAGES:
    setting.append(config[block](e, k, s, d_in, c, n))
    d_in = c
  norm = functools.partial(torch.nn.BatchNorm2d, eps=1e-3)
  return tv.EfficientNet(setting, 0.2, norm_layer=norm, last_channel=64, num_classes=num_classes)


def v2_small(num_classes=5, **overrides):
  kwargs = dict(stages=V2_STAGES, stem=8, head_width=64, **overrides)
  return models.get_model("efficientnet_v2_s", num_classes, rngs=1, **kwargs)


def test_torchvision_b0_file_gives_torchvisions_logits_and_exports_back(tmp_path):
  tv = torchvision_models().efficientnet
  setting, last = tv._efficientnet_conf("efficientnet_b0", **B0_SMALL)
  reference = randomize(tv.EfficientNet(setting, 0.2, last_channel=last, num_classes=5))
  model = models.get_model("efficientnet_b0", 5, rngs=1, **B0_SMALL)
  same_logits(reference, model, tmp_path, layout="torchvision", image_size=SIZE)


def test_torchvision_v2_file_gives_torchvisions_logits_and_exports_back(tmp_path):
  same_logits(randomize(tv_v2_small()), v2_small(), tmp_path, layout="torchvision", image_size=SIZE)


def test_timm_b0_file_gives_timms_logits_and_exports_back(tmp_path):
  gen = timm().models.efficientnet._gen_efficientnet
  reference = gen("efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.3, num_classes=5)
  model = models.get_model("efficientnet_b0", 5, rngs=1, **B0_SMALL)
  same_logits(randomize(reference), model, tmp_path, layout="timm", image_size=SIZE)


@pytest.mark.parametrize("image_size", [SIZE, 57])
def test_timm_tf_v2_file_gives_timms_logits_with_same_padding(tmp_path, image_size):
  # 57 px: odd sizes all the way down, where "same" pads (1, 1) and not (0, 1).
  reference = timm().create_model(
    "tf_efficientnetv2_s", channel_multiplier=0.25, depth_multiplier=0.2, num_classes=5
  )
  model = models.get_model(
    "efficientnet_v2_s", 5, rngs=1, width_mult=0.25, depth_mult=0.2, head_width=320,
    padding="same", bn_eps=1e-3,
  )  # fmt: skip
  same_logits(randomize(reference), model, tmp_path, layout="timm", image_size=image_size)


def test_hugging_face_file_gives_its_logits_and_exports_back(tmp_path):
  config = transformers.EfficientNetConfig(
    width_coefficient=0.25, depth_coefficient=0.3, hidden_dim=320, num_labels=5
  )
  reference = randomize(transformers.EfficientNetForImageClassification(config))
  model = models.get_model("efficientnet_b0", 5, rngs=1, padding="same", bn_eps=1e-3, **B0_SMALL)
  same_logits(reference, model, tmp_path, layout="hf", image_size=SIZE)
  # Its padding is TensorFlow's: a model padding as torchvision does is refused.
  torch_padded = models.get_model("efficientnet_b0", 5, rngs=1, **B0_SMALL)
  with pytest.raises(WeightsMismatchError, match="padding='same'"):
    convert.load_pretrained(torch_padded, str(tmp_path / "model.safetensors"))


def test_one_line_errors_for_another_family_size_or_class_count(tmp_path):
  path = save(tv_v2_small(), str(tmp_path / "v2.safetensors"))
  with pytest.raises(WeightsMismatchError, match="has a 5-class head.*head='fresh'") as e:
    convert.load_pretrained(v2_small(3), path)
  assert "\n" not in str(e.value)
  assert convert.load_pretrained(v2_small(3), path, head="fresh")["fresh_head"]
  b0 = models.get_model("efficientnet_b0", 5, rngs=1, **B0_SMALL)
  with pytest.raises(WeightsMismatchError, match="does not fit efficientnet_b0") as e:
    convert.load_pretrained(b0, path)
  assert "\n" not in str(e.value)
  convnext = models.get_model("convnext_tiny", 5, rngs=0, widths=(8, 8, 8, 8), depths=(1,) * 4)
  with pytest.raises(WeightsMismatchError, match="holds an EfficientNet, but the model convnext"):
    convert.load_pretrained(convnext, path)
  with pytest.raises(WeightsMismatchError, match="no Fused-MBConv"):
    convert.export_pretrained(v2_small(padding="same"), str(tmp_path / "hf.safetensors"), "hf")


def test_bfloat16_compute_and_stochastic_depth_in_training():
  x = jnp.asarray(images(32).transpose(0, 2, 3, 1))
  model = v2_small(dtype="bfloat16", drop_path=0.5, dropout=0.5)
  forward = nnx.jit(lambda m, x: m(x)[0])
  logits = forward(model, x)
  assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
  np.testing.assert_allclose(logits, forward(v2_small(), x), atol=0.05 * np.abs(logits).max())
  with pytest.raises(ConfigError, match="needs rngs"):
    model(x, train=True)
  train = nnx.jit(lambda m, x, key: m(x, train=True, rngs=key)[0])
  a, b = train(model, x, jax.random.key(0)), train(model, x, jax.random.key(1))
  assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b)


def test_registry_overrides_and_same_padding():
  assert set(efficientnet.CONFIGS) <= set(models.list_models())
  with pytest.raises(ConfigError, match="unknown padding"):
    models.get_model("efficientnet_b0", 3, rngs=0, padding="tf", width_mult=0.25)
  # B7's options at a tenth of its depth (the full one takes seconds to trace).
  b7 = nnx.eval_shape(lambda: models.get_model("efficientnet_b7", 3, rngs=0, depth_mult=0.31))
  assert b7.dropout_rate == 0.5 and b7.num_features == 2560
  assert b7.stem_bn.epsilon == 1e-3 and b7.stem_bn.momentum == pytest.approx(0.99)
  # TensorFlow's "same": the odd pixel after; none needed at stride 1 for odd kernels.
  assert common.same_padding(224, 3, 2) == (0, 1) and common.same_padding(225, 3, 2) == (1, 1)
  assert common.same_padding(224, 5, 2) == (1, 2) and common.same_padding(7, 3, 1) == (1, 1)
  assert efficientnet.make_divisible(32 * 1.1) == 32 and efficientnet.make_divisible(10) == 16


def test_hugging_face_member_takes_tensorflow_padding_from_the_file(tmp_path):
  from duojax.eval import pretrained_members as pm

  config = transformers.EfficientNetConfig(
    width_coefficient=1.0, depth_coefficient=1.0, hidden_dim=1280, num_labels=4
  )
  reference = randomize(transformers.EfficientNetForImageClassification(config))
  reference.save_pretrained(tmp_path / "b0")
  spec = pm.parse(f"pretrained:efficientnet_b0:{tmp_path / 'b0' / 'model.safetensors'}")
  member = pm.load_pretrained_member("small", spec)
  assert member.meta["model_overrides"]["padding"] == "same"
  assert member.meta["model_overrides"]["bn_eps"] == 1e-3
  assert member.meta["input"]["mean"] == [0.485, 0.456, 0.406]
  assert member.meta["image_shape"] == [224, 224, 3]
  x = images(SIZE)
  np.testing.assert_allclose(
    member.model(jnp.asarray(x.transpose(0, 2, 3, 1)))[0],
    torch_logits(reference, x),
    atol=1e-4,
    rtol=1e-4,
  )


def test_each_librarys_preprocessing_for_the_member_spec(tmp_path):
  from duojax import data
  from duojax.data import preprocess

  path = str(tmp_path / "model.safetensors")
  # torchvision: each model's weights have their own transform (V2-L's in [-1, 1]).
  mean, std, source = data.pretrained_stats(
    "torchvision", "efficientnet", path, "efficientnet_v2_l"
  )
  assert mean == std == preprocess.HALF and "efficientnet_v2_l" in source
  view, _ = data.pretrained_view(path, "torchvision", "efficientnet_b3")
  assert view == {"crop_fraction": 300 / 320, "interpolation": "bicubic"}
  mean, _, _ = data.pretrained_stats("torchvision", "convnext", path, "convnext_tiny")
  assert mean == preprocess.IMAGENET_MEAN
  assert data.pretrained_view(path, "torchvision", "convnext_tiny")[0]["crop_fraction"] == 224 / 236
  # timm: the pretrained_cfg of the config.json beside the file, which also says `tf_`.
  (tmp_path / "config.json").write_text(
    '{"architecture": "tf_efficientnetv2_l", "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], '
    '"std": [0.5, 0.5, 0.5], "crop_pct": 1.0, "interpolation": "bicubic"}}'
  )
  assert data.pretrained_stats("timm", "efficientnet", path)[:2] == (preprocess.HALF,) * 2
  assert data.pretrained_view(path, "timm", "efficientnet_v2_l")[0]["crop_fraction"] == 1.0
  assert layouts_efficientnet.file_overrides("efficientnet_v2_l", "timm", path) == {
    "padding": "same",
    "bn_eps": 1e-3,
  }
  assert layouts_efficientnet.file_overrides("resnet50", "hf", path) == {}
