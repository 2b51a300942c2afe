"""The transformer families in the rest of duojax: the CLIP, DINOv2 (registers), DeiT
(distilled) and SigLIP towers and Swin-V2 in the fused duo forward beside a ResNet, their
pre-logit features for Mahalanobis, bfloat16 compute, FSDP over fake CPU devices, a
bundle and its exported program, and a fine-tune from a timm file through train.py with
layer-wise learning-rate decay and rematerialisation. Every model is a tiny member of its
family; each member reads a uint8 batch at its own size and normalisation.
"""

import functools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import recipe_fine_tune

import duojax
from duojax import bundle, convert, models
from duojax.bundle import serve
from duojax.data.preprocess import InputSpec, prepare
from duojax.models.spec import ModelSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["ant", "bee", "cod", "doe", "elk"]
TOWER = dict(width=32, depth=2, num_heads=2, mlp_dim=64)
# family: (name, overrides, side, mean/std)
NAMED = {
  "clip": ("vit_b16_clip", {**TOWER, "image_size": 32}, (0.481, 0.458, 0.408), 0.27),
  "dinov2_reg": ("vit_s14_dinov2_reg", {**TOWER, "image_size": 28}, (0.485, 0.456, 0.406), 0.226),
  "deit": ("deit_b16_distilled", {**TOWER, "image_size": 48}, (0.485, 0.456, 0.406), 0.226),
  "siglip": ("vit_b16_siglip", {**TOWER, "image_size": 32}, (0.5, 0.5, 0.5), 0.5),
  "swin": (
    "swin_v2_t",
    dict(embed_dim=16, depths=(1, 1), num_heads=(1, 2), window_size=4, image_size=32),
    (0.485, 0.456, 0.406),
    0.226,
  ),
  "resnet": ("resnet8", {"width": 4, "image_size": 24}, (0.5, 0.5, 0.5), 0.25),
}
FAMILIES = tuple(NAMED)
SOURCE = 48  # the uint8 batch's side; each member cuts and resizes its own view


def tiny(family: str, seed: int = 0, **extra) -> nnx.Module:
  name, overrides, _, _ = NAMED[family]
  return models.get_model(name, len(CLASSES), rngs=seed, **overrides, **extra)


def input_spec(family: str) -> InputSpec:
  _, overrides, mean, std = NAMED[family]
  return InputSpec(overrides["image_size"], tuple(mean), (std,) * 3)


def preprocessing(families=FAMILIES):
  return [functools.partial(prepare, spec=input_spec(f), source_crop=1.0) for f in families]


