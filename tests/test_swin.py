"""Swin Transformer V2: each library's parameter counts (full sizes, shapes only) and
torchvision's FLOPs, and the logits of the real torchvision, timm and Hugging Face
models through their files (random weights, small widths), at their sizes and others."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from flax import nnx
from reference_libs import timm, torchvision_models
from torch_reference import TOLERANCE, images, randomize, save, torch_logits

from duojax import convert, hydra, models
from duojax.errors import ConfigError, InputError, WeightsMismatchError
from duojax.models import functional, swin, swin_blocks

# torchvision's model table: parameters and GFLOPS (multiply-adds) at 256 px.
TORCHVISION = {
  "swin_v2_t": (28_351_570, 5.94),
  "swin_v2_s": (49_737_442, 11.546),
  "swin_v2_b": (87_930_848, 20.325),
}
# timm's names and parameter counts (Hugging Face's Swinv2ForImageClassification: the same).
TIMM = {
  "swin_v2_t": ("swinv2_tiny_window8_256", 28_347_154),
  "swin_v2_s": ("swinv2_small_window8_256", 49_728_418),
  "swin_v2_b": ("swinv2_base_window8_256", 87_918_816),
  "swin_v2_t_w16": ("swinv2_tiny_window16_256", 28_347_154),
  "swin_v2_s_w16": ("swinv2_small_window16_256", 49_728_418),
  "swin_v2_b_w16": ("swinv2_base_window16_256", 87_918_816),
}
EMBED, DEPTHS, HEADS, WINDOW, SIZE = 16, (2, 2, 2), (2, 4, 8), 4, 64


def count(model) -> int:
  return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def randomize_swin(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """`randomize`, then what fresh Swin weights leave near-constant: the position-bias
  MLP (its bias would be ≈ 8 everywhere, hiding a misplaced index), the per-head
  logit scales (one head above the clamp at log 100) and every bias (torchvision's
  key third included, which its forward ignores); larger head weights."""
  randomize(module, seed)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in module.named_parameters():
      rand = torch.randn(p.shape, generator=gen)
      if "cpb_mlp" in name or "continuous_position_bias_mlp" in name:
        p.copy_(rand * (1.0 if name.endswith("0.weight") else 0.3))
      elif name.endswith("logit_scale"):
        p.copy_(math.log(10) + rand)
        p.view(-1)[0] = math.log(300)
      elif name.endswith("bias") and p.ndim == 1:
        p.copy_(0.1 * rand)
      elif name in ("head.weight", "head.fc.weight", "classifier.weight"):
        p.copy_(0.3 * rand)
  return module


def small(num_classes=5, **overrides):
  kwargs = dict(embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=WINDOW)
  return models.get_model("swin_v2_t", num_classes, rngs=1, **{**kwargs, **overrides})


def tv_reference(num_classes=5, window=WINDOW, depths=DEPTHS, seed=0):
  tv = torchvision_models().swin_transformer
  model = tv.SwinTransformer(
    [4, 4], EMBED, list(depths), list(HEADS), [window, window], stochastic_depth_prob=0.0,
    num_classes=num_classes, block=tv.SwinTransformerBlockV2, downsample_layer=tv.PatchMergingV2,
  )  # fmt: skip
  return randomize_swin(model, seed)


def timm_reference(size=SIZE, window=WINDOW, pretrained=0, seed=0):
  model = timm().create_model(
    "swinv2_tiny_window8_256", pretrained=False, embed_dim=EMBED, depths=DEPTHS,
    num_heads=HEADS, window_size=window, img_size=size, num_classes=5, drop_path_rate=0.0,
    pretrained_window_sizes=(pretrained,) * len(DEPTHS),
  )  # fmt: skip
  return randomize_swin(model, seed)


def hf_reference(size=SIZE, window=WINDOW, pretrained=0, seed=0):
  config = transformers.Swinv2Config(
    image_size=size, embed_dim=EMBED, depths=list(DEPTHS), num_heads=list(HEADS),
    window_size=window, num_labels=5, drop_path_rate=0.0,
    pretrained_window_sizes=[pretrained] * len(DEPTHS),
  )  # fmt: skip
  return randomize_swin(transformers.Swinv2ForImageClassification(config), seed)


_forward = nnx.jit(lambda model, x: model(x)[0])


def duojax_logits(model, x: np.ndarray) -> np.ndarray:
  """torch_reference's, jitted: eager, each of a Swin's many small ops compiles alone."""
  return np.asarray(_forward(model, jnp.asarray(x.transpose(0, 2, 3, 1))))


def assert_same(model, reference, size):
  x = images(size)
  np.testing.assert_allclose(
    duojax_logits(model, x), torch_logits(reference, x), atol=TOLERANCE, rtol=TOLERANCE
  )


def same_logits(reference, model, tmp_path, *, layout: str, image_size: int) -> None:
  """torch_reference's check, jitted: load the file, compare, export, load strictly back."""
  info = convert.load_pretrained(model, save(reference, str(tmp_path / "model.safetensors")))
  assert info["layout"] == layout
  assert_same(model, reference, image_size)
  out = str(tmp_path / "export.safetensors")
  convert.export_pretrained(model, out, layout)
  reference.load_state_dict(safetensors.torch.load_file(out), strict=True)
  assert_same(model, reference, image_size)


