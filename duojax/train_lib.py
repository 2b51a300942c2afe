"""Sharded, resumable training of one classifier.

The train step is one `jax.jit` function over a ("data", "fsdp") mesh (see
`duojax.sharding`): the batch is split over every device, parameters and
optimizer state are replicated or, with fsdp > 1, split over the "fsdp"
axis, and the state is donated so XLA updates it in place. The same code runs
on 1 device, N devices or N hosts.

Models are Flax NNX modules; inside jit they are rebuilt with `nnx.merge` from
a static graphdef and plain pytrees (pure dicts), so the train state, the
optimizer state and the checkpoints are ordinary pytrees.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from duojax import models, sharding

TrainState = dict[str, Any]  # {"params", "batch_stats", "opt_state", "step", "nonfinite"}


class TrainingDiverged(RuntimeError):
  """The loss became NaN or inf; the message says where the last good state is."""


# ----------------------------------------------------------------------------
# Model <-> pure pytrees.


def model_overrides(overrides: dict, image_shape: tuple[int, int, int]) -> dict:
  """`get_model` overrides: the config's, plus the input geometry of the data."""
  height, width, channels = image_shape
  merged = {"image_size": height if height == width else (height, width),
            "in_channels": channels}
  merged.update(dict(overrides))
  return merged


def build_model(model_name: str, overrides: dict, num_classes: int,
                image_shape: tuple[int, int, int], seed: int) -> nnx.Module:
  model = models.get_model(model_name, num_classes, rngs=nnx.Rngs(seed),
                           **model_overrides(overrides, image_shape))
  # Fail here, with the model's own one-line message, if the data's images do
  # not fit the model (e.g. a ViT built for another size, wrong channel count).
  nnx.eval_shape(lambda m: m(jnp.zeros((1, *image_shape), jnp.float32)), model)
  return model


def split_model(model: nnx.Module):
  """(graphdef, params, batch_stats) with params/batch_stats as pure dicts."""
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


def make_apply(graphdef) -> Callable:
  """apply(params, batch_stats, images, train, rngs) -> (logits, out, batch_stats)."""
  def apply(params, batch_stats, images, train=False, rngs=None):
    model = nnx.merge(graphdef, nnx.State(params), nnx.State(batch_stats))
    logits, out = model(images, train=train, rngs=rngs)
    new_batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    return logits, out, new_batch_stats
  return apply


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def flops_per_image(graphdef, params, batch_stats, image_shape, batch: int = 8) -> float:
  """Forward FLOPs per image in eval mode, as counted by XLA's cost analysis."""
  apply = make_apply(graphdef)
  fwd = jax.jit(lambda p, b, x: apply(p, b, x)[0])
  # Shapes only, without the arrays' shardings: an FSDP-split or multi-host
  # state would otherwise compile a partitioned program and count one
  # device's share.
  abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
  x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  cost = fwd.lower(abstract(params), abstract(batch_stats), x).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):  # older jax returned one dict per device
    cost = cost[0]
  return float(cost.get("flops", float("nan"))) / batch


# ----------------------------------------------------------------------------
# Optimisation.


def total_steps(config, num_train: int) -> int:
  if config.total_steps > 0:
    return int(config.total_steps)
  steps_per_epoch = num_train // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {config.batch_size} exceeds the {num_train} training examples")
  return max(1, math.ceil(config.epochs * steps_per_epoch))


def make_schedule(config, num_steps: int) -> optax.Schedule:
  warmup = min(config.warmup_steps, max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.lr, warmup_steps=warmup,
      decay_steps=num_steps, end_value=0.0)


