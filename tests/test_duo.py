"""The fused duo forward, combination modes, soups, and the post-hoc methods."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from duojax import models
from duojax.core import duo, soups
from duojax.eval import methods
from duojax.eval.bank import LogitsBank
from duojax.parallel import sharding


def _members():
  large = models.get_model("resnet8", 10, rngs=nnx.Rngs(0), width=4, image_size=16, in_channels=1)
  side = models.get_model("cnn_xs", 10, rngs=nnx.Rngs(1), image_size=16, in_channels=1)
  # Make BatchNorm statistics non-trivial so eval mode matters.
  large(jax.random.normal(jax.random.key(5), (16, 16, 16, 1)), train=True)
  return large, side


def test_fused_forward_equals_separate_applies():
  large, side = _members()
  images = jax.random.normal(jax.random.key(0), (6, 16, 16, 1))
  graphdefs, states = duo.split_members([large, side])
  fused = duo.make_fused_forward(graphdefs)(states, images)
  assert fused.shape == (2, 6, 10) and fused.dtype == jnp.float32
  np.testing.assert_allclose(fused[0], large(images)[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fused[1], side(images)[0], rtol=1e-5, atol=1e-5)


def test_fused_forward_is_one_xla_program_on_a_mesh():
  large, side = _members()
  mesh = sharding.make_mesh()
  graphdefs, states = duo.split_members([large, side, large])  # m = 3 members, same code
  forward = duo.make_fused_forward(graphdefs, mesh=mesh)
  images = jax.device_put(
    jax.random.normal(jax.random.key(1), (4, 16, 16, 1)), sharding.batch_sharding(mesh)
  )
  out = forward(states, images)
  np.testing.assert_allclose(out[2], out[0])
  hlo = forward.lower(states, images).as_text()
  assert hlo.count("func.func public @main") == 1


def test_combine_modes():
  rng = np.random.default_rng(0)
  stack = rng.normal(size=(2, 50, 5)).astype(np.float32)
  joint, single = np.array([0.7, 0.3]), np.array([1.2, 0.8])
  z, conf = duo.combine_mode(stack, "weighted", joint_weights=joint, single_weights=single)
  np.testing.assert_allclose(z, 0.7 * stack[0] + 0.3 * stack[1], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(conf, jax.nn.softmax(z).max(-1), rtol=1e-6)
  z, conf = duo.combine_mode(stack, "unweighted", joint_weights=joint, single_weights=single)
  np.testing.assert_allclose(z, (1.2 * stack[0] + 0.8 * stack[1]) / 2, rtol=1e-5, atol=1e-6)
  z, conf = duo.combine_mode(stack, "uq_only", joint_weights=joint, single_weights=single)
  np.testing.assert_array_equal(np.argmax(z, -1), np.argmax(stack[0], -1))
  duo_probs = jax.nn.softmax(0.7 * stack[0] + 0.3 * stack[1])
  np.testing.assert_allclose(conf, duo_probs[np.arange(50), np.argmax(stack[0], -1)], rtol=1e-6)
  with pytest.raises(ValueError, match="unknown duo mode"):
    duo.combine_mode(stack, "max")


def test_uniform_soup_averages_every_variable_and_greedy_keeps_helpful_ingredients():
  a = models.get_model("resnet8", 10, rngs=nnx.Rngs(0), width=4, in_channels=1)
  b = models.get_model("resnet8", 10, rngs=nnx.Rngs(1), width=4, in_channels=1)
  soup = soups.average([a, b])
  for x, y, s in zip(
    jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b)), jax.tree.leaves(nnx.state(soup))
  ):
    np.testing.assert_allclose(s, (x + y) / 2, rtol=1e-6)
  # A score that prefers `a` and dislikes any mixture: greedy keeps `a` only.
  score = lambda m: 1.0 if m is a else 0.5 if m is b else 0.0
  greedy, kept = soups.greedy([b, a], score)
  assert kept == [1]
  other = models.get_model("cnn_xs", 10, rngs=nnx.Rngs(0), in_channels=1)
  with pytest.raises(ValueError, match="another architecture"):
    soups.average([a, other])


def _bank(n=400, c=5, seed=0):
  """Val/test logits of a 'large' model, a weaker 'sidekick' and a second large."""
  rng = np.random.default_rng(seed)
  bank = LogitsBank(("large", "sidekick", "large#2"))
  for split in ("val", "test"):
    labels = rng.integers(0, c, n)
    signal = 3.0 * np.eye(c)[labels]
    members = [
      2.5 * (signal + rng.normal(size=(n, c))),
      0.8 * (0.6 * signal + rng.normal(size=(n, c))),
      2.5 * (signal + rng.normal(size=(n, c))),
    ]
    bank.logits[split] = np.stack(members).astype(np.float32)
    bank.labels[split] = labels
  return bank


def test_methods_fit_on_val_and_apply_everywhere():
  bank = _bank()
  method_list = methods.standard_methods(
    large="large", sidekick="sidekick", ensemble=("large", "large#2")
  )
  names = [m.name for m in method_list]
  assert {
    "large",
    "large+TS",
    "duo (weighted)",
    "duo (unweighted)",
    "duo (UQ only)",
    "ensemble m=2",
    "ensemble m=2+TS",
  } <= set(names)
  fitted = {m.name: methods.fit(m, bank) for m in method_list}
  nll = {}
  for m in method_list:
    logits, conf = methods.apply(m, fitted[m.name], bank, "val")
    assert logits.shape == (400, 5) and conf.shape == (400,)
    assert bool(jnp.all((conf >= 0) & (conf <= 1)))
    log_p = jax.nn.log_softmax(logits)
    nll[m.name] = -float(jnp.mean(log_p[np.arange(400), bank.labels["val"]]))
  # On the split it was fit on, the joint fit can only match or beat its special cases.
  assert nll["duo (weighted)"] <= nll["large+TS"] + 1e-6
  assert nll["duo (weighted)"] <= nll["duo (unweighted)"] + 1e-6
  assert nll["large+TS"] <= nll["large"] + 1e-6
  ensemble_logits, _ = methods.apply(method_list[names.index("ensemble m=2")], {}, bank, "test")
  expected = np.log(jax.nn.softmax(bank.logits["test"][[0, 2]], -1).mean(0))
  np.testing.assert_allclose(ensemble_logits, expected, rtol=1e-4, atol=1e-5)
  assert (
    methods.method_flops(
      method_list[names.index("duo (weighted)")], {"large": 10.0, "sidekick": 1.0, "large#2": 10.0}
    )
    == 11.0
  )


def test_mc_dropout_logits_are_log_mean_probabilities():
  from duojax.eval.mc_dropout import mc_dropout_logits

  head = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
  features = {"val": np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)}
  out = mc_dropout_logits(head, features, rate=0.3, num_samples=5, seed=0, chunk=32)
  again = mc_dropout_logits(head, features, rate=0.3, num_samples=5, seed=0, chunk=32)
  other = mc_dropout_logits(head, features, rate=0.3, num_samples=5, seed=1, chunk=32)
  assert out["val"].shape == (50, 4)
  np.testing.assert_allclose(jax.nn.logsumexp(out["val"], -1), 0.0, atol=1e-5)
  np.testing.assert_array_equal(out["val"], again["val"])
  assert not np.allclose(out["val"], other["val"])
  # A vanishing rate keeps every feature: the plain head's log-probabilities.
  tiny = mc_dropout_logits(head, features, rate=1e-7, num_samples=3, chunk=32)
  np.testing.assert_allclose(tiny["val"], jax.nn.log_softmax(head(features["val"])), atol=1e-5)
  with pytest.raises(ValueError, match="rate"):
    mc_dropout_logits(head, features, rate=1.0, num_samples=3)
