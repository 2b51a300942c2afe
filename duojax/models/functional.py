"""Models as pure functions: NNX modules <-> (graphdef, pure-dict pytrees).

Inside `jax.jit` a model is rebuilt with `nnx.merge` from a static graphdef
and plain dicts of arrays, so train states, optimizer states and checkpoints
are ordinary pytrees. Also the two costs every report quotes: the parameter
count and the forward FLOPs per image (`duojax.models.flops`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.models import flops


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
  """Eval-forward FLOPs per image: 2 × multiply-adds, counted from the traced program.

  Shapes only (`duojax.models.flops`): the same figure on every backend, and
  for an FSDP-split or multi-host state, the whole model's rather than one
  device's share.
  """
  apply = make_apply(graphdef)
  abstract = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
  x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
  forward = lambda p, b, images: apply(p, b, images)[0]
  return flops.count_flops(forward, abstract(params), abstract(batch_stats), x) / batch
