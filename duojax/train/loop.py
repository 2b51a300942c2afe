"""The training loop: data, model, sharded steps, checkpoints, logs.

`train_and_evaluate(config, workdir)` is what `train.py` runs. Everything that
can be checked before training (config values, data, model vs image shape, an
existing checkpoint's architecture) is checked before the workdir is touched,
so bad input never leaves a half-written workdir behind.

Crashes: a run resumes from the newest checkpoint that restores (see
`checkpoint.restore_newest`), and a SIGTERM (pre-emption) or SIGUSR1 ends the
current step, checkpoints it and raises `Preempted` (train.py exits 128 + the
signal's number); rerunning the same command continues bit-identically.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import threading
import time

import jax
import numpy as np
import tqdm

from duojax import config_lib, convert, data, files
from duojax.errors import CheckpointError, ConfigError, TrainingDiverged
from duojax.models import functional
from duojax.models.spec import ModelSpec
from duojax.parallel import sharding
from duojax.timing import PhaseClock
from duojax.train import checkpoint, hydra_member, optim, steps

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
HYDRA_HEADS_FILE = "hydra_heads.json"  # a Hydra member's head importance and kept heads


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
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


# Signals that ask a run to stop and come back later: SIGTERM is what SLURM,
# Kubernetes and pre-emptible cloud VMs send some seconds before killing a job;
# SIGUSR1 is the early warning SLURM sends with `--signal=USR1@<seconds>`.
# SIGINT (Ctrl-C) is left alone: a person at the terminal wants it to stop now.
STOP_SIGNALS = tuple(
  getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name)
)


class Preempted(Exception):
  """Training stopped on a stop signal after checkpointing its last step.

  `exit_code` is the shell's 128 + signal number (143 for SIGTERM), so a job
  scheduler sees a run killed by the signal, not a finished or failed one.
  """

  def __init__(self, signum: int, step: int):
    self.signum, self.step, self.exit_code = signum, step, 128 + signum
    super().__init__(
      f"pre-empted by {signal.Signals(signum).name} at step {step}; "
      "checkpoint saved, rerun the same command to resume"
    )


class _StopSignals:
  """While active, STOP_SIGNALS only set a flag, which the training loop reads
  after each step: it finishes the step, checkpoints it and raises Preempted,
  so a signal never lands in the middle of a step or a save.

  Installed from the main thread only (Python allows no other); a run started
  from another thread keeps the signals' usual effect.
  """

  def __init__(self):
    self.signum, self._previous = None, {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in STOP_SIGNALS:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc_info):
    for signum, handler in self._previous.items():
      # None: a handler installed outside Python, which cannot be put back.
      signal.signal(signum, signal.SIG_DFL if handler is None else handler)
    return False

  def _handle(self, signum, frame):
    del frame
    self.signum = self.signum or signum

  def requested(self, at_sync_point: bool) -> int | None:
    """The signal to stop on, if any; with several processes, only at sync points."""
    if jax.process_count() == 1:
      return self.signum
    if not at_sync_point:
      return None
    # All processes must stop after the same step (the others would hang in
    # the next step's collectives) and a signal reaches hosts at different
    # times: they agree at steps every process passes, on any one's signal.
    from jax.experimental import multihost_utils

    signums = multihost_utils.process_allgather(np.int32(self.signum or 0))
    return int(np.max(signums)) or None


def _record_step(line: str) -> float:
  """A log line's step; inf (dropped on resume) for a line torn by a kill."""
  try:
    return json.loads(line)["step"] if line.endswith("\n") else float("inf")
  except (ValueError, KeyError, TypeError):
    return float("inf")


