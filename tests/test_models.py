"""Tests for the model zoo: parameter counts, forward semantics, errors.

Models are tiny so that the whole file runs in well under a minute on CPU;
eager NNX construction compiles one small XLA program per parameter shape,
so the fixtures below build each tiny model once per module.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from duojax import models
from duojax.models import resnet, vit
from duojax.models.common import max_pool_2x2


def num_params(model) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract_model(name, num_classes=1000, **overrides):
  return nnx.eval_shape(lambda: models.get_model(name, num_classes, rngs=nnx.Rngs(0), **overrides))


# --------------------------------------------------------------------------
# Parameter counts (torchvision / timm), without allocating anything.


@pytest.mark.parametrize(
  "name, expected",
  [
    ("resnet18", 11_689_512),
    ("resnet34", 21_797_672),
    ("resnet50", 25_557_032),
    ("vit_ti16", 5_717_416),
    ("vit_s16", 22_050_664),
    ("vit_b16", 86_567_656),
  ],
)
def test_param_count(name, expected):
  model = abstract_model(name)
  leaves = jax.tree.leaves(nnx.state(model))
  assert all(isinstance(p, jax.ShapeDtypeStruct) for p in leaves)
  assert num_params(model) == expected


def test_param_count_deep_resnets():
  """resnet101/152 = resnet50 plus identity Bottlenecks in stages 2 and 3.

  Tracing the full networks costs ~10 s on CPU (nnx.Rngs updates inside a
  trace scale with the trace length), so the extra blocks are counted alone.
  """

  def block(in_ch, ch):
    return num_params(
      nnx.eval_shape(lambda: resnet.Bottleneck(in_ch, ch, 1, dtype=jnp.float32, rngs=nnx.Rngs(0)))
    )

  base = resnet.CONFIGS["resnet50"]
  extra_block = {1: block(512, 128), 2: block(1024, 256)}
  resnet50 = 25_557_032
  for name, expected in [("resnet101", 44_549_160), ("resnet152", 60_192_808)]:
    kind, stages, width, stem = resnet.CONFIGS[name]
    assert (kind, width, stem) == (base[0], base[2], base[3])
    assert (stages[0], stages[3]) == (base[1][0], base[1][3])
    extra = sum((stages[i] - base[1][i]) * extra_block[i] for i in (1, 2))
    assert resnet50 + extra == expected


def test_param_count_cnn_and_params_stay_float32():
  # 3*3*1*16+16 + 3*3*16*32+32 + 7*7*32*64+64 + 64*10+10
  cnn = abstract_model("cnn_s", 10, image_size=28, in_channels=1)
  assert num_params(cnn) == 105_866
  half = abstract_model("vit_mu4", 10, image_size=16, dtype="bfloat16")
  dtypes = {p.dtype for p in jax.tree.leaves(nnx.state(half))}
  assert dtypes == {jnp.dtype(jnp.float32)}


# --------------------------------------------------------------------------
# Tiny instances of each family.

# key -> (name, overrides, per-image input shape)
TINY = {
  "resnet8": ("resnet8", dict(width=4, in_channels=1), (16, 16, 1)),
  "resnet18": ("resnet18", dict(width=4), (32, 32, 3)),
  "vit_tok": ("vit_mu4", dict(image_size=16), (16, 16, 3)),
  "vit_gap": ("vit_mu4", dict(image_size=16, pool="gap"), (16, 16, 3)),
  "cnn_xs": ("cnn_xs", dict(image_size=28, in_channels=1), (28, 28, 1)),
}
NUM_CLASSES = 5
BATCH = 4


def make(key, **extra):
  name, overrides, _ = TINY[key]
  return models.get_model(name, NUM_CLASSES, rngs=nnx.Rngs(0), **{**overrides, **extra})


def images(key, seed=0):
  shape = (BATCH, *TINY[key][2])
  return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


@pytest.fixture(scope="module")
def tiny():
  return {k: make(k) for k in TINY}


@functools.partial(jax.jit, static_argnames=("graphdef", "train"))
def _apply(graphdef, state, x, key, train):
  model = nnx.merge(graphdef, state)
  rngs = None if key is None else nnx.Rngs(dropout=key)
  logits, out = model(x, train=train, rngs=rngs)
  return logits, out, nnx.state(model)


def jit_apply(model, x, key=None, train=False):
  """Functional jitted call: (logits, out, new_state); `model` is untouched.

  The graphdef is a static argument, so models of equal structure share one
  compiled program across tests.
  """
  graphdef, state = nnx.split(model)
  return _apply(graphdef, state, x, key, train)


@pytest.mark.parametrize("key", list(TINY))
def test_forward_shapes(tiny, key):
  model = tiny[key]
  x = images(key)
  assert model.name == TINY[key][0]
  assert model.input_shape[-1] == x.shape[-1]
  logits, out, _ = jit_apply(model, x)
  assert logits.shape == (BATCH, NUM_CLASSES)
  assert logits.dtype == jnp.float32
  assert out["pre_logits"].shape == (BATCH, model.num_features)
  assert np.all(np.isfinite(logits))
  assert np.all(np.isfinite(out["pre_logits"]))


@pytest.mark.parametrize("key", ["resnet8", "vit_tok", "cnn_xs"])
def test_jit_matches_eager(tiny, key):
  x = images(key)
  logits, out = tiny[key](x)
  jit_logits, jit_out, _ = jit_apply(tiny[key], x)
  np.testing.assert_allclose(jit_logits, logits, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jit_out["pre_logits"], out["pre_logits"], rtol=1e-5, atol=1e-5)


def test_train_updates_batch_stats_only_in_train_mode(tiny):
  model, x = tiny["resnet8"], images("resnet8")
  state = nnx.state(model)
  assert jax.tree.leaves(nnx.state(model, nnx.BatchStat))

  def changed(new_state, kind):
    old = jax.tree.leaves(nnx.filter_state(state, kind))
    new = jax.tree.leaves(nnx.filter_state(new_state, kind))
    return [not np.array_equal(a, b) for a, b in zip(old, new)]

  eval_logits, _, eval_state = jit_apply(model, x, train=False)
  assert not any(changed(eval_state, nnx.BatchStat))
  train_logits, _, train_state = jit_apply(model, x, train=True)
  assert all(changed(train_state, nnx.BatchStat))
  assert not any(changed(train_state, nnx.Param))
  assert np.all(np.isfinite(train_logits))
  # Training mode normalises with batch statistics, so outputs differ.
  assert not np.allclose(train_logits, eval_logits)


@pytest.mark.parametrize("key", ["resnet8", "vit_tok", "cnn_xs"])
def test_bfloat16_compute_close_to_float32(tiny, key):
  half = make(key, dtype="bfloat16")
  # Same seed, same float32 parameters: only the compute dtype differs.
  for a, b in zip(
    jax.tree.leaves(nnx.state(tiny[key], nnx.Param)), jax.tree.leaves(nnx.state(half, nnx.Param))
  ):
    assert b.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
  x = images(key)
  ref, ref_out, _ = jit_apply(tiny[key], x)
  logits, out, _ = jit_apply(half, x.astype(jnp.bfloat16))
  assert logits.dtype == jnp.float32
  assert out["pre_logits"].dtype == jnp.float32
  scale = float(np.max(np.abs(ref_out["pre_logits"]))) + 1e-6
  np.testing.assert_allclose(out["pre_logits"], ref_out["pre_logits"], atol=0.05 * scale)
  np.testing.assert_allclose(logits, ref, atol=0.05 * scale)
  if key.startswith("resnet"):  # running statistics stay float32
    graphdef, state = nnx.split(half)
    _, _, new_state = jax.eval_shape(
      lambda s: _apply(graphdef, s, x.astype(jnp.bfloat16), None, True), state
    )
    for s in jax.tree.leaves(nnx.filter_state(new_state, nnx.BatchStat)):
      assert s.dtype == jnp.float32


# --------------------------------------------------------------------------
# Dropout and stochastic depth: stateless, driven by call-time rngs.


@pytest.fixture(scope="module")
def vit_dropout():
  return make("vit_tok", dropout=0.2, drop_path=0.2)


def test_dropout_depends_only_on_key(vit_dropout, tiny):
  x = images("vit_tok")
  pre = lambda key: jit_apply(vit_dropout, x, key, train=True)[1]["pre_logits"]
  a = pre(jax.random.key(1))
  np.testing.assert_array_equal(a, pre(jax.random.key(1)))
  assert not np.allclose(a, pre(jax.random.key(2)))
  # Same seed, same parameters: without masks this is the plain model.
  deterministic = jit_apply(tiny["vit_tok"], x)[1]["pre_logits"]
  assert not np.allclose(a, deterministic)


def test_dropout_without_rngs_raises(vit_dropout, tiny):
  with pytest.raises(ValueError, match="needs rngs"):
    vit_dropout(images("vit_tok"), train=True, rngs=None)
  # Without stochastic layers, training mode needs no randomness (traced
  # only: the check happens at trace time).
  jax.eval_shape(lambda m, x: m(x, train=True, rngs=None), tiny["vit_tok"], images("vit_tok"))


@pytest.mark.parametrize("key", list(TINY) + ["vit_dropout"])
def test_state_holds_only_params_and_batch_stats(tiny, vit_dropout, key):
  model = vit_dropout if key == "vit_dropout" else tiny[key]
  _, params, stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  assert jax.tree.leaves(params)
  assert jax.tree.leaves(rest) == []
  has_bn = key.startswith("resnet")
  assert bool(jax.tree.leaves(stats)) == has_bn


# --------------------------------------------------------------------------
# Errors: one clear ValueError each.


def test_unknown_name_and_override():
  with pytest.raises(ValueError, match="unknown model 'resnet19'; known models: .*resnet18"):
    models.get_model("resnet19", rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="unknown override 'foo' for resnet18; valid: .*width"):
    models.get_model("resnet18", rngs=nnx.Rngs(0), foo=1)
  with pytest.raises(ValueError, match="unknown override 'width' for cnn_s"):
    models.get_model("cnn_s", rngs=nnx.Rngs(0), width=3)


def test_every_listed_name_resolves():
  names = models.list_models()
  assert {"resnet18", "resnet20", "vit_b16", "vit_mu4", "cnn_s"} <= set(names)
  for name in names:
    # Unknown overrides are rejected before anything is built, so this
    # cheaply proves that `name` resolves to a family.
    with pytest.raises(ValueError, match=f"unknown override 'bogus' for {name}"):
      models.get_model(name, rngs=nnx.Rngs(0), bogus=1)


def test_bad_config_values():
  with pytest.raises(
    ValueError,
    match="patch size 5 does not divide image "
    r"size \(16, 16\)",
  ):
    models.get_model("vit_mu5", rngs=nnx.Rngs(0), image_size=16)
  with pytest.raises(ValueError, match="unknown pool 'cls'"):
    models.get_model("vit_mu4", rngs=nnx.Rngs(0), pool="cls")
  with pytest.raises(ValueError, match="unknown stem 'big'"):
    models.get_model("resnet18", rngs=nnx.Rngs(0), stem="big")
  with pytest.raises(ValueError, match="dtype must be a float dtype"):
    models.get_model("resnet18", rngs=nnx.Rngs(0), dtype="int8")
  with pytest.raises(ValueError, match="num_heads 3 does not divide width 32"):
    models.get_model("vit_mu4", rngs=nnx.Rngs(0), num_heads=3)


def test_wrong_inputs_raise(tiny):
  with pytest.raises(
    ValueError, match=re.escape("resnet8 expects images of shape (H, W, 1), got (16, 16, 3)")
  ):
    tiny["resnet8"](jnp.zeros((2, 16, 16, 3)))
  with pytest.raises(
    ValueError,
    match="resnet18 expects images .* batched "
    r"as \[B, H, W, C\], got an array of shape \(32, 32, 3\)",
  ):
    tiny["resnet18"](jnp.zeros((32, 32, 3)))
  with pytest.raises(
    ValueError, match=re.escape("vit_mu4 expects images of shape (16, 16, 3), got (32, 32, 3)")
  ):
    tiny["vit_tok"](jnp.zeros((2, 32, 32, 3)))
  with pytest.raises(
    ValueError, match=re.escape("cnn_xs expects images of shape (28, 28, 1), got (32, 32, 1)")
  ):
    tiny["cnn_xs"](jnp.zeros((2, 32, 32, 1)))
  with pytest.raises(ValueError, match="expects float images"):
    tiny["cnn_xs"](jnp.zeros((2, 28, 28, 1), jnp.uint8))


def test_zero_init_residual():
  model = models.get_model("resnet8", rngs=nnx.Rngs(0), width=4, zero_init_residual=True)
  for stage in model.stages:
    for block in stage:
      assert not np.any(block.bn2.scale[...])  # each block starts as identity
      assert np.all(block.bn1.scale[...] == 1)


def test_input_shape_bookkeeping(tiny):
  assert tiny["resnet8"].input_shape == (None, None, 1)
  assert tiny["vit_gap"].input_shape == (16, 16, 3)
  assert tiny["cnn_xs"].input_shape == (28, 28, 1)
  # ResNets pool globally: any resolution works.
  logits, _, _ = jit_apply(tiny["resnet8"], jnp.ones((1, 12, 20, 1)))
  assert logits.shape == (1, NUM_CLASSES)


# --------------------------------------------------------------------------
# Reference checks against straightforward numpy re-implementations.


def np_conv(x, w, stride, pad):
  """NHWC cross-correlation with symmetric zero padding (torch semantics)."""
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  kh, kw = w.shape[:2]
  ho = (x.shape[1] - kh) // stride + 1
  wo = (x.shape[2] - kw) // stride + 1
  y = np.zeros((x.shape[0], ho, wo, w.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      y += x[:, i : i + stride * ho : stride, j : j + stride * wo : stride] @ w[i, j]
  return y


def np_bn(x, bn):
  v = lambda a: np.asarray(a[...], np.float64)
  return (x - v(bn.mean)) / np.sqrt(v(bn.var) + 1e-5) * v(bn.scale) + v(bn.bias)


def np_block(x, block):
  relu = lambda a: np.maximum(a, 0)
  k = lambda conv: np.asarray(conv.kernel[...], np.float64)
  stride = block.conv2.strides if isinstance(block, resnet.Bottleneck) else block.conv1.strides
  if isinstance(block, resnet.Bottleneck):
    y = relu(np_bn(np_conv(x, k(block.conv1), 1, 0), block.bn1))
    y = relu(np_bn(np_conv(y, k(block.conv2), stride, 1), block.bn2))
    y = np_bn(np_conv(y, k(block.conv3), 1, 0), block.bn3)
  else:
    y = relu(np_bn(np_conv(x, k(block.conv1), stride, 1), block.bn1))
    y = np_bn(np_conv(y, k(block.conv2), 1, 1), block.bn2)
  skip = x
  if block.shortcut is not None:
    skip = np_bn(np_conv(x, k(block.shortcut.conv), stride, 0), block.shortcut.bn)
  return relu(y + skip)


def np_max_pool_3x3_s2_p1(x):
  x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  ho, wo = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  return np.max(
    [x[:, i : i + 2 * ho : 2, j : j + 2 * wo : 2] for i in range(3) for j in range(3)], axis=0
  )


def np_resnet(x, model):
  kernel = np.asarray(model.stem_conv.kernel[...], np.float64)
  if model.stem == "imagenet":  # 7x7/2 conv, pad 3, then 3x3/2 max pool
    y = np.maximum(np_bn(np_conv(x, kernel, 2, 3), model.stem_bn), 0)
    y = np_max_pool_3x3_s2_p1(y)
  else:
    y = np.maximum(np_bn(np_conv(x, kernel, 1, 1), model.stem_bn), 0)
  for stage in model.stages:
    for block in stage:
      y = np_block(y, block)
  pre = y.mean(axis=(1, 2))
  head = model.head
  return pre @ np.asarray(head.kernel[...]) + np.asarray(head.bias[...])


def randomize(model, seed):
  """Random params and running stats, so that BN is not the identity."""
  rng = np.random.default_rng(seed)

  def draw(a):
    if a.ndim == 1:  # BN/LN scales, biases and running stats
      return rng.uniform(0.5, 1.5, a.shape)
    fan_in = np.prod(a.shape[:-1])  # keeps activations O(1) through depth
    return rng.normal(0, 1 / np.sqrt(fan_in), a.shape)

  nnx.update(model, jax.tree.map(lambda a: jnp.asarray(draw(a), jnp.float32), nnx.state(model)))


# Even input sizes: there 'SAME' padding of a stride-2 conv or pool would be
# (0, 1) where torch pads (1, 1), so these catch any padding mismatch.
@pytest.mark.parametrize("key", ["resnet8", "resnet18"])
def test_basic_resnets_match_numpy(tiny, key):
  model = nnx.clone(tiny[key])
  randomize(model, seed=1)
  x = images(key)
  expected = np_resnet(np.asarray(x, np.float64), model)
  logits, _, _ = jit_apply(model, x)
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_bottleneck_resnet_matches_numpy():
  model = resnet.ResNet((1, 1), "bottleneck", 3, width=2, in_channels=2, rngs=nnx.Rngs(0))
  randomize(model, seed=2)
  x = np.random.default_rng(3).normal(size=(2, 16, 16, 2))
  logits, _, _ = jit_apply(model, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(logits, np_resnet(x, model), rtol=1e-4, atol=1e-4)


def test_attention_matches_numpy_and_keeps_heads():
  width, heads, head_dim = 8, 2, 4
  attn = vit.SelfAttention(width, heads, dtype=jnp.float32, rngs=nnx.Rngs(0))
  assert attn.query.kernel.shape == (width, heads, head_dim)
  assert attn.out.kernel.shape == (heads, head_dim, width)
  randomize(attn, seed=5)
  x = np.random.default_rng(6).normal(size=(2, 5, width))
  p = lambda a: np.asarray(a[...], np.float64)
  q, k, v = (
    np.einsum("btd,dhe->bthe", x, p(m.kernel)) + p(m.bias)
    for m in (attn.query, attn.key, attn.value)
  )
  out = np.zeros((2, 5, width))
  for h in range(heads):  # one head at a time, as head pruning sees them
    s = q[:, :, h] @ k[:, :, h].transpose(0, 2, 1) / np.sqrt(head_dim)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out += (w @ v[:, :, h]) @ p(attn.out.kernel)[h]
  out += p(attn.out.bias)
  y = attn(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(y, out, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet8", "cnn_xs"])
def test_head_dropout_is_stateless_and_only_in_training(name):
  model = models.get_model(name, 10, rngs=nnx.Rngs(0), image_size=16, in_channels=1, dropout=0.5)
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
  first = model(x, train=True, rngs=nnx.Rngs(dropout=1))[0]
  again = model(x, train=True, rngs=nnx.Rngs(dropout=1))[0]
  other = model(x, train=True, rngs=nnx.Rngs(dropout=2))[0]
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)
  logits, out = model(x)
  # Eval mode: no dropout, so the head sees the pre-logits unchanged.
  np.testing.assert_allclose(logits, model.head(out["pre_logits"]), rtol=1e-6)
  with pytest.raises(ValueError, match="needs rngs"):
    model(x, train=True)
  with pytest.raises(ValueError, match="dropout must be in"):
    models.get_model(name, 10, rngs=nnx.Rngs(0), image_size=16, in_channels=1, dropout=1.0)


def test_gelu_erf_matches_exact_gelu():
  x = jnp.linspace(-12.0, 12.0, 20001, dtype=jnp.float32)
  ours = np.asarray(vit._gelu_erf(x), np.float64)
  xs = np.asarray(x, np.float64)
  exact = xs * 0.5 * scipy.special.erfc(-xs / np.sqrt(2.0))
  np.testing.assert_allclose(ours, exact, rtol=1e-6, atol=2e-6)
  np.testing.assert_allclose(ours, np.asarray(jax.nn.gelu(x, approximate=False)), atol=2e-6)


@pytest.mark.parametrize("shape", [(2, 8, 6, 3), (3, 7, 5, 4), (1, 2, 2, 1)])
def test_max_pool_2x2_matches_the_windowed_pool(shape):
  """Same values as nnx.max_pool for even and odd sizes (floor), and the same
  gradient where no window has a tie: all of it on each window's maximum."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
  windowed = lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(max_pool_2x2(x), windowed(x))
  cot = jnp.asarray(np.random.default_rng(1).standard_normal(windowed(x).shape), jnp.float32)
  grad = lambda f: jax.vjp(f, x)[1](cot)[0]
  np.testing.assert_array_equal(grad(max_pool_2x2), grad(windowed))
  # numpy reference: the cotangent lands on each window's argmax, zeros elsewhere.
  ref = np.zeros(shape, np.float32)
  xs = np.asarray(x)
  for b, i, j, c in np.ndindex(cot.shape):
    window = xs[b, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, c]
    di, dj = np.unravel_index(np.argmax(window), (2, 2))
    ref[b, 2 * i + di, 2 * j + dj, c] = cot[b, i, j, c]
  np.testing.assert_array_equal(grad(max_pool_2x2), ref)


def test_max_pool_2x2_shares_the_gradient_of_ties():
  x = jnp.ones((1, 2, 2, 1), jnp.float32)
  grad = jax.grad(lambda x: max_pool_2x2(x).sum())(x)
  np.testing.assert_array_equal(grad, np.full((1, 2, 2, 1), 0.25, np.float32))
