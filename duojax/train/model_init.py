"""Where a run's weights start, and the input normalisation that goes with them.

A run starts from one of four places (the config allows at most one source,
see `config_lib.validate`): the spec's freshly built model, another run's
trained weights (`config.init_from`), a trained ViT pruned into a Hydra member
(`config.prune_from`), or a pretrained PyTorch-layout file
(`config.init_weights`). A run that resumes takes none of the sources: its
checkpoint replaces the fresh model's weights.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax

from duojax import convert, data, files, models
from duojax.errors import ConfigError
from duojax.train import checkpoint, hydra_member

HYDRA_HEADS_FILE = "hydra_heads.json"  # a Hydra member's head importance and kept heads


def init_model(config, workdir: str, fresh, *, dataset, meta: dict, saved_meta, replicated):
  """(the model training starts from, its `data.InputSpec`).

  `fresh` is the model of the run's spec as `spec.build` returned it; `meta`
  is the run's checkpoint meta (without "input"), `saved_meta` the meta of
  the checkpoint the run resumes from (None for a new run) and `replicated`
  the sharding the source weights are placed with. A Hydra member writes
  its head choice to `workdir/HYDRA_HEADS_FILE` (process 0).
  """
  model, pretrained = fresh, None
  if saved_meta is not None:  # resuming: the checkpoint's weights replace the fresh ones
    return model, _input_spec(config, dataset, saved_meta, pretrained)
  if config.init_from:
    model = _init_from(config.init_from, meta, replicated)
  elif config.prune_from:
    model = _init_hydra_member(config, workdir, dataset, replicated)
  elif config.init_weights:
    pretrained = convert.load_pretrained(
      model, config.init_weights, config.init_layout, head=config.init_head
    )
    if jax.process_index() == 0:
      _report_init(config.init_weights, pretrained)
  return model, _input_spec(config, dataset, saved_meta, pretrained)


def _init_from(workdir: str, meta: dict, replicated):
  """The trained model of `workdir`, after checking it has this run's architecture."""
  _, saved = checkpoint.read_meta(workdir)
  checkpoint.check_compatible(saved, meta, where=workdir)
  model, _ = checkpoint.load_model(workdir, sharding=replicated)
  return model


def _init_hydra_member(config, workdir: str, dataset, replicated):
  """The source ViT of `config.prune_from` with its least important heads pruned."""
  model, heads = hydra_member.prune_checkpoint(
    config.prune_from,
    dataset,
    keep=config.prune_keep,
    num_images=config.prune_images,
    seed=config.prune_seed,
    sharding=replicated,
  )
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    record = {"prune_from": os.path.abspath(config.prune_from), **heads}
    files.write_atomically(os.path.join(workdir, HYDRA_HEADS_FILE), json.dumps(record, indent=2))
  return model


def _report_init(path: str, info: dict) -> None:
  notes = [f"layout {info['layout']}", f"{info['loaded_tensors']} tensors"]
  if info["fresh_head"]:
    notes.append("fresh classifier head")
  if info["resampled_posemb"]:
    before, after = info["resampled_posemb"]
    notes.append(f"position embeddings resampled {before[1]} -> {after[1]} tokens")
  print(f"initialised from {path} ({', '.join(notes)})", flush=True)


def _input_spec(config, dataset, saved_meta: dict | None, pretrained: dict | None):
  """The model's input size, normalisation (see config.input_mean), crop and filter.

  A resumed run keeps the one it started with; a fine-tune of a duojax
  checkpoint (init_from, prune_from) inherits its source's normalisation.
  The crop and filter are a pretrained file's where the files beside it say
  them (`data.pretrained_view`), else the config's.
  """
  size = int(dataset.image_shape[0])
  if saved_meta is not None and "input" in saved_meta:
    return data.InputSpec.from_meta(
      saved_meta["input"], crop_fraction=config.crop_fraction, interpolation=config.interpolation
    )
  view = {"crop_fraction": config.crop_fraction, "interpolation": config.interpolation}
  found, beside = (
    ({}, "")
    if pretrained is None
    else data.pretrained_view(config.init_weights, pretrained["layout"], config.model_name)
  )
  view.update(found)
  if tuple(config.input_mean):
    spec = data.InputSpec(size, tuple(config.input_mean), tuple(config.input_std), "config")
  elif pretrained is not None and int(dataset.image_shape[2]) == 3:
    family = models.family_name(config.model_name)
    mean, std, source = data.pretrained_stats(
      pretrained["layout"], family, config.init_weights, config.model_name
    )
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
  spec = dataclasses.replace(spec, **view)
  try:
    spec.check_view()  # the config's are checked: only a file's can be wrong
  except ValueError as e:
    raise ConfigError(f"{e} (the {beside} beside {config.init_weights!r})") from None
  try:
    spec.check(int(dataset.image_shape[2]))
  except ValueError as e:
    raise ConfigError(f"{e}: set config.input_mean and config.input_std") from None
  return spec
