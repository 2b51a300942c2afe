"""The jitted train and eval steps of one classifier, and its training loss.

The train step is one `jax.jit` function over a ("data", "fsdp") mesh (see
`duojax.parallel.sharding`): the batch is split over every device, parameters and
optimizer state are replicated or, with fsdp > 1, split over the "fsdp"
axis, and the state is donated so XLA updates it in place. The same code runs
on 1 device, N devices or N hosts.

Models are Flax NNX modules; inside jit they are rebuilt with `nnx.merge` from
a static graphdef and plain pytrees (`duojax.models.functional`), so the
train state, the optimizer state and the checkpoints are ordinary pytrees.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from duojax.core import mixing
from duojax.core.losses import cross_entropy, gatekeeper_loss
from duojax.data.preprocess import normalize_on_device
from duojax.errors import ConfigError, DataError
from duojax.models.functional import make_apply
from duojax.parallel import sharding
from duojax.train import recipe as recipe_lib
from duojax.train.recipe import Recipe

TrainState = dict[str, Any]  # {"params", "batch_stats", "opt_state", "step", "nonfinite"[, "ema"]}


def make_loss(config) -> Callable:
  """The config's training loss, (logits [B, C], labels [B]) -> scalar.

  "ce": mean cross-entropy (with `label_smoothing`); "gatekeeper": the
  Gatekeeper confidence-tuning loss (arXiv 2502.19335) with weight
  `gatekeeper_alpha` on the correct rows' cross-entropy, see
  `duojax.core.losses.gatekeeper_loss`.
  """
  loss = config.loss
  if loss == "ce":
    smoothing = float(config.label_smoothing)
    return lambda logits, labels: cross_entropy(logits, labels, smoothing).mean()
  if loss == "gatekeeper":
    alpha = float(config.gatekeeper_alpha)
    return lambda logits, labels: gatekeeper_loss(logits, labels, alpha)
  raise ConfigError(f"unknown loss {loss!r}; valid: ce, gatekeeper")


def init_state(params, batch_stats, optimizer, recipe: Recipe | None = None) -> TrainState:
  """The train state at step 0; with `recipe.ema`, also the average's start ("ema")."""
  state = {
    "params": params,
    "batch_stats": batch_stats,
    "opt_state": optimizer.init(params),
    "step": jnp.zeros((), jnp.int32),
    "nonfinite": jnp.zeros((), jnp.int32),
  }
  if recipe is not None and recipe.ema:
    state["ema"] = recipe_lib.init_ema(params, batch_stats)
  return state


