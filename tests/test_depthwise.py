"""The shifted-slice depthwise convolution against XLA's convolution on the same
weights: every padding rule, stride and kernel size the families use, bias or not,
float32 and bfloat16; non-depthwise convolutions are left to nnx.Conv."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from duojax.errors import ConfigError
from duojax.models.depthwise import Conv


def _pair(channels, kernel, stride, padding, bias, dtype="float32"):
  kw = dict(strides=stride, padding=padding, feature_group_count=channels, use_bias=bias,
            dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))  # fmt: skip
  shifted = Conv(channels, channels, (kernel, kernel), form="shifts", **kw)
  plain = Conv(channels, channels, (kernel, kernel), form="conv", **kw)
  nnx.update(plain, nnx.state(shifted))
  if bias:
    shifted.bias[...] = plain.bias[...] = jnp.linspace(-1, 1, channels)
  return shifted, plain


@pytest.mark.parametrize("kernel", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("padding", ["SAME", "VALID", "torch"])
def test_the_shifted_form_is_the_convolution(kernel, stride, padding):
  if padding == "torch":
    padding = ((kernel // 2, kernel // 2),) * 2
  shifted, plain = _pair(6, kernel, stride, padding, bias=kernel == 5)
  for side in (9, 12):  # odd and even: SAME pads them differently at stride 2
    x = jnp.asarray(np.random.default_rng(side).normal(size=(2, side, side, 6)), jnp.float32)
    want = plain(x)
    got = shifted(x)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bfloat16_and_the_gradient_match():
  shifted, plain = _pair(4, 3, 2, "SAME", bias=True, dtype="bfloat16")
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 4)), jnp.float32)
  got, want = shifted(x), plain(x)
  assert got.dtype == want.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=0.05)
  shifted, plain = _pair(4, 3, 1, "SAME", bias=False)
  grad = lambda m: nnx.grad(lambda m: jnp.sum(jnp.sin(m(x))))(m)["kernel"][...]
  np.testing.assert_allclose(grad(shifted), grad(plain), rtol=1e-4, atol=1e-5)


def test_auto_picks_by_backend_and_other_convolutions_stay_convolutions(monkeypatch):
  x = jnp.ones((1, 8, 8, 4))
  calls = []
  original = nnx.Conv.__call__
  monkeypatch.setattr(
    nnx.Conv, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
  )
  depthwise = Conv(4, 4, (3, 3), feature_group_count=4, padding="SAME", rngs=nnx.Rngs(0))
  depthwise(x)
  assert not calls  # CPU: the shifted form
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  depthwise(x)
  assert len(calls) == 1  # an accelerator: XLA's convolution
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  Conv(4, 8, (3, 3), feature_group_count=2, rngs=nnx.Rngs(0))(x)  # grouped, not depthwise
  Conv(4, 4, (3, 3), rngs=nnx.Rngs(0))(x)
  assert len(calls) == 3
  with pytest.raises(ConfigError, match="unknown convolution form"):
    Conv(4, 4, (3, 3), form="fft", rngs=nnx.Rngs(0))


def test_flops_count_the_convolution_whichever_form_runs():
  from duojax.models import flops

  shifted, plain = _pair(6, 3, 1, "SAME", bias=False)
  x = jax.ShapeDtypeStruct((2, 8, 8, 6), jnp.float32)
  # 2 × (8·8 outputs × 6 channels × 9 taps) per image, twice: whatever form runs.
  auto = Conv(6, 6, (3, 3), feature_group_count=6, padding="SAME", use_bias=False,
              rngs=nnx.Rngs(0))  # fmt: skip
  assert flops.count_flops(auto, x) == flops.count_flops(plain, x) == 2 * 2 * 8 * 8 * 6 * 9
