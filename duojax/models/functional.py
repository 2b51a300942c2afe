"""Models as pure functions: NNX modules <-> (graphdef, pure-dict pytrees).

Inside `jax.jit` a model is rebuilt with `nnx.merge` from a static graphdef
and plain dicts of arrays, so train states, optimizer states and checkpoints
are ordinary pytrees. Also the two costs every report quotes: the parameter
count and XLA's forward FLOPs per image.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


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
