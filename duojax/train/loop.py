"""The training loop: data, model, sharded steps, checkpoints, logs.

`train_and_evaluate(config, workdir)` is what `train.py` runs: `_plan` reads
and checks the config, data, model and any existing checkpoint before the
workdir is touched (bad input never leaves a half-written workdir behind);
`model_init.init_model` picks where the weights start; `_initial_state`
places the train state on the mesh; then, inside a `RunContext` that closes
the checkpoint manager, batches and progress bar once whatever happens, the
restore and a `_Trainer`, which steps and logs, validates and checkpoints.

Crashes: a run resumes from the newest checkpoint that restores (see
`checkpoint.restore_newest`), and a SIGTERM (pre-emption) or SIGUSR1 ends the
current step, checkpoints it and raises `Preempted` (see `preemption`; train.py
exits 128 + the signal's number); rerunning the same command continues
bit-identically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import tqdm

from duojax import config_lib, data, files
from duojax.convert import file_options
from duojax.errors import CheckpointError, ConfigError, FileError, TrainingDiverged
from duojax.models import functional
from duojax.models.spec import ModelSpec
from duojax.parallel import sharding
from duojax.timing import PhaseClock
from duojax.train import checkpoint, hydra_member, model_init, optim, recipe, steps
from duojax.train.model_init import HYDRA_HEADS_FILE  # noqa: F401  (read by duojax.eval)
from duojax.train.preemption import Preempted, StopSignals
from duojax.train.run_context import RunContext
from duojax.train.sizing import sizes_for_run

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"


class MetricsLog:
  """Append-only JSONL of per-step and per-epoch metrics, written by process 0.

  On resume, lines past the restored step are dropped so a resumed run's log
  has neither duplicated nor missing steps.
  """

  def __init__(self, path: str, resume_step: int, enabled: bool):
    self.path, self.enabled = path, enabled
    if enabled:
      kept = []
      if resume_step > 0 and os.path.exists(path):
        with open(path) as f:
          kept = [line for line in f if _record_step(line) <= resume_step]
      files.write_atomically(path, "".join(kept))

  def write(self, record: dict) -> None:
    if self.enabled:
      try:
        with open(self.path, "a") as f:
          f.write(json.dumps(record) + "\n")
      except OSError as e:  # a full disk: the user's to fix, not a bug
        raise FileError(e.errno, f"cannot write {self.path}: {e.strerror}") from e


def _record_step(line: str) -> float:
  """A log line's step; inf (dropped on resume) for a line torn by a kill."""
  try:
    return json.loads(line)["step"] if line.endswith("\n") else float("inf")
  except (ValueError, KeyError, TypeError):
    return float("inf")


def _atomic_json(path: str, obj) -> None:
  files.write_atomically(path, json.dumps(obj, indent=2))


@dataclasses.dataclass(frozen=True)
class _Plan:
  """What a config and its data imply, all checked before the workdir is touched."""

  config: Any  # the run's config, its sizes chosen from the data (duojax.train.sizing)
  dataset: data.Dataset
  spec: ModelSpec
  mesh: jax.sharding.Mesh
  num_steps: int
  steps_per_epoch: int
  meta: dict  # the checkpoints' meta, less "input" (known once the model's start is)
  saved_meta: dict | None  # the meta of the checkpoint this run resumes; None: a new run


@dataclasses.dataclass(frozen=True)
class _Steps:
  """The model's static graph and the jitted steps over the run's mesh."""

  graphdef: Any
  train: Callable
  eval: Callable