def _images(n=6, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, SOURCE, SOURCE, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def members():
  return {family: tiny(family, seed=i) for i, family in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def fused(members):
  forward, states = duojax.fused_forward(
    list(members.values()), preprocess=preprocessing(), with_features="all"
  )
  logits, features = forward(states, _images())
  return np.asarray(logits), [np.asarray(f) for f in features]


def test_every_family_runs_in_one_fused_forward_as_it_runs_alone(members, fused):
  logits, features = fused
  assert logits.shape == (len(FAMILIES), 6, len(CLASSES)) and logits.dtype == np.float32
  for i, (family, model) in enumerate(members.items()):
    x = prepare(jnp.asarray(_images()), spec=input_spec(family), source_crop=1.0)
    alone, out = model(x)
    np.testing.assert_allclose(logits[i], alone, rtol=1e-4, atol=1e-5, err_msg=family)
    np.testing.assert_allclose(features[i], out["pre_logits"], rtol=1e-4, atol=1e-5)
    assert features[i].shape[0] == 6 and np.all(np.isfinite(features[i]))
    assert np.std(logits[i]) > 1e-4, f"{family}: constant logits test nothing"


def test_a_transformer_large_model_and_a_resnet_sidekick_fit_a_duo(fused):
  rng = np.random.default_rng(0)
  for large in ("dinov2_reg", "swin", "siglip"):
    stack = fused[0][[FAMILIES.index(large), FAMILIES.index("resnet")]]
    stack = np.concatenate([stack] * 20, axis=1) + rng.normal(size=(2, 120, 5)).astype(np.float32)
    labels = np.argmax(stack[0] + 0.5 * stack[1], -1)
    duo = duojax.fit_duo(stack, labels)
    assert np.all(np.isfinite(duo.logits(stack))) and duo.weights[0] > 0, large


def test_pre_logit_features_of_every_family_feed_mahalanobis(fused):
  rng = np.random.default_rng(1)
  for i, family in enumerate(FAMILIES):
    feats = fused[1][i]
    rows = np.concatenate([feats + 0.01 * rng.normal(size=feats.shape) for _ in range(10)])
    labels = np.tile(np.arange(6) % 5, 10)
    detector = duojax.fit_mahalanobis(rows.astype(np.float32), labels, 5)
    near = duojax.mahalanobis_score(detector, feats)
    far = duojax.mahalanobis_score(detector, feats + 10 * np.std(feats))
    assert np.all(np.isfinite(near)) and np.all(near > far), family


def test_bfloat16_compute_keeps_float32_parameters_and_logits(fused):
  low = [tiny(family, seed=i, dtype="bfloat16") for i, family in enumerate(FAMILIES)]
  for family, model in zip(FAMILIES, low):
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params), family
  forward, states = duojax.fused_forward(low, preprocess=preprocessing())
  z16 = np.asarray(forward(states, _images()))
  assert z16.dtype == np.float32
  for i, family in enumerate(FAMILIES):
    z32 = fused[0][i]
    # Swin's cosine attention multiplies bfloat16 rounding by its logit scale (docs/swin.md).
    tolerance = 0.25 if family == "swin" else 0.1
    assert np.abs(z16[i] - z32).max() < tolerance * np.abs(z32).max() + 1e-3, family
    assert not np.array_equal(z16[i], z32), f"{family}: dtype had no effect"


_FSDP_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    from duojax.models import functional
    from duojax.parallel import sharding
    sys.path.insert(0, "tests")
    from test_transformer_families_pipeline import FAMILIES, NAMED, tiny

    rng = np.random.default_rng(0)
    mesh = sharding.make_mesh(4, 4)
    for i, family in enumerate(FAMILIES):
      side = NAMED[family][1]["image_size"]
      images = rng.normal(size=(8, side, side, 3)).astype(np.float32)
      graphdef, params, stats = functional.split_model(tiny(family, seed=i))
      apply = jax.jit(lambda tree, x: functional.make_apply(graphdef)(*tree, x)[0])
      plain = apply((params, stats), images)
      tree = jax.device_put((params, stats), sharding.state_shardings((params, stats), mesh,
                                                                     min_elements=0))
      sharded = apply(tree, jax.device_put(images, sharding.batch_sharding(mesh)))
      jax.block_until_ready(sharded)
      share = sharding.bytes_per_device(tree) / sum(x.nbytes for x in jax.tree.leaves(tree))
      print("FORWARD", family, float(np.max(np.abs(np.asarray(plain) - np.asarray(sharded)))), share)
""")


@pytest.mark.slow  # a child process with 4 fake devices
def test_fsdp_splits_every_family_and_its_forward_is_the_plain_one():
  result = subprocess.run(
    [sys.executable, "-c", _FSDP_SCRIPT],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line.split() for line in result.stdout.splitlines() if line.startswith("FORWARD")]
  forward = {line[1]: (float(line[2]), float(line[3])) for line in lines}
  assert set(forward) == set(FAMILIES)
  for family, (diff, share) in forward.items():
    assert diff < 1e-4 and share < 0.5, (family, diff, share)


def test_a_dinov2_resnet_bundle_predicts_as_the_fused_duo_and_so_does_its_program(tmp_path):
  pair = ("dinov2_reg", "resnet")
  members = [
    bundle.BundleMember(
      tiny(f, seed=i),
      ModelSpec(NAMED[f][0], {k: v for k, v in NAMED[f][1].items() if k != "image_size"},
                len(CLASSES), (NAMED[f][1]["image_size"],) * 2 + (3,)),
      input_spec(f),
    )
    for i, f in enumerate(pair)
  ]  # fmt: skip
  duo = duojax.Duo(np.array([0.9, 0.4], np.float32), ("large", "sidekick"))
  rng = np.random.default_rng(0)
  confidence = rng.uniform(0.2, 1.0, 100).astype(np.float32)
  path = bundle.write_bundle(
    tmp_path / "duo", members, duo, CLASSES,
    validation=(confidence, rng.uniform(size=100) < confidence), platforms=("cpu",),
  )  # fmt: skip
  loaded = duojax.load_bundle(path)
  images = rng.integers(0, 256, (4, *loaded.image_shape), dtype=np.uint8)
  out = loaded.predict(images)
  crop = max(m.inputs.crop_fraction for m in members)
  forward, states = duojax.fused_forward(
    [m.model for m in members],
    preprocess=[functools.partial(prepare, spec=m.inputs, source_crop=crop) for m in members],
  )
  stack = np.asarray(forward(states, images))
  np.testing.assert_allclose(out["probabilities"], duo.probabilities(stack), atol=1e-5)
  # The exported program (jax.export, the weights its arguments) gives the same.
  served = serve.load(path, "cpu")(images)
  np.testing.assert_allclose(served["probabilities"], out["probabilities"], atol=1e-5)


@pytest.mark.slow
def test_train_fine_tunes_dinov2_from_a_timm_file_with_layer_decay_and_remat(
  tmp_path, learnable_data_dir
):
  from reference_libs import timm
  from safetensors.torch import save_file

  torch_model = timm().create_model(
    "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28, embed_dim=32, depth=2,
    num_heads=2, in_chans=1, num_classes=1000,
  )  # fmt: skip
  weights = str(tmp_path / "dinov2.safetensors")
  save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()}, weights)
  result, workdir = recipe_fine_tune(
    tmp_path,
    learnable_data_dir,
    f"model=vit_s14_dinov2_reg,weights={weights},layout=timm,head=fresh,dataset=fashion_mnist,"
    "test_split=test,size=28,dtype=float32,steps=4,batch_size=32,val_size=100,"
    "eval_batch_size=64,warmup=1",
    """
    config.model.width, config.model.depth, config.model.num_heads = 32, 2, 2
    config.model.mlp_dim = 128
    config.model.remat = True
    config.layer_decay = 0.5
    """,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "initialised from" in result.stdout and "fresh classifier head" in result.stdout
  from duojax.train import checkpoint

  model, meta = checkpoint.load_model(str(workdir))
  assert model.head.out_features == 10 and meta["model_overrides"]["remat"] is True
  flat = convert.flat_state(model)
  file = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
  # Layer decay 0.5 over 2 blocks: the patch embedding learns at lr/8, the last block at
  # lr/2, so the embedding moved less than the last block's MLP did.
  moved = lambda ours, theirs: float(np.abs(ours - theirs).max() / np.abs(theirs).max())
  embed = moved(flat["patch_embed.kernel"], file["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  last = moved(flat["blocks.1.mlp.fc2.kernel"], file["blocks.1.mlp.fc2.weight"].T)
  assert 0 < embed < last
