"""ViT variants (CLIP, DINOv2, DeiT distilled, SigLIP, timm's fc_norm ViTs): the logits of the
real timm and Hugging Face models through their files (random weights, small widths), the
source library's parameter counts, rematerialisation, the attention forms, Hydra pruning,
the one-line errors and each family's preprocessing."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx
from reference_libs import timm
from torch_reference import duojax_logits, images, randomize, save, torch_logits

from duojax import convert, data, hydra, models
from duojax.errors import ConfigError, WeightsMismatchError
from duojax.models import common, vit_variants

TOLERANCE = 1e-4
INTERPOLATED = 1e-3  # position embeddings resampled to another grid
TINY = dict(width=32, depth=2, num_heads=2)
# Tokens, position embeddings and the probe start at 0 or small: make a misplaced one show.
_TOKENS = (
  "cls_token",
  "reg_token",
  "dist_token",
  "latent",
  "pos_embed",
  "register_tokens",
  "distillation_token",
  "probe",
  "position_embeddings",
  "class_embedding",
  "position_embedding.weight",
)
_HEADS = ("head.weight", "head_dist.weight", "classifier.weight", "cls_classifier.weight")


def randomized(module):
  """Random norms and layer scales (`randomize`), tokens, and heads whose logits are O(1)."""
  randomize(module)
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith(_TOKENS):
        p.normal_(0, 0.5)
      if name.endswith(_HEADS) or name == "distillation_classifier.weight":
        p.normal_(0, 1.0)
  return module.eval()


def tiny(name, num_classes=5, **overrides):
  return models.get_model(name, num_classes, rngs=1, **{**TINY, **overrides})


def max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


# ----------------------------------------------------------------------------
# timm: the real model code.

# (timm name, its kwargs, duojax name, overrides, image side)
TIMM_CASES = {
  "clip": ("vit_base_patch16_clip_224", {}, "vit_b16_clip", {}, 48),
  "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", {}, "vit_b16_clip_quickgelu", {}, 48),
  "dinov2": ("vit_small_patch14_dinov2", {}, "vit_s14_dinov2", {}, 42),
  "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", {}, "vit_s14_dinov2_reg", {}, 42),
  "dinov2_giant_swiglu": ("vit_giant_patch14_dinov2", {}, "vit_g14_dinov2", {"mlp_dim": 85}, 28),
  "deit_distilled": ("deit_base_distilled_patch16_224", {}, "deit_b16_distilled", {}, 48),
  "siglip": ("vit_base_patch16_siglip_224", {}, "vit_b16_siglip", {"act": "gelu"}, 48),
  "fc_norm": (
    "vit_base_patch16_224",
    {"global_pool": "avg", "fc_norm": True},
    "vit_b16",
    {"pool": "gap", "class_token": True, "fc_norm": True},
    48,
  ),
}


def timm_model(name, size, num_classes=5, **kwargs):
  torch.manual_seed(0)
  model = timm().create_model(
    name, pretrained=False, img_size=size, embed_dim=32, depth=2, num_heads=2,
    num_classes=num_classes, **kwargs,
  )  # fmt: skip
  return randomized(model)


def timm_pair(case, tmp_path):
  """(timm model, the duojax model its file loaded into, info, images, timm's logits)."""
  timm_name, kwargs, name, overrides, size = TIMM_CASES[case]
  reference = timm_model(timm_name, size, **kwargs)
  ours = tiny(name, image_size=size, **{"mlp_dim": 128, **overrides})
  info = convert.load_pretrained(ours, save(reference, str(tmp_path / "m.safetensors")))
  x = images(size)
  return reference, ours, info, x, torch_logits(reference, x)


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_logits_and_export(tmp_path, case):
  reference, ours, info, x, expected = timm_pair(case, tmp_path)
  assert info["layout"] == "timm" and info["resampled_posemb"] is None
  assert np.abs(expected).max() > 0.1  # logits of some size: the tolerance has teeth
  np.testing.assert_allclose(duojax_logits(ours, x), expected, atol=TOLERANCE, rtol=TOLERANCE)
  out = str(tmp_path / "export.safetensors")
  convert.export_pretrained(ours, out, "timm")
  reference.load_state_dict(safetensors.torch.load_file(out), strict=True)
  np.testing.assert_allclose(torch_logits(reference, x), expected, atol=1e-6, rtol=1e-6)


def test_timm_dinov2_file_on_another_grid(tmp_path):
  """A 3×3-grid file at 4×4: timm resamples it at run time (dynamic_img_size) with the
  antialiased bicubic duojax applies at load time."""
  reference = timm_model("vit_small_patch14_reg4_dinov2", 42, dynamic_img_size=True)
  ours = tiny("vit_s14_dinov2_reg", image_size=56, mlp_dim=128)
  info = convert.load_pretrained(ours, save(reference, str(tmp_path / "m.safetensors")))
  assert info["resampled_posemb"] == ((1, 9, 32), (1, 16, 32))
  x = images(56)
  expected = torch_logits(reference, x)
  np.testing.assert_allclose(duojax_logits(ours, x), expected, atol=INTERPOLATED, rtol=INTERPOLATED)


# ----------------------------------------------------------------------------
# Hugging Face: transformers itself, through save_pretrained.

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


def _hf_cases():
  t = transformers
  dinov2 = dict(**SMALL, image_size=28, patch_size=14, num_labels=5)
  reg = dict(dinov2, num_register_tokens=2)
  tower = dict(**SMALL, intermediate_size=64, image_size=48, patch_size=16)
  tok_gap = dict(pool="tok+gap", mlp_dim=128)
  return {
    # name: (class, config, duojax name, overrides, image side, vision tower only)
    "clip": (t.CLIPVisionModel, t.CLIPVisionConfig(**tower), "vit_b16_clip_quickgelu",
             {"mlp_dim": 64}, 48, True),
    "dinov2": (t.Dinov2ForImageClassification, t.Dinov2Config(**dinov2), "vit_s14_dinov2",
               tok_gap, 28, False),
    "dinov2_interpolated": (t.Dinov2ForImageClassification, t.Dinov2Config(**dinov2),
                            "vit_s14_dinov2", tok_gap, 56, False),
    "dinov2_reg": (t.Dinov2WithRegistersForImageClassification,
                   t.Dinov2WithRegistersConfig(**reg), "vit_s14_dinov2_reg",
                   {**tok_gap, "num_registers": 2}, 28, False),
    "dinov2_reg_interpolated": (t.Dinov2WithRegistersForImageClassification,
                                t.Dinov2WithRegistersConfig(**reg), "vit_s14_dinov2_reg",
                                {**tok_gap, "num_registers": 2}, 42, False),
    "dinov2_swiglu": (t.Dinov2WithRegistersForImageClassification,
                      t.Dinov2WithRegistersConfig(**reg, use_swiglu_ffn=True),
                      "vit_g14_dinov2_reg", {"pool": "tok+gap", "num_registers": 2,
                                             "mlp_dim": 88}, 28, False),
    "deit_distilled": (t.DeiTForImageClassificationWithTeacher,
                       t.DeiTConfig(**tower, num_labels=5), "deit_b16_distilled",
                       {"mlp_dim": 64, "norm_eps": 1e-12}, 48, False),
    "siglip": (t.SiglipVisionModel, t.SiglipVisionConfig(**tower), "vit_b16_siglip",
               {"mlp_dim": 64}, 48, True),
    "deit_distilled_interpolated": (t.DeiTForImageClassificationWithTeacher,
                                    t.DeiTConfig(**tower, num_labels=5), "deit_b16_distilled",
                                    {"mlp_dim": 64, "norm_eps": 1e-12}, 64, False),
    "siglip_interpolated": (t.SiglipVisionModel, t.SiglipVisionConfig(**tower),
                            "vit_b16_siglip", {"mlp_dim": 64}, 64, True),
  }  # fmt: skip


HF_CASES = _hf_cases()


def hf_pair(case, tmp_path):
  """(the transformers model, its outputs, the duojax model its file loaded into, info,
  images, the expected logits: the model's, or the tower's pooled features times a head)."""
  cls, config, name, overrides, size, tower = HF_CASES[case]
  torch.manual_seed(0)
  reference = randomized(cls(config))
  reference.save_pretrained(tmp_path)
  path = str(tmp_path / "model.safetensors")
  tensors = safetensors.torch.load_file(path)
  if tower:  # the vision tower and a linear head of ours, named as the libraries' classifiers
    head = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    tensors.update({"classifier.weight": head, "classifier.bias": torch.zeros(5)})
    safetensors.torch.save_file(tensors, path, metadata={"format": "pt"})
  ours = tiny(name, image_size=size, **overrides)
  info = convert.load_pretrained(ours, path)
  x = images(size)
  # The towers resample their position embeddings only when asked to (DINOv2's always).
  dinov2 = cls.__name__.startswith("Dinov2")
  resample = {"interpolate_pos_encoding": True} if size != config.image_size and not dinov2 else {}
  with torch.no_grad():
    out = reference(pixel_values=torch.from_numpy(x), **resample)
  expected = (out.pooler_output @ head.T if tower else out.logits).numpy()
  return reference, out, ours, info, x, expected


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hugging_face_logits_and_export(tmp_path, case):
  cls, config, name, overrides, size, tower = HF_CASES[case]
  reference, out, ours, info, x, expected = hf_pair(case, tmp_path)
  assert info["layout"] == "hf"
  assert (info["resampled_posemb"] is not None) == (size != config.image_size)
  assert np.abs(expected).max() > 0.1
  tolerance = TOLERANCE if size == config.image_size else INTERPOLATED
  np.testing.assert_allclose(duojax_logits(ours, x), expected, atol=tolerance, rtol=tolerance)
  if tower:
    features = np.asarray(ours(jnp.asarray(x.transpose(0, 2, 3, 1)))[1]["pre_logits"])
    np.testing.assert_allclose(features, out.pooler_output.numpy(), atol=tolerance, rtol=tolerance)
  if size != config.image_size:
    return
  # And back: transformers loads the export (the hub's names; DINOv2's mask token, unused
  # by classification, is left to its initialisation) and gives its outputs again.
  directory = tmp_path / "exported"
  config.save_pretrained(directory)
  convert.export_pretrained(ours, str(directory / "model.safetensors"), "hf")
  reloaded = cls.from_pretrained(directory).eval()
  with torch.no_grad():
    again = reloaded(pixel_values=torch.from_numpy(x))
  key = "pooler_output" if tower else "logits"
  np.testing.assert_allclose(again[key].numpy(), out[key].numpy(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_whole_clip_and_siglip_files_give_their_vision_tower(tmp_path, kind):
  """The hub's CLIPModel / SiglipModel files (text tower, projections) load the vision
  tower (`vision_model.*`), the rest left aside."""
  t = transformers
  vision = dict(**SMALL, intermediate_size=64, image_size=32, patch_size=16)
  text = dict(**SMALL, intermediate_size=64, vocab_size=50, bos_token_id=0, eos_token_id=1)
  if kind == "clip":
    config = t.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    reference, name = t.CLIPModel(config), "vit_b16_clip_quickgelu"
  else:
    config = t.SiglipConfig(text_config=text, vision_config=vision)
    reference, name = t.SiglipModel(config), "vit_b16_siglip"
  torch.manual_seed(0)
  randomized(reference).save_pretrained(tmp_path)
  ours = tiny(name, image_size=32, mlp_dim=64)
  info = convert.load_pretrained(ours, str(tmp_path / "model.safetensors"), head="fresh")
  assert info["layout"] == "hf"
  x = images(32)
  with torch.no_grad():
    expected = reference.vision_model(pixel_values=torch.from_numpy(x)).pooler_output.numpy()
  features = ours(jnp.asarray(x.transpose(0, 2, 3, 1)))[1]["pre_logits"]
  np.testing.assert_allclose(np.asarray(features), expected, atol=TOLERANCE, rtol=TOLERANCE)


# ----------------------------------------------------------------------------
# Sizes: the source library's parameter counts, from a meta-device build of its model.

TIMM_NAMES = {
  "vit_b16_clip": "vit_base_patch16_clip_224",
  "vit_l14_clip": "vit_large_patch14_clip_224",
  "vit_s14_dinov2": "vit_small_patch14_dinov2",
  "vit_b14_dinov2": "vit_base_patch14_dinov2",
  "vit_l14_dinov2": "vit_large_patch14_dinov2",
  "vit_g14_dinov2": "vit_giant_patch14_dinov2",
  "vit_s14_dinov2_reg": "vit_small_patch14_reg4_dinov2",
  "vit_b14_dinov2_reg": "vit_base_patch14_reg4_dinov2",
  "vit_l14_dinov2_reg": "vit_large_patch14_reg4_dinov2",
  "vit_g14_dinov2_reg": "vit_giant_patch14_reg4_dinov2",
  "deit_ti16_distilled": "deit_tiny_distilled_patch16_224",
  "deit_s16_distilled": "deit_small_distilled_patch16_224",
  "deit_b16_distilled": "deit_base_distilled_patch16_224",
  "vit_b16_siglip": "vit_base_patch16_siglip_224",
  "vit_so400m14_siglip": "vit_so400m_patch14_siglip_224",
}


def count(model) -> int:
  return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_every_size_has_timms_parameter_count():
  counts = {}
  for name, timm_name in TIMM_NAMES.items():
    with torch.device("meta"):
      reference = timm().create_model(timm_name, pretrained=False, num_classes=1000)
    # Shape-only build with fold-in keys (common.ParamKeys): fast for the 1.1 B giant too.
    ours = nnx.eval_shape(
      lambda n=name: models.get_model(n, 1000, rngs=common.ParamKeys(nnx.Rngs(0)))
    )
    counts[name] = (count(ours), sum(p.numel() for p in reference.parameters()))
    assert ours.image_size[0] == reference.patch_embed.img_size[0], name
  assert {n: c[0] for n, c in counts.items()} == {n: c[1] for n, c in counts.items()}


# ----------------------------------------------------------------------------
# Options: rematerialisation, the attention forms.


def _loss_and_grads(model, x):
  graphdef, params = nnx.split(model, nnx.Param)

  def loss(p):
    logits, _ = nnx.merge(graphdef, p)(x)
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[:, 0])

  return jax.value_and_grad(loss)(params)


def test_remat_gives_the_same_logits_and_gradients():
  x = jnp.asarray(images(28).transpose(0, 2, 3, 1))
  kw = dict(image_size=28, mlp_dim=40, num_registers=1)
  plain, remat = (tiny("vit_s14_dinov2_reg", **kw, remat=r) for r in (False, True))
  np.testing.assert_array_equal(np.asarray(plain(x)[0]), np.asarray(remat(x)[0]))
  (value, grads), (value_r, grads_r) = _loss_and_grads(plain, x), _loss_and_grads(remat, x)
  np.testing.assert_allclose(value_r, value, rtol=1e-6)
  for g, g_r in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_r)):
    np.testing.assert_allclose(g_r, g, atol=1e-6, rtol=1e-5)
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-3
  # Training draws the same dropout and stochastic-depth masks from the same key.
  x16 = jnp.ones((2, 16, 16, 3))
  drops = [
    models.get_model("vit_mu4", 5, rngs=0, image_size=16, dropout=0.2, drop_path=0.2, remat=r)
    for r in (False, True)
  ]
  plain_t, remat_t = (m(x16, train=True, rngs=jax.random.key(1))[0] for m in drops)
  np.testing.assert_allclose(np.asarray(remat_t), np.asarray(plain_t), atol=1e-6)
  assert not np.allclose(np.asarray(plain_t), np.asarray(drops[0](x16)[0]), atol=1e-4)