def test_parameter_counts_are_each_librarys():
  tv = torchvision_models().swin_transformer
  for name, (params, _) in TORCHVISION.items():
    model = nnx.eval_shape(lambda name=name: models.get_model(name, 1000, rngs=0))
    with torch.device("meta"):
      reference = getattr(tv, name)()
    assert count(model) == sum(p.numel() for p in reference.parameters()) == params, name
  for name, (timm_name, params) in TIMM.items():
    # The torchvision names hold the key bias; key_bias=False is timm's layout.
    overrides = {"key_bias": False} if name in TORCHVISION else {}
    build = lambda name=name, overrides=overrides: models.get_model(name, 1000, rngs=0, **overrides)
    model = nnx.eval_shape(build)
    assert count(model) == params, name
    assert model.window_size == int(timm_name.split("window")[1].split("_")[0])
    if name in TORCHVISION:  # (the window does not change the parameters)
      with torch.device("meta"):
        reference = timm().create_model(timm_name, pretrained=False)
      assert sum(p.numel() for p in reference.parameters()) == params, timm_name
  config = transformers.Swinv2Config(
    image_size=256,
    embed_dim=96,
    depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24],
    window_size=8,
    num_labels=1000,
  )
  with torch.device("meta"):
    reference = transformers.Swinv2ForImageClassification(config)
  assert sum(p.numel() for p in reference.parameters()) == TIMM["swin_v2_t"][1]


def test_flops_equal_torchvisions_table():
  for name, (_, gmacs) in TORCHVISION.items():
    model = nnx.eval_shape(lambda name=name: models.get_model(name, 1000, rngs=0))
    flops = functional.flops_per_image(*functional.split_model(model), (256, 256, 3))
    assert flops / 2 == pytest.approx(gmacs * 1e9, rel=0.005), name


def test_torchvision_file_gives_torchvisions_logits_and_exports_back(tmp_path):
  reference = tv_reference()
  same_logits(reference, small(), tmp_path, layout="torchvision", image_size=SIZE)
  # Without the key bias (timm's count): the same function from the same file.
  model = small(key_bias=False)
  convert.load_pretrained(model, str(tmp_path / "model.safetensors"))
  assert_same(model, reference, SIZE)
  convert.export_pretrained(model, str(tmp_path / "no_key.safetensors"), "torchvision")
  exported = safetensors.torch.load_file(str(tmp_path / "no_key.safetensors"))
  assert exported["features.1.0.attn.relative_position_index"].dtype == torch.int64
  reference.load_state_dict(exported, strict=True)
  assert_same(model, reference, SIZE)


def test_timm_file_gives_timms_logits_and_exports_back(tmp_path):
  reference = timm_reference()
  same_logits(reference, small(key_bias=False), tmp_path, layout="timm", image_size=SIZE)
  # A model with the key bias holds zeros there, and exports timm's tensors alone.
  model = small()
  convert.load_pretrained(model, str(tmp_path / "model.safetensors"))
  assert not np.asarray(model.stages[0].blocks[0].attn.k_bias[...]).any()
  assert_same(model, reference, SIZE)


def test_hugging_face_file_gives_its_logits_and_exports_back(tmp_path):
  reference = hf_reference()
  reference.save_pretrained(tmp_path / "hf")
  for key_bias in (False, True):
    model = small(key_bias=key_bias)
    info = convert.load_pretrained(model, str(tmp_path / "hf" / "model.safetensors"))
    assert info["layout"] == "hf"
    assert_same(model, reference, SIZE)
  convert.export_pretrained(model, str(tmp_path / "export.safetensors"), "hf")
  reference.load_state_dict(safetensors.torch.load_file(str(tmp_path / "export.safetensors")))
  assert_same(model, reference, SIZE)


