"""The train step's recipe options (duojax.train.recipe): Mixup/CutMix, weight EMA,
gradient accumulation; off, the step is the plain one bit for bit; on, a
resumed run is bit-identical to an uninterrupted one."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import ROOT, tiny_train_config

from duojax import config_lib
from duojax.core import mixing
from duojax.core.losses import cross_entropy
from duojax.errors import CheckpointError, ConfigError
from duojax.eval.accuracy import accuracy_of_workdirs
from duojax.models import functional, spec
from duojax.parallel import sharding
from duojax.train import checkpoint, loop, optim, recipe, steps
from duojax.train.recipe import Recipe


def _setup(model_name="resnet8", overrides=None, optimizer="adamw", image=12):
  config = config_lib.base_config()
  config.total_steps, config.batch_size, config.warmup_steps = 4, 8, 1
  config.optimizer, config.lr = optimizer, 0.05
  model = spec.build_model(model_name, overrides or {}, 10, (image, image, 1), seed=0)
  graphdef, params, batch_stats = functional.split_model(model)
  # On the host: the steps donate their state, so every run places fresh copies.
  params, batch_stats = jax.device_get((params, batch_stats))
  return graphdef, params, batch_stats, optim.make_optimizer(config, 4)


def _batches(n, batch_size=8, image=12, seed=0):
  rng = np.random.default_rng(seed)
  return [
    {
      "image": rng.normal(size=(batch_size, image, image, 1)).astype(np.float32),
      "label": rng.integers(0, 10, size=batch_size).astype(np.int32),
    }
    for _ in range(n)
  ]


def _train(graphdef, params, batch_stats, optimizer, batches, options=None, step=None, log=None):
  """(final state, metrics of each step) on the host, from fresh copies of the
  weights; `log`, a list, gets the state after each step."""
  mesh = sharding.make_mesh()
  state = jax.device_put(
    steps.init_state(params, batch_stats, optimizer, options), sharding.replicated(mesh)
  )
  step = step or steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0, recipe=options)
  metrics = []
  for batch in batches:
    state, m = step(state, batch)
    metrics.append(jax.device_get(m))
    if log is not None:
      log.append(jax.device_get(state))
  return jax.device_get(state), metrics


def _plain_step(graphdef, optimizer, seed=0):
  """The train step as it was before the recipe options, kept to compare with."""
  apply = functional.make_apply(graphdef)
  dropout_key = jax.random.fold_in(jax.random.key(seed), 0x0D0)

  def train_step(state, batch):
    step_key = jax.random.fold_in(dropout_key, state["step"])

    def objective(params):
      rngs = nnx.Rngs(dropout=step_key)
      logits, _, batch_stats = apply(
        params, state["batch_stats"], batch["image"], train=True, rngs=rngs
      )
      return cross_entropy(logits, batch["label"]).mean(), (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
      state["params"]
    )
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(params))
    new_state = {
      "params": params,
      "batch_stats": batch_stats,
      "opt_state": opt_state,
      "step": state["step"] + 1,
      "nonfinite": state["nonfinite"] + (~finite).astype(jnp.int32),
    }
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return new_state, {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}

  mesh = sharding.make_mesh()
  rep = sharding.replicated(mesh)
  return jax.jit(
    train_step,
    in_shardings=(rep, sharding.batch_sharding(mesh)),
    out_shardings=(rep, rep),
    donate_argnums=0,
  )


def _assert_trees_equal(a, b):
  same = jax.tree.map(np.array_equal, a, b)
  assert jax.tree.structure(a) == jax.tree.structure(b)
  assert all(jax.tree.leaves(same))


def _max_diff(a, b):
  diffs = jax.tree.map(lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)
  return max(jax.tree.leaves(diffs))


# ---------------------------------------------------------------- off: nothing changes
def test_options_off_leave_the_step_bit_identical():
  """Alphas 0, no EMA, k = 1 (whatever mix_prob says): the plain step, bit for
  bit, BatchNorm and dropout included."""
  graphdef, params, batch_stats, optimizer = _setup(overrides={"width": 4, "dropout": 0.2})
  batches = _batches(3)
  plain = _train(
    graphdef, params, batch_stats, optimizer, batches, step=_plain_step(graphdef, optimizer)
  )
  for options in (None, Recipe(mix_prob=0.5, mix_switch_prob=0.1)):
    _assert_trees_equal(plain, _train(graphdef, params, batch_stats, optimizer, batches, options))


# ---------------------------------------------------------------- Mixup / CutMix in the step
@pytest.mark.parametrize("options", [Recipe(mixup_alpha=0.4), Recipe(cutmix_alpha=1.0)])
def test_the_step_trains_on_the_mix_of_its_seed_and_step(options):
  """The step's loss is the cross-entropy (smoothing 0.1) of the model on the
  batch mixed by the draw of key (seed, step), against timm's mixed targets."""
  graphdef, params, batch_stats, optimizer = _setup(overrides={"width": 4})
  batches = _batches(2)
  mesh = sharding.make_mesh()
  step = steps.make_train_step(
    graphdef, optimizer, mesh=mesh, seed=0, recipe=options, label_smoothing=0.1
  )
  state = jax.device_put(steps.init_state(params, batch_stats, optimizer, options))
  apply = jax.jit(functional.make_apply(graphdef), static_argnames="train")
  lams = []
  for t, batch in enumerate(batches):
    before = jax.tree.map(jnp.array, jax.device_get(state))  # copies: the step donates
    mix = recipe.draw_mix(options, jax.random.fold_in(recipe.mix_key(0), t), (8, 12, 12, 1))
    lams.append(float(mix.lam))
    logits, _, _ = apply(
      before["params"],
      before["batch_stats"],
      mixing.mix_images(jnp.asarray(batch["image"]), mix),
      train=True,
    )
    targets = mixing.mixed_targets(jnp.asarray(batch["label"]), mix.lam, 10, 0.1)
    want = float(optax.softmax_cross_entropy(logits, targets).mean())
    state, metrics = step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
  assert all(lam < 1 for lam in lams) and lams[0] != lams[1]  # mixes happened, and differ


