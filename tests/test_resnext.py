"""ResNeXt and Wide ResNet: torchvision's parameter counts; torchvision's and timm's logits.

They are duojax ResNets with grouped or wider Bottlenecks, read and written in
the ResNet layouts (timm's ResNeXt names are torchvision's).
"""

import jax.numpy as jnp
import pytest
import torch
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
from duojax.models import resnet, resnext

DOCUMENTED = {"resnext50_32x4d": 25_028_904, "wide_resnet50_2": 68_883_240}


@pytest.mark.parametrize("name", list(resnext.CONFIGS))
def test_parameter_counts_are_torchvisions(name):
  with torch.device("meta"):
    reference = getattr(torchvision_models().resnet, name)()
  ours = nnx.eval_shape(lambda: models.get_model(name, 1000, rngs=0))
  assert num_params(ours) == torch_params(reference) == DOCUMENTED.get(name, num_params(ours))
  # The full-size export has torchvision's tensor names and shapes, and so timm's.
  assert layout_shapes(ours, "torchvision") == torch_shapes(reference)
  if name == "resnext50_32x4d":
    with torch.device("meta"):
      assert torch_shapes(timm().create_model(name)) == torch_shapes(reference)


def tiny(num_classes=5, **kw):
  return shell(
    lambda: resnet.ResNet(
      (1, 1, 1, 1), "bottleneck", num_classes, groups=8, width_per_group=4, rngs=nnx.Rngs(0), **kw
    )
  )


def test_torchvision_logits(tmp_path):
  tv = torchvision_models().resnet
  torch.manual_seed(0)
  reference = tv.ResNet(tv.Bottleneck, [1, 1, 1, 1], num_classes=5, groups=8, width_per_group=4)
  compare(randomize(reference), tiny(), tmp_path, layout="torchvision")


def test_timm_logits(tmp_path):
  m = timm().models.resnet
  torch.manual_seed(0)
  reference = m.ResNet(m.Bottleneck, [1, 1, 1, 1], num_classes=5, cardinality=8, base_width=4)
  # timm's ResNet tensors carry torchvision's names: the file reads as torchvision's.
  compare(randomize(reference), tiny(), tmp_path, layout="torchvision")


def test_resnet_files_do_not_fit_a_resnext_and_resnet_state_is_unchanged(tmp_path):
  plain = nnx.eval_shape(lambda: models.get_model("resnet50", 5, rngs=0))
  grouped = nnx.eval_shape(lambda: models.get_model("resnext50_32x4d", 5, rngs=0))
  assert list(convert.flat_state(plain)) == list(convert.flat_state(grouped))
  assert plain.stages[0][0].conv2.kernel.shape == (3, 3, 64, 64)
  assert grouped.stages[0][0].conv2.kernel.shape == (3, 3, 4, 128)
  with pytest.raises(Exception, match="groups and width_per_group need bottleneck blocks"):
    models.get_model("resnet18", 5, rngs=0, groups=32)


def test_bfloat16_compute():
  logits, out = nnx.jit(lambda m, x: m(x))(tiny(dtype="bfloat16"), jnp.ones((2, 32, 32, 3)))
  assert logits.dtype == jnp.float32 and out["pre_logits"].shape == (2, 2048)
