"""Layer-wise learning-rate decay: deeper layers of a pretrained network learn faster.

Fine-tuning recipes for self-supervised and contrastive backbones (BEiT,
DINOv2, CLIP) give block i of L the rate lr * d**(L + 1 - i) with d < 1: the
embeddings (i = 0) move least, the last block almost at lr, the new head at
lr. Early layers hold generic features that the small fine-tuning set should
not overwrite.

The depth of a parameter is read from its path in the parameter tree, so one
rule serves every family: integers following `blocks`, `stages` or `layers`
name a block (`blocks/3` in a ViT, `stages/2/blocks/1` in ConvNeXt,
`stages/1/0` in a ResNet), ranked in order to give i = 1..L; a stage-level
parameter outside any block (a Swin patch merging, a ConvNeXt downsample) ranks
just before its stage's first block. Paths outside every block are the
embeddings (i = 0) when their first name is a stem, an embedding or a token,
and the head side (i = L + 1: final norm, pooling head, classifier) otherwise.

Scaling the optimizer's final update by the layer's factor is the same as
scaling its learning rate: every optimizer here multiplies its whole update,
weight decay included, by the schedule's rate last.
"""

from __future__ import annotations

import jax
import optax

_BLOCK_CONTAINERS = ("blocks", "stages", "layers")
_EMBEDDING_NAMES = ("patch_embed", "pos_embedding", "cls_token", "dist_token", "norm_pre")


def _names(path) -> list:
  """A tree path as plain names and ints (dict keys, sequence indices, attributes)."""
  out = []
  for key in path:
    for attr in ("key", "idx", "name"):
      if hasattr(key, attr):
        key = getattr(key, attr)
        break
    out.append(int(key) if isinstance(key, int) or str(key).isdigit() else str(key))
  return out


def _position(names: list) -> tuple[int, ...] | None:
  """The integers that place a parameter among the blocks, or None outside them."""
  position = []
  for before, name in zip([None, *names], names):
    if isinstance(name, int) and (
      before in _BLOCK_CONTAINERS or (isinstance(before, int) and position)
    ):
      position.append(name)
  return tuple(position) or None


def _is_embedding(names: list) -> bool:
  first = str(names[0])
  return (
    first.startswith("stem")
    or first in _EMBEDDING_NAMES
    or "embed" in first
    or first.endswith("token")
    or first.endswith("tokens")
  )


def layer_ids(params) -> tuple[object, int]:
  """(a tree of each parameter's layer index 0..L+1 in the shape of `params`, L)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [_names(path) for path, _ in leaves]
  positions = sorted({p for p in map(_position, names) if p is not None})
  rank = {p: i + 1 for i, p in enumerate(positions)}
  depth = len(positions)

  def one(n):
    p = _position(n)
    if p is not None:
      return rank[p]
    return 0 if _is_embedding(n) else depth + 1

  return jax.tree_util.tree_unflatten(treedef, [one(n) for n in names]), depth


def scale_by_layer(decay: float) -> optax.GradientTransformation:
  """Multiplies each update by decay**(L + 1 - its layer index); 1.0 changes nothing."""

  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    ids, depth = layer_ids(updates)
    # Python floats: constants folded into the step, no per-step tree of factors.
    scaled = jax.tree.map(lambda u, i: u * (decay ** (depth + 1 - i)), updates, ids)
    return scaled, state

  return optax.GradientTransformation(init, update)
