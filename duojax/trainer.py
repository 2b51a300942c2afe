"""The training loop: data, model, sharded steps, checkpoints, logs.

`train_and_evaluate(config, workdir)` is what `train.py` runs. Everything that
can be checked before training (config values, data, model vs image shape, an
existing checkpoint's architecture) is checked before the workdir is touched,
so bad input never leaves a half-written workdir behind.
"""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np
import tqdm

from duojax import checkpoint, config_lib, convert, data, hydra, sharding, train_lib

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
          kept = [line for line in f if json.loads(line)["step"] <= resume_step]
      tmp = path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(kept)
      os.replace(tmp, path)

  def write(self, record: dict) -> None:
    if self.enabled:
      with open(self.path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _atomic_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def train_and_evaluate(config, workdir: str, *, require_resume: bool = False) -> dict:
  """Trains (or resumes) the model of `config` into `workdir`; returns the summary."""
  config_lib.validate(config)
  process = jax.process_index()
  dataset = data.load_dataset(config.dataset, config.data_dir, val_size=config.val_size,
                              split_seed=config.split_seed)
  spec = train_lib.ModelSpec(config.model_name, config_lib.model_overrides(config), dataset.num_classes,
                             tuple(dataset.image_shape))
  if config.prune_from:  # a Hydra member: the pruned source ViT's architecture
    if config_lib.model_overrides(config):
      raise config_lib.ConfigError("config.model overrides must stay unset with "
                                   "config.prune_from: the architecture is the source's")
    spec, source_meta = hydra.pruned_spec(config.prune_from, config.prune_keep, config.model_name)
    checkpoint.check_fits_data(source_meta, dataset.image_shape, dataset.num_classes,
                               where=config.prune_from)
  model = spec.build(seed=config.seed)
  mesh = sharding.make_mesh(config.num_devices, config.fsdp)
  for key in ("batch_size", "eval_batch_size"):
    if config[key] % sharding.num_batch_shards(mesh):
      raise config_lib.ConfigError(
          f"config.{key}={config[key]} is not divisible by the {mesh.size} devices "
          f"(mesh {dict(mesh.shape)})")
  num_steps = train_lib.total_steps(config, len(dataset.train.indices))
  steps_per_epoch = max(1, len(dataset.train.indices) // config.batch_size)
  meta = {**spec.as_meta(), "dataset": config.dataset, "config": config.to_dict()}

  existing = _existing_checkpoint(workdir, meta)
  if require_resume and existing is None:
    raise checkpoint.CheckpointError(
        f"--resume was given but workdir {workdir!r} holds no checkpoint")

  if config.init_from and existing is None:
    model = _init_from(config.init_from, meta, sharding.replicated(mesh))
  if config.prune_from and existing is None:
    model, heads = hydra.prune_checkpoint(
        config.prune_from, dataset, keep=config.prune_keep, num_images=config.prune_images,
        seed=config.prune_seed, sharding=sharding.replicated(mesh))
    if process == 0:
      os.makedirs(workdir, exist_ok=True)
      _atomic_json(os.path.join(workdir, HYDRA_HEADS_FILE),
                   {"prune_from": os.path.abspath(config.prune_from), **heads})
  if config.init_weights and existing is None:
    info = convert.load_pretrained(model, config.init_weights, config.init_layout,
                                   head=config.init_head)
    if process == 0:
      _report_init(config.init_weights, info)
  graphdef, params, batch_stats = train_lib.split_model(model)
  optimizer = train_lib.make_optimizer(config, num_steps)
  init = lambda p, b: train_lib.init_state(p, b, optimizer)
  state_sharding = sharding.state_shardings(jax.eval_shape(init, params, batch_stats), mesh)
  # The optimizer state is created already split (under FSDP it never exists
  # whole on one device); the parameters are split as they are placed.
  params, batch_stats = jax.device_put(
      (params, batch_stats), (state_sharding["params"], state_sharding["batch_stats"]))
  state = jax.jit(init, out_shardings=state_sharding)(params, batch_stats)

  os.makedirs(workdir, exist_ok=True)
  manager = checkpoint.make_manager(workdir, keep=config.keep_checkpoints)
  start_step = 0
  if existing is not None:
    state, _ = checkpoint.restore(manager, existing, checkpoint.abstract_like(state))
    start_step = int(state["step"])
  log = MetricsLog(os.path.join(workdir, METRICS_FILE), start_step, enabled=process == 0)
  if process == 0:
    _atomic_json(os.path.join(workdir, "config.json"), config.to_dict())

  train_step = train_lib.make_train_step(graphdef, optimizer, mesh=mesh, seed=config.seed,
                                         loss_fn=train_lib.make_loss(config),
                                         frozen_stats_steps=config.linear_probe_steps,
                                         state_sharding=state_sharding)
  eval_step = train_lib.make_eval_step(graphdef, mesh=mesh, state_sharding=state_sharding)
  shard = dict(sharding=sharding.batch_sharding(mesh))
  norm = dict(mean=dataset.mean, std=dataset.std)
  batches = data.train_batches(
      dataset.train, global_batch_size=config.batch_size, seed=config.seed,
      start_step=start_step, augment=config_lib.augmentations(config),
      crop_padding=config.crop_padding, **norm, **shard)

  def evaluate(split):
    return train_lib.evaluate_batches(eval_step, state["params"], state["batch_stats"],
                                      data.eval_batches(split, global_batch_size=config.eval_batch_size,
                                                        **norm, **shard))

  def check_finite(step):
    bad = int(state["nonfinite"])
    if bad:
      last = manager.latest_step()
      raise train_lib.TrainingDiverged(
          f"loss became NaN/inf ({bad} step(s)) before step {step}; "
          f"last good checkpoint: {'none' if last is None else f'step {last}'} in {workdir!r}")

  def save(step):
    check_finite(step)
    checkpoint.save(manager, step, state, {**meta, "step": step, "data_step": step})

  pending, t_log = [], time.perf_counter()
  bar = tqdm.tqdm(total=num_steps, initial=start_step, disable=process != 0,
                  desc=config.model_name, mininterval=2.0, dynamic_ncols=True)
  t_start = time.perf_counter()
  for step in range(start_step + 1, num_steps + 1):
    state, metrics = train_step(state, next(batches))
    pending.append(metrics)
    bar.update(1)
    if step % config.log_every == 0 or step == num_steps:
      means = {k: float(np.mean(v)) for k, v in jax.device_get(
          jax.tree.map(lambda *xs: np.stack(xs), *pending)).items()}
      now = time.perf_counter()
      record = {"step": step, "train_loss": means["loss"],
                "train_accuracy": means["accuracy"], "grad_norm": means["grad_norm"],
                "images_per_s": len(pending) * config.batch_size / (now - t_log)}
      pending, t_log = [], now
      check_finite(step)
      bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['train_accuracy']:.3f}")
      log.write(record)
    if step % steps_per_epoch == 0 or step == num_steps:
      val = evaluate(dataset.val)
      log.write({"step": step, "epoch": step / steps_per_epoch,
                 "val_accuracy": val["accuracy"], "val_nll": val["nll"]})
    if step % config.checkpoint_every == 0 or step == num_steps:
      save(step)
  bar.close()
  batches.close()  # stops the prefetch thread before evaluation and exit
  train_seconds = time.perf_counter() - t_start
  if start_step >= num_steps:
    check_finite(num_steps)

  val, test = evaluate(dataset.val), evaluate(dataset.test)
  summary = {
      "model_name": config.model_name, "dataset": config.dataset, "steps": num_steps,
      "resumed_from": start_step, "train_seconds": round(train_seconds, 1),
      "params": train_lib.count_params(state["params"]),
      # Parameters + optimizer state on the fullest device (FSDP shrinks it).
      "state_bytes_per_device": sharding.bytes_per_device(state),
      "flops_per_image": train_lib.flops_per_image(graphdef, state["params"],
                                                   state["batch_stats"], spec.image_shape),
      "val_accuracy": val["accuracy"], "val_nll": val["nll"],
      "test_accuracy": test["accuracy"], "test_nll": test["nll"],
      "checkpoint": os.path.join(os.path.abspath(workdir), "checkpoints", str(num_steps)),
  }
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


def _existing_checkpoint(workdir: str, meta: dict) -> int | None:
  """Latest step in `workdir` if any, after checking it fits `meta` (read-only)."""
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    return None
  try:
    step, saved = checkpoint.read_meta(workdir)
  except checkpoint.CheckpointError:
    return None
  checkpoint.check_compatible(saved, meta, where=workdir)
  return step
