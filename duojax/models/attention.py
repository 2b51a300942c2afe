"""Scaled dot-product attention, in the form each platform runs fastest.

    y = softmax(scale · q kᵀ + bias) v        per batch row and head

over q [B, T, heads, head_dim], k and v [B, S, heads, head_dim] (the layout
of `jax.nn.dot_product_attention`), bias broadcastable to [B, heads, T, S].
Three forms compute it:

  * "explicit": two einsums with the heads moved first and the softmax in
    float32. On XLA's CPU backend the heads-first batched dots run 2-4x faster
    than the [B, T, heads, head_dim] contraction (bench/bench_torch.py), and
    faster than "xla" below, which contracts in the input layout.
  * "xla": `jax.nn.dot_product_attention(implementation="xla")`, the form TPU
    compilers pattern-match into their fused attention.
  * "cudnn": the same call with cuDNN's fused kernel (flash attention). It
    takes float16/bfloat16 only, head_dim a multiple of 8 and at most 128, so
    "auto" picks it on GPU when those hold and falls back to "xla" otherwise.

"auto" (the default) decides at trace time from the default backend. All forms
agree within float32 rounding (tests/test_attention.py); the softmax is in
float32 in each, because bfloat16 exp/sum loses too much over long rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from duojax.errors import ConfigError

IMPLEMENTATIONS = ("auto", "explicit", "xla", "cudnn")


def pick(dtype, head_dim: int, implementation: str = "auto") -> str:
  """The form "auto" resolves to for this dtype and head size on this backend."""
  if implementation not in IMPLEMENTATIONS:
    raise ConfigError(
      f"unknown attention implementation {implementation!r}; valid: {', '.join(IMPLEMENTATIONS)}"
    )
  if implementation != "auto":
    return implementation
  backend = jax.default_backend()
  if backend == "cpu":
    return "explicit"
  cudnn_ok = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0
  if backend == "gpu" and cudnn_ok and head_dim <= 128:
    return "cudnn"
  return "xla"


def _explicit(q, k, v, bias, scale):
  # Scaling q instead of the [T, S] logits is cheaper; a Python float keeps
  # q in its dtype.
  q = q * scale
  q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # [B, heads, T, D]
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  weights = jax.nn.softmax(logits, axis=-1)
  y = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
  return y.transpose(0, 2, 1, 3)


def attention(q, k, v, *, bias=None, scale: float | None = None, implementation: str = "auto"):
  """Returns [B, T, heads, head_dim] in q's dtype; `scale` defaults to head_dim**-0.5."""
  head_dim = q.shape[-1]
  scale = head_dim**-0.5 if scale is None else float(scale)
  form = pick(q.dtype, head_dim, implementation)
  if form == "explicit":
    return _explicit(q, k, v, bias, scale)
  if bias is not None:
    bias = jnp.asarray(bias)
    bias = bias.reshape((1,) * (4 - bias.ndim) + bias.shape)  # both take 4 axes
    if form == "cudnn":  # cuDNN's kernel takes the bias in q's dtype, batch axis whole
      shape = (q.shape[0], q.shape[2], q.shape[1], k.shape[1])
      bias = jnp.broadcast_to(bias, shape).astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias, scale=scale, implementation=form)
