"""Merging pruned Hydra members into one model that runs them all at once.

`merge(members)` stacks the members' parameters on a leading member axis and
runs one member's forward under `vmap`: XLA lowers it to batched (grouped)
q/k/v, output and MLP matmuls with no attention across members. The model's
log-probabilities are the log of the members' mean probability; each
member's logits equal that member run alone. `mlp="average"` shares one MLP
per layer (the mean of the members'), the paper's cheaper variant.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.errors import ConfigError, InputError
from duojax.hydra.heads import architecture, check_vit
from duojax.models import functional, vit

MLP_MODES = ("grouped", "average")


def _leaf_shapes(model) -> dict:
  flat = nnx.to_flat_state(nnx.state(model))
  return {"/".join(map(str, path)): tuple(v.get_value().shape) for path, v in flat}


def _is_mlp(path) -> bool:
  return len(path) > 2 and path[0] == "blocks" and path[2] == "mlp"


class HydraViT(nnx.Module):
  """M pruned ViTs with identical shapes, run as one model.

  `members` is a VisionTransformer whose every parameter carries a leading
  member axis (with mlp="average" the MLP weights are shared and have none).
  The forward vmaps one member's forward over that axis with shared images,
  which XLA lowers to batched matmuls / grouped convolutions: no attention
  or mixing across members.
  """

  def __init__(self, members: Sequence[vit.VisionTransformer], mlp: str = "grouped"):
    if mlp not in MLP_MODES:
      raise ConfigError(f"unknown mlp mode {mlp!r}; valid: {', '.join(MLP_MODES)}")
    if not members:
      raise InputError("a Hydra ensemble needs at least one member")
    for j, m in enumerate(members):
      check_vit(m, f"member {j}")
    ref = _leaf_shapes(members[0])
    for j, m in enumerate(members[1:], 1):
      shapes = _leaf_shapes(m)
      if shapes != ref or architecture(m) != architecture(members[0]):
        diff = sorted(k for k in ref.keys() | shapes.keys() if ref.get(k) != shapes.get(k))
        raise InputError(
          f"member {j} differs from member 0 in shape or "
          f"config (first: {diff[:1] or 'config'}); prune all "
          "members to the same heads per layer"
        )
    graphdef, _ = nnx.split(members[0])
    states = [nnx.state(m) for m in members]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    if mlp == "average":
      # One MLP for all members: the member axis averaged away.
      for path, v in nnx.to_flat_state(stacked):
        if _is_mlp(path):
          v.set_value(jnp.mean(v.get_value(), axis=0))
    self.members = nnx.merge(graphdef, stacked)
    self.mlp = mlp
    self.num_members = len(members)
    self.name = f"hydra{len(members)}_{members[0].name}"
    self.input_shape = members[0].input_shape
    self.image_size = members[0].image_size

  def __call__(self, x, train: bool = False, rngs=None):
    """Returns (log of the mean member softmax [B, C], out).

    out["member_logits"] is [M, B, C]; out["pre_logits"] is [M, B, width].
    """
    self.members._check_input(x)
    graphdef, state = nnx.split(self.members)
    params = nnx.to_pure_dict(state)
    axes = jax.tree_util.tree_map_with_path(
      lambda path, _: (
        None
        if (
          self.mlp == "average" and _is_mlp([getattr(k, "key", getattr(k, "idx", k)) for k in path])
        )
        else 0
      ),
      params,
    )
    keys = None
    if rngs is not None:
      key = rngs.dropout() if isinstance(rngs, nnx.Rngs) else rngs
      keys = jax.random.split(key, self.num_members)

    def member(p, k):
      logits, out = nnx.merge(graphdef, nnx.State(p))(x, train=train, rngs=k)
      return logits, out["pre_logits"]

    logits, pre = jax.vmap(member, in_axes=(axes, None if keys is None else 0))(params, keys)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    mean = jax.nn.logsumexp(log_probs, axis=0) - np.log(self.num_members)
    return mean, {"member_logits": logits, "pre_logits": pre}


def merge(members: Sequence[vit.VisionTransformer], mlp: str = "grouped") -> HydraViT:
  """Merges same-shaped pruned members into one HydraViT."""
  return HydraViT(members, mlp=mlp)


def cost(model, image_shape=None, batch: int = 8) -> dict:
  """{"params": count, "flops": forward FLOPs per image (`duojax.models.flops`)} in eval mode."""
  graphdef, params, batch_stats = functional.split_model(model)
  image_shape = tuple(image_shape or model.input_shape)
  return {
    "params": functional.count_params(params),
    "flops": functional.flops_per_image(graphdef, params, batch_stats, image_shape, batch),
  }