def test_attention_forms_agree_and_unknown_is_refused():
  x = jnp.asarray(images(48).transpose(0, 2, 3, 1))
  explicit, xla = (tiny("vit_b16_siglip", image_size=48, attention=a) for a in ("explicit", "xla"))
  np.testing.assert_allclose(np.asarray(xla(x)[0]), np.asarray(explicit(x)[0]), atol=1e-5)
  with pytest.raises(ConfigError, match="unknown attention 'flash'"):
    tiny("vit_b16_siglip", attention="flash")


# ----------------------------------------------------------------------------
# Hydra: pruning and merging keep working for every variant with heads.


@pytest.mark.parametrize(
  "name,overrides,size",
  [
    ("vit_g14_dinov2_reg", {"mlp_dim": 40}, 28),  # registers, layer scale, SwiGLU
    ("vit_b16_siglip", {"mlp_dim": 64}, 32),  # attention pooling, no class token
    ("deit_b16_distilled", {"mlp_dim": 64}, 32),  # two tokens, two heads
  ],
)
def test_hydra_prunes_and_merges_the_variants(name, overrides, size):
  model = tiny(name, 10, image_size=size, **{**overrides, "num_heads": 4})
  x = jnp.asarray(images(size, batch=3).transpose(0, 2, 3, 1))
  masks = [np.array([[1, 0, 1, 0], [0, 1, 1, 0]], bool), np.array([[0, 1, 1, 0], [1, 1, 0, 0]])]
  members = [hydra.prune(model, m) for m in masks]
  # What a member checkpoint rebuilds from its meta (train.hydra_member.pruned_spec).
  rebuilt = tiny(name, 10, image_size=size, **overrides, num_heads=2, head_dim=model.head_dim)
  shapes = lambda m: jax.tree.map(lambda v: v.shape, nnx.to_pure_dict(nnx.state(m)))
  assert shapes(rebuilt) == shapes(members[0])
  for mask, member in zip(masks, members):
    assert member.num_heads == 2 and member.num_registers == model.num_registers
    np.testing.assert_allclose(
      np.asarray(member(x)[0]),
      np.asarray(model(x, head_mask=mask.astype(np.float32))[0]),
      atol=1e-5,
    )
  merged = hydra.merge(members)
  _, out = merged(x)
  for j, member in enumerate(members):
    np.testing.assert_allclose(
      np.asarray(out["member_logits"][j]), np.asarray(member(x)[0]), atol=1e-5
    )