@pytest.mark.parametrize("size", [40, 128])
def test_other_image_sizes_follow_each_librarys_window_rule(tmp_path, size):
  # 40: feature maps 10, 5, 3: sides above the window but not multiples of it (each
  # library pads its way), odd sides, a map below the window (torchvision pads it,
  # the others shrink the window; Hugging Face decides on 10, 5, 2, its floored
  # grid). 128: 32, 16, 8, all multiples of the window.
  tv = tv_reference()
  tv_file = save(tv, str(tmp_path / "tv.safetensors"))
  tm = timm_reference(size)
  references = {
    "torchvision": (tv, tv_file),
    "timm": (tm, save(tm, str(tmp_path / "t.safetensors"))),
  }
  hf = hf_reference(size)
  hf.save_pretrained(tmp_path / "hf")
  references["hf"] = (hf, str(tmp_path / "hf" / "model.safetensors"))
  for rule, (reference, path) in references.items():
    # Every side a multiple of the window (128): the default rule is all three's.
    model = small(window_rule="fit" if size == 128 else rule)
    convert.load_pretrained(model, path)
    assert_same(model, reference, size)


def test_another_window_than_the_files_matches_timm_and_hugging_face(tmp_path):
  # Weights of window 4 run with window 8 and the coordinates scaled as window 4's
  # (pretrained_window_size), as timm and Hugging Face do; 128 px: maps 32, 16, 8.
  path = save(timm_reference(128), str(tmp_path / "w4.safetensors"))
  reference = timm_reference(128, window=8, pretrained=WINDOW)
  reference.load_state_dict(safetensors.torch.load_file(path))
  model = small(key_bias=False, window_size=8, pretrained_window_size=WINDOW)
  convert.load_pretrained(model, path)
  assert_same(model, reference, 128)
  hf4 = hf_reference(128)
  hf4.save_pretrained(tmp_path / "hf4")
  reference = hf_reference(128, window=8, pretrained=WINDOW)
  reference.load_state_dict(hf4.state_dict())
  model = small(key_bias=False, window_size=8, pretrained_window_size=(WINDOW,) * len(DEPTHS))
  convert.load_pretrained(model, str(tmp_path / "hf4" / "model.safetensors"))
  assert_same(model, reference, 128)
  # Without pretrained_window_size the coordinates are scaled as window 8's own.
  table = swin_blocks.relative_coords_table
  assert not np.allclose(table(8, 8), table(8, 8, (WINDOW, WINDOW)))


def one_line(error_type, pattern, fn, *args, **kwargs):
  with pytest.raises(error_type, match=pattern) as e:
    fn(*args, **kwargs)
  assert "\n" not in str(e.value)


def test_one_line_errors_for_another_family_size_class_count_or_window(tmp_path):
  path = save(tv_reference(), str(tmp_path / "swin.safetensors"))
  one_line(WeightsMismatchError, "has a 5-class head.*head='fresh'", convert.load_pretrained,
           small(7), path)  # fmt: skip
  assert convert.load_pretrained(small(7), path, head="fresh")["fresh_head"]
  one_line(WeightsMismatchError, "does not fit swin_v2_t in layout torchvision",
           convert.load_pretrained, small(depths=(2, 2, 4)), path)  # fmt: skip
  one_line(WeightsMismatchError, "does not fit swin_v2_t.*mis-shaped", convert.load_pretrained,
           small(embed_dim=32), path)  # fmt: skip
  resnet = models.get_model("resnet18", 5, rngs=0, width=8)
  one_line(WeightsMismatchError, "holds a Swin-V2, but the model resnet18 is a ResNet",
           convert.load_pretrained, resnet, path)  # fmt: skip
  vit = models.get_model("vit_mu4", 5, rngs=0, image_size=16)
  timm_path = save(timm_reference(), str(tmp_path / "timm.safetensors"))
  one_line(WeightsMismatchError, "holds a Swin-V2, but the model vit_mu4 is a ViT",
           convert.load_pretrained, vit, timm_path)  # fmt: skip
  other = save(torchvision_models().resnet.resnet18(num_classes=5), str(tmp_path / "r.safetensors"))
  one_line(WeightsMismatchError, "holds a ResNet, but the model swin_v2_t is a Swin-V2",
           convert.load_pretrained, small(), other)  # fmt: skip
  # A window that does not fit: 96 px gives a 6×6 last map for window 4.
  one_line(InputError, re.escape("window 4 does not fit the 6×6 feature map of stage 3 of a "
           "96×96 image"), small(), jnp.zeros((1, 96, 96, 3)))  # fmt: skip
  one_line(InputError, "at least 4×4 pixels", small(), jnp.zeros((1, 3, 8, 3)))
  one_line(ConfigError, "unknown window_rule 'pad'", small, window_rule="pad")
  one_line(ConfigError, "3 heads do not divide the stage width 16", small, num_heads=(3, 4, 8))
  one_line(ConfigError, "pretrained_window_size must be", small, pretrained_window_size=(8, 8))
  one_line(ConfigError, "unknown attention 'flash'", small, attention="flash")