def make_optimizer(config, num_steps: int) -> optax.GradientTransformation:
  """The config's optimizer; with `linear_probe_steps`, a head-only phase first.

  During the probe the backbone's updates are zero and its optimizer state
  (moments, schedule position) does not move, so the full fine-tune that
  follows starts with its own warm-up over the remaining steps.
  """
  probe = int(config.get("linear_probe_steps", 0) or 0)
  if probe <= 0:
    return _base_optimizer(config, num_steps)
  if probe >= num_steps:
    raise ValueError(f"config.linear_probe_steps={probe} leaves no fine-tuning steps "
                     f"of the {num_steps} in this run")
  labels = lambda params: {k: jax.tree.map(lambda _: "head" if k == "head" else "backbone", v)
                           for k, v in params.items()}
  return optax.multi_transform(
      {"head": _base_optimizer(config, num_steps),
       "backbone": hold_until(_base_optimizer(config, num_steps - probe), probe)}, labels)


def hold_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
  """`inner`, frozen for its first `steps` updates: zero updates, state unchanged."""
  def init(params):
    return inner.init(params), jnp.zeros((), jnp.int32)

  def update(updates, state, params=None):
    inner_state, count = state
    new_updates, new_state = inner.update(updates, inner_state, params)
    active = count >= steps
    new_updates = jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), new_updates)
    new_state = jax.tree.map(lambda n, o: jnp.where(active, n, o), new_state, inner_state)
    return new_updates, (new_state, count + 1)

  return optax.GradientTransformation(init, update)


def _base_optimizer(config, num_steps: int) -> optax.GradientTransformation:
  schedule = make_schedule(config, num_steps)
  # Decay kernels only: decaying biases and norm scales hurts small models.
  decay_mask = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
  if config.optimizer == "adamw":
    opt = optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask)
  elif config.optimizer == "sgd":
    opt = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
                      optax.sgd(schedule, momentum=config.momentum, nesterov=True))
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; valid: adamw, sgd")
  if config.grad_clip_norm > 0:
    opt = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), opt)
  return opt


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  """Per-example softmax cross-entropy with optional label smoothing."""
  num_classes = logits.shape[-1]
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def make_loss(config) -> Callable:
  """The config's training loss, (logits [B, C], labels [B]) -> scalar.

  "ce": mean cross-entropy (with `label_smoothing`); "gatekeeper": the
  Gatekeeper confidence-tuning loss (arXiv 2502.19335) with weight
  `gatekeeper_alpha` on the correct rows' cross-entropy, see
  `cascade.gatekeeper_loss`.
  """
  loss = config.get("loss", "ce")
  if loss == "ce":
    smoothing = float(config.label_smoothing)
    return lambda logits, labels: cross_entropy(logits, labels, smoothing).mean()
  if loss == "gatekeeper":
    from duojax import cascade  # pylint: disable=g-import-not-at-top
    alpha = float(config.gatekeeper_alpha)
    return lambda logits, labels: cascade.gatekeeper_loss(logits, labels, alpha)
  raise ValueError(f"unknown loss {loss!r}; valid: ce, gatekeeper")


def init_state(params, batch_stats, optimizer) -> TrainState:
  return {"params": params, "batch_stats": batch_stats,
          "opt_state": optimizer.init(params),
          "step": jnp.zeros((), jnp.int32), "nonfinite": jnp.zeros((), jnp.int32)}


