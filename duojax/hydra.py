"""Hydra ensembles: many pruned ViTs run as one (arXiv 2510.18358).

One trained Vision Transformer yields M ensemble members by pruning attention
heads. Each member scores the heads on its own random data sample with the
first-order Taylor importance |sum_batches dL/dm_h * m_h| at m = 1, where m is
the head mask of `VisionTransformer.__call__` (Michel et al., 2019), and keeps
the top-k heads of every layer. Different samples give different rankings, so
the members drop different heads and disagree where the full model is unsure.
After a short fine-tune of each member, the members are merged into one model
whose projections carry a leading member axis: XLA then runs every member in
the same batched (grouped) matmuls, so the ensemble costs about one network
of width M * k * head_dim in attention. The prediction is the mean of the
members' softmax probabilities.

    masks = member_masks(model, samples, keep=0.5)        # one sample each
    members = [prune(model, m) for m in masks]            # then fine-tune
    hydra = merge(members)                                # one module
    log_probs, out = hydra(images)                        # out["member_logits"]

`merge(..., mlp="average")` shares one MLP per layer, the mean of the
members' MLP weights: the paper's cheaper variant, no longer exactly the
ensemble of the fine-tuned members.
"""

import dataclasses
from collections.abc import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax import checkpoint, data, train_lib
from duojax.models import vit

MLP_MODES = ("grouped", "average")


def _check_vit(model, what="model"):
  if not isinstance(model, vit.VisionTransformer):
    raise ValueError(f"{what} must be a VisionTransformer, got "
                     f"{type(model).__name__}")


def _mask_grad_step(graphdef):
  """Jitted (loss, dL/dmask) of one batch; built once per call of the public
  functions, so every batch (and every member's sample) reuses one compile."""
  def batch_loss(mask, params, image, label):
    m = nnx.merge(graphdef, nnx.State(params))
    logits, _ = m(image, train=False, head_mask=mask)
    return train_lib.cross_entropy(logits, label).mean()
  return jax.jit(jax.value_and_grad(batch_loss))


def mask_gradients(model, batches: Iterable[dict], *, loss: str = "ce"):
  """(sum of batch losses, sum of dL/dm [depth, heads]) at head mask m = 1."""
  return _gradient_sums(model, _step_for(model, loss), batches)


def _step_for(model, loss: str):
  _check_vit(model)
  if loss != "ce":
    raise ValueError(f"unknown loss {loss!r}; valid: ce")
  return _mask_grad_step(nnx.graphdef(model))


def _gradient_sums(model, step, batches: Iterable[dict]):
  params = nnx.to_pure_dict(nnx.state(model))
  mask = jnp.ones((model.depth, model.num_heads), jnp.float32)
  total, grads, n = 0.0, np.zeros(mask.shape, np.float64), 0
  for batch in batches:
    value, g = step(mask, params, jnp.asarray(batch["image"]),
                    jnp.asarray(batch["label"]))
    total += float(value)
    grads += np.asarray(g, np.float64)
    n += 1
  if n == 0:
    raise ValueError("head importance needs at least one batch")
  return total, grads


def head_importance(model, batches: Iterable[dict], *,
                    loss: str = "ce") -> np.ndarray:
  """First-order Taylor importance [depth, num_heads] of every head.

  |sum over batches of dL/dm_h * m_h| at m = 1, L the mean cross-entropy of
  a batch in eval mode. `batches` yields {"image", "label"} arrays.
  """
  return np.abs(mask_gradients(model, batches, loss=loss)[1])


def _num_kept(keep, num_heads: int) -> int:
  # bool is an int subclass; True/False as a head count is surely a mistake.
  if isinstance(keep, (bool, np.bool_)):
    raise ValueError(f"keep must be a head count or a fraction, got {keep!r}")
  if isinstance(keep, (int, np.integer)):
    if not 1 <= keep <= num_heads:
      raise ValueError(f"keep={keep} heads must be in [1, {num_heads}]")
    return int(keep)
  keep = float(keep)
  if not 0.0 < keep <= 1.0:
    raise ValueError(f"keep fraction must be in (0, 1], got {keep}")
  # At least one head per layer: a layer without heads has no attention.
  return max(1, int(round(keep * num_heads)))