def test_hydra_refuses_swin_in_one_line():
  model = small()
  one_line(InputError, "must be a VisionTransformer, got SwinV2", hydra.mask_gradients, model, [])
  one_line(InputError, "must be a VisionTransformer, got SwinV2", hydra.merge, [model, model])


def test_bfloat16_compute_and_stochastic_depth_in_training():
  # One stage: each scaled cosine attention multiplies the relative error of bfloat16
  # by about its logit scale where attention is near uniform (a fresh model's), so
  # the error grows with depth (11% of the logits after this file's three stages).
  x = jnp.asarray(images(32).transpose(0, 2, 3, 1))
  one_stage = dict(depths=(2,), num_heads=(2,))
  model = small(dtype="bfloat16", drop_path=0.5, **one_stage)
  forward = nnx.jit(lambda m, x: m(x))
  (logits, out), (expected, _) = forward(model, x), forward(small(**one_stage), x)
  assert logits.dtype == out["pre_logits"].dtype == jnp.float32
  assert model.patch_embed.kernel[...].dtype == jnp.float32
  np.testing.assert_allclose(logits, expected, atol=0.05 * np.abs(expected).max())
  with pytest.raises(ConfigError, match="needs rngs"):
    model(x, train=True)
  # XLA's attention (the TPU form) in place of the CPU's explicit one: the same logits.
  xla = small(attention="xla", **one_stage)
  np.testing.assert_allclose(forward(xla, x)[0], expected, rtol=1e-5, atol=1e-6)
  train = nnx.jit(lambda m, x, key: m(x, train=True, rngs=key)[0])
  a, b = train(model, x, jax.random.key(0)), train(model, x, jax.random.key(1))
  assert np.isfinite(np.asarray(a)).all() and not np.allclose(a, b)


def test_remat_gives_the_same_outputs_and_gradients():
  x = jnp.asarray(images(32).transpose(0, 2, 3, 1))
  labels = jnp.array([1, 3])

  def loss_and_grads(model, train):
    def loss(m):
      logits, _ = m(x, train=train, rngs=jax.random.key(0) if train else None)
      return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1).mean()

    return nnx.jit(nnx.value_and_grad(loss))(model)

  # One stage: an unshifted and a shifted block (8×8, window 4), in training with
  # stochastic depth: the same draws from the same key, with and without remat.
  plain = small(depths=(2,), num_heads=(2,), drop_path=0.3)
  remat = small(depths=(2,), num_heads=(2,), drop_path=0.3, remat=True)
  graphdef, state = nnx.split(remat)
  traced = jax.make_jaxpr(lambda state: nnx.merge(graphdef, state)(x)[0])(state)
  assert str(traced).count("remat") == 2  # one per block
  (a, ga), (b, gb) = loss_and_grads(plain, True), loss_and_grads(remat, True)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7), ga, gb)


def test_registry_attributes_and_window_plans():
  assert set(swin.CONFIGS) <= set(models.list_models())
  assert models.family_name("swin_v2_b_w16") == "swin"
  one_line(ConfigError, "unknown override 'patch_size'", models.get_model, "swin_v2_t", 3,
           rngs=0, patch_size=2)  # fmt: skip
  model = nnx.eval_shape(lambda: models.get_model("swin_v2_b", 3, rngs=0))
  assert model.input_shape == (None, None, 3) and model.image_size == (256, 256)
  assert model.num_features == 1024 and model.drop_path_rate == 0.5 and model.window_size == 8
  logits, out = nnx.eval_shape(lambda m: m(jnp.zeros((2, 256, 256, 3))), model)
  assert logits.shape == (2, 3) and out["pre_logits"].shape == (2, 1024)
  # timm's window-16 models at 256 px: stage 3 (16×16) unshifted, stage 4 a window of 8.
  stages = swin.stage_sides((256, 256), 4)
  plans = [swin_blocks.window_plan(s, 16, True, "fit") for s in stages]
  assert [p[0] for p in plans] == [(16, 16), (16, 16), (16, 16), (8, 8)]
  assert [p[1] for p in plans] == [(8, 8), (8, 8), (0, 0), (0, 0)]


