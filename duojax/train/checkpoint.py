"""Orbax checkpoints of a training run: the state pytree plus a JSON `meta`.

A checkpoint holds two items:
  * `state`: {"params", "batch_stats", "opt_state", "step"} as plain pytrees
    (pure dicts, not NNX objects), so they restore without Flax internals,
    plus "ema" (the averaged params and batch_stats) when the run keeps a
    weight EMA (`duojax.train.recipe`);
  * `meta`: JSON with what is needed to rebuild the model and to check that a
    checkpoint fits a config (model name and overrides, classes, image shape,
    dataset) plus the data position (the pipeline is a pure function of
    (seed, step), so the step is the position).

Orbax writes each step into a temporary directory (`<step>.orbax-checkpoint-tmp-*`)
and renames it when done, so a crash never leaves a half-written step that
looks finished; such leftovers are never read as steps, and a training run's
manager deletes them. What the rename cannot catch (bytes changed on disk
afterwards, a truncated copy) is caught by `meta["checksums"]`, sums of the
state's arrays taken when saving and checked on every restore: tensorstore
reads flipped bytes back without complaint.

`restore_newest` resumes from the newest step that restores and checks. Newer
unreadable steps are renamed to `<step>.corrupt-<n>` (kept for inspection,
ignored as steps) so a resumed run never writes over or beside them; they are
moved only when an older step restores, so input that no step fits (another
optimizer, say) moves nothing.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from duojax import config_lib
from duojax.errors import CheckpointError, FileError
from duojax.models import functional
from duojax.models.spec import ModelSpec
from duojax.train import optim, recipe
from duojax.train.steps import init_state

# Keys of `meta` that must agree between a checkpoint and the run resuming it.
COMPATIBILITY_KEYS = ("model_name", "model_overrides", "num_classes", "image_shape")


def make_manager(
  workdir: str, *, keep: int = 3, create: bool = True, cleanup_tmp: bool = False
) -> ocp.CheckpointManager:
  """`cleanup_tmp` deletes unfinished saves; only the run writing `workdir` may
  ask for it (a reader would delete the save a running training is writing)."""
  directory = os.path.join(os.path.abspath(workdir), "checkpoints")
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=create, cleanup_tmp_directories=cleanup_tmp
  )
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def save(
  manager: ocp.CheckpointManager, step: int, state: Any, meta: dict, *, wait: bool = True
) -> None:
  meta = {**meta, "checksums": checksums(state)}
  try:
    manager.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    if wait:
      manager.wait_until_finished()
  except OSError as e:  # a full disk or a read-only workdir: the user's to fix, not a bug
    raise FileError(
      e.errno, f"cannot write the checkpoint of step {step} in {manager.directory}: {e.strerror}"
    ) from e


def restore(manager: ocp.CheckpointManager, step: int, abstract_state: Any) -> tuple[Any, dict]:
  """Restores `state` with the shapes, dtypes and shardings of `abstract_state`.

  Raises CheckpointError when the arrays differ from what was saved.
  """
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
    ),
  )
  state, meta = restored["state"], restored["meta"]
  if "checksums" in meta:  # checkpoints written before checksums existed have none
    have = checksums(state)
    bad = [k for k in meta["checksums"] if have.get(k) != meta["checksums"][k]]
    if bad or set(have) != set(meta["checksums"]):
      raise CheckpointError(
        f"checksum mismatch in {(bad or ['the list of arrays'])[0]}: "
        "its bytes changed after the checkpoint was written"
      )
  return state, meta


@jax.jit
def _leaf_sums(tree):
  def one(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
      x = x.astype(jnp.uint8)
    bits = {1: jnp.uint8, 2: jnp.uint16}.get(x.dtype.itemsize, jnp.uint32)
    words = jax.lax.bitcast_convert_type(x, bits).astype(jnp.uint32).ravel()
    # Odd weights: any single changed word changes the sum (mod 2**32), and so
    # does swapping two different words.
    weights = jnp.arange(words.size, dtype=jnp.uint32) * 2 + 1
    return jnp.sum(words * weights, dtype=jnp.uint32)

  return jax.tree.map(one, tree)


def checksums(state: Any) -> dict[str, int]:
  """{array path: weighted sum of its bits}, computed where the arrays live.

  Computed on device, so it works on sharded (FSDP, multi-process) state
  without gathering it; the sums are scalars, replicated on every process.
  """
  sums = jax.device_get(_leaf_sums(state))
  return {
    jax.tree_util.keystr(path): int(value)
    for path, value in jax.tree_util.tree_flatten_with_path(sums)[0]
  }


def describe(error: BaseException, limit: int = 200) -> str:
  """`Type: first line` of an exception, short enough for a one-line message."""
  text = " ".join(str(error).split())
  text = text.split(" See full TensorStore details")[0]  # the rest is a repr of a method
  text = f"{type(error).__name__}: {text}" if text else type(error).__name__
  return text if len(text) <= limit else text[: limit - 3] + "..."


def newest_meta(workdir: str) -> tuple[int, dict] | None:
  """(step, meta) of the newest step whose meta reads; None if there is no step.

  Read-only. Raises CheckpointError when there are steps but no meta reads.
  """
  manager = make_manager(workdir, create=False)
  try:
    failures = []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        return step, manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
          "meta"
        ]
      except Exception as e:  # orbax raises many types for a broken step
        failures.append((step, describe(e)))
  finally:
    manager.close()
  if failures:
    raise _all_unreadable(workdir, failures)
  return None


def restore_newest(
  manager: ocp.CheckpointManager,
  abstract_state: Any,
  *,
  where: str,
  expected_meta: dict | None = None,
):
  """(step, state, meta, skipped): the newest step of `manager` that restores.

  `skipped` lists (step, reason, set-aside path) for each newer step that did
  not restore; those are renamed to `<step>.corrupt-<n>` (by process 0) and
  `manager` is reloaded, so the run can save those steps again. Raises
  CheckpointError, moving nothing, when no step restores.
  """
  failures = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, meta = restore(manager, step, abstract_state)
    except Exception as e:  # orbax raises many types for a broken step
      failures.append((step, describe(e)))
      continue
    if expected_meta is not None:
      check_compatible(meta, expected_meta, where=where)
    skipped = [(bad, reason, _set_aside(manager.directory, bad)) for bad, reason in failures]
    if skipped:
      if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("duojax.checkpoint.set_aside")
      manager.reload()
    return step, state, meta, skipped
  if failures:
    raise _all_unreadable(where, failures)
  raise CheckpointError(f"workdir {where!r} holds no checkpoints (train into it first)")


def _set_aside(directory, step: int) -> str:
  """Renames `directory/<step>` to the first free `<step>.corrupt-<n>`."""
  n = 1
  while os.path.exists(os.path.join(directory, f"{step}.corrupt-{n}")):
    n += 1
  target = os.path.join(directory, f"{step}.corrupt-{n}")
  if jax.process_index() == 0:
    os.rename(os.path.join(directory, str(step)), target)
  return target


def _all_unreadable(where: str, failures) -> CheckpointError:
  steps = "; ".join(f"step {step} ({reason})" for step, reason in failures)
  return CheckpointError(
    f"every checkpoint in {where!r} is unreadable: {steps}; move the checkpoints "
    "directory away to train from scratch (or, if the config changed since, rerun "
    "with the one that wrote them)"
  )


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
      raise CheckpointError(
        f"workdir {workdir!r} has no checkpoint at step {step}; available: {sorted(steps)}"
      )
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises many types; the user needs one line
      raise CheckpointError(
        f"checkpoint step {step} in {workdir!r} is unreadable ({describe(e)})"
      ) from e
  finally:
    manager.close()
  return step, meta


# Overrides that change how a model computes, not its parameters: a run may
# resume, or a trained model be evaluated, with them set either way.
COMPUTE_ONLY_OVERRIDES = ("remat", "attention")


def _parameter_defining(key: str, value):
  if key == "model_overrides" and isinstance(value, dict):
    return {k: v for k, v in value.items() if k not in COMPUTE_ONLY_OVERRIDES}
  return value


def check_compatible(meta: dict, expected: dict, *, where: str) -> None:
  """Raises CheckpointError naming the first field where the two disagree."""
  for key in COMPATIBILITY_KEYS:
    have, want = (_jsonish(_parameter_defining(key, m.get(key))) for m in (meta, expected))
    if have != want:
      raise CheckpointError(
        f"checkpoint in {where!r} has {key}={have!r} but the config asks for {want!r}; "
        "use another workdir or the matching config"
      )


def check_resumable(meta: dict, expected: dict, *, where: str) -> None:
  """`check_compatible`, and that the train state has the checkpoint's layout:
  a run keeps or lacks a weight EMA from start to end (read from each config)."""
  check_compatible(meta, expected, where=where)
  have, want = (float(m.get("config", {}).get("ema_decay", 0.0)) > 0 for m in (meta, expected))
  if have != want:
    raise CheckpointError(
      f"checkpoint in {where!r} was trained {'with' if have else 'without'} a weight EMA but "
      f"the config asks for {'one' if want else 'none'} (config.ema_decay); resume with the "
      "config that wrote it, or use another workdir"
    )


def check_fits_data(
  meta: dict, image_shape, num_classes: int, *, where: str, same_size: bool = True
) -> None:
  """Raises CheckpointError when a checkpoint's model cannot take this data.

  `same_size=False`: only the channels must match (evaluation resizes each
  model's images to its own size on the device).
  """
  shapes_fit = (
    list(image_shape) == list(meta["image_shape"])
    if same_size
    else image_shape[2] == meta["image_shape"][2]
  )
  if not shapes_fit or num_classes != meta["num_classes"]:
    raise CheckpointError(
      f"{where!r} was trained on {meta['image_shape']} images with {meta['num_classes']} "
      f"classes, the data has {list(image_shape)} and {num_classes}"
    )


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


def load_model(workdir: str, step: int | None = None, *, sharding=None, use_ema: bool = True):
  """(model, meta): the NNX model of a checkpoint, with its trained weights.

  A run with a weight EMA (`config.ema_decay` > 0) keeps both weights; its
  model is the EMA's (what its training validated), the optimizer's own
  weights with `use_ema=False`.

  The abstract train state is rebuilt from the checkpoint's own config, so the
  optimizer state restores with the right structure (and is then dropped).
  Arrays come back with `sharding` (default: this process's first device),
  whatever mesh wrote them: a checkpoint of an FSDP run on 8 devices loads
  on 1, and a multi-process job passes a replicated sharding of its mesh.
  """
  step, meta = read_meta(workdir, step)
  spec = ModelSpec.from_meta(meta)
  config = config_lib.complete_config(meta["config"])
  model = spec.build(seed=0)
  graphdef, params, batch_stats = functional.split_model(model)
  # Only the optimizer state's structure matters here, not its schedule length.
  num_steps = max(int(meta["step"]), config.linear_probe_steps + 1, 1)
  optimizer = optim.make_optimizer(config, num_steps)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
    jax.eval_shape(
      lambda: init_state(params, batch_stats, optimizer, recipe.Recipe.from_config(config))
    ),
  )
  manager = make_manager(workdir, create=False)
  try:
    state, meta = restore(manager, step, abstract)
  except Exception as e:  # orbax raises many types; the user needs one line
    # No fallback to an older step: evaluating another model than the one
    # asked for would be a silent wrong answer. Training falls back instead.
    raise CheckpointError(
      f"checkpoint step {step} in {workdir!r} is unreadable ({describe(e)}); "
      "rerunning train.py with its config resumes from the newest "
      "readable step"
    ) from e
  finally:
    manager.close()
  params, batch_stats = (
    recipe.eval_weights(state) if use_ema else (state["params"], state["batch_stats"])
  )
  model = nnx.merge(graphdef, nnx.State(params), nnx.State(batch_stats))
  return model, {**meta, **full_input(meta, config), "config": config.to_dict()}


def full_input(meta: dict, config) -> dict:
  """{"input": meta's input spec} ({} if it has none), with the crop and
  filter of a checkpoint written before the spec held them: its training
  config's, which it was trained and validated with."""
  if "input" not in meta:
    return {}
  view = {"crop_fraction": config.crop_fraction, "interpolation": config.interpolation}
  return {"input": {**view, **meta["input"]}}