def _atomic_json(path: str, obj) -> None:
  files.write_atomically(path, json.dumps(obj, indent=2))


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
  process = jax.process_index()
  dataset = data.load_dataset_of(config)
  spec = ModelSpec(
    config.model_name,
    config_lib.model_overrides(config),
    dataset.num_classes,
    tuple(dataset.image_shape),
  )
  if config.prune_from:  # a Hydra member: the pruned source ViT's architecture
    if config_lib.model_overrides(config):
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
  model = spec.build(seed=config.seed)
  mesh = sharding.make_mesh(config.num_devices, config.fsdp)
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % sharding.num_batch_shards(mesh):
      raise ConfigError(
        f"config.{key}={config[key]} is not divisible by the {mesh.size} devices "
        f"(mesh {dict(mesh.shape)})"
      )
  num_steps = optim.total_steps(config, len(dataset.train.indices))
  steps_per_epoch = max(1, data.steps_per_epoch(len(dataset.train), config.batch_size))
  meta = {**spec.as_meta(), "dataset": config.dataset, "config": config.to_dict()}

  existing, saved_meta = _existing_checkpoint(workdir, meta)
  if require_resume and existing is None:
    raise CheckpointError(f"--resume was given but workdir {workdir!r} holds no checkpoint")

  if config.init_from and existing is None:
    model = _init_from(config.init_from, meta, sharding.replicated(mesh))
  if config.prune_from and existing is None:
    model, heads = hydra_member.prune_checkpoint(
      config.prune_from,
      dataset,
      keep=config.prune_keep,
      num_images=config.prune_images,
      seed=config.prune_seed,
      sharding=sharding.replicated(mesh),
    )
    if process == 0:
      os.makedirs(workdir, exist_ok=True)
      _atomic_json(
        os.path.join(workdir, HYDRA_HEADS_FILE),
        {"prune_from": os.path.abspath(config.prune_from), **heads},
      )
  info = None
  if config.init_weights and existing is None:
    info = convert.load_pretrained(
      model, config.init_weights, config.init_layout, head=config.init_head
    )
    if process == 0:
      _report_init(config.init_weights, info)
  inputs = _input_spec(config, dataset, saved_meta, info)
  meta["input"] = inputs.as_meta()
  graphdef, params, batch_stats = functional.split_model(model)
  optimizer = optim.make_optimizer(config, num_steps)
  init = lambda p, b: steps.init_state(p, b, optimizer)
  state_sharding = sharding.state_shardings(jax.eval_shape(init, params, batch_stats), mesh)
  # The optimizer state is created already split (under FSDP it never exists
  # whole on one device); the parameters are split as they are placed.
  params, batch_stats = jax.device_put(
    (params, batch_stats), (state_sharding["params"], state_sharding["batch_stats"])
  )
  state = jax.jit(init, out_shardings=state_sharding)(params, batch_stats)

  os.makedirs(workdir, exist_ok=True)
  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints, cleanup_tmp=True)
  start_step = 0
  if existing is not None:
    try:
      state, start_step = _restore_newest(manager, state, meta, workdir, warn=process == 0)
    except BaseException:
      manager.close()  # its threads would otherwise print tracebacks at exit
      raise
  log = MetricsLog(os.path.join(workdir, METRICS_FILE), start_step, enabled=process == 0)
  if process == 0:
    _atomic_json(os.path.join(workdir, "config.json"), config.to_dict())

  image_stats = (inputs.mean, inputs.std)
  train_step = steps.make_train_step(
    graphdef,
    optimizer,
    mesh=mesh,
    seed=config.seed,
    loss_fn=steps.make_loss(config),
    frozen_stats_steps=config.linear_probe_steps,
    state_sharding=state_sharding,
    image_stats=image_stats,
  )
  eval_step = steps.make_eval_step(
    graphdef, mesh=mesh, state_sharding=state_sharding, image_stats=image_stats
  )
  # uint8 batches; the steps normalise them on the device.
  pipeline = dict(sharding=sharding.batch_sharding(mesh), workers=config.data_workers)
  batches = data.train_batches(
    dataset.train,
    global_batch_size=config.batch_size,
    seed=config.seed,
    start_step=start_step,
    augment=config_lib.augmentations(config),
    crop_padding=config.crop_padding,
    rrc_scale=tuple(config.rrc_scale),
    rrc_ratio=tuple(config.rrc_ratio),
    **pipeline,
  )

  def evaluate(split):
    return steps.evaluate_batches(
      eval_step,
      state["params"],
      state["batch_stats"],
      data.eval_batches(split, global_batch_size=config.eval_batch_size, **pipeline),
    )

  def check_finite(step):
    bad = int(state["nonfinite"])
    if bad:
      last = manager.latest_step()
      manager.close()
      raise TrainingDiverged(
        f"loss became NaN/inf ({bad} step(s)) before step {step}; "
        f"last good checkpoint: {'none' if last is None else f'step {last}'} in {workdir!r}"
      )

  def save(step):
    check_finite(step)
    checkpoint.save(manager, step, state, {**meta, "step": step, "data_step": step})

  pending, t_log, final_val = [], time.perf_counter(), None
  bar = tqdm.tqdm(
    total=num_steps,
    initial=start_step,
    disable=process != 0,
    desc=config.model_name,
    mininterval=2.0,
    dynamic_ncols=True,
  )
  t_start = time.perf_counter()
  clock.end("setup", wait=state)
  with _StopSignals() as stop_signals:
    for step in range(start_step + 1, num_steps + 1):
      state, metrics = train_step(state, next(batches))
      if step == start_step + 1:
        clock.end("first_step", wait=state)
      pending.append(metrics)
      bar.update(1)
      # Asked before logging, so a stopping run logs the steps it trained
      # since the last record: the log then covers every step exactly once.
      stop = stop_signals.requested(at_sync_point=step % config.log_every == 0)
      if step % config.log_every == 0 or step == num_steps or stop:
        means = {
          k: float(np.mean(v))
          for k, v in jax.device_get(jax.tree.map(lambda *xs: np.stack(xs), *pending)).items()
        }
        now = time.perf_counter()
        record = {
          "step": step,
          "train_loss": means["loss"],
          "train_accuracy": means["accuracy"],
          "grad_norm": means["grad_norm"],
          "images_per_s": len(pending) * config.batch_size / (now - t_log),
        }
        pending, t_log = [], now
        check_finite(step)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['train_accuracy']:.3f}")
        log.write(record)
      if step % steps_per_epoch == 0 or step == num_steps:
        clock.end("steps", wait=state)
        val = evaluate(dataset.val)
        log.write(
          {
            "step": step,
            "epoch": step / steps_per_epoch,
            "val_accuracy": val["accuracy"],
            "val_nll": val["nll"],
          }
        )
        final_val = val if step == num_steps else None
        clock.end("validation")
      if step % config.checkpoint_every == 0 or step == num_steps or stop:
        clock.end("steps", wait=state)
        save(step)
        clock.end("checkpoint")
      if stop:
        bar.close()
        batches.close()
        manager.close()
        raise Preempted(stop, step)
  bar.close()
  batches.close()  # stops the prefetch thread before evaluation and exit
  train_seconds = time.perf_counter() - t_start
  if start_step >= num_steps:
    check_finite(num_steps)
  clock.end("steps", wait=state)

  # The last step's validation already scored the final weights on val.
  val = final_val or evaluate(dataset.val)
  test = evaluate(dataset.test) if config.final_test else {"accuracy": None, "nll": None}
  summary = {
    "model_name": config.model_name,
    "dataset": config.dataset,
    "steps": num_steps,
    "resumed_from": start_step,
    "train_seconds": round(train_seconds, 1),
    "params": functional.count_params(state["params"]),
    # Parameters + optimizer state on the fullest device (FSDP shrinks it).
    "state_bytes_per_device": sharding.bytes_per_device(state),
    "flops_per_image": functional.flops_per_image(
      graphdef, state["params"], state["batch_stats"], spec.image_shape
    ),
    "val_accuracy": val["accuracy"],
    "val_nll": val["nll"],
    "test_accuracy": test["accuracy"],
    "test_nll": test["nll"],
    "checkpoint": os.path.join(os.path.abspath(workdir), "checkpoints", str(num_steps)),
  }
  clock.end("final_eval")
  summary["seconds"] = clock.rounded()
  if process == 0:
    _atomic_json(os.path.join(workdir, SUMMARY_FILE), summary)
  manager.close()
  return summary


