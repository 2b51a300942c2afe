"""Checkpoints made by the reference libraries load into duojax with the same logits.

Each test builds a small, randomly initialised model in PyTorch, writes it as
safetensors the way users get such files, loads it into duojax and compares
eval-mode logits on the same random images; then exports the duojax model
back and loads it into the PyTorch model with strict checking. Hugging Face
models come from `transformers` itself and timm's ViTs from timm's own model
code (`reference_libs`); torchvision's and timm's ResNets against their own code
in tests/test_resnet_reference.py.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx
from reference_libs import timm  # noqa: E402

from duojax import convert, models
from duojax.models import resnet

TOLERANCE = 1e-4


def randomize_torch_batch_norm(module, seed=0):
  """Non-trivial running statistics and affine terms (fresh ones are 0/1)."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=gen))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=gen))
        m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=gen))
        m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
  return module


def compare(
  torch_model,
  duojax_model,
  tmp_path,
  *,
  layout,
  image_size,
  channels=3,
  forward=lambda m, x: m(x),
  strict_reload=True,
):
  torch_model.eval()
  path = str(tmp_path / "model.safetensors")
  safetensors.torch.save_file(
    {k: v.contiguous() for k, v in torch_model.state_dict().items()},
    path,
    metadata={"format": "pt"},
  )
  info = convert.load_pretrained(duojax_model, path)
  assert info["layout"] == layout
  x = np.random.default_rng(0).normal(size=(3, channels, image_size, image_size)).astype(np.float32)
  with torch.no_grad():
    expected = forward(torch_model, torch.from_numpy(x)).numpy()
  ours = np.asarray(duojax_model(jnp.asarray(x.transpose(0, 2, 3, 1)))[0])
  np.testing.assert_allclose(ours, expected, atol=TOLERANCE, rtol=TOLERANCE)

  if not strict_reload:
    return
  # And back: the export loads strictly into the library and gives its logits.
  out = str(tmp_path / "export.safetensors")
  convert.export_pretrained(duojax_model, out, layout)
  exported = safetensors.torch.load_file(out)
  torch_model.load_state_dict(exported, strict=True)
  with torch.no_grad():
    np.testing.assert_allclose(
      forward(torch_model, torch.from_numpy(x)).numpy(), expected, atol=1e-6
    )


def hf_logits(model, x):
  return model(pixel_values=x).logits


def test_hugging_face_vit(tmp_path):
  config = transformers.ViTConfig(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=16,
    patch_size=4,
    num_channels=3,
    num_labels=5,
    hidden_act="gelu",
  )
  torch.manual_seed(0)
  reference = transformers.ViTForImageClassification(config).eval()
  ours = models.get_model("vit_mu4", 5, rngs=1, image_size=16)
  # The file as this transformers version names the modules.
  compare(
    reference, ours, tmp_path, layout="hf", image_size=16, forward=hf_logits, strict_reload=False
  )
  # duojax exports the hub's names (`encoder.layer.N.attention.attention.query`),
  # which `from_pretrained` of every transformers version loads.
  directory = tmp_path / "exported"
  config.save_pretrained(directory)
  convert.export_pretrained(ours, str(directory / "model.safetensors"), "hf")
  reloaded = transformers.ViTForImageClassification.from_pretrained(directory).eval()
  x = torch.randn(2, 3, 16, 16)
  with torch.no_grad():
    np.testing.assert_allclose(
      reloaded(pixel_values=x).logits.numpy(), reference(pixel_values=x).logits.numpy(), atol=1e-6
    )
  # And a hub-named file loads into duojax too.
  again = models.get_model("vit_mu4", 5, rngs=2, image_size=16)
  convert.load_pretrained(again, str(directory / "model.safetensors"))
  np.testing.assert_array_equal(
    np.asarray(again(jnp.ones((1, 16, 16, 3)))[0]), np.asarray(ours(jnp.ones((1, 16, 16, 3)))[0])
  )


@pytest.mark.parametrize(
  "layer_type,hidden_sizes,width", [("basic", [8, 16], 8), ("bottleneck", [32, 64], 8)]
)
def test_hugging_face_resnet(tmp_path, layer_type, hidden_sizes, width):
  config = transformers.ResNetConfig(
    num_channels=3,
    embedding_size=width,
    hidden_sizes=hidden_sizes,
    depths=[1, 2],
    layer_type=layer_type,
    hidden_act="relu",
    num_labels=5,
  )
  torch.manual_seed(0)
  reference = randomize_torch_batch_norm(transformers.ResNetForImageClassification(config))
  ours = resnet.ResNet((1, 2), layer_type, 5, width=width, rngs=nnx.Rngs(1))
  compare(reference, ours, tmp_path, layout="hf", image_size=32, forward=hf_logits)


def timm_vit(num_classes, image_size, **kwargs):
  """timm's own VisionTransformer (the real model code) at vit_mu4's size."""
  torch.manual_seed(0)
  return timm().create_model(
    "vit_base_patch16_224", pretrained=False, img_size=image_size, patch_size=4,
    embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, num_classes=num_classes, **kwargs,
  )  # fmt: skip


@pytest.mark.parametrize("pre_norm", [False, True])
def test_timm_vit(tmp_path, pre_norm):
  reference = timm_vit(5, 16, pre_norm=pre_norm)
  with torch.no_grad():  # LayerNorms and the class token start at 1/0; make a mix-up show
    reference.cls_token.normal_(0, 0.5)
    for m in reference.modules():
      if isinstance(m, torch.nn.LayerNorm):
        m.weight.normal_(1, 0.2)
        m.bias.normal_(0, 0.2)
  # CLIP-style: LayerNorm before the blocks, no patch-embedding bias.
  overrides = dict(pre_norm=True, patch_bias=False) if pre_norm else {}
  ours = models.get_model("vit_mu4", 5, rngs=1, image_size=16, **overrides)
  compare(reference, ours, tmp_path, layout="timm", image_size=16)


def test_timm_vit_with_fc_norm_needs_a_model_with_fc_norm(tmp_path):
  path = str(tmp_path / "m.safetensors")
  reference = timm_vit(5, 16, global_pool="avg", fc_norm=True)
  safetensors.torch.save_file(reference.state_dict(), path)
  ours = models.get_model("vit_mu4", 5, rngs=1, image_size=16, pool="gap")
  with pytest.raises(convert.WeightsMismatchError, match="holds fc_norm .* fc_norm=True"):
    convert.load_pretrained(ours, path)
  # Built as the file is (tests/test_vit_variants.py compares the logits).
  ours = models.get_model(
    "vit_mu4", 5, rngs=1, image_size=16, pool="gap", class_token=True, fc_norm=True
  )
  assert convert.load_pretrained(ours, path)["layout"] == "timm"


def test_pretrained_file_then_fresh_head_and_other_image_size(tmp_path):
  """The fine-tuning path: a 1000-class ViT file into a 3-class model at 32 px."""
  reference = timm_vit(1000, 16)
  path = str(tmp_path / "m.safetensors")
  safetensors.torch.save_file(reference.state_dict(), path)
  ours = models.get_model("vit_mu4", 3, rngs=1, image_size=32)
  info = convert.load_pretrained(ours, path, head="fresh")
  assert info["resampled_posemb"] == ((1, 17, 32), (1, 65, 32))
  np.testing.assert_allclose(
    convert.flat_state(ours)["blocks.0.mlp.fc1.kernel"],
    reference.blocks[0].mlp.fc1.weight.detach().numpy().T,
  )
  assert np.asarray(ours(jnp.zeros((1, 32, 32, 3)))[0]).shape == (1, 3)