def train_and_evaluate(config, workdir: str, *, require_resume: bool = False) -> dict:
  """Trains (or resumes) the model of `config` into `workdir`; returns the summary.

  The summary's `seconds` splits the run's wall time (from this call on) into
  setup (data, model, restore), first_step (its compilation included), steps
  (the rest of training, the host pipeline included), validation (per epoch),
  checkpoint (saves) and final_eval (val and, with `config.final_test`, test at
  the end; without it the summary's test entries are None).
  """
  clock = PhaseClock()
  config_lib.validate(config)
  plan, fresh = _plan(config, workdir, require_resume)
  config = plan.config  # what the run trains with and saves
  model, inputs = model_init.init_model(
    config,
    workdir,
    fresh,
    dataset=plan.dataset,
    meta=plan.meta,
    saved_meta=plan.saved_meta,
    replicated=sharding.replicated(plan.mesh),
  )
  meta = {**plan.meta, "input": inputs.as_meta()}
  # Images cut and resized as the model's spec says (a pretrained file's own
  # crop and filter may differ from the config's).
  read_as = data.read_as(plan.dataset, inputs.crop_fraction, inputs.interpolation)
  plan = dataclasses.replace(plan, dataset=read_as)
  jitted, state = _initial_state(config, plan, model, inputs)

  os.makedirs(workdir, exist_ok=True)
  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints, cleanup_tmp=True)
  with RunContext(manager) as run:
    process = jax.process_index()
    start_step = 0
    if plan.saved_meta is not None:
      state, start_step = _restore_newest(manager, state, meta, workdir, warn=process == 0)
    log = MetricsLog(os.path.join(workdir, METRICS_FILE), start_step, enabled=process == 0)
    if process == 0:
      _atomic_json(os.path.join(workdir, "config.json"), config.to_dict())
    trainer = _Trainer(config, workdir, plan, meta, jitted, run, log, clock, state, start_step)
    final_val = trainer.train()
    return trainer.finish(final_val)


def _plan(config, workdir: str, require_resume: bool):
  """(the run's `_Plan`, the model of its spec freshly built); reads but never writes."""
  mesh = sharding.make_mesh(config.num_devices, config.fsdp)
  # Sizes left to the data (AUTO) chosen, and every size checked, knowing the devices.
  devices, first = sharding.num_batch_shards(mesh), jax.process_index() == 0
  config, _ = sizes_for_run(config, devices, verbose=first)
  dataset = data.load_dataset_of(config)
  spec = _model_spec(config, dataset)
  fresh = spec.build(seed=config.seed)  # fails here if the data's images do not fit the model
  recipe.check_batch_size(config.batch_size, config.grad_accum_steps, mesh.size)
  num_steps = optim.total_steps(config, len(dataset.train.indices))
  steps_per_epoch = max(1, data.steps_per_epoch(len(dataset.train), config.batch_size))
  meta = {**spec.as_meta(), "dataset": config.dataset, "config": config.to_dict()}
  existing, saved_meta = _existing_checkpoint(workdir, meta)
  if require_resume and existing is None:
    raise CheckpointError(f"--resume was given but workdir {workdir!r} holds no checkpoint")
  plan = _Plan(config, dataset, spec, mesh, num_steps, steps_per_epoch, meta, saved_meta)
  return plan, fresh


def _model_spec(config, dataset) -> ModelSpec:
  """The model `config` asks for; a Hydra member's is its pruned source ViT's."""
  overrides = config_lib.model_overrides(config)
  if config.init_weights and not config.prune_from:
    # What the file's weights need beyond their names (TensorFlow's padding, a CLIP
    # tower's QuickGELU, ...); the config's own keys win.
    found = file_options.file_overrides(config.model_name, config.init_weights, config.init_layout)
    overrides = {**found, **overrides}
  spec = ModelSpec(config.model_name, overrides, dataset.num_classes, tuple(dataset.image_shape))
  if not config.prune_from:
    return spec
  if overrides:
    raise ConfigError(
      "config.model overrides must stay unset with "
      "config.prune_from: the architecture is the source's"
    )
  spec, source_meta = hydra_member.pruned_spec(
    config.prune_from, config.prune_keep, config.model_name
  )
  checkpoint.check_fits_data(
    source_meta, dataset.image_shape, dataset.num_classes, where=config.prune_from
  )
  return spec


def _initial_state(config, plan: _Plan, model, inputs) -> tuple[_Steps, dict]:
  """(the jitted steps, the train state of `model` placed on the mesh)."""
  graphdef, params, batch_stats = functional.split_model(model)
  optimizer = optim.make_optimizer(config, plan.num_steps)
  options = recipe.Recipe.from_config(config)  # Mixup/CutMix, EMA, gradient accumulation
  init = lambda p, b: steps.init_state(p, b, optimizer, options)
  state_sharding = sharding.state_shardings(jax.eval_shape(init, params, batch_stats), plan.mesh)
  # The optimizer state is created already split (under FSDP it never exists
  # whole on one device); the parameters are split as they are placed.
  params, batch_stats = jax.device_put(
    (params, batch_stats), (state_sharding["params"], state_sharding["batch_stats"])
  )
  state = jax.jit(init, out_shardings=state_sharding)(params, batch_stats)
  image_stats = (inputs.mean, inputs.std)  # uint8 batches: the steps normalise on the device
  train_step = steps.make_train_step(
    graphdef,
    optimizer,
    mesh=plan.mesh,
    seed=config.seed,
    loss_fn=steps.make_loss(config),
    frozen_stats_steps=config.linear_probe_steps,
    state_sharding=state_sharding,
    image_stats=image_stats,
    recipe=options,
  )
  eval_step = steps.make_eval_step(
    graphdef, mesh=plan.mesh, state_sharding=state_sharding, image_stats=image_stats
  )
  return _Steps(graphdef, train_step, eval_step), state


