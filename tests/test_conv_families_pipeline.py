"""The convolutional families in the rest of duojax: the fused duo forward (any family
as large model or sidekick), pre-logit features for Mahalanobis, MC dropout, bfloat16
compute, FSDP over fake CPU devices, a bundle of a conv pair, the ImageNet recipe's
conv pairs, a fine-tune from a timm file through train.py, and the conv benchmark's
quick mode. Every model is a tiny member of its family (widths of 8-32, 32 px images).
"""

import functools
import importlib.util
import json
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
from duojax import bundle, config_lib, convert, data, models
from duojax.data.preprocess import InputSpec, prepare
from duojax.eval.mc_dropout import mc_dropout_logits
from duojax.models import mnasnet, mobilenet, regnet, resnet, shufflenet
from duojax.models.spec import ModelSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["ant", "bee", "cod", "doe", "elk"]
SIZE = 32

# Tiny members by name + overrides (what a checkpoint or bundle rebuilds them from).
NAMED = {
  "convnext": ("convnext_tiny", {"widths": (8, 16, 24, 32), "depths": (1, 1, 1, 1)}),
  "efficientnet": ("efficientnet_b0", {"width_mult": 0.25, "depth_mult": 0.3}),
  # V2: both block kinds (Fused-MBConv with and without expansion, MBConv with SE).
  "efficientnet_v2": (
    "efficientnet_v2_s",
    {
      "stages": (("fused", 1, 3, 1, 8, 1), ("fused", 4, 3, 2, 16, 1), ("mb", 4, 3, 2, 24, 2)),
      "stem": 8,
      "head_width": 64,
    },
  ),
}


def _v3_blocks():
  """MobileNetV3's block kinds: a ReLU block with SE, a hard-swish one without."""
  return [
    mobilenet.BlockSpec(8, 8, 8, 3, 1, "relu", 8),
    mobilenet.BlockSpec(8, 24, 16, 5, 2, "hard_swish"),
  ]


def _mnasnet_blocks():
  """MNASNet's separable first block, then an expanded 5x5 block with a skip."""
  return [
    mobilenet.BlockSpec(8, 8, 8, 3, 1, "relu"),
    mobilenet.BlockSpec(8, 24, 16, 5, 2, "relu"),
    mobilenet.BlockSpec(16, 48, 16, 5, 1, "relu"),
  ]


# Tiny members of the families whose create() takes no width override.
BUILT = {
  # regnet_y: grouped 3x3 convs and SE.
  "regnet_y": lambda rngs, **kw: regnet.RegNet(
    [16, 32], [1, 2], [8, 8], 0.25, 5, stem_width=8, rngs=rngs, **kw
  ),
  "mobilenet_v3": lambda rngs, **kw: mobilenet.MobileNet(
    _v3_blocks(), 8, 32, 5, hidden=16, arch="v3", rngs=rngs, **{"act": "hard_swish", **kw}
  ),
  "mnasnet": lambda rngs, **kw: mobilenet.MobileNet(
    _mnasnet_blocks(),
    8,
    32,
    5,
    arch="mnasnet",
    act="relu",
    bn_momentum=mnasnet.BN_MOMENTUM,
    rngs=rngs,
    **kw,
  ),
  "shufflenet": lambda rngs, **kw: shufflenet.ShuffleNetV2(
    [1, 2], [8, 16, 32, 32], 5, rngs=rngs, **kw
  ),
  "resnext": lambda rngs, **kw: resnet.ResNet(
    (1, 1, 1, 1), "bottleneck", 5, groups=8, width_per_group=4, width=16, rngs=rngs, **kw
  ),
}
FAMILIES = (*NAMED, *BUILT)


def tiny(family: str, seed: int = 0, **overrides) -> nnx.Module:
  """The family's tiny member, with random BatchNorm statistics (a fresh model's
  running mean 0 and variance 1 would hide a statistic read from the wrong place)."""
  if family in NAMED:
    name, base = NAMED[family]
    model = models.get_model(name, len(CLASSES), rngs=seed, **base, **overrides)
  else:
    model = BUILT[family](nnx.Rngs(seed), **overrides)
  return _random_statistics(model, seed)


