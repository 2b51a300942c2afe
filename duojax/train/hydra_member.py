"""Starting a training run as a Hydra member: a trained ViT, scored and pruned.

With `config.prune_from`, `train.loop` builds the member's architecture from
the source checkpoint (`pruned_spec`: the source ViT with fewer heads per
layer, same head_dim) and starts from the source's weights with the heads
that matter least on the member's own sample removed (`prune_checkpoint`).
The maths is `duojax.hydra`; this module adds the checkpoints and the data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
from flax import nnx

from duojax import data
from duojax.errors import CheckpointError, ConfigError
from duojax.hydra import heads
from duojax.models import vit
from duojax.models.spec import ModelSpec
from duojax.train import checkpoint


def pruned_spec(source_workdir: str, keep: float, model_name: str):
  """(ModelSpec of a member pruned from `source_workdir`, the source's meta).

  The member is the source ViT with `keep` of its heads per layer and the
  same head_dim, so a member checkpoint rebuilds from its own meta alone.
  """
  _, meta = checkpoint.read_meta(source_workdir)
  if meta["model_name"] != model_name:
    raise CheckpointError(
      f"prune_from {source_workdir!r} holds a {meta['model_name']!r}, the config asks "
      f"for {model_name!r}"
    )
  source = ModelSpec.from_meta(meta)
  shape = nnx.eval_shape(source.build)  # no weights: only the architecture
  if not isinstance(shape, vit.VisionTransformer):
    raise CheckpointError(
      f"prune_from {source_workdir!r} holds a {meta['model_name']!r}, not a Vision "
      "Transformer: Hydra members are pruned from a ViT's attention heads"
    )
  overrides = {
    **source.model_overrides,
    "num_heads": heads.num_kept(keep, shape.num_heads),
    "head_dim": shape.head_dim,
  }
  return dataclasses.replace(source, model_overrides=overrides), meta


def importance_sample(
  dataset: data.Dataset, *, num_images: int, seed: int, batch_size: int = 256, stats=None
) -> Iterator[dict]:
  """Host batches of `num_images` training images drawn without replacement,
  normalised with `stats=(mean, std)` (default: the data set's).

  The draw depends on `seed` only, so each member scores its own sample and
  a resumed or multi-process run scores the same one.
  """
  mean, std = stats or (dataset.mean, dataset.std)
  train = dataset.train
  n = min(num_images, len(train))
  if n < 1:
    raise ConfigError("head importance needs at least one training image")
  rows = np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))
  sample = dataclasses.replace(train, indices=train.indices[rows])
  for batch in data.eval_batches(sample, global_batch_size=min(batch_size, n), mean=mean, std=std):
    valid = batch["mask"]
    yield {"image": batch["image"][valid], "label": batch["label"][valid]}


def prune_checkpoint(
  source_workdir: str,
  dataset: data.Dataset,
  *,
  keep: float,
  num_images: int,
  seed: int,
  sharding=None,
):
  """(pruned member, info): the source ViT scored on its sample and pruned.

  info holds the importance [depth, heads] and the kept-heads mask as lists.
  """
  model, meta = checkpoint.load_model(source_workdir, sharding=sharding)
  # The source's own normalisation (older checkpoints: the data set's).
  inputs = meta.get("input")
  stats = None if inputs is None else (inputs["mean"], inputs["std"])
  importance = heads.head_importance(
    model, importance_sample(dataset, num_images=num_images, seed=seed, stats=stats)
  )
  keep_mask = heads.select_heads(importance, keep)
  return heads.prune(model, keep_mask), {
    "importance": importance.round(8).tolist(),
    "kept_heads": keep_mask.astype(int).tolist(),
  }
