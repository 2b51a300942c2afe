"""How a ViT turns its output tokens into one feature vector per image.

Tokens come in the order [class, distillation, registers…, patches…]
(`num_prefix` = everything before the patches). The pools:

  * "tok": the class token (DeiT-distilled: the class and distillation
    tokens, each with its own head, logits averaged — `VisionTransformer`).
  * "gap": the mean of the patch tokens (prefix tokens left out, as timm's
    `global_pool="avg"`).
  * "tok+gap": concat(class token, mean of patch tokens), 2 × width: Hugging
    Face's `Dinov2ForImageClassification` head.
  * "map": multi-head attention pooling (SigLIP, big_vision's "MAP"): one
    learned probe query attends over the tokens, then a residual MLP,

        p = Attn(q = probe, k = v = tokens);  f = p + MLP(LN(p)).

`fc_norm` (timm's fc_norm ViTs) moves the final LayerNorm after the pool:
LN(mean(x)) instead of mean(LN(x)); for "tok" the two are the same.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from duojax.models import attention as attention_lib
from duojax.models import common
from duojax.models.vit_blocks import MlpBlock, layer_norm, linear

POOLS = ("tok", "gap", "tok+gap", "map")

# N(0, 1/width) probe, as timm's and big_vision's.
_probe_init = common.normal_init(lambda s: s[-1] ** -0.5)


class MapHead(nnx.Module):
  """Multi-head attention pooling: a learned probe query, then LN + MLP residual."""

  def __init__(
    self, width, num_heads, mlp_dim, *, dtype, rngs, act="gelu", norm_eps=1e-6, attention="auto"
  ):
    head_dim = width // num_heads
    self.num_heads = num_heads
    self.head_dim = head_dim
    self.implementation = attention
    self.probe = nnx.Param(_probe_init(rngs.params(), (1, 1, width), jnp.float32))
    self.query = linear(width, (num_heads, head_dim), dtype, rngs)
    self.key = linear(width, (num_heads, head_dim), dtype, rngs)
    self.value = linear(width, (num_heads, head_dim), dtype, rngs)
    self.out = linear((num_heads, head_dim), width, dtype, rngs, axis=(-2, -1))
    self.norm = layer_norm(width, norm_eps, dtype, rngs)
    self.mlp = MlpBlock(width, mlp_dim, 0.0, dtype=dtype, rngs=rngs, act=act)

  def __call__(self, x):
    b = x.shape[0]
    probe = jnp.broadcast_to(self.probe[...].astype(x.dtype), (b, 1, x.shape[-1]))
    y = attention_lib.attention(
      self.query(probe),
      self.key(x),
      self.value(x),
      scale=self.head_dim**-0.5,
      implementation=self.implementation,
    )
    y = self.out(y)
    y = y + self.mlp(self.norm(y), True, None)
    return y[:, 0]


def pool_tokens(x, pool: str, num_prefix: int):
  """[B, T, D] tokens -> [B, D'] features (map: done by MapHead; distilled: by the caller)."""
  if pool == "tok":
    return x[:, 0]
  patches = jnp.mean(x[:, num_prefix:].astype(jnp.float32), axis=1)
  if pool == "gap":
    return patches
  return jnp.concatenate([x[:, 0].astype(jnp.float32), patches], axis=-1)
