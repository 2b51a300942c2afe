"""The attention forms against a float64 numpy reference, and "auto"'s choices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from duojax.errors import ConfigError
from duojax.models import attention


def _reference(q, k, v, bias, scale):
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
  if bias is not None:
    logits = logits + np.asarray(bias, np.float64)
  logits -= logits.max(-1, keepdims=True)
  w = np.exp(logits)
  w /= w.sum(-1, keepdims=True)
  return np.einsum("bhqk,bkhd->bqhd", w, v)


def _qkv(seed, b=2, t=5, s=7, heads=3, d=8):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(b, t, heads, d)).astype(np.float32)
  k = rng.normal(size=(b, s, heads, d)).astype(np.float32)
  v = rng.normal(size=(b, s, heads, d)).astype(np.float32)
  return q, k, v


@pytest.mark.parametrize("form", ["explicit", "xla", "auto"])
@pytest.mark.parametrize("bias_shape", [None, (3, 5, 7), (2, 3, 5, 7), (1, 1, 5, 7)])
def test_every_form_equals_the_reference(form, bias_shape):
  q, k, v = _qkv(0)
  bias = None if bias_shape is None else np.random.default_rng(1).normal(size=bias_shape)
  bias = None if bias is None else bias.astype(np.float32)
  got = jax.jit(
    lambda q, k, v, b: attention.attention(q, k, v, bias=b, scale=0.3, implementation=form)
  )(q, k, v, bias)
  assert got.shape == q.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, _reference(q, k, v, bias, 0.3), rtol=1e-5, atol=1e-5)


def test_default_scale_is_inverse_sqrt_head_dim_and_bfloat16_keeps_its_dtype():
  q, k, v = _qkv(2, d=16)
  got = attention.attention(q, k, v)
  np.testing.assert_allclose(got, _reference(q, k, v, None, 16**-0.5), rtol=1e-5, atol=1e-5)
  low = attention.attention(
    *(jnp.asarray(t, jnp.bfloat16) for t in (q, k, v)), implementation="xla"
  )
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32), got, atol=0.05)


def test_auto_picks_by_backend_dtype_and_head_size(monkeypatch):
  assert attention.pick(jnp.float32, 64) == "explicit"  # this CPU
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert attention.pick(jnp.bfloat16, 64) == "cudnn"
  assert attention.pick(jnp.float32, 64) == "xla"  # cuDNN's kernel takes half types only
  assert attention.pick(jnp.bfloat16, 12) == "xla"  # nor head sizes off multiples of 8
  assert attention.pick(jnp.bfloat16, 256) == "xla"
  monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
  assert attention.pick(jnp.bfloat16, 64) == "xla"
  with pytest.raises(ConfigError, match="unknown attention implementation 'flash'"):
    attention.pick(jnp.float32, 64, "flash")