# --------------------------------------------------------------------------
# `python tests/test_swin.py`: the tables of docs/swin.md (agreement with each library
# at full size and on this file's small models, parameters, FLOPs).


def _full_size_references():
  """(row, duojax model, its reference, layout): each library's tiny at 256 px."""
  tv = randomize_swin(torchvision_models().swin_transformer.swin_v2_t(num_classes=10))
  yield "torchvision `swin_v2_t`", "swin_v2_t", {}, tv
  for window in (8, 16):
    name = f"swinv2_tiny_window{window}_256"
    reference = randomize_swin(timm().create_model(name, pretrained=False, num_classes=10))
    yield f"timm `{name}`", "swin_v2_t" if window == 8 else "swin_v2_t_w16", {}, reference
  config = transformers.Swinv2Config(
    image_size=256, embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=8,
    num_labels=10,
  )  # fmt: skip
  hf = randomize_swin(transformers.Swinv2ForImageClassification(config))
  yield "Hugging Face `Swinv2ForImageClassification` (tiny, window 8)", "swin_v2_t", {}, hf


def _report() -> None:
  import tempfile
  from pathlib import Path

  torch.manual_seed(0)  # the weights `randomize_swin` leaves at the libraries' init
  tmp = Path(tempfile.mkdtemp())
  print("| file (random weights) | duojax model | image | max abs logit diff | max abs logit |")
  print("|---|---|---|---|---|")
  for row, name, overrides, reference in _full_size_references():
    model = models.get_model(name, 10, rngs=0, **overrides)
    convert.load_pretrained(model, save(reference, str(tmp / "full.safetensors")))
    x = images(256)
    ours, theirs = duojax_logits(model, x), torch_logits(reference, x)
    print(
      f"| {row} | `{name}` | 256 | {np.abs(ours - theirs).max():.1e} | {np.abs(theirs).max():.2f} |"
    )
  tv, tm = tv_reference(), timm_reference(40)
  hf = hf_reference(40)
  hf.save_pretrained(tmp / "hf")
  small_rows = [
    ("torchvision", tv, save(tv, str(tmp / "tv.safetensors")), {"window_rule": "torchvision"}),
    ("timm", tm, save(tm, str(tmp / "t.safetensors")), {"window_rule": "timm"}),
    ("Hugging Face", hf, str(tmp / "hf" / "model.safetensors"), {"window_rule": "hf"}),
  ]
  for library, reference, path, overrides in small_rows:
    model = small(**overrides)
    convert.load_pretrained(model, path)
    x = images(40)
    diff = np.abs(duojax_logits(model, x) - torch_logits(reference, x)).max()
    rule = overrides["window_rule"]
    print(f"| {library}, embed 16, depths 2-2-2, window 4 | `window_rule='{rule}'` | 40 | "
          f"{diff:.1e} | {np.abs(torch_logits(reference, x)).max():.2f} |")  # fmt: skip
  print()
  print("| duojax model | default `key_bias` | parameters, `key_bias=True` | `key_bias=False` | "
        "GMACs at 256 | torchvision's GMACs |")  # fmt: skip
  print("|---|---|---|---|---|---|")
  for name in swin.CONFIGS:
    model = nnx.eval_shape(lambda name=name: models.get_model(name, 1000, rngs=0))
    key_bias = not model.key_bias
    other = nnx.eval_shape(
      lambda name=name, k=key_bias: models.get_model(name, 1000, rngs=0, key_bias=k)
    )
    with_key, without = (count(model), count(other))[:: 1 if model.key_bias else -1]
    flops = functional.flops_per_image(*functional.split_model(model), (256, 256, 3))
    published = TORCHVISION.get(name, (None, None))[1]
    print(f"| `{name}` | {model.key_bias} | {with_key:,} | {without:,} | {flops / 2e9:.3f} | "
          f"{published or '–'} |")  # fmt: skip


if __name__ == "__main__":
  _report()