def make_train_step(
  graphdef,
  optimizer,
  *,
  mesh: Mesh,
  seed: int,
  label_smoothing: float = 0.0,
  frozen_stats_steps: int = 0,
  state_sharding=None,
  loss_fn: Callable | None = None,
  image_stats=None,
  recipe: Recipe | None = None,
) -> Callable:
  """Jitted (state, batch) -> (state, metrics) over `mesh`; state is donated.

  `image_stats=(mean, std)`: uint8 batch images are normalised on the device
  (`duojax.data.normalize_on_device`); float images are used as they come.

  `loss_fn(logits, labels) -> scalar` (see `make_loss`) replaces the default
  cross-entropy with `label_smoothing`.

  `state_sharding` (a tree of shardings like the state, from
  `sharding.state_shardings`) keeps the state split FSDP-style across steps;
  by default it is replicated.

  For the first `frozen_stats_steps` steps (a linear probe) BatchNorm running
  statistics keep their loaded values, as the frozen backbone's weights do.

  `recipe` (`duojax.train.recipe`) adds Mixup/CutMix of the normalised batch,
  gradient accumulation over micro-batches and the weight EMA (the state must
  then come from `init_state` with the same recipe); the default adds none.
  With mixing, the logged accuracy compares with each row's own label.
  """
  recipe = Recipe() if recipe is None else recipe
  apply = make_apply(graphdef)
  # Dropout keys are a pure function of (seed, step): resuming needs no RNG state.
  dropout_key = jax.random.fold_in(jax.random.key(seed), 0x0D0)
  mix_key = recipe_lib.mix_key(seed)  # the same for the mixing draws
  if loss_fn is None:
    loss_fn = lambda logits, labels: cross_entropy(logits, labels, label_smoothing).mean()

  def train_step(state: TrainState, batch):
    step_key = jax.random.fold_in(dropout_key, state["step"])
    images, labels = _images(batch, image_stats), batch["label"]
    partner, lam = None, None
    if recipe.mixing:
      # Drawn for the global batch: the same mix on any number of devices.
      mix = recipe_lib.draw_mix(recipe, jax.random.fold_in(mix_key, state["step"]), images.shape)
      images, partner, lam = mixing.mix_images(images, mix), labels[::-1], mix.lam

    def objective(params, batch_stats, images, labels, partner, key):
      # Built inside the differentiated function: NNX RNG streams count their
      # draws, and may only be mutated at the trace level that created them.
      rngs = nnx.Rngs(dropout=key)
      logits, _, batch_stats = apply(params, batch_stats, images, train=True, rngs=rngs)
      loss = (
        loss_fn(logits, labels)
        if partner is None
        else mixing.mixed_loss(loss_fn, logits, labels, partner, lam)
      )
      return loss, (logits, batch_stats)

    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if recipe.grad_accum_steps == 1:
      (loss, (logits, batch_stats)), grads = grad_fn(
        state["params"], state["batch_stats"], images, labels, partner, step_key
      )
      accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    else:
      recipe_lib.check_batch_size(
        labels.shape[0], recipe.grad_accum_steps, sharding.num_batch_shards(mesh)
      )
      loss, accuracy, batch_stats, grads = recipe_lib.accumulate(
        grad_fn,
        state["params"],
        state["batch_stats"],
        (images, labels, partner),
        step_key,
        recipe.grad_accum_steps,
        mesh,
      )
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if frozen_stats_steps > 0:
      frozen = state["step"] < frozen_stats_steps
      batch_stats = jax.tree.map(
        lambda new, old: jnp.where(frozen, old, new), batch_stats, state["batch_stats"]
      )
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(params))
    new_state = {
      "params": params,
      "batch_stats": batch_stats,
      "opt_state": opt_state,
      "step": state["step"] + 1,
      # Counted on device so the host only looks at log/save time. The
      # new parameters are checked too: a finite loss can still come
      # with an update that overflows them.
      "nonfinite": state["nonfinite"] + (~finite).astype(jnp.int32),
    }
    if recipe.ema:
      decay = recipe_lib.ema_decay_at(recipe, state["step"] + 1)
      new_state["ema"] = recipe_lib.update_ema(state["ema"], params, batch_stats, decay)
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  state_sharding = rep if state_sharding is None else state_sharding
  return jax.jit(
    train_step,
    in_shardings=(state_sharding, data),
    out_shardings=(state_sharding, rep),
    donate_argnums=0,
  )


def _images(batch, image_stats):
  return (
    batch["image"] if image_stats is None else normalize_on_device(batch["image"], *image_stats)
  )


def make_eval_step(graphdef, *, mesh: Mesh, state_sharding=None, image_stats=None) -> Callable:
  """Jitted (params, batch_stats, batch) -> sums of correct, NLL and count over the mask.

  `state_sharding`: the train state's shardings (FSDP), else replicated.
  `image_stats=(mean, std)` normalises uint8 images on the device.
  """
  apply = make_apply(graphdef)

  def eval_step(params, batch_stats, batch):
    logits, _, _ = apply(params, batch_stats, _images(batch, image_stats))
    mask = batch["mask"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    nll = cross_entropy(logits, batch["label"])
    return {"correct": jnp.sum(correct * mask), "nll": jnp.sum(nll * mask), "count": jnp.sum(mask)}

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  params, stats = (
    (rep, rep)
    if state_sharding is None
    else (state_sharding["params"], state_sharding["batch_stats"])
  )
  return jax.jit(eval_step, in_shardings=(params, stats, data), out_shardings=rep)


def evaluate_batches(eval_step, params, batch_stats, batches) -> dict[str, float]:
  """Accuracy and NLL of a model over an iterable of masked batches."""
  totals = None
  for batch in batches:
    sums = eval_step(params, batch_stats, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise DataError("evaluation split is empty")
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {
    "accuracy": float(totals["correct"]) / count,
    "nll": float(totals["nll"]) / count,
    "count": int(count),
  }