# ---------------------------------------------------------------- gradient accumulation
_MIXED = Recipe(mixup_alpha=0.4, cutmix_alpha=1.0, ema_decay=0.9)


@pytest.mark.parametrize(
  "options, micro", [(Recipe(), (2, 4)), (_MIXED, (2,))], ids=["plain", "mixed+ema"]
)
def test_accumulated_update_equals_the_whole_batch_update(options, micro):
  """A ViT (no BatchNorm), SGD: k = 2 and k = 4 micro-batches give the k = 1
  update of the same batch, to float rounding; with mixing (a CutMix step and
  Mixup steps), the mix is drawn for the whole batch, so the micro-batches are
  its rows."""
  graphdef, params, batch_stats, optimizer = _setup("vit_mu4", optimizer="sgd", image=16)
  batches = _batches(3, image=16)
  if options.mixing:
    draws = [
      recipe.draw_mix(options, jax.random.fold_in(recipe.mix_key(0), t), (8, 16, 16, 1))
      for t in range(3)
    ]
    assert {bool(d.cutmix) for d in draws} == {True, False}
  results = {
    k: _train(
      graphdef,
      params,
      batch_stats,
      optimizer,
      batches,
      Recipe(**{**options.__dict__, "grad_accum_steps": k}),
    )
    for k in (1, *micro)
  }
  (whole, whole_metrics) = results[1]
  assert _max_diff(whole["params"], jax.device_get(params)) > 1e-3  # it trained
  for k in micro:
    state, metrics = results[k]
    assert _max_diff(state, whole) < 2e-6, k
    for a, b in zip(metrics, whole_metrics):
      for name in ("loss", "grad_norm", "accuracy"):
        assert float(a[name]) == pytest.approx(float(b[name]), rel=1e-5, abs=1e-6), (k, name)


def test_accumulation_with_batchnorm_runs_and_updates_the_statistics():
  """With BatchNorm each micro-batch is normalised by its own statistics (a
  documented difference): the update is close to, not equal to, k = 1's."""
  graphdef, params, batch_stats, optimizer = _setup(overrides={"width": 4})
  initial_stats = jax.device_get(batch_stats)
  whole, _ = _train(graphdef, params, batch_stats, optimizer, _batches(2))
  state, metrics = _train(
    graphdef, params, batch_stats, optimizer, _batches(2), Recipe(grad_accum_steps=2)
  )
  assert all(np.isfinite(float(m["loss"])) for m in metrics)
  assert int(state["step"]) == 2 and int(state["nonfinite"]) == 0
  assert _max_diff(state["batch_stats"], initial_stats) > 0
  assert 0 < _max_diff(state["batch_stats"], whole["batch_stats"])


