"""Train step, optimizer, checkpoint round trip, config parsing (multi-device: test_distributed)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from duojax import config_lib
from duojax.core.losses import cross_entropy
from duojax.models import functional, spec
from duojax.parallel import sharding
from duojax.train import checkpoint, optim, steps


def _tiny_setup(model_name="resnet8", overrides=None, steps=4, **config_overrides):
  config = config_lib.base_config()
  config.total_steps = steps
  config.batch_size = 8
  config.warmup_steps = 1
  for key, value in config_overrides.items():
    config[key] = value
  model = spec.build_model(model_name, overrides or {"width": 4}, 10, (12, 12, 1), seed=0)
  graphdef, params, batch_stats = functional.split_model(model)
  optimizer = optim.make_optimizer(config, steps)
  return config, graphdef, params, batch_stats, optimizer


def _batches(n, batch_size=8, seed=0):
  rng = np.random.default_rng(seed)
  return [
    {
      "image": rng.normal(size=(batch_size, 12, 12, 1)).astype(np.float32),
      "label": rng.integers(0, 10, size=batch_size).astype(np.int32),
    }
    for _ in range(n)
  ]


def test_train_step_decreases_loss_and_updates_batch_stats():
  config, graphdef, params, batch_stats, optimizer = _tiny_setup(steps=30, lr=1e-2)
  initial_stats = jax.tree.map(np.array, batch_stats)  # the state is donated
  mesh = sharding.make_mesh()
  state = jax.device_put(
    steps.init_state(params, batch_stats, optimizer), sharding.replicated(mesh)
  )
  step = steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0)
  batch = _batches(1)[0]
  losses = []
  for _ in range(30):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0]  # one fixed batch is memorised
  assert int(state["step"]) == 30 and int(state["nonfinite"]) == 0
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["batch_stats"], initial_stats)
  assert any(jax.tree.leaves(moved))


def test_nonfinite_loss_is_counted():
  config, graphdef, params, batch_stats, optimizer = _tiny_setup()
  mesh = sharding.make_mesh()
  state = jax.device_put(
    steps.init_state(params, batch_stats, optimizer), sharding.replicated(mesh)
  )
  step = steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0)
  batch = _batches(1)[0]
  batch["image"][0, 0, 0, 0] = np.nan
  state, _ = step(state, batch)
  assert int(state["nonfinite"]) == 1


def test_eval_step_respects_mask():
  _, graphdef, params, batch_stats, _ = _tiny_setup()
  mesh = sharding.make_mesh()
  eval_step = steps.make_eval_step(graphdef, mesh=mesh)
  batch = _batches(1)[0]
  full = jax.device_get(eval_step(params, batch_stats, {**batch, "mask": np.ones(8, bool)}))
  mask = np.array([1, 1, 1, 0, 0, 0, 0, 0], bool)
  part = jax.device_get(eval_step(params, batch_stats, {**batch, "mask": mask}))
  apply = functional.make_apply(graphdef)
  logits = np.asarray(apply(params, batch_stats, batch["image"])[0])
  expected_correct = np.sum((logits.argmax(-1) == batch["label"])[:3])
  assert part["count"] == 3 and full["count"] == 8
  assert part["correct"] == expected_correct
  logp = (
    logits
    - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    - logits.max(-1, keepdims=True)
  )
  np.testing.assert_allclose(part["nll"], -logp[np.arange(3), batch["label"][:3]].sum(), rtol=1e-5)


def test_cross_entropy_label_smoothing_matches_reference():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
  labels = jnp.array([0, 1])
  eps = 0.1
  logp = jax.nn.log_softmax(logits)
  targets = np.full((2, 3), eps / 3) + (1 - eps) * np.eye(3)[np.asarray(labels)]
  expected = -(targets * np.asarray(logp)).sum(-1)
  np.testing.assert_allclose(cross_entropy(logits, labels, eps), expected, rtol=1e-6)


def test_schedule_warmup_then_cosine_to_zero():
  config = config_lib.base_config()
  config.lr, config.warmup_steps = 0.1, 10
  schedule = optim.make_schedule(config, 100)
  assert float(schedule(0)) == 0.0
  assert float(schedule(10)) == pytest.approx(0.1)
  assert float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
  assert float(schedule(55)) < float(schedule(20))


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_only_on_kernels(optimizer):
  config = config_lib.base_config()
  config.optimizer, config.weight_decay, config.grad_clip_norm = optimizer, 0.5, 0.0
  config.warmup_steps = 0
  opt = optim.make_optimizer(config, 10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = opt.update(zeros, opt.init(params), params)
  assert float(jnp.abs(updates["bias"]).max()) == 0.0
  assert float(jnp.abs(updates["kernel"]).max()) > 0.0


def test_checkpoint_round_trip_and_compatibility(tmp_path):
  config, graphdef, params, batch_stats, optimizer = _tiny_setup()
  state = jax.tree.map(np.array, steps.init_state(params, batch_stats, optimizer))
  model_spec = spec.ModelSpec("resnet8", {"width": 4}, 10, (12, 12, 1))
  meta = {
    **model_spec.as_meta(),
    "config": config.to_dict(),
    "step": 0,
    "data_step": 0,
    "dataset": "x",
  }
  manager = checkpoint.make_manager(str(tmp_path), keep=2)
  checkpoint.save(manager, 0, state, meta)
  restored, restored_meta = checkpoint.restore(manager, 0, checkpoint.abstract_like(state))
  manager.close()
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), restored, state))
  checkpoint.check_compatible(restored_meta, meta, where="w")  # JSON round trip still fits
  other = spec.ModelSpec("resnet8", {"width": 4}, 5, (12, 12, 1)).as_meta()
  with pytest.raises(checkpoint.CheckpointError, match="num_classes=10"):
    checkpoint.check_compatible(restored_meta, other, where="w")
  # Rematerialisation changes the computation, not the parameters: it may be toggled.
  remat = spec.ModelSpec("resnet8", {"width": 4, "remat": True}, 10, (12, 12, 1)).as_meta()
  checkpoint.check_compatible(restored_meta, remat, where="w")
  wider = spec.ModelSpec("resnet8", {"width": 8}, 10, (12, 12, 1)).as_meta()
  with pytest.raises(checkpoint.CheckpointError, match="model_overrides"):
    checkpoint.check_compatible(restored_meta, wider, where="w")
  model, _ = checkpoint.load_model(str(tmp_path))
  _, params2, _ = functional.split_model(model)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params2, params))


def test_checkpoint_of_an_older_config_loads_with_defaults(tmp_path):
  """A checkpoint written before keys such as `loss` or `linear_probe_steps`
  existed loads, and its config reads back complete, with their defaults."""
  config, graphdef, params, batch_stats, optimizer = _tiny_setup()
  state = jax.tree.map(np.array, steps.init_state(params, batch_stats, optimizer))
  old = config.to_dict()
  for key in (
    "loss",
    "gatekeeper_alpha",
    "linear_probe_steps",
    "init_weights",
    "prune_from",
    "prune_keep",
  ):
    del old[key]
  model_spec = spec.ModelSpec("resnet8", {"width": 4}, 10, (12, 12, 1))
  manager = checkpoint.make_manager(str(tmp_path))
  checkpoint.save(
    manager,
    0,
    state,
    {**model_spec.as_meta(), "config": old, "step": 0, "data_step": 0, "dataset": "x"},
  )
  manager.close()
  model, meta = checkpoint.load_model(str(tmp_path))
  defaults = config_lib.base_config()
  for key in (
    "loss",
    "gatekeeper_alpha",
    "linear_probe_steps",
    "init_weights",
    "prune_from",
    "prune_keep",
  ):
    assert meta["config"][key] == defaults[key]
  assert meta["config"]["total_steps"] == config.total_steps  # saved values are kept
  _, params2, _ = functional.split_model(model)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params2, params))
  assert steps.make_loss(config_lib.complete_config(old))(jnp.zeros((2, 3)), jnp.array([0, 1]))


def test_read_meta_errors(tmp_path):
  with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
    checkpoint.read_meta(str(tmp_path / "missing"))
  with pytest.raises(checkpoint.CheckpointError, match="no checkpoints"):
    checkpoint.read_meta(str(tmp_path))


def test_parse_arg_types_and_errors():
  parsed = config_lib.parse_arg(
    "vit_mi4,epochs=3,flag=true", model="resnet14", epochs=2.0, flag=False
  )
  assert (parsed.model, parsed.epochs, parsed.flag) == ("vit_mi4", 3.0, True)
  with pytest.raises(config_lib.ConfigError, match="unknown config argument 'nope'"):
    config_lib.parse_arg("nope=1", model="x")
  with pytest.raises(config_lib.ConfigError, match="not a valid float"):
    config_lib.parse_arg("epochs=abc", epochs=1.0)


def test_validate_rejects_bad_values():
  config = config_lib.base_config()
  config.optimizer = "adam9"
  with pytest.raises(config_lib.ConfigError, match="optimizer"):
    config_lib.validate(config)
  config = config_lib.base_config()
  config.augment = "crop,rotate"
  with pytest.raises(config_lib.ConfigError, match="rotate"):
    config_lib.validate(config)


def test_linear_probe_trains_the_head_alone_then_everything():
  probe = 3
  config, graphdef, params, batch_stats, optimizer = _tiny_setup(
    steps=6, lr=1e-2, linear_probe_steps=probe
  )
  start = jax.tree.map(np.array, (params, batch_stats))
  mesh = sharding.make_mesh()
  state = jax.device_put(
    steps.init_state(params, batch_stats, optimizer), sharding.replicated(mesh)
  )
  step = steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0, frozen_stats_steps=probe)

  def changed(tree, ref):
    return [
      bool(np.any(np.asarray(a) != b)) for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(ref))
    ]

  for batch in _batches(probe):
    state, _ = step(state, batch)
  head = {k: v for k, v in state["params"].items() if k == "head"}
  backbone = {k: v for k, v in state["params"].items() if k != "head"}
  assert all(changed(head, {"head": start[0]["head"]}))
  assert not any(changed(backbone, {k: v for k, v in start[0].items() if k != "head"}))
  assert not any(changed(state["batch_stats"], start[1]))
  for batch in _batches(3, seed=1):
    state, _ = step(state, batch)
  assert all(
    changed(
      {k: v for k, v in state["params"].items() if k != "head"},
      {k: v for k, v in start[0].items() if k != "head"},
    )
  )
  assert any(changed(state["batch_stats"], start[1]))


def test_linear_probe_must_leave_fine_tuning_steps():
  with pytest.raises(ValueError, match="linear_probe_steps=4 leaves no fine-tuning"):
    _tiny_setup(steps=4, linear_probe_steps=4)


def test_gatekeeper_loss_trains_through_the_step():
  """loss="gatekeeper" reaches the jitted step: its loss is the Gatekeeper loss."""
  from duojax import cascade

  config, graphdef, params, batch_stats, optimizer = _tiny_setup(steps=2, lr=1e-3)
  config.loss, config.gatekeeper_alpha = "gatekeeper", 0.3
  mesh = sharding.make_mesh()
  state = jax.device_put(
    steps.init_state(params, batch_stats, optimizer), sharding.replicated(mesh)
  )
  step = steps.make_train_step(
    graphdef, optimizer, mesh=mesh, seed=0, loss_fn=steps.make_loss(config)
  )
  batch = _batches(1)[0]
  # resnet8 has no dropout: the train-mode forward (batch statistics) is deterministic.
  logits, _, _ = functional.make_apply(graphdef)(params, batch_stats, batch["image"], train=True)
  expected = cascade.gatekeeper_loss(logits, batch["label"], 0.3)
  _, metrics = step(state, batch)
  np.testing.assert_allclose(float(metrics["loss"]), float(expected), rtol=1e-5)
  with pytest.raises(ValueError, match="unknown loss 'focal'"):
    config.loss = "focal"
    steps.make_loss(config)