def make_train_step(graphdef, optimizer, *, mesh: Mesh, seed: int,
                    label_smoothing: float = 0.0, frozen_stats_steps: int = 0,
                    state_sharding=None, loss_fn: Callable | None = None) -> Callable:
  """Jitted (state, batch) -> (state, metrics) over `mesh`; state is donated.

  `loss_fn(logits, labels) -> scalar` (see `make_loss`) replaces the default
  cross-entropy with `label_smoothing`.

  `state_sharding` (a tree of shardings like the state, from
  `sharding.state_shardings`) keeps the state split FSDP-style across steps;
  by default it is replicated.

  For the first `frozen_stats_steps` steps (a linear probe) BatchNorm running
  statistics keep their loaded values, as the frozen backbone's weights do.
  """
  apply = make_apply(graphdef)
  # Dropout keys are a pure function of (seed, step): resuming needs no RNG state.
  dropout_key = jax.random.fold_in(jax.random.key(seed), 0x0D0)

  def train_step(state: TrainState, batch):
    step_key = jax.random.fold_in(dropout_key, state["step"])

    def objective(params):
      # Built inside the differentiated function: NNX RNG streams count their
      # draws, and may only be mutated at the trace level that created them.
      rngs = nnx.Rngs(dropout=step_key)
      logits, _, batch_stats = apply(params, state["batch_stats"], batch["image"],
                                     train=True, rngs=rngs)
      loss = (cross_entropy(logits, batch["label"], label_smoothing).mean() if loss_fn is None
              else loss_fn(logits, batch["label"]))
      return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(
        state["params"])
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if frozen_stats_steps > 0:
      frozen = state["step"] < frozen_stats_steps
      batch_stats = jax.tree.map(lambda new, old: jnp.where(frozen, old, new),
                                 batch_stats, state["batch_stats"])
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    finite = jnp.isfinite(loss) & jnp.isfinite(optax.tree.norm(params))
    new_state = {"params": params, "batch_stats": batch_stats, "opt_state": opt_state,
                 "step": state["step"] + 1,
                 # Counted on device so the host only looks at log/save time. The
                 # new parameters are checked too: a finite loss can still come
                 # with an update that overflows them.
                 "nonfinite": state["nonfinite"] + (~finite).astype(jnp.int32)}
    metrics = {"loss": loss, "accuracy": accuracy, "grad_norm": optax.tree.norm(grads)}
    return new_state, metrics

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  state_sharding = rep if state_sharding is None else state_sharding
  return jax.jit(train_step, in_shardings=(state_sharding, data),
                 out_shardings=(state_sharding, rep), donate_argnums=0)


def make_eval_step(graphdef, *, mesh: Mesh, state_sharding=None) -> Callable:
  """Jitted (params, batch_stats, batch) -> sums of correct, NLL and count over the mask.

  `state_sharding`: the train state's shardings (FSDP), else replicated.
  """
  apply = make_apply(graphdef)

  def eval_step(params, batch_stats, batch):
    logits, _, _ = apply(params, batch_stats, batch["image"])
    mask = batch["mask"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    nll = cross_entropy(logits, batch["label"])
    return {"correct": jnp.sum(correct * mask), "nll": jnp.sum(nll * mask),
            "count": jnp.sum(mask)}

  rep, data = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  params, stats = ((rep, rep) if state_sharding is None else
                   (state_sharding["params"], state_sharding["batch_stats"]))
  return jax.jit(eval_step, in_shardings=(params, stats, data), out_shardings=rep)


def evaluate_batches(eval_step, params, batch_stats, batches) -> dict[str, float]:
  """Accuracy and NLL of a model over an iterable of masked batches."""
  totals = None
  for batch in batches:
    sums = eval_step(params, batch_stats, batch)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  if totals is None:
    raise ValueError("evaluation split is empty")
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / count,
          "nll": float(totals["nll"]) / count, "count": int(count)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What identifies a trained model, stored in checkpoint meta."""
  model_name: str
  model_overrides: dict
  num_classes: int
  image_shape: tuple[int, int, int]

  def as_meta(self) -> dict:
    return {"model_name": self.model_name, "model_overrides": dict(self.model_overrides),
            "num_classes": self.num_classes, "image_shape": list(self.image_shape)}

  @classmethod
  def from_meta(cls, meta: dict) -> "ModelSpec":
    return cls(meta["model_name"], dict(meta["model_overrides"]), int(meta["num_classes"]),
               tuple(meta["image_shape"]))

  def build(self, seed: int = 0) -> nnx.Module:
    return build_model(self.model_name, self.model_overrides, self.num_classes,
                       self.image_shape, seed)