class _Trainer:
  """A run's training from its start step on: the loop, the work after each
  step (log, validate, checkpoint) and the final evaluation.

  `state` moves with every step; the rest is fixed. The batches and the
  progress bar it opens belong to `run`, which closes them.
  """

  def __init__(self, config, workdir, plan, meta, jitted, run, log, clock, state, start_step):
    self.config, self.workdir, self.plan, self.meta = config, workdir, plan, meta
    self.jitted, self.run, self.log, self.clock = jitted, run, log, clock
    self.state, self.start_step = state, start_step
    self.pipeline = dict(sharding=sharding.batch_sharding(plan.mesh), workers=config.data_workers)
    self.t_start = None

  def train(self) -> dict | None:
    """Steps from start_step to the end; the validation of the last step, if it ran.

    Raises Preempted after checkpointing the step a stop signal ended.
    """
    config, num_steps, start_step = self.config, self.plan.num_steps, self.start_step
    self.run.batches = data.train_batches(
      self.plan.dataset.train,
      global_batch_size=config.batch_size,
      seed=config.seed,
      start_step=start_step,
      augment=config_lib.augmentations(config),
      crop_padding=config.crop_padding,
      rrc_scale=tuple(config.rrc_scale),
      rrc_ratio=tuple(config.rrc_ratio),
      randaugment=tuple(config.randaugment),
      **self.pipeline,
    )
    pending, t_log, final_val = [], time.perf_counter(), None
    self.run.bar = tqdm.tqdm(
      total=num_steps,
      initial=start_step,
      disable=jax.process_index() != 0,
      desc=config.model_name,
      mininterval=2.0,
      dynamic_ncols=True,
    )
    self.t_start = time.perf_counter()
    self.clock.end("setup", wait=self.state)
    with StopSignals() as stop_signals:
      for step in range(start_step + 1, num_steps + 1):
        self.state, metrics = self.jitted.train(self.state, next(self.run.batches))
        if step == start_step + 1:
          self.clock.end("first_step", wait=self.state)
        pending.append(metrics)
        self.run.bar.update(1)
        # Asked before logging, so a stopping run logs the steps it trained
        # since the last record: the log then covers every step exactly once.
        stop = stop_signals.requested(at_sync_point=step % config.log_every == 0)
        if step % config.log_every == 0 or step == num_steps or stop:
          t_log, pending = self._log_train(step, pending, t_log), []
        if step % self.plan.steps_per_epoch == 0 or step == num_steps:
          val = self._validate(step)
          final_val = val if step == num_steps else None
        if step % config.checkpoint_every == 0 or step == num_steps or stop:
          self._save(step)
        if stop:
          self.run.close()  # while a second signal still only sets the flag
          raise Preempted(stop, step)
    return final_val

  def _log_train(self, step: int, pending: list, since: float) -> float:
    """Logs the mean metrics of the steps in `pending`, trained since `since`;
    returns the time of the record."""
    stacked = jax.device_get(jax.tree.map(lambda *xs: np.stack(xs), *pending))
    means = {k: float(np.mean(v)) for k, v in stacked.items()}
    now = time.perf_counter()
    record = {
      "step": step,
      "train_loss": means["loss"],
      "train_accuracy": means["accuracy"],
      "grad_norm": means["grad_norm"],
      "images_per_s": len(pending) * self.config.batch_size / (now - since),
    }
    self.check_finite(step)
    self.run.bar.set_postfix(
      loss=f"{record['train_loss']:.3f}", acc=f"{record['train_accuracy']:.3f}"
    )
    self.log.write(record)
    return now

  def _validate(self, step: int) -> dict:
    """Scores the weights of `step` on val and logs it as the end of an epoch."""
    self.clock.end("steps", wait=self.state)
    val = self.evaluate(self.plan.dataset.val)
    record = {"step": step, "epoch": step / self.plan.steps_per_epoch}
    self.log.write({**record, "val_accuracy": val["accuracy"], "val_nll": val["nll"]})
    self.clock.end("validation")
    return val

  def _save(self, step: int) -> None:
    """Checkpoints `step` (training data position included), unless it diverged."""
    self.clock.end("steps", wait=self.state)
    self.check_finite(step)
    meta = {**self.meta, "step": step, "data_step": step}
    checkpoint.save(self.run.manager, step, self.state, meta)
    self.clock.end("checkpoint")

  def check_finite(self, step: int) -> None:
    """Raises TrainingDiverged if a step so far had a NaN/inf loss."""
    bad = int(self.state["nonfinite"])
    if bad:
      last = self.run.manager.latest_step()
      raise TrainingDiverged(
        f"loss became NaN/inf ({bad} step(s)) before step {step}; "
        f"last good checkpoint: {'none' if last is None else f'step {last}'} "
        f"in {self.workdir!r}"
      )

  def evaluate(self, split) -> dict:
    return steps.evaluate_batches(
      self.jitted.eval,
      *recipe.eval_weights(self.state),  # the EMA's, when the run keeps one
      data.eval_batches(split, global_batch_size=self.config.eval_batch_size, **self.pipeline),
    )

  def finish(self, final_val: dict | None) -> dict:
    """Stops the training pipeline, scores the final weights, writes and returns the summary."""
    self.run.end_training()  # stops the prefetch thread before evaluation and exit
    train_seconds = time.perf_counter() - self.t_start
    num_steps = self.plan.num_steps
    if self.start_step >= num_steps:
      self.check_finite(num_steps)
    self.clock.end("steps", wait=self.state)
    # The last step's validation already scored the final weights on val.
    val = final_val or self.evaluate(self.plan.dataset.val)
    test = (
      self.evaluate(self.plan.dataset.test)
      if self.config.final_test
      else {"accuracy": None, "nll": None}
    )
    summary = self._summary(train_seconds, val, test)
    self.clock.end("final_eval")
    summary["seconds"] = self.clock.rounded()
    if jax.process_index() == 0:
      _atomic_json(os.path.join(self.workdir, SUMMARY_FILE), summary)
    return summary

  def _summary(self, train_seconds: float, val: dict, test: dict) -> dict:
    config, state, num_steps = self.config, self.state, self.plan.num_steps
    return {
      "model_name": config.model_name,
      "dataset": config.dataset,
      "steps": num_steps,
      "resumed_from": self.start_step,
      "train_seconds": round(train_seconds, 1),
      "params": functional.count_params(state["params"]),
      # Parameters + optimizer state on the fullest device (FSDP shrinks it).
      "state_bytes_per_device": sharding.bytes_per_device(state),
      "flops_per_image": functional.flops_per_image(
        self.jitted.graphdef, state["params"], state["batch_stats"], self.plan.spec.image_shape
      ),
      "val_accuracy": val["accuracy"],
      "val_nll": val["nll"],
      "test_accuracy": test["accuracy"],
      "test_nll": test["nll"],
      "checkpoint": os.path.join(os.path.abspath(self.workdir), "checkpoints", str(num_steps)),
    }


def _existing_checkpoint(workdir: str, meta: dict) -> tuple[int | None, dict | None]:
  """(latest step, its meta) in `workdir` if any, after checking it fits `meta` (read-only)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None, None
  # The newest step whose meta reads; the restore later falls back past steps
  # whose arrays do not read. All steps unreadable is an error, not a fresh start.
  found = checkpoint.newest_meta(workdir)
  if found is None:
    return None, None
  step, saved = found
  checkpoint.check_resumable(saved, meta, where=workdir)
  return step, saved


def _restore_newest(manager, state, meta: dict, workdir: str, *, warn: bool):
  """(state, step) of the newest checkpoint that restores into `state`'s layout."""
  step, state, _, skipped = checkpoint.restore_newest(
    manager, checkpoint.abstract_like(state), where=workdir, expected_meta=meta
  )
  if warn:
    for bad, reason, aside in skipped:
      print(
        f"warning: checkpoint step {bad} in {workdir!r} is unreadable ({reason}); "
        f"moved it to {aside!r}, resuming from step {step}",
        file=sys.stderr,
        flush=True,
      )
  return state, int(state["step"])
