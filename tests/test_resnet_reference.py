"""duojax's ResNets against the real torchvision and timm ResNets (the pinned library
source, `tests/reference_libs.py`): the same logits from their files, exports that load
back strictly, and full-size tensor names, shapes and parameter counts.

timm's ResNets name their tensors as torchvision's do (`conv1`, `layer1.0.conv1`,
`fc`), so a timm file is read as the "torchvision" layout and a "timm" export is the
same file. Hugging Face's ResNets are checked in `tests/test_convert_torch.py`
against transformers itself.
"""

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

# torchvision's documented parameter counts of its ImageNet ResNets.
DOCUMENTED = {"resnet18": 11_689_512, "resnet50": 25_557_032}


def ours(name, num_classes=5):
  return shell(lambda: models.get_model(name, num_classes, rngs=0))


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_resnet_files_give_torchvisions_logits_and_export_back(tmp_path, name):
  torch.manual_seed(0)
  reference = randomize(getattr(torchvision_models().resnet, name)(num_classes=5))
  compare(reference, ours(name), tmp_path, layout="torchvision")


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_timm_resnet_files_give_timms_logits_and_export_back(tmp_path, name):
  torch.manual_seed(0)
  reference = randomize(timm().create_model(name, pretrained=False, num_classes=5))
  # The names are torchvision's: the file is read (and written back) in that layout.
  compare(reference, ours(name), tmp_path, layout="torchvision")
  # A "timm" export of the same model is that file.
  model = ours(name)
  convert.load_pretrained(model, str(tmp_path / "model.safetensors"))
  assert layout_shapes(model, "timm") == torch_shapes(reference)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_full_size_resnets_have_the_libraries_names_shapes_and_counts(name):
  with torch.device("meta"):
    tv = getattr(torchvision_models().resnet, name)()
    tm = timm().create_model(name, pretrained=False)
  model = nnx.eval_shape(lambda: models.get_model(name, 1000, rngs=0))
  assert num_params(model) == torch_params(tv) == torch_params(tm) == DOCUMENTED[name]
  assert layout_shapes(model, "torchvision") == torch_shapes(tv) == torch_shapes(tm)


def test_a_resnet_file_of_another_depth_is_refused_in_one_line(tmp_path):
  import safetensors.torch

  path = str(tmp_path / "resnet34.safetensors")
  reference = torchvision_models().resnet.resnet34(num_classes=5)
  safetensors.torch.save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, path)
  with pytest.raises(convert.WeightsMismatchError) as e:
    convert.load_pretrained(ours("resnet18"), path)
  assert "\n" not in str(e.value)
