"""MobileNetV2/V3, MNASNet and ShuffleNetV2 against torchvision's, timm's and Hugging Face's models.

Full-size models are built only as shapes (`nnx.eval_shape` here, torch's
`meta` device there), except timm's MobileNetV3s (2.5M and 5.5M parameters,
no smaller variant shares their block layout); logits are compared at 32 px.
"""

import jax.numpy as jnp
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

from duojax import convert, data, models
from duojax.data import preprocess
from duojax.eval import pretrained_members
from duojax.models import mnasnet, mobilenet, shufflenet

# torchvision's documented parameter counts, for the record beside the computed ones.
DOCUMENTED = {
  "mobilenet_v2": 3_504_872,
  "mobilenet_v3_large": 5_483_032,
  "mobilenet_v3_small": 2_542_856,
  "mnasnet1_0": 4_383_312,
  "shufflenet_v2_x1_0": 2_278_604,
}
TORCHVISION_MODULES = {"mobilenet_v2": "mobilenetv2", "mobilenet_v3": "mobilenetv3"}
TORCHVISION_MODULES.update(mnasnet="mnasnet", shufflenet="shufflenetv2")


def torchvision_module(name):
  prefix = next(p for p in TORCHVISION_MODULES if name.startswith(p))
  return getattr(torchvision_models(), TORCHVISION_MODULES[prefix])


@pytest.mark.parametrize(
  "name", [*mobilenet.CONFIGS, *mnasnet.CONFIGS, *shufflenet.CONFIGS], ids=str
)
def test_parameter_counts_are_torchvisions(name):
  with torch.device("meta"):
    reference = getattr(torchvision_module(name), name)()
  ours = nnx.eval_shape(lambda: models.get_model(name, 1000, rngs=0))
  assert num_params(ours) == torch_params(reference) == DOCUMENTED.get(name, num_params(ours))
  # The full-size export has torchvision's tensor names and shapes.
  assert layout_shapes(ours, "torchvision") == torch_shapes(reference)


@pytest.mark.parametrize("size", ["large", "small"])
def test_full_size_timm_mobilenet_v3_names_and_shapes(size):
  with torch.device("meta"):
    reference = timm().create_model(f"mobilenetv3_{size}_100")
  ours = nnx.eval_shape(lambda: models.get_model(f"mobilenet_v3_{size}", 1000, rngs=0, bn_eps=1e-5))
  assert layout_shapes(ours, "timm") == torch_shapes(reference)


def build(name, num_classes=5, **overrides):
  return shell(lambda: models.get_model(name, num_classes, rngs=0, **overrides))


@pytest.mark.parametrize(
  "name, width", [("mobilenet_v2", 0.25), ("mobilenet_v3_large", 0.5), ("mobilenet_v3_small", 0.5)]
)
def test_torchvision_mobilenet_logits(tmp_path, name, width):
  torch.manual_seed(0)
  reference = randomize(getattr(torchvision_module(name), name)(width_mult=width, num_classes=5))
  compare(reference, build(name, width=width), tmp_path, layout="torchvision")


def test_torchvision_mnasnet_logits(tmp_path):
  torch.manual_seed(0)
  reference = randomize(torchvision_models().mnasnet.MNASNet(0.25, num_classes=5))
  stem, specs = mnasnet.blocks(0.25)
  ours = shell(
    lambda: mobilenet.MobileNet(specs, stem, 1280, 5, act="relu", arch="mnasnet", rngs=nnx.Rngs(0))
  )
  compare(reference, ours, tmp_path, layout="torchvision")


def test_torchvision_shufflenet_logits(tmp_path):
  torch.manual_seed(0)
  widths = [8, 16, 32, 64, 128]
  reference = randomize(torchvision_models().shufflenetv2.ShuffleNetV2([1, 2, 1], widths, 5))
  ours = shell(lambda: shufflenet.ShuffleNetV2((1, 2, 1), widths, 5, rngs=nnx.Rngs(0)))
  compare(reference, ours, tmp_path, layout="torchvision")


def test_channel_shuffle_interleaves_the_halves():
  x = jnp.arange(6.0).reshape(1, 1, 1, 6)
  assert shufflenet.channel_shuffle(x).ravel().tolist() == [0, 3, 1, 4, 2, 5]


@pytest.mark.parametrize("size", [pytest.param("large", marks=pytest.mark.slow), "small"])
def test_timm_mobilenet_v3_logits(tmp_path, size):
  torch.manual_seed(0)
  reference = randomize(timm().create_model(f"mobilenetv3_{size}_100", num_classes=5))
  name = f"mobilenet_v3_{size}"
  compare(reference, build(name, bn_eps=1e-5), tmp_path, layout="timm")
  # torchvision's BatchNorm eps (the default) would shift every logit: refused in one line.
  with pytest.raises(convert.WeightsMismatchError, match=r"eps 1e-5.*bn_eps=1e-5$"):
    convert.load_pretrained(build(name), str(tmp_path / "model.safetensors"))


def test_hugging_face_mobilenet_v2_logits(tmp_path):
  config = transformers.MobileNetV2Config(depth_multiplier=0.5, image_size=32, num_labels=5)
  torch.manual_seed(0)
  reference = randomize(transformers.MobileNetV2ForImageClassification(config))
  ours = build("mobilenet_v2", width=0.5, padding="same", bn_eps=1e-3)
  # 32 px: stride-2 convs on even maps pad (0, 1) in TensorFlow, (1, 1) in PyTorch.
  forward = lambda m, x: m(pixel_values=x).logits
  compare(reference, ours, tmp_path, layout="hf", forward=forward)
  with pytest.raises(convert.WeightsMismatchError, match=r"padding='same', bn_eps=1e-3$"):
    convert.load_pretrained(build("mobilenet_v2", width=0.5), str(tmp_path / "model.safetensors"))


