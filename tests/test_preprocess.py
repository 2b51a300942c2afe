"""Per-model inputs: each member of a fused duo resized and normalised its own way."""

import functools
import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from duojax import data, models
from duojax.core import duo
from duojax.data import preprocess


def _spec(size, mean, std):
  return data.InputSpec(size, tuple(mean), tuple(std))


def _batch(size=24, n=4, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_prepare_at_the_batch_size_is_the_pipelines_normalisation():
  spec = _spec(24, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
  images = _batch()
  np.testing.assert_array_equal(
    np.asarray(jax.jit(functools.partial(data.prepare, spec=spec))(images)),
    data.normalize(images, spec.mean, spec.std),
  )


def test_prepare_resizes_like_a_bilinear_antialiased_resize():
  # A smooth image: the two bilinear filters differ only at the borders.
  y, x = np.mgrid[0:48, 0:48] / 48
  image = np.stack([127 + 100 * np.sin(3 * x + k + 2 * y) for k in range(3)], -1).astype(np.uint8)
  spec = _spec(20, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))  # identity on pixel values
  ours = np.asarray(data.prepare(image[None], spec))[0]
  pil = np.asarray(Image.fromarray(image).resize((20, 20), Image.BILINEAR), np.float32)
  assert ours.shape == (20, 20, 3)
  assert np.abs(ours - pil)[2:-2, 2:-2].max() < 2.0


def test_prepare_leaves_normalised_float_images_alone():
  x = np.zeros((1, 8, 8, 3), np.float32)
  assert data.prepare(x, _spec(4, (0, 0, 0), (1, 1, 1))) is x


def test_each_member_inside_the_duo_equals_the_member_alone_on_its_own_input():
  large = models.get_model("resnet8", 5, rngs=nnx.Rngs(0), width=4, image_size=16, in_channels=3)
  small = models.get_model("cnn_xs", 5, rngs=nnx.Rngs(1), image_size=24, in_channels=3)
  specs = [
    _spec(16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    _spec(24, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  ]
  prep = [functools.partial(data.prepare, spec=s) for s in specs]
  graphdefs, states = duo.split_members([large, small])
  fused = duo.make_fused_forward(graphdefs, preprocess=prep)
  images = _batch(24)
  logits = np.asarray(fused(states, images))
  for i, (model, spec) in enumerate(zip([large, small], specs)):
    alone = jax.jit(lambda x, m=model, s=spec: m(data.prepare(x, s), train=False)[0])
    np.testing.assert_allclose(logits[i], np.asarray(alone(images)), rtol=1e-5, atol=1e-5)
  # The sidekick's input is the host's normalisation of the very batch, to the bit.
  host = data.normalize(images, specs[1].mean, specs[1].std)
  np.testing.assert_allclose(logits[1], np.asarray(small(host, train=False)[0]), atol=1e-5)


def test_members_with_one_spec_share_one_prepared_input():
  spec = _spec(16, (0.5,) * 3, (0.5,) * 3)
  calls = []

  def counting(images):
    calls.append(1)
    return data.prepare(images, spec)

  members = [
    models.get_model("cnn_xs", 3, rngs=nnx.Rngs(i), image_size=16, in_channels=3) for i in range(3)
  ]
  graphdefs, states = duo.split_members(members)
  fused = duo.make_fused_forward(graphdefs, preprocess=(counting,) * 3)
  fused(states, _batch(16))
  assert len(calls) == 1  # traced once for the three members


@pytest.mark.parametrize(
  "layout,family,expected",
  [
    ("timm", "vit", preprocess.HALF),
    ("hf", "vit", preprocess.HALF),
    ("torchvision", "resnet", preprocess.IMAGENET_MEAN),
    ("timm", "resnet", preprocess.IMAGENET_MEAN),
  ],
)
def test_pretrained_statistics_follow_the_files_library(layout, family, expected, tmp_path):
  mean, std, source = data.pretrained_stats(layout, family, str(tmp_path / "model.safetensors"))
  assert mean == expected and len(std) == 3 and layout in source


def test_a_hugging_face_preprocessor_config_beside_the_weights_wins(tmp_path):
  (tmp_path / "preprocessor_config.json").write_text(
    json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "size": 384})
  )
  mean, std, source = data.pretrained_stats("hf", "vit", str(tmp_path / "model.safetensors"))
  assert (mean, std) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
  assert source == "preprocessor_config.json"


def test_input_spec_round_trips_through_checkpoint_metadata():
  spec = _spec(224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
  assert data.InputSpec.from_meta(json.loads(json.dumps(spec.as_meta()))) == spec
  with pytest.raises(ValueError, match="one value per channel"):
    spec.check(1)
