"""The encoder block of every duojax ViT: attention, MLP, layer scale.

    y = x + DropPath(γ₁ · Attn(LN₁(x)))
    z = y + DropPath(γ₂ · MLP(LN₂(y)))

γ are DINOv2's and CaiT's per-channel layer scales (absent: 1). Attention
keeps a per-head structure: query/key/value kernels are [D, heads, head_dim]
and the output kernel [heads, head_dim, D], so single heads can be sliced out
(`duojax.hydra`); the scaled dot product itself is `duojax.models.attention`,
the form each platform runs fastest.

The MLP is Linear → act → Linear, with the activation the checkpoint's
library uses:

  * "gelu": x·Φ(x), exact (timm, Hugging Face ViT and DINOv2);
  * "gelu_tanh": GELU's tanh approximation (big_vision and Hugging Face
    SigLIP);
  * "quick_gelu": x·σ(1.702·x), OpenAI CLIP's approximation (1.702 makes
    σ(1.702·x) within 0.02 of Φ(x));
  * "swiglu": the gated MLP of DINOv2-g, fc1 → [a | b] (2 × mlp_dim),
    silu(a)·b, then fc2: the gate and value halves packed in one matrix, as
    timm's `SwiGLUPacked` and Hugging Face's `weights_in` hold them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.models import attention as attention_lib
from duojax.models import common

ACTIVATIONS = ("gelu", "gelu_tanh", "quick_gelu", "swiglu")

# Glorot-variance dense kernels as in big_vision (nnx.LinearGeneral hands the
# initializer its kernel flattened to [fan_in, fan_out]).
dense_init = common.normal_init(lambda s: math.sqrt(2.0 / (s[0] + s[-1])))


def gelu_erf(x):
  """Exact GELU, x * Phi(x), written with erf.

  jax.nn.gelu(approximate=False) goes through erfc, which XLA's CPU backend
  evaluates several times slower than erf (it was ~8% of a ViT-S/16 forward);
  the two agree to float32 rounding (the erf form loses only relative
  precision where GELU is ~0 anyway).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


def activate(x, act: str):
  if act == "gelu":
    return gelu_erf(x)
  if act == "gelu_tanh":
    return jax.nn.gelu(x, approximate=True)
  if act == "quick_gelu":
    return x * jax.nn.sigmoid(1.702 * x)
  a, b = jnp.split(x, 2, axis=-1)  # swiglu: gate first, as both libraries pack it
  return jax.nn.silu(a) * b


def layer_norm(width: int, eps: float, dtype, rngs):
  return nnx.LayerNorm(width, epsilon=eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def linear(in_features, out_features, dtype, rngs, axis=-1):
  return nnx.LinearGeneral(
    in_features,
    out_features,
    axis=axis,
    kernel_init=dense_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


class SelfAttention(nnx.Module):
  """Multi-head self-attention with separate per-head q/k/v/out kernels."""

  def __init__(
    self,
    width: int,
    num_heads: int,
    *,
    dtype,
    rngs,
    head_dim: int | None = None,
    implementation: str = "auto",
  ):
    head_dim = width // num_heads if head_dim is None else head_dim
    self.num_heads = num_heads
    self.head_dim = head_dim
    self.implementation = implementation
    self.query = linear(width, (num_heads, head_dim), dtype, rngs)
    self.key = linear(width, (num_heads, head_dim), dtype, rngs)
    self.value = linear(width, (num_heads, head_dim), dtype, rngs)
    self.out = linear((num_heads, head_dim), width, dtype, rngs, axis=(-2, -1))

  def __call__(self, x, head_mask=None):
    """`head_mask` [heads] scales each head's output (None: no multiply)."""
    q, k, v = self.query(x), self.key(x), self.value(x)  # [B, T, heads, head_dim]
    y = attention_lib.attention(
      q, k, v, scale=self.head_dim**-0.5, implementation=self.implementation
    )
    if head_mask is not None:
      # After the attention, before the output projection: dL/dm is then the
      # Taylor importance of the head (duojax.hydra).
      y = y * head_mask.astype(y.dtype)[None, None, :, None]
    return self.out(y)


class MlpBlock(nnx.Module):
  """Linear -> act -> dropout -> Linear -> dropout (swiglu: fc1 is 2 × mlp_dim wide)."""

  def __init__(self, width: int, mlp_dim: int, dropout: float, *, dtype, rngs, act="gelu"):
    hidden = 2 * mlp_dim if act == "swiglu" else mlp_dim
    self.act = act
    self.fc1 = nnx.Linear(
      width, hidden, kernel_init=dense_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )
    self.fc2 = nnx.Linear(
      mlp_dim, width, kernel_init=dense_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )
    self.drop = nnx.Dropout(dropout, rngs=None)

  def __call__(self, x, deterministic: bool, rngs):
    x = activate(self.fc1(x), self.act)
    x = self.drop(x, deterministic=deterministic, rngs=rngs)
    x = self.fc2(x)
    return self.drop(x, deterministic=deterministic, rngs=rngs)


class LayerScale(nnx.Module):
  """x · γ, γ [width] learned per channel (timm's `ls1.gamma`)."""

  def __init__(self, width: int, init: float = 1e-5):
    self.gamma = nnx.Param(jnp.full((width,), init, jnp.float32))

  def __call__(self, x):
    return x * self.gamma[...].astype(x.dtype)


class EncoderBlock(nnx.Module):
  """x + DropPath(γ₁·Attn(LN(x))), then x + DropPath(γ₂·MLP(LN(x)))."""

  def __init__(
    self,
    width,
    mlp_dim,
    num_heads,
    dropout,
    drop_path,
    *,
    dtype,
    rngs,
    head_dim=None,
    act="gelu",
    norm_eps=1e-6,
    layer_scale=False,
    attention="auto",
  ):
    self.norm1 = layer_norm(width, norm_eps, dtype, rngs)
    self.attn = SelfAttention(
      width, num_heads, dtype=dtype, rngs=rngs, head_dim=head_dim, implementation=attention
    )
    self.attn_drop = nnx.Dropout(dropout, rngs=None)
    self.ls1 = LayerScale(width) if layer_scale else None
    self.norm2 = layer_norm(width, norm_eps, dtype, rngs)
    self.mlp = MlpBlock(width, mlp_dim, dropout, dtype=dtype, rngs=rngs, act=act)
    self.ls2 = LayerScale(width) if layer_scale else None
    # Stochastic depth = dropout of the whole residual branch per example:
    # one mask value shared over the token and feature axes.
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2), rngs=None)

  def __call__(self, x, deterministic: bool, rngs, head_mask=None):
    kw = dict(deterministic=deterministic, rngs=rngs)
    y = self.attn_drop(self.attn(self.norm1(x), head_mask), **kw)
    if self.ls1 is not None:
      y = self.ls1(y)
    x = x + self.drop_path(y, **kw)
    y = self.mlp(self.norm2(x), deterministic, rngs)
    if self.ls2 is not None:
      y = self.ls2(y)
    return x + self.drop_path(y, **kw)


def run_block(block, x, head_mask, rngs, deterministic):
  """One block's forward, in the argument order `nnx.remat` is given it."""
  return block(x, deterministic, rngs, head_mask)


# Rematerialised: the block's activations are recomputed in the backward pass
# instead of kept, trading about a third more compute for memory linear in
# one block rather than in the depth.
run_block_remat = nnx.remat(run_block, static_argnums=(4,))