def _report_init(path: str, info: dict) -> None:
  notes = [f"layout {info['layout']}", f"{info['loaded_tensors']} tensors"]
  if info["fresh_head"]:
    notes.append("fresh classifier head")
  if info["resampled_posemb"]:
    before, after = info["resampled_posemb"]
    notes.append(f"position embeddings resampled {before[1]} -> {after[1]} tokens")
  print(f"initialised from {path} ({', '.join(notes)})", flush=True)


def _init_from(workdir: str, meta: dict, replicated):
  """The trained model of `workdir`, after checking it has this run's architecture."""
  _, saved = checkpoint.read_meta(workdir)
  checkpoint.check_compatible(saved, meta, where=workdir)
  model, _ = checkpoint.load_model(workdir, sharding=replicated)
  return model


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
  checkpoint.check_compatible(saved, meta, where=workdir)
  return step, saved


def _input_spec(config, dataset, saved_meta: dict | None, pretrained: dict | None):
  """The model's input size and normalisation (see config.input_mean).

  A resumed run keeps the one it started with; a fine-tune of a duojax
  checkpoint (init_from, prune_from) inherits its source's.
  """
  size = int(dataset.image_shape[0])
  if saved_meta is not None and "input" in saved_meta:
    return data.InputSpec.from_meta(saved_meta["input"])
  if tuple(config.input_mean):
    spec = data.InputSpec(size, tuple(config.input_mean), tuple(config.input_std), "config")
  elif pretrained is not None and int(dataset.image_shape[2]) == 3:
    family = "vit" if config.model_name.startswith("vit") else "resnet"
    mean, std, source = data.pretrained_stats(pretrained["layout"], family, config.init_weights)
    spec = data.InputSpec(size, mean, std, source)
  else:
    source_dir = config.init_from or config.prune_from
    source = checkpoint.read_meta(source_dir)[1].get("input") if source_dir else None
    if source is not None:
      spec = dataclasses.replace(data.InputSpec.from_meta(source), image_size=size)
    else:  # (also a pretrained RGB file fine-tuned on images of other channels)
      spec = data.InputSpec(
        size,
        tuple(float(v) for v in dataset.mean),
        tuple(float(v) for v in dataset.std),
        "data set",
      )
  try:
    spec.check(int(dataset.image_shape[2]))
  except ValueError as e:
    raise ConfigError(f"{e}: set config.input_mean and config.input_std") from None
  return spec


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