# ----------------------------------------------------------------------------
# One-line errors.


def test_a_variant_file_into_another_variant_or_size_is_one_line(tmp_path):
  dinov2 = save(timm_model("vit_small_patch14_dinov2", 28), str(tmp_path / "d.safetensors"))
  plain = save(timm_model("vit_base_patch16_224", 32), str(tmp_path / "p.safetensors"))
  cases = [
    (tiny("vit_s14", image_size=28, mlp_dim=128), dinov2, "holds layer scale .* layer_scale=True"),
    (tiny("vit_s14_dinov2", image_size=28, mlp_dim=128), plain, "lacks layer scale"),
    (tiny("vit_b16_siglip", image_size=32, mlp_dim=128), plain, "lacks attention pooling"),
    (tiny("deit_b16_distilled", image_size=32, mlp_dim=128), plain, "lacks a distillation token"),
    (tiny("vit_s14_dinov2", image_size=28, mlp_dim=128, width=48), dinov2, "mis-shaped"),
  ]
  for model, path, match in cases:
    with pytest.raises(WeightsMismatchError, match=match) as e:
      convert.load_pretrained(model, path)
    assert "\n" not in str(e.value)


def test_hf_dinov2_head_needs_tok_gap_and_class_count_needs_fresh_head(tmp_path):
  config = transformers.Dinov2Config(**SMALL, image_size=28, patch_size=14, num_labels=5)
  transformers.Dinov2ForImageClassification(config).save_pretrained(tmp_path)
  path = str(tmp_path / "model.safetensors")
  with pytest.raises(WeightsMismatchError, match="pool='tok\\+gap'"):
    convert.load_pretrained(tiny("vit_s14_dinov2", image_size=28, mlp_dim=128), path)
  three = tiny("vit_s14_dinov2", 3, image_size=28, mlp_dim=128, pool="tok+gap")
  with pytest.raises(WeightsMismatchError, match="5-class head .* head='fresh'"):
    convert.load_pretrained(three, path)
  assert convert.load_pretrained(three, path, head="fresh")["fresh_head"]
  assert three(jnp.zeros((1, 28, 28, 3)))[0].shape == (1, 3)