def test_a_batch_the_micro_batches_cannot_split_is_a_config_error():
  graphdef, params, batch_stats, optimizer = _setup(overrides={"width": 4})
  with pytest.raises(ConfigError, match=r"batch_size=6 is not divisible by .*grad_accum_steps=4"):
    _train(graphdef, params, batch_stats, optimizer, _batches(1, 6), Recipe(grad_accum_steps=4))


# ---------------------------------------------------------------- weight EMA
def test_ema_follows_its_recurrence_for_params_and_batch_statistics():
  """θ̄_t = d·θ̄_{t−1} + (1 − d)·θ_t from θ̄_0 = θ_0, for the parameters and
  the BatchNorm statistics; with warm-up, d_1 = 0 copies the first update."""
  graphdef, params, batch_stats, optimizer = _setup(overrides={"width": 4})
  batches = _batches(3)
  start = {"params": params, "batch_stats": batch_stats}
  log = []
  _train(graphdef, params, batch_stats, optimizer, batches, log=log)
  plain_states = [{"params": s["params"], "batch_stats": s["batch_stats"]} for s in log]
  for options, decays in (
    (Recipe(ema_decay=0.75), [0.75] * 3),
    (Recipe(ema_decay=0.5, ema_warmup=True), [0.0, 1 - 2 ** (-2 / 3), 0.5]),
  ):
    got = [float(recipe.ema_decay_at(options, t)) for t in (1, 2, 3)]
    np.testing.assert_allclose(got, decays, rtol=1e-6)
    final, _ = _train(graphdef, params, batch_stats, optimizer, batches, options)
    # The EMA does not feed back into training.
    assert _max_diff(final["params"], plain_states[-1]["params"]) == 0
    want = start
    for d, new in zip(decays, plain_states):
      want = jax.tree.map(lambda e, n, d=d: e * d + n * (1 - d), want, new)
    assert _max_diff(final["ema"], want) < 1e-6
    assert _max_diff(final["ema"], plain_states[-1]) > 1e-4  # an average, not the last weights


# ---------------------------------------------------------------- config checks
@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"mixup_alpha": -0.1}, "config.mixup_alpha must be >= 0 (0: off), got -0.1"),
    ({"cutmix_alpha": float("nan")}, "config.cutmix_alpha must be >= 0"),
    ({"mix_prob": 1.5}, "config.mix_prob must be in [0, 1], got 1.5"),
    ({"mix_switch_prob": -1.0}, "config.mix_switch_prob must be in [0, 1]"),
    (
      {"mixup_alpha": 0.2, "loss": "gatekeeper"},
      "config.mixup_alpha / cutmix_alpha need config.loss='ce', got 'gatekeeper'",
    ),
    ({"ema_decay": 1.0}, "config.ema_decay must be in [0, 1) (0: off), got 1.0"),
    ({"ema_warmup": True}, "config.ema_warmup needs config.ema_decay > 0"),
    ({"grad_accum_steps": 0}, "config.grad_accum_steps must be >= 1 (1: off), got 0"),
    (
      {"batch_size": 32, "grad_accum_steps": 3},
      "config.batch_size=32 is not divisible by config.grad_accum_steps=3",
    ),
  ],
)
def test_recipe_keys_are_validated(overrides, message):
  config = tiny_train_config("data", **overrides)
  with pytest.raises(ConfigError) as error:
    config_lib.validate(config)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_a_resume_keeps_the_ema_on_or_off_as_the_run_started():
  """The checkpoint's layout follows config.ema_decay: toggling it on resume is
  a one-line CheckpointError, before the restore would fail on every step."""
  meta = {"model_name": "resnet8", "config": {"ema_decay": 0.0}}
  ema = {**meta, "config": {"ema_decay": 0.999}}
  checkpoint.check_resumable(meta, {**meta, "config": {}}, where="w")  # predates the key
  checkpoint.check_resumable(ema, ema, where="w")
  with pytest.raises(CheckpointError, match="'w' was trained without a weight EMA but the "):
    checkpoint.check_resumable(meta, ema, where="w")
  with pytest.raises(CheckpointError, match="trained with a weight EMA but the config asks for"):
    checkpoint.check_resumable(ema, meta, where="w")