def tiny(arch="v2", num_classes=5, **overrides):
  """A two-block MobileNet of `arch`: enough for the loader's family checks."""
  blocks = [
    mobilenet.BlockSpec(8, 8, 8, 3, 1, "relu", 8 if arch == "v3" else 0),
    mobilenet.BlockSpec(8, 24, 16, 5, 2, "hard_swish" if arch == "v3" else "relu"),
  ]
  hidden = 16 if arch == "v3" else None
  return shell(
    lambda: mobilenet.MobileNet(
      blocks, 8, 32, num_classes, hidden=hidden, arch=arch, rngs=nnx.Rngs(0), **overrides
    )
  )


def test_fresh_head_wrong_class_count_and_wrong_family(tmp_path):
  tv = torchvision_models()
  path = str(tmp_path / "m.safetensors")
  reference = tv.mobilenetv2.mobilenet_v2(width_mult=0.25, num_classes=5)
  safetensors.torch.save_file(reference.state_dict(), path)
  with pytest.raises(convert.WeightsMismatchError, match=r"5-class head but the model has 3"):
    convert.load_pretrained(build("mobilenet_v2", 3, width=0.25), path)
  assert convert.load_pretrained(build("mobilenet_v2", 3, width=0.25), path, head="fresh")[
    "fresh_head"
  ]
  for arch, family in [("v3", "MobileNetV3"), ("mnasnet", "MNASNet")]:
    with pytest.raises(
      convert.WeightsMismatchError, match=rf"holds a MobileNetV2, but the model .* {family}$"
    ):
      convert.load_pretrained(tiny(arch), path)
  resnet = shell(lambda: models.get_model("resnet18", 5, rngs=0))
  with pytest.raises(convert.WeightsMismatchError, match=r"holds a MobileNetV2, but .* ResNet$"):
    convert.load_pretrained(resnet, path)
  widths = [8, 16, 32, 64, 128]
  with pytest.raises(convert.WeightsMismatchError, match=r"no timm layout for ShuffleNetV2"):
    convert.export_pretrained(
      shell(lambda: shufflenet.ShuffleNetV2((1, 1, 1), widths, 5, rngs=nnx.Rngs(0))), path, "timm"
    )


def test_bfloat16_compute_with_dropout_in_training():
  model = tiny("v3", dtype="bfloat16", dropout=0.2)
  step = nnx.jit(lambda m, v: m(v, train=True, rngs=nnx.Rngs(dropout=0)))
  logits, out = step(model, jnp.ones((2, 32, 32, 3)))
  assert logits.dtype == jnp.float32 and logits.shape == (2, 5)
  assert out["pre_logits"].dtype == jnp.float32 and out["pre_logits"].shape == (2, 16)
  assert model.stem_bn.mean[...].dtype == jnp.float32
  assert (
    nnx.eval_shape(lambda: models.get_model("mobilenet_v3_small", 5, rngs=0)).dropout_rate == 0.2
  )


def test_pretrained_members_take_the_files_options_and_statistics(tmp_path):
  """evaluate.py's `pretrained:` members: a Hugging Face MobileNetV2 file needs TensorFlow's
  padding and eps, and its images in [-1, 1]; a timm MobileNetV3 file eps 1e-5."""
  path = str(tmp_path / "hf.safetensors")
  config = transformers.MobileNetV2Config(num_labels=3)
  reference = transformers.MobileNetV2ForImageClassification(config)
  safetensors.torch.save_file(reference.state_dict(), path)
  spec = pretrained_members.parse(f"pretrained:mobilenet_v2@32:{path}")
  layout, classes, overrides = pretrained_members.inspect(spec, where="x")
  assert (layout, classes) == ("hf", 3)
  assert overrides == {"padding": "same", "bn_eps": 1e-3, "image_size": 32, "in_channels": 3}
  family = models.family_name(spec.model_name)
  assert data.pretrained_stats(layout, family, path) == (
    (0.5,) * 3,
    (0.5,) * 3,
    "hf mobilenet default",
  )

  path = str(tmp_path / "timm.safetensors")
  reference = timm().create_model("mobilenetv3_small_100", num_classes=3)
  safetensors.torch.save_file(reference.state_dict(), path)
  spec = pretrained_members.parse(f"pretrained:mobilenet_v3_small@32:{path}")
  assert pretrained_members.inspect(spec, where="x")[2]["bn_eps"] == 1e-5
  assert data.pretrained_stats("timm", "mobilenet", path)[0] == preprocess.IMAGENET_MEAN


def test_torchvision_inputs_are_those_of_the_default_weights():
  """Crop and filter of every model here, as torchvision's DEFAULT weights' transforms say."""
  from duojax.models import regnet, resnext

  tv = torchvision_models()
  for module in ("regnet", "mobilenetv2", "mobilenetv3", "mnasnet", "shufflenetv2", "resnet"):
    getattr(tv, module)  # registers its builders
  for family in (regnet, mobilenet, mnasnet, shufflenet, resnext):
    for name in family.CONFIGS:
      kw = tv._api.get_model_weights(name).DEFAULT.transforms.keywords
      filter_ = getattr(kw.get("interpolation"), "value", "bilinear")
      expected = (kw["crop_size"] / kw.get("resize_size", 256), filter_)
      crop, interpolation, mean, _ = preprocess.TORCHVISION_INPUTS[name]
      assert (crop, interpolation, mean) == (*expected, preprocess.IMAGENET_MEAN), name