# ----------------------------------------------------------------------------
# Names and preprocessing.


def test_names_families_and_preprocessing():
  for name in vit_variants.CONFIGS:
    assert name in models.list_models()
  assert set(data.preprocess.VIT_VARIANT_VIEWS) == set(vit_variants.CONFIGS)
  assert models.family_name("vit_b16_clip") == "vit_clip"
  clip = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
  imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
  expected = {
    "vit_l14_clip": clip,
    "vit_s14_dinov2_reg": imagenet,
    "deit_s16_distilled": imagenet,
    "vit_b16_siglip": ((0.5,) * 3, (0.5,) * 3),
  }
  for name, stats in expected.items():
    family = models.family_name(name)
    for layout in ("timm", "hf"):
      mean, std, _ = data.pretrained_stats(layout, family, "/nonexistent.safetensors", name)
      assert (tuple(mean), tuple(std)) == stats, (name, layout)
    view, _ = data.pretrained_view("/nonexistent.safetensors", "timm", name)
    assert view["interpolation"] == "bicubic"


def main() -> None:
  """Prints docs/vit_variants.md's tables: `.venv/bin/python tests/test_vit_variants.py`."""
  import tempfile
  from pathlib import Path

  print("| variant | layout | max abs diff of logits | largest logit |\n|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    for case in TIMM_CASES:
      _, ours, _, x, expected = timm_pair(case, Path(tmp))
      print(f"| {case} | timm | {max_diff(duojax_logits(ours, x), expected):.1e} |"
            f" {np.abs(expected).max():.2f} |")  # fmt: skip
    for case in HF_CASES:
      _, _, ours, _, x, expected = hf_pair(case, Path(tmp))
      print(f"| {case} | hf | {max_diff(duojax_logits(ours, x), expected):.1e} |"
            f" {np.abs(expected).max():.2f} |")  # fmt: skip
  print("\n| duojax | timm | parameters (both) |\n|---|---|---|")
  for name, timm_name in TIMM_NAMES.items():
    ours = nnx.eval_shape(
      lambda n=name: models.get_model(n, 1000, rngs=common.ParamKeys(nnx.Rngs(0)))
    )
    with torch.device("meta"):
      reference = timm().create_model(timm_name, pretrained=False, num_classes=1000)
    theirs = sum(p.numel() for p in reference.parameters())
    same = "" if count(ours) == theirs else f" (duojax {count(ours):,})"
    print(f"| `{name}` | `{timm_name}` | {theirs:,}{same} |")


if __name__ == "__main__":
  main()
