"""Orbax checkpoints of a training run: the state pytree plus a JSON `meta`.

A checkpoint holds two items:
  * `state`: {"params", "batch_stats", "opt_state", "step"} as plain pytrees
    (pure dicts, not NNX objects), so they restore without Flax internals;
  * `meta`: JSON with what is needed to rebuild the model and to check that a
    checkpoint fits a config (model name and overrides, classes, image shape,
    dataset) plus the data position (the pipeline is a pure function of
    (seed, step), so the step is the position).

Orbax writes each step into a temporary directory and renames it when done,
so a crash never leaves a half-written step that looks finished.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

# Keys of `meta` that must agree between a checkpoint and the run resuming it.
COMPATIBILITY_KEYS = ("model_name", "model_overrides", "num_classes", "image_shape")


class CheckpointError(ValueError):
  """A checkpoint that is missing or does not fit; the message is one line."""


def make_manager(workdir: str, *, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, meta: dict,
         *, wait: bool = True) -> None:
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
  if wait:
    manager.wait_until_finished()


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restores `state` with the shapes, dtypes and shardings of `abstract_state`."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
  return restored["state"], restored["meta"]


def read_meta(workdir: str, step: int | None = None) -> tuple[int, dict]:
  """Returns (step, meta) of the latest (or given) checkpoint in `workdir`."""
  if not os.path.isdir(workdir):
    raise CheckpointError(f"workdir {workdir!r} does not exist")
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise CheckpointError(f"workdir {workdir!r} holds no checkpoints (train into it first)")
  manager = make_manager(workdir, create=False)
  try:
    steps = manager.all_steps()
    if not steps:
      raise CheckpointError(f"workdir {workdir!r} holds no checkpoints (train into it first)")
    if step is None:
      step = max(steps)
    elif step not in steps:
      raise CheckpointError(f"workdir {workdir!r} has no checkpoint at step {step}; "
                            f"available: {sorted(steps)}")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  finally:
    manager.close()
  return step, meta


def check_compatible(meta: dict, expected: dict, *, where: str) -> None:
  """Raises CheckpointError naming the first field where the two disagree."""
  for key in COMPATIBILITY_KEYS:
    have, want = _jsonish(meta.get(key)), _jsonish(expected.get(key))
    if have != want:
      raise CheckpointError(
          f"checkpoint in {where!r} has {key}={have!r} but the config asks for {want!r}; "
          "use another workdir or the matching config")


def check_fits_data(meta: dict, image_shape, num_classes: int, *, where: str) -> None:
  """Raises CheckpointError when a checkpoint's model cannot take this data."""
  if list(image_shape) != list(meta["image_shape"]) or num_classes != meta["num_classes"]:
    raise CheckpointError(
        f"{where!r} was trained on {meta['image_shape']} images with {meta['num_classes']} "
        f"classes, the data has {list(image_shape)} and {num_classes}")


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs (with shardings) describing `tree`, for restoring into."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _jsonish(value):
  """Normalises tuples to lists so values compare equal after a JSON round trip."""
  if isinstance(value, (tuple, list)):
    return [_jsonish(v) for v in value]
  if isinstance(value, dict):
    return {k: _jsonish(v) for k, v in value.items()}
  return value


def load_model(workdir: str, step: int | None = None, *, sharding=None):
  """(model, meta): the NNX model of a checkpoint, with its trained weights.

  The abstract train state is rebuilt from the checkpoint's own config, so the
  optimizer state restores with the right structure (and is then dropped).
  Arrays come back with `sharding` (default: this process's first device),
  whatever mesh wrote them: a checkpoint of an FSDP run on 8 devices loads
  on 1, and a multi-process job passes a replicated sharding of its mesh.
  """
  import ml_collections
  from flax import nnx

  from duojax import train_lib  # here, not at the top: train_lib is heavier

  step, meta = read_meta(workdir, step)
  spec = train_lib.ModelSpec.from_meta(meta)
  config = ml_collections.ConfigDict(meta["config"])
  model = spec.build(seed=0)
  graphdef, params, batch_stats = train_lib.split_model(model)
  # Only the optimizer state's structure matters here, not its schedule length.
  num_steps = max(int(meta["step"]), int(config.get("linear_probe_steps", 0) or 0) + 1, 1)
  optimizer = train_lib.make_optimizer(config, num_steps)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      jax.eval_shape(lambda: train_lib.init_state(params, batch_stats, optimizer)))
  manager = make_manager(workdir, create=False)
  try:
    state, meta = restore(manager, step, abstract)
  except Exception as e:  # orbax raises many types; the user needs one line
    raise CheckpointError(f"cannot restore step {step} from {workdir!r}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
  finally:
    manager.close()
  model = nnx.merge(graphdef, nnx.State(state["params"]), nnx.State(state["batch_stats"]))
  return model, meta