def _random_statistics(model, seed):
  rng = np.random.default_rng(seed + 100)
  for _, module in nnx.iter_graph(model):
    if isinstance(module, nnx.BatchNorm):
      n = module.mean.shape
      module.mean[...] = jnp.asarray(0.2 * rng.standard_normal(n), jnp.float32)
      module.var[...] = jnp.asarray(0.5 + rng.uniform(size=n), jnp.float32)
  return model


def _images(n=6, seed=0):
  return np.random.default_rng(seed).normal(size=(n, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def members():
  return {family: tiny(family, seed=i) for i, family in enumerate(FAMILIES)}


@pytest.fixture(scope="module")
def fused(members):
  """Every family in one fused forward, with every member's pre-logit features."""
  forward, states = duojax.fused_forward(list(members.values()), with_features="all")
  logits, features = forward(states, _images())
  return np.asarray(logits), [np.asarray(f) for f in features]


# ----------------------------------------------------------------------------
# The fused forward, features, Mahalanobis, MC dropout, bfloat16.


def test_every_family_runs_in_the_fused_forward(members, fused):
  logits, features = fused
  assert logits.shape == (len(FAMILIES), 6, len(CLASSES)) and logits.dtype == np.float32
  for i, (family, model) in enumerate(members.items()):
    # The features are what the head reads: head(features) is the logits.
    d = model.head.in_features
    assert features[i].shape == (6, d), family
    np.testing.assert_allclose(
      np.asarray(model.head(jnp.asarray(features[i]))), logits[i], rtol=1e-4, atol=1e-5
    )
    assert np.std(logits[i]) > 1e-3, f"{family}: constant logits test nothing"


def test_a_family_is_large_model_or_sidekick_and_the_duo_fits(members, fused):
  """A pair's program in either order gives each member's logits of the all-family
  program, and the large model's features; the duo's weights fit on them."""
  large, sidekick = "efficientnet_v2", "shufflenet"
  order = list(members)
  for a, b in ((large, sidekick), (sidekick, large)):
    forward, states = duojax.fused_forward([members[a], members[b]], with_features=True)
    pair_logits, feats = forward(states, _images())
    np.testing.assert_allclose(pair_logits[0], fused[0][order.index(a)], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pair_logits[1], fused[0][order.index(b)], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats, fused[1][order.index(a)], rtol=1e-4, atol=1e-5)
  rng = np.random.default_rng(0)
  stack = fused[0][[order.index(large), order.index(sidekick)]]
  stack = np.concatenate([stack] * 20, axis=1) + rng.normal(size=(2, 120, 5)).astype(np.float32)
  labels = np.argmax(stack[0] + stack[1], -1)
  duo = duojax.fit_duo(stack, labels)
  assert np.all(np.isfinite(duo.logits(stack)))


def test_pre_logit_features_of_every_family_feed_mahalanobis(fused):
  rng = np.random.default_rng(1)
  for i, family in enumerate(FAMILIES):
    feats = fused[1][i]
    d = feats.shape[1]
    # Training rows: noisy copies of the six images' features, one class each (of 5).
    rows = np.concatenate([feats + 0.01 * rng.normal(size=feats.shape) for _ in range(10)])
    labels = np.tile(np.arange(6) % 5, 10)
    detector = duojax.fit_mahalanobis(rows.astype(np.float32), labels, 5)
    near = duojax.mahalanobis_score(detector, feats)
    far = duojax.mahalanobis_score(detector, feats + 10 * np.std(feats) * np.ones(d, np.float32))
    assert np.all(np.isfinite(near)) and np.all(near > far), family


DROPOUT_FAMILIES = ("efficientnet", "efficientnet_v2", "mobilenet_v3", "mnasnet")


def test_mc_dropout_on_families_with_dropout(members, fused):
  for family in DROPOUT_FAMILIES:
    model = members[family]
    assert model.dropout_rate > 0, family  # the families' torchvision defaults: 0.2 and up
    feats = fused[1][FAMILIES.index(family)]
    logits = mc_dropout_logits(model.head, {"test": feats}, rate=0.2, num_samples=8, chunk=8)
    probs = np.exp(logits["test"])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    # Averaged over masks: not the head's own softmax, but close to it.
    plain = jax.nn.softmax(fused[0][FAMILIES.index(family)])
    assert 0 < np.abs(probs - plain).max() < 0.5, family
  # Training mode draws the family's own dropout (and stochastic depth) from the keys.
  train = nnx.jit(lambda m, x, r: m(x, train=True, rngs=r)[0])
  model = members["efficientnet_v2"]
  a, b = (train(model, _images(), nnx.Rngs(dropout=k)) for k in (1, 2))
  assert not np.allclose(a, b)


def test_bfloat16_compute_keeps_float32_parameters_and_logits(fused):
  bf16 = [tiny(family, seed=i, dtype="bfloat16") for i, family in enumerate(FAMILIES)]
  for family, model in zip(FAMILIES, bf16):
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(p.dtype == jnp.float32 for p in params), family
  forward, states = duojax.fused_forward(bf16)
  z16 = np.asarray(forward(states, _images()))
  assert z16.dtype == np.float32
  for i, family in enumerate(FAMILIES):
    z32 = fused[0][i]
    # bfloat16 keeps 8 bits of mantissa: logits within a few percent of their range.
    assert np.abs(z16[i] - z32).max() < 0.1 * np.abs(z32).max() + 1e-3, family
    assert not np.array_equal(z16[i], z32), f"{family}: dtype had no effect"


# ----------------------------------------------------------------------------
# FSDP over fake CPU devices (a child process: the device count is set before jax starts).

_FSDP_SCRIPT = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    from duojax import config_lib
    from duojax.models import functional
    from duojax.parallel import sharding
    from duojax.train import optim, steps
    sys.path.insert(0, "tests")
    from test_conv_families_pipeline import FAMILIES, tiny

    def max_diff(a, b):
      return max(jax.tree.leaves(jax.tree.map(
          lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))), a, b)))

    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(8, 32, 32, 3)).astype(np.float32),
                "label": rng.integers(0, 5, size=8).astype(np.int32)} for _ in range(2)]
    config = config_lib.base_config()
    config.optimizer, config.lr, config.warmup_steps = "sgd", 0.05, 1
    # Train steps of the depthwise + SE + fused-block family: one device, then FSDP over 4.
    graphdef, params, stats = functional.split_model(tiny("efficientnet_v2"))
    optimizer = optim.make_optimizer(config, 2)
    initial = jax.tree.map(np.array, steps.init_state(params, stats, optimizer))
    total = sum(x.nbytes for x in jax.tree.leaves(initial))
    finals = {}
    for devices, fsdp in ((1, 1), (4, 4)):
      mesh = sharding.make_mesh(devices, fsdp)
      shardings = sharding.state_shardings(initial, mesh, min_elements=0)
      state = jax.device_put(initial, shardings)
      step = steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0,
                                   state_sharding=shardings)
      for batch in batches:
        state, _ = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
        jax.block_until_ready(state)
      print("BYTES", devices, fsdp, sharding.bytes_per_device(state) / total)
      finals[devices] = jax.device_get(state)
    print("TRAIN", max_diff(finals[1], finals[4]))

    # Every family's parameters split over 4 devices; the forward on them is the plain one.
    mesh = sharding.make_mesh(4, 4)
    images = rng.normal(size=(8, 32, 32, 3)).astype(np.float32)
    split = [functional.split_model(tiny(family, seed=i)) for i, family in enumerate(FAMILIES)]
    applies = [functional.make_apply(graphdef) for graphdef, _, _ in split]
    trees = [(params, stats) for _, params, stats in split]
    forward = jax.jit(lambda trees, x: [f(p, s, x)[0] for f, (p, s) in zip(applies, trees)])
    plain = forward(trees, images)
    sharded_trees = jax.device_put(trees, sharding.state_shardings(trees, mesh, min_elements=0))
    sharded = forward(sharded_trees, jax.device_put(images, sharding.batch_sharding(mesh)))
    jax.block_until_ready(sharded)
    for family, tree, a, b in zip(FAMILIES, sharded_trees, plain, sharded):
      share = sharding.bytes_per_device(tree) / sum(x.nbytes for x in jax.tree.leaves(tree))
      print("FORWARD", family, float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), share)