# ---------------------------------------------------------------- the training loop
@pytest.mark.slow
def test_recipe_run_resumes_bit_identically_and_saves_the_ema(tmp_path, learnable_data_dir):
  """Mixup + CutMix, EMA with warm-up and 2 micro-batches: a run resumed from
  step 4 ends with the uninterrupted run's parameters and EMA bit for bit; the
  saved model is the EMA, and it is what the run validated."""
  config = tiny_train_config(
    learnable_data_dir,
    mixup_alpha=0.4,
    cutmix_alpha=1.0,
    ema_decay=0.8,
    ema_warmup=True,
    grad_accum_steps=2,
    label_smoothing=0.1,
  )
  full = tmp_path / "full"
  summary = loop.train_and_evaluate(config, str(full))
  interrupted = tmp_path / "interrupted"
  shutil.copytree(full, interrupted)
  for step in (8, 12):
    shutil.rmtree(interrupted / "checkpoints" / str(step))
  os.remove(interrupted / loop.SUMMARY_FILE)
  assert loop.train_and_evaluate(config, str(interrupted))["resumed_from"] == 4

  def weights(workdir, use_ema):
    model, _ = checkpoint.load_model(str(workdir), use_ema=use_ema)
    return jax.device_get(functional.split_model(model)[1:])

  for use_ema in (True, False):
    _assert_trees_equal(weights(full, use_ema), weights(interrupted, use_ema))
  assert _max_diff(weights(full, True), weights(full, False)) > 1e-4
  with open(full / loop.METRICS_FILE) as f:
    assert sum("train_loss" in json.loads(line) for line in f) == 6
  evaluated = accuracy_of_workdirs([str(full)], "val", None, 50)[str(full)]
  assert evaluated["accuracy"] == pytest.approx(summary["val_accuracy"])
  assert evaluated["nll"] == pytest.approx(summary["val_nll"], rel=1e-5)


_TWO_DEVICES = textwrap.dedent(
  """
  import jax
  jax.config.update("jax_num_cpu_devices", 2)
  import numpy as np
  from duojax import config_lib
  from duojax.errors import CheckpointError, ConfigError
  from duojax.models import functional, spec
  from duojax.parallel import sharding
  from duojax.train import optim, steps
  from duojax.train.recipe import Recipe

  config = config_lib.base_config()
  config.optimizer, config.lr, config.warmup_steps = "sgd", 0.05, 1
  model = spec.build_model("vit_mu4", {}, 10, (16, 16, 1), seed=0)
  graphdef, params, batch_stats = functional.split_model(model)
  optimizer = optim.make_optimizer(config, 3)
  options = Recipe(mixup_alpha=0.4, cutmix_alpha=1.0, ema_decay=0.9, grad_accum_steps=2)
  rng = np.random.default_rng(0)
  batches = [{"image": rng.normal(size=(8, 16, 16, 1)).astype(np.float32),
              "label": rng.integers(0, 10, size=8).astype(np.int32)} for _ in range(3)]
  initial = jax.tree.map(np.array, steps.init_state(params, batch_stats, optimizer, options))
  finals = []
  for devices, fsdp in ((1, 1), (2, 1), (2, 2)):
    mesh = sharding.make_mesh(devices, fsdp)
    # Under FSDP every array is split, the EMA like its parameter.
    shardings = sharding.state_shardings(initial, mesh, min_elements=0)
    state = jax.device_put(initial, shardings)
    step = steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0, recipe=options,
                                 state_sharding=shardings)
    for batch in batches:
      state, _ = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
      jax.block_until_ready(state)  # un-synced all-reduces on fake CPU devices deadlock
    finals.append(jax.device_get(state))
  for final in finals[1:]:
    diff = max(jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), finals[0], final)))
    print("DIFF", diff)
  mesh = sharding.make_mesh(2)
  step = steps.make_train_step(graphdef, optimizer, mesh=mesh, seed=0,
                               recipe=Recipe(grad_accum_steps=8))
  state = jax.device_put(steps.init_state(params, batch_stats, optimizer),
                         sharding.replicated(mesh))
  try:
    step(state, jax.device_put(batches[0], sharding.batch_sharding(mesh)))
  except ConfigError as e:
    print("REFUSED", e)
  """
)


@pytest.mark.slow
def test_two_devices_mix_and_accumulate_as_one():
  """The mix is drawn for the global batch and the micro-batches are split
  over the devices: 2 devices, data parallel or FSDP (the EMA split like the
  parameters), end where 1 does (to float32 reduction order),
  and a batch of 8 is refused for 8 micro-batches on 2 devices."""
  result = subprocess.run(
    [sys.executable, "-c", _TWO_DEVICES],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = [float(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("DIFF")]
  assert len(diffs) == 2 and max(diffs) < 1e-5, diffs
  lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
  assert (
    "batch_size=8 is not divisible by config.grad_accum_steps=8 × the 2 devices"
    in (lines["REFUSED"])
  )