def select_heads(importance, keep) -> np.ndarray:
  """Boolean mask [depth, num_heads] of the top-k heads in every layer.

  `keep` is a head count (int, the same k in every layer) or a fraction of
  the heads in (0, 1] (float; 1.0 keeps all). Ties go to the lower index.
  """
  importance = np.asarray(importance)
  if importance.ndim != 2:
    raise ValueError(f"importance must be [depth, num_heads], got shape "
                     f"{importance.shape}")
  k = _num_kept(keep, importance.shape[1])
  order = np.argsort(-importance, axis=1, kind="stable")[:, :k]
  mask = np.zeros(importance.shape, bool)
  np.put_along_axis(mask, order, True, axis=1)
  return mask


def member_masks(model, samples: Sequence[Iterable[dict]], keep) -> list:
  """One keep mask per member, each from the importance on its own sample."""
  if not samples:
    raise ValueError("member_masks needs at least one member sample")
  step = _step_for(model, "ce")
  return [select_heads(np.abs(_gradient_sums(model, step, s)[1]), keep) for s in samples]


def _config(model) -> dict:
  """VisionTransformer kwargs that rebuild `model`'s architecture."""
  block = model.blocks[0]
  return dict(
      num_classes=model.head.out_features, patch_size=model.patch_size,
      width=model.num_features, depth=model.depth,
      mlp_dim=block.mlp.fc1.out_features, num_heads=model.num_heads,
      head_dim=model.head_dim, image_size=model.image_size,
      in_channels=model.input_shape[2], pool=model.pool,
      dropout=model.dropout_rate, drop_path=model.drop_path_rate,
      pre_norm=model.norm_pre is not None,
      patch_bias=model.patch_embed.bias is not None, dtype=model.dtype,
      name=model.name)


def prune(model, keep_mask) -> vit.VisionTransformer:
  """A new ViT holding only the kept heads (same head_dim, k heads a layer).

  Its outputs equal `model(x, head_mask=keep_mask)`: the kept heads' q/k/v
  kernel and bias slices and output-kernel rows are copied, all else as is
  (the output bias does not belong to any head, so it stays whole).
  """
  _check_vit(model)
  keep_mask = np.asarray(keep_mask)
  shape = (model.depth, model.num_heads)
  if keep_mask.shape != shape:
    raise ValueError(f"keep_mask must have shape {shape} (depth, num_heads), "
                     f"got {keep_mask.shape}")
  keep_mask = keep_mask.astype(bool)
  counts = keep_mask.sum(axis=1)
  if counts.min() < 1 or counts.min() != counts.max():
    raise ValueError(f"keep_mask must keep the same number (>= 1) of heads "
                     f"in every layer, got {counts.tolist()}")
  config = _config(model)
  config["num_heads"] = int(counts[0])
  name = config.pop("name")
  num_classes = config.pop("num_classes")
  # Built abstractly: every parameter is overwritten below.
  pruned = nnx.eval_shape(lambda: vit.VisionTransformer(
      num_classes, name=name, rngs=nnx.Rngs(0), **config))
  graphdef, abstract = nnx.split(pruned)
  params = nnx.to_pure_dict(nnx.state(model))
  for i in range(model.depth):
    idx = np.flatnonzero(keep_mask[i])
    attn = params["blocks"][i]["attn"]
    for proj in ("query", "key", "value"):
      attn[proj]["kernel"] = attn[proj]["kernel"][:, idx]
      attn[proj]["bias"] = attn[proj]["bias"][idx]
    attn["out"]["kernel"] = attn["out"]["kernel"][idx]
  nnx.replace_by_pure_dict(abstract, params)
  return nnx.merge(graphdef, abstract)


def pruned_spec(source_workdir: str, keep: float, model_name: str):
  """(ModelSpec of a member pruned from `source_workdir`, the source's meta).

  The member is the source ViT with `keep` of its heads per layer and the
  same head_dim, so a member checkpoint rebuilds from its own meta alone.
  """
  _, meta = checkpoint.read_meta(source_workdir)
  if meta["model_name"] != model_name:
    raise checkpoint.CheckpointError(
        f"prune_from {source_workdir!r} holds a {meta['model_name']!r}, the config asks "
        f"for {model_name!r}")
  source = train_lib.ModelSpec.from_meta(meta)
  shape = nnx.eval_shape(source.build)  # no weights: only the architecture
  if not isinstance(shape, vit.VisionTransformer):
    raise checkpoint.CheckpointError(
        f"prune_from {source_workdir!r} holds a {meta['model_name']!r}, not a Vision "
        "Transformer: Hydra members are pruned from a ViT's attention heads")
  overrides = {**source.model_overrides, "num_heads": _num_kept(keep, shape.num_heads),
               "head_dim": shape.head_dim}
  return dataclasses.replace(source, model_overrides=overrides), meta