""")


@pytest.mark.slow  # a child process with 4 fake devices; `make test-fast` leaves it out
def test_fsdp_splits_every_family_and_trains_as_one_device():
  result = subprocess.run(
    [sys.executable, "-c", _FSDP_SCRIPT],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [line.split() for line in result.stdout.splitlines()]
  train = next(float(line[1]) for line in lines if line[0] == "TRAIN")
  assert train < 1e-5
  shares = {tuple(line[1:3]): float(line[3]) for line in lines if line[0] == "BYTES"}
  assert shares[("1", "1")] == pytest.approx(1.0) and shares[("4", "4")] < 0.4, shares
  forward = {line[1]: (float(line[2]), float(line[3])) for line in lines if line[0] == "FORWARD"}
  assert set(forward) == set(FAMILIES)
  for family, (diff, share) in forward.items():
    assert diff < 1e-4 and share < 0.45, (family, diff, share)


# ----------------------------------------------------------------------------
# A bundle of a conv pair: written, read back, and its predictions are the duo's.


def test_a_conv_pair_bundles_and_predicts_as_the_fused_duo(tmp_path):
  specs = [
    ModelSpec(*NAMED["convnext"], len(CLASSES), (SIZE, SIZE, 3)),
    ModelSpec(*NAMED["efficientnet"], len(CLASSES), (24, 24, 3)),
  ]
  inputs = [
    InputSpec(SIZE, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "timm convnext", 0.875),
    InputSpec(24, (0.5,) * 3, (0.5,) * 3, "hf efficientnet", 1.0, "bicubic"),
  ]
  members = [
    bundle.BundleMember(_random_statistics(s.build(i), i), s, inp)
    for i, (s, inp) in enumerate(zip(specs, inputs))
  ]
  duo = duojax.Duo(np.array([0.9, 0.4], np.float32), ("large", "sidekick"))
  rng = np.random.default_rng(0)
  confidence = rng.uniform(0.2, 1.0, 100).astype(np.float32)
  path = bundle.write_bundle(
    tmp_path / "duo",
    members,
    duo,
    CLASSES,
    validation=(confidence, rng.uniform(size=100) < confidence),
    platforms=("cpu",),
  )
  loaded = duojax.load_bundle(path)
  assert loaded.image_shape == (SIZE, SIZE, 3)
  images = rng.integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
  out = loaded.predict(images)
  crop = max(m.inputs.crop_fraction for m in members)
  forward, states = duojax.fused_forward(
    [m.model for m in members],
    preprocess=[functools.partial(prepare, spec=m.inputs, source_crop=crop) for m in members],
  )
  stack = np.asarray(forward(states, images))
  assert np.std(stack) > 1e-3
  np.testing.assert_allclose(out["probabilities"], duo.probabilities(stack), atol=1e-5)
  np.testing.assert_array_equal(out["class_index"], duo.predict(stack))


# ----------------------------------------------------------------------------
# configs/imagenet_duo.py: the reference code's conv pairs, and a fine-tune from a timm file.


def _recipe():
  spec = importlib.util.spec_from_file_location(
    "imagenet_duo", os.path.join(ROOT, "configs", "imagenet_duo.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


PAIRS = [
  ("convnext_base", "efficientnet_b0"),
  ("efficientnet_v2_l", "resnet18"),
  ("regnet_x_32gf", "mnasnet1_0"),
]


@pytest.mark.parametrize("large, sidekick", PAIRS)
def test_the_reference_conv_pairs_build_valid_configs(large, sidekick):
  recipe = _recipe()
  for name in (large, sidekick):
    config = recipe.get_config(f"model={name},weights={name}.safetensors,layout=torchvision")
    config_lib.validate(config)
    assert config.model_name == name and config.init_head == "fresh"
    assert config.optimizer == "sgd" and config.weight_decay == 0  # the transfer recipe
    overrides = config_lib.model_overrides(config)
    side = 480 if name == "efficientnet_v2_l" else 224  # the side of the weights
    assert overrides["image_size"] == side
    model = nnx.eval_shape(lambda n=name, o=overrides: models.get_model(n, 10, rngs=0, **o))
    assert model.image_size == (side, side)
    # The library's preprocessing for that name: torchvision's eval transform of it.
    family = models.family_name(name)
    mean, std, source = data.pretrained_stats("torchvision", family, "x", name)
    view, _ = data.pretrained_view(os.path.join(ROOT, "nothing"), "torchvision", name)
    if name == "efficientnet_v2_l":  # the TensorFlow port takes [-1, 1] pixels
      assert mean == std == (0.5, 0.5, 0.5) and view["interpolation"] == "bicubic"
    elif name != "resnet18":
      assert mean == (0.485, 0.456, 0.406) and source == f"torchvision {name} weights"
      assert 0.85 < view["crop_fraction"] <= 1.0
  # From scratch: ConvNeXt takes its AdamW recipe, the other conv families the ResNets'.
  scratch = recipe.get_config(f"model={large}")
  assert scratch.optimizer == ("adamw" if large.startswith("convnext") else "sgd")


def test_the_recipe_reads_tensorflow_padding_from_the_file(tmp_path):
  """A timm `tf_` EfficientNet file (its config.json says so) and a Hugging Face one
  get TensorFlow's padding and eps in the run's model options; torchvision's do not."""
  tiny_v2 = models.get_model("efficientnet_v2_l", 5, rngs=0, **NAMED["efficientnet_v2"][1])
  paths = {}
  for layout in ("timm", "torchvision"):
    paths[layout] = str(tmp_path / layout / "model.safetensors")
    os.makedirs(os.path.dirname(paths[layout]))
    convert.export_pretrained(tiny_v2, paths[layout], layout)
  with open(tmp_path / "timm" / "config.json", "w") as f:
    json.dump({"architecture": "tf_efficientnetv2_l", "num_classes": 5}, f)
  recipe = _recipe()
  timm_config = recipe.get_config(f"model=efficientnet_v2_l,weights={paths['timm']}")
  assert config_lib.model_overrides(timm_config)["padding"] == "same"
  assert config_lib.model_overrides(timm_config)["bn_eps"] == 1e-3
  plain = recipe.get_config(f"model=efficientnet_v2_l,weights={paths['torchvision']}")
  assert "padding" not in config_lib.model_overrides(plain)
  config_lib.validate(timm_config)
  with pytest.raises(config_lib.ConfigError, match="is not a duojax model"):
    recipe.get_config("model=convnext_huge")


