"""Head masks, Taylor head importance, pruning and merged Hydra ensembles."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from duojax import hydra, models


def tiny(seed=0, **kw):
  kw = {"image_size": 16, "in_channels": 1, **kw}
  return models.get_model("vit_mu4", 10, rngs=nnx.Rngs(seed), **kw)


@pytest.fixture(scope="module")
def vit4():
  """4 heads of head_dim 8 in each of 2 layers, with a larger head so that
  the mask gradients are well above float32 noise."""
  model = tiny(num_heads=4, width=32)
  model.head.kernel[...] = model.head.kernel[...] * 50.0
  return model


def batch(seed, n=6):
  rng = np.random.default_rng(seed)
  return {
    "image": rng.normal(size=(n, 16, 16, 1)).astype(np.float32),
    "label": rng.integers(0, 10, size=n),
  }


def test_all_ones_mask_equals_no_mask():
  model = tiny()
  x = batch(0)["image"]
  plain = model(x)[0]
  ones = model(x, head_mask=jnp.ones((2, 2)))[0]
  np.testing.assert_array_equal(np.asarray(plain), np.asarray(ones))


def test_masked_head_contributes_nothing():
  model = tiny()
  x = batch(0)["image"]
  mask = np.ones((2, 2), np.float32)
  mask[1, 0] = 0.0
  before = np.asarray(model(x, head_mask=mask)[0])
  attn = model.blocks[1].attn
  for proj in (attn.query, attn.key, attn.value):
    proj.kernel[...] = proj.kernel[...].at[:, 0].add(3.0)
    proj.bias[...] = proj.bias[...].at[0].add(1.0)
  attn.out.kernel[...] = attn.out.kernel[...].at[0].add(3.0)
  after = np.asarray(model(x, head_mask=mask)[0])
  np.testing.assert_allclose(after, before, atol=1e-6)
  # The same edit does change the unmasked model: the test has teeth.
  assert not np.allclose(np.asarray(model(x)[0]), before, atol=1e-3)


def test_head_importance_matches_finite_differences(vit4):
  batches = [batch(1), batch(2)]
  _, grads = hydra.mask_gradients(vit4, batches)
  np.testing.assert_allclose(hydra.head_importance(vit4, batches), np.abs(grads), rtol=1e-6)
  graphdef, state = nnx.split(vit4)

  @jax.jit
  def total(mask):
    m = nnx.merge(graphdef, state)
    loss = 0.0
    for b in batches:
      logits = m(b["image"], head_mask=mask)[0]
      logp = jax.nn.log_softmax(logits)
      loss += -jnp.mean(jnp.take_along_axis(logp, b["label"][:, None], 1))
    return loss

  eps = 1e-2
  fd = np.zeros((2, 4))
  for i in range(2):
    for h in range(4):
      e = np.zeros((2, 4), np.float32)
      e[i, h] = eps
      ones = np.ones((2, 4), np.float32)
      fd[i, h] = (float(total(ones + e)) - float(total(ones - e))) / (2 * eps)
  assert np.abs(grads).max() > 1e-2
  np.testing.assert_allclose(grads, fd, rtol=1e-2, atol=1e-2 * np.abs(grads).max())


def test_select_heads_top_k_per_layer():
  imp = np.array([[0.1, 0.5, 0.3, 0.2], [4.0, 3.0, 2.0, 1.0]])
  np.testing.assert_array_equal(
    hydra.select_heads(imp, 2), [[False, True, True, False], [True, True, False, False]]
  )
  np.testing.assert_array_equal(hydra.select_heads(imp, 0.25).sum(1), [1, 1])
  assert hydra.select_heads(imp, 1.0).all()


def test_prune_equals_masked_original_and_counts_params(vit4):
  x = batch(3)["image"]
  keep = np.array([[True, False, True, False], [False, True, True, False]])
  pruned = hydra.prune(vit4, keep)
  assert pruned.num_heads == 2 and pruned.head_dim == 8
  np.testing.assert_allclose(
    np.asarray(pruned(x)[0]), np.asarray(vit4(x, head_mask=keep)[0]), atol=1e-5, rtol=1e-5
  )
  d, hd = 32, 8
  removed = int((~keep).sum())
  expected = hydra.cost(vit4)["params"] - removed * (3 * (d * hd + hd) + hd * d)
  assert hydra.cost(pruned)["params"] == expected


def test_member_masks_differ_by_sample(vit4):
  samples = [[batch(10 + j)] for j in range(3)]
  masks = hydra.member_masks(vit4, samples, keep=2)
  assert len(masks) == 3
  assert all(m.shape == (2, 4) and (m.sum(1) == 2).all() for m in masks)
  # Each mask comes from its own sample's importance.
  for s, m in zip(samples, masks):
    np.testing.assert_array_equal(m, hydra.select_heads(hydra.head_importance(vit4, s), 2))


def test_merged_members_match_members_alone(vit4):
  x = batch(4)["image"]
  masks = [
    np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool),
    np.array([[0, 1, 1, 0], [1, 0, 0, 1]], bool),
    np.array([[0, 0, 1, 1], [1, 1, 0, 0]], bool),
  ]
  members = [hydra.prune(vit4, m) for m in masks]
  # Stand-in for per-member fine-tuning: members differ beyond their heads.
  # (random, not constant: LayerNorm outputs sum to ~0 over features).
  for j, m in enumerate(members):
    fc1 = m.blocks[0].mlp.fc1.kernel
    fc1[...] = fc1[...] + 0.3 * jax.random.normal(jax.random.key(j), fc1.shape)
  alone = np.stack([np.asarray(m(x)[0]) for m in members])
  ens = hydra.merge(members)
  log_mean, out = jax.jit(lambda e, x: e(x))(ens, x)
  # Batched and single matmuls sum in different orders: float32 rounding of
  # logits of magnitude ~10 reaches ~1e-5 near zero, so the bound is scaled.
  np.testing.assert_allclose(
    np.asarray(out["member_logits"]), alone, atol=1e-5 * np.abs(alone).max(), rtol=1e-5
  )
  probs = jax.nn.softmax(alone, axis=-1).mean(0)
  np.testing.assert_allclose(np.asarray(log_mean), np.log(probs), atol=1e-5, rtol=1e-5)

  avg = hydra.merge(members, mlp="average")
  avg_log_mean, avg_out = avg(x)
  assert avg_out["member_logits"].shape == alone.shape
  assert not np.allclose(np.asarray(avg_log_mean), np.asarray(log_mean), atol=1e-4)
  # Shared MLPs: fewer parameters than the grouped merge.
  assert hydra.cost(avg)["params"] < hydra.cost(ens)["params"]
  c = hydra.cost(ens)
  assert c["params"] == sum(hydra.cost(m)["params"] for m in members)
  assert c["flops"] > 0


def test_bad_inputs_raise(vit4):
  x = batch(0)["image"]
  with pytest.raises(
    ValueError, match=re.escape("head_mask must have shape (2, 4) (depth, num_heads), got (4, 2)")
  ):
    vit4(x, head_mask=jnp.ones((4, 2)))
  imp = np.ones((2, 4))
  for bad in (0.0, 1.5, -0.1):
    with pytest.raises(ValueError, match="keep fraction must be in"):
      hydra.select_heads(imp, bad)
  for bad in (0, 5):
    with pytest.raises(ValueError, match=r"heads must be in \[1, 4\]"):
      hydra.select_heads(imp, bad)
  with pytest.raises(ValueError, match="same number"):
    hydra.prune(vit4, np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool))
  with pytest.raises(ValueError, match="keep_mask must have shape"):
    hydra.prune(vit4, np.ones((2, 3), bool))
  a = hydra.prune(vit4, hydra.select_heads(imp, 2))
  b = hydra.prune(vit4, hydra.select_heads(imp, 3))
  with pytest.raises(ValueError, match="member 1 differs from member 0"):
    hydra.merge([a, b])
  with pytest.raises(ValueError, match="unknown mlp mode"):
    hydra.merge([a, a], mlp="mean")


def test_head_dim_override_and_default_unchanged():
  model = tiny(num_heads=3, head_dim=8)
  assert model.blocks[0].attn.query.kernel.shape == (32, 3, 8)
  assert model.blocks[0].attn.out.kernel.shape == (3, 8, 32)
  assert model(batch(0)["image"])[0].shape == (6, 10)
  default = tiny()
  assert default.head_dim == 16
  assert default.blocks[0].attn.query.kernel.shape == (32, 2, 16)
