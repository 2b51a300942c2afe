"""Which attention heads a Hydra member keeps, and the pruned ViT it becomes.

A head's first-order Taylor importance is |Σ_batches ∂L/∂m_h · m_h| at m = 1,
where m [depth, heads] is the head mask of `VisionTransformer.__call__`
(Michel et al., 2019); each member keeps the top-k heads of every layer on
its own sample, and `prune` rebuilds the smaller ViT (same head_dim, fewer
heads) whose outputs equal the masked original. Every ViT variant prunes the
same way: register and distillation tokens, layer scale, a SwiGLU MLP and an
attention-pooling head (whose own heads are not pruned) are carried over.
"""

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.core.losses import cross_entropy
from duojax.errors import ConfigError, InputError
from duojax.models import vit


def check_vit(model, what="model"):
  if not isinstance(model, vit.VisionTransformer):
    raise InputError(f"{what} must be a VisionTransformer, got {type(model).__name__}")


def _mask_grad_step(graphdef):
  """Jitted (loss, dL/dmask) of one batch; built once per call of the public
  functions, so every batch (and every member's sample) reuses one compile."""

  def batch_loss(mask, params, image, label):
    m = nnx.merge(graphdef, nnx.State(params))
    logits, _ = m(image, train=False, head_mask=mask)
    return cross_entropy(logits, label).mean()

  return jax.jit(jax.value_and_grad(batch_loss))


def mask_gradients(model, batches: Iterable[dict], *, loss: str = "ce"):
  """(sum of batch losses, sum of dL/dm [depth, heads]) at head mask m = 1."""
  return _gradient_sums(model, _step_for(model, loss), batches)


def _step_for(model, loss: str):
  check_vit(model)
  if loss != "ce":
    raise ConfigError(f"unknown loss {loss!r}; valid: ce")
  return _mask_grad_step(nnx.graphdef(model))


def _gradient_sums(model, step, batches: Iterable[dict]):
  params = nnx.to_pure_dict(nnx.state(model))
  mask = jnp.ones((model.depth, model.num_heads), jnp.float32)
  total, grads, n = 0.0, np.zeros(mask.shape, np.float64), 0
  for batch in batches:
    value, g = step(mask, params, jnp.asarray(batch["image"]), jnp.asarray(batch["label"]))
    total += float(value)
    grads += np.asarray(g, np.float64)
    n += 1
  if n == 0:
    raise InputError("head importance needs at least one batch")
  return total, grads


def head_importance(model, batches: Iterable[dict], *, loss: str = "ce") -> np.ndarray:
  """First-order Taylor importance [depth, num_heads] of every head.

  |sum over batches of dL/dm_h * m_h| at m = 1, L the mean cross-entropy of
  a batch in eval mode. `batches` yields {"image", "label"} arrays.
  """
  return np.abs(mask_gradients(model, batches, loss=loss)[1])


def num_kept(keep, num_heads: int) -> int:
  # bool is an int subclass; True/False as a head count is surely a mistake.
  if isinstance(keep, (bool, np.bool_)):
    raise ConfigError(f"keep must be a head count or a fraction, got {keep!r}")
  if isinstance(keep, (int, np.integer)):
    if not 1 <= keep <= num_heads:
      raise ConfigError(f"keep={keep} heads must be in [1, {num_heads}]")
    return int(keep)
  keep = float(keep)
  if not 0.0 < keep <= 1.0:
    raise ConfigError(f"keep fraction must be in (0, 1], got {keep}")
  # At least one head per layer: a layer without heads has no attention.
  return max(1, int(round(keep * num_heads)))


def select_heads(importance, keep) -> np.ndarray:
  """Boolean mask [depth, num_heads] of the top-k heads in every layer.

  `keep` is a head count (int, the same k in every layer) or a fraction of
  the heads in (0, 1] (float; 1.0 keeps all). Ties go to the lower index.
  """
  importance = np.asarray(importance)
  if importance.ndim != 2:
    raise InputError(f"importance must be [depth, num_heads], got shape {importance.shape}")
  k = num_kept(keep, importance.shape[1])
  order = np.argsort(-importance, axis=1, kind="stable")[:, :k]
  mask = np.zeros(importance.shape, bool)
  np.put_along_axis(mask, order, True, axis=1)
  return mask


def member_masks(model, samples: Sequence[Iterable[dict]], keep) -> list:
  """One keep mask per member, each from the importance on its own sample."""
  if not samples:
    raise InputError("member_masks needs at least one member sample")
  step = _step_for(model, "ce")
  return [select_heads(np.abs(_gradient_sums(model, step, s)[1]), keep) for s in samples]


def architecture(model) -> dict:
  """VisionTransformer kwargs that rebuild `model`'s architecture."""
  block = model.blocks[0]
  return dict(
    num_classes=model.head.out_features,
    patch_size=model.patch_size,
    width=model.num_features,
    depth=model.depth,
    mlp_dim=block.mlp.fc2.in_features,  # fc1 is twice as wide in a SwiGLU MLP
    num_heads=model.num_heads,
    head_dim=model.head_dim,
    image_size=model.image_size,
    in_channels=model.input_shape[2],
    pool=model.pool,
    dropout=model.dropout_rate,
    drop_path=model.drop_path_rate,
    pre_norm=model.norm_pre is not None,
    patch_bias=model.patch_embed.bias is not None,
    # The variants' options (vit_variants): none of them touches the heads.
    attention=model.attention,
    remat=model.remat,
    act=model.act,
    norm_eps=model.norm_eps,
    layer_scale=block.ls1 is not None,
    num_registers=model.num_registers,
    distilled=model.distilled,
    fc_norm=model.fc_norm is not None,
    class_token=model.cls_token is not None,
    posemb_resize=model.posemb_resize,
    map_heads=None if model.attn_pool is None else model.attn_pool.num_heads,
    embed_class=model.embed_class,
    dtype=model.dtype,
    name=model.name,
  )


def prune(model, keep_mask) -> vit.VisionTransformer:
  """A new ViT holding only the kept heads (same head_dim, k heads a layer).

  Its outputs equal `model(x, head_mask=keep_mask)`: the kept heads' q/k/v
  kernel and bias slices and output-kernel rows are copied, all else as is
  (the output bias does not belong to any head, so it stays whole).
  """
  check_vit(model)
  keep_mask = np.asarray(keep_mask)
  shape = (model.depth, model.num_heads)
  if keep_mask.shape != shape:
    raise InputError(f"keep_mask must have shape {shape} (depth, num_heads), got {keep_mask.shape}")
  keep_mask = keep_mask.astype(bool)
  counts = keep_mask.sum(axis=1)
  if counts.min() < 1 or counts.min() != counts.max():
    raise InputError(
      f"keep_mask must keep the same number (>= 1) of heads in every layer, got {counts.tolist()}"
    )
  config = architecture(model)
  config["num_heads"] = int(counts[0])
  name = config.pop("name")
  num_classes = config.pop("num_classes")
  # Built abstractly: every parameter is overwritten below.
  pruned = nnx.eval_shape(
    lambda: vit.VisionTransformer(num_classes, name=name, rngs=nnx.Rngs(0), **config)
  )
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