@pytest.mark.slow
def test_train_fine_tunes_a_conv_family_from_a_timm_file(tmp_path, learnable_data_dir):
  from reference_libs import timm

  widths, depths = NAMED["convnext"][1]["widths"], NAMED["convnext"][1]["depths"]
  torch_model = timm().create_model(
    "convnext_tiny", pretrained=False, dims=widths, depths=depths, in_chans=1, num_classes=1000
  )
  weights = str(tmp_path / "convnext.safetensors")
  from safetensors.torch import save_file

  save_file({k: v.contiguous() for k, v in torch_model.state_dict().items()}, weights)
  result, workdir = recipe_fine_tune(
    tmp_path,
    learnable_data_dir,
    f"model=convnext_tiny,weights={weights},layout=timm,head=fresh,dataset=fashion_mnist,"
    "test_split=test,size=32,dtype=float32,steps=4,batch_size=32,val_size=100,"
    "eval_batch_size=64,warmup=1",
    f"""
    config.model.widths = {widths!r}
    config.model.depths = {depths!r}
    """,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "initialised from" in result.stdout and "fresh classifier head" in result.stdout
  from duojax.train import checkpoint

  model, _ = checkpoint.load_model(str(workdir))
  assert model.head.out_features == 10
  # The fine-tune started from the file: the stem moved, but only a little.
  ours = convert.flat_state(model)["stem_conv.kernel"]
  theirs = torch_model.stem[0].weight.detach().numpy().transpose(2, 3, 1, 0)
  assert 0 < np.abs(ours - theirs).max() < 0.2 * np.abs(theirs).max()


# ----------------------------------------------------------------------------
# docs/model_names.md: the conv families' published names.


@pytest.mark.parametrize(
  "name, expected",
  [
    ("convnext_tiny.fb_in22k_ft_in1k", ("convnext_tiny", 224)),
    ("efficientnet_b0.ra_in1k", ("efficientnet_b0", 224)),
    ("tf_efficientnet_b2.ns_jft_in1k", ("efficientnet_b2", 260)),
    ("tf_efficientnetv2_l.in21k_ft_in1k", ("efficientnet_v2_l", 480)),
    ("regnety_032.ra_in1k", ("regnet_y_3_2gf", 224)),
    ("regnetx_320.pycls_in1k", ("regnet_x_32gf", 224)),
    ("mobilenetv3_large_100", ("mobilenet_v3_large", 224)),
    ("resnext50_32x4d.a1h_in1k", ("resnext50_32x4d", 224)),
    ("shufflenet_v2_x1_0", ("shufflenet_v2_x1_0", 224)),
    ("facebook/convnext-tiny-224", ("convnext_tiny", 224)),
    ("google/efficientnet-b0", ("efficientnet_b0", 224)),
    ("facebook/regnet-y-032", ("regnet_y_3_2gf", 224)),
    ("google/mobilenet_v2_1.0_224", ("mobilenet_v2", 224)),
    ("facebook/regnet-y-040", None),  # RegNetY-4.0GF: no torchvision size, no duojax model
  ],
)
def test_conv_family_names_map_to_duojax_models(name, expected):
  from duojax.convert import names

  assert names.duojax_name(name) == expected


def test_every_conv_row_names_a_model_of_its_library_layout():
  from duojax.convert import names

  rows = names.conv_rows()
  assert len({(r.library, r.name) for r in rows}) == len(rows)
  listed = {r.model for r in rows}
  for row in rows:
    assert models.family_name(row.model) is not None, row
    if row.library == "torchvision":
      assert row.name == row.model
  # Every conv model of the registry has its torchvision row; the page lists them.
  assert {r.model for r in rows if r.library == "torchvision"} == listed
  page = open(os.path.join(ROOT, "docs", "model_names.md")).read()
  assert all(f"`{r.name}`" in page for r in rows)


# ----------------------------------------------------------------------------
# bench/bench_convnets.py: the alternative conv formulations and the quick run.


@pytest.mark.parametrize(
  "family, form, count",
  [
    ("mobilenet_v3", "shifts", 2),
    ("regnet_y", "einsum", 3),
    ("resnext", "einsum", 3),
  ],
)
def test_the_benchmarks_conv_formulations_give_the_models_logits(family, form, count):
  sys.path.insert(0, os.path.join(ROOT, "bench"))
  import conv_forms

  model, swapped = tiny(family, seed=1), tiny(family, seed=1)
  assert conv_forms.swap(swapped, form) == count
  assert conv_forms.swap(swapped, form) == 0  # nothing left to replace
  z, _ = model(_images(2), train=False)
  z_alt, _ = swapped(_images(2), train=False)
  np.testing.assert_allclose(z_alt, z, rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # the script's quick run, as a subprocess
def test_bench_convnets_quick(tmp_path):
  out = tmp_path / "BENCHMARKS.md"
  result = subprocess.run(
    [
      sys.executable,
      os.path.join(ROOT, "bench", "bench_convnets.py"),
      "--quick",
      "--out",
      str(out),
    ],
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  text = out.read_text()
  assert (
    "<!-- bench:convnets:start -->" in text
    and "Command: `python bench/bench_convnets.py --quick" in text
  )
  assert "| regnet_y_400mf |" in text and "| shufflenet_v2_x0_5 |" in text
  assert "skipped (--quick)" in text and "load average" in text
  # The formulation's logits are the model's (its table's last column).
  row = next(line for line in text.splitlines() if "shifted multiply-adds" in line)
  assert float(row.strip("|").split("|")[-1]) < 1e-4
