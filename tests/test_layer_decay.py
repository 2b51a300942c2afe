"""Layer-wise learning-rate decay: layer indices from parameter paths, and the
updates it scales against the same optimizer run at each layer's own rate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from duojax import config_lib
from duojax.errors import ConfigError
from duojax.models import get_model
from duojax.train import optim
from duojax.train.layer_decay import layer_ids


def _params(name, **overrides):
  model = nnx.eval_shape(lambda: get_model(name, 10, **overrides))
  return nnx.state(model, nnx.Param).to_pure_dict()


def test_vit_layers_are_embeddings_blocks_then_head():
  ids, depth = layer_ids(_params("vit_mu4"))
  assert depth == 2
  assert ids["patch_embed"]["kernel"] == ids["pos_embedding"] == ids["cls_token"] == 0
  assert {ids["blocks"][i]["attn"]["query"]["kernel"] for i in range(2)} == {1, 2}
  assert ids["blocks"][1]["mlp"]["fc2"]["bias"] == 2
  assert ids["norm"]["scale"] == ids["head"]["kernel"] == 3


@pytest.mark.parametrize("name", ["resnet18", "convnext_tiny"])
def test_conv_stages_rank_in_order_with_the_stem_first(name):
  params = _params(name)
  ids, depth = layer_ids(params)
  flat = {jax.tree_util.keystr(p): i for p, i in jax.tree_util.tree_flatten_with_path(ids)[0]}
  assert depth >= 4 and set(flat.values()) <= set(range(depth + 2))
  assert all(i == 0 for k, i in flat.items() if k.startswith("['stem"))
  assert all(i == depth + 1 for k, i in flat.items() if k.startswith("['head"))
  # A later stage never ranks below an earlier one.
  by_stage = {}
  for key, i in flat.items():
    if key.startswith("['stages']"):
      stage = int(key.split("[")[2].rstrip("]"))
      by_stage.setdefault(stage, []).append(i)
  stages = sorted(by_stage)
  for a, b in zip(stages, stages[1:]):
    assert max(by_stage[a]) < min(by_stage[b])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_each_layer_moves_as_the_optimizer_at_its_own_rate(optimizer):
  """Decay d scales block i's update exactly as lr * d**(L + 1 - i) would."""
  params = jax.tree.map(
    lambda s: jnp.asarray(np.random.default_rng(0).normal(size=s.shape), s.dtype),
    _params("vit_mu4"),
  )
  grads = jax.tree.map(lambda p: jnp.sin(3 * p) + 0.1, params)

  def step(decay, lr):
    config = config_lib.base_config()
    config.optimizer, config.lr, config.layer_decay = optimizer, lr, decay
    config.warmup_steps, config.grad_clip_norm = 0, 0.0
    opt = optim.make_optimizer(config, 10)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    updates, _ = opt.update(grads, state, params)  # the second step: momenta too
    return updates

  decayed = step(0.5, 1e-2)
  ids, depth = layer_ids(params)
  for layer in range(depth + 2):
    plain = step(1.0, 1e-2 * 0.5 ** (depth + 1 - layer))
    for got, want, i in zip(*(jax.tree.leaves(t) for t in (decayed, plain, ids))):
      if i == layer:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-12)
  # 1.0 is the optimizer without the transformation.
  plain = step(1.0, 1e-2)
  assert jax.tree.all(
    jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), step(1.0, 1e-2), plain)
  )
  assert not np.allclose(jax.tree.leaves(decayed)[0], jax.tree.leaves(plain)[0])


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5])
def test_layer_decay_outside_zero_one_is_refused(bad):
  config = config_lib.base_config()
  config.layer_decay = bad
  with pytest.raises(ConfigError, match=r"config.layer_decay must be in \(0, 1\]"):
    config_lib.validate(config)