def importance_sample(dataset: data.Dataset, *, num_images: int, seed: int,
                      batch_size: int = 256) -> Iterator[dict]:
  """Host batches of `num_images` training images drawn without replacement.

  The draw depends on `seed` only, so each member scores its own sample and
  a resumed or multi-process run scores the same one.
  """
  train = dataset.train
  n = min(num_images, len(train))
  if n < 1:
    raise ValueError("head importance needs at least one training image")
  rows = np.sort(np.random.default_rng(seed).choice(len(train), n, replace=False))
  sample = dataclasses.replace(train, indices=train.indices[rows])
  for batch in data.eval_batches(sample, global_batch_size=min(batch_size, n),
                                 mean=dataset.mean, std=dataset.std):
    valid = batch["mask"]
    yield {"image": batch["image"][valid], "label": batch["label"][valid]}


def prune_checkpoint(source_workdir: str, dataset: data.Dataset, *, keep: float,
                     num_images: int, seed: int, sharding=None):
  """(pruned member, info): the source ViT scored on its sample and pruned.

  info holds the importance [depth, heads] and the kept-heads mask as lists.
  """
  model, _ = checkpoint.load_model(source_workdir, sharding=sharding)
  importance = head_importance(model, importance_sample(dataset, num_images=num_images,
                                                        seed=seed))
  keep_mask = select_heads(importance, keep)
  return prune(model, keep_mask), {"importance": importance.round(8).tolist(),
                                   "kept_heads": keep_mask.astype(int).tolist()}


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

  def __init__(self, members: Sequence[vit.VisionTransformer],
               mlp: str = "grouped"):
    if mlp not in MLP_MODES:
      raise ValueError(f"unknown mlp mode {mlp!r}; valid: "
                       f"{', '.join(MLP_MODES)}")
    if not members:
      raise ValueError("a Hydra ensemble needs at least one member")
    for j, m in enumerate(members):
      _check_vit(m, f"member {j}")
    ref = _leaf_shapes(members[0])
    for j, m in enumerate(members[1:], 1):
      shapes = _leaf_shapes(m)
      if shapes != ref or _config(m) != _config(members[0]):
        diff = sorted(k for k in ref.keys() | shapes.keys()
                      if ref.get(k) != shapes.get(k))
        raise ValueError(f"member {j} differs from member 0 in shape or "
                         f"config (first: {diff[:1] or 'config'}); prune all "
                         "members to the same heads per layer")
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
        lambda path, _: None if (self.mlp == "average" and _is_mlp(
            [getattr(k, "key", getattr(k, "idx", k)) for k in path])) else 0,
        params)
    keys = None
    if rngs is not None:
      key = rngs.dropout() if isinstance(rngs, nnx.Rngs) else rngs
      keys = jax.random.split(key, self.num_members)

    def member(p, k):
      logits, out = nnx.merge(graphdef, nnx.State(p))(x, train=train, rngs=k)
      return logits, out["pre_logits"]

    logits, pre = jax.vmap(member, in_axes=(axes, None if keys is None else 0))(
        params, keys)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    mean = jax.nn.logsumexp(log_probs, axis=0) - np.log(self.num_members)
    return mean, {"member_logits": logits, "pre_logits": pre}


def merge(members: Sequence[vit.VisionTransformer],
          mlp: str = "grouped") -> HydraViT:
  """Merges same-shaped pruned members into one HydraViT."""
  return HydraViT(members, mlp=mlp)


def cost(model, image_shape=None, batch: int = 8) -> dict:
  """{"params": count, "flops": XLA forward FLOPs per image} in eval mode."""
  graphdef, params, batch_stats = train_lib.split_model(model)
  image_shape = tuple(image_shape or model.input_shape)
  return {"params": train_lib.count_params(params),
          "flops": train_lib.flops_per_image(graphdef, params, batch_stats, image_shape, batch)}
