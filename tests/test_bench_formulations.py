"""The train-step A/B's other formulations (bench/formulations.py) compute what the
library's convolution, batch norm and pool compute: values and gradients, on tiny shapes."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import formulations  # noqa: E402

from duojax.models import common, spec  # noqa: E402

NHWC = ("NHWC", "HWIO", "NHWC")


def _value_and_grads(conv, x, w, stride, padding):
  def loss(x, w):
    y = conv(x, w, (stride, stride), padding, dimension_numbers=NHWC)
    return jnp.sum(jnp.sin(y)), y

  (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, w)
  return y, grads


@pytest.mark.parametrize("conv", ["matmul_conv", "matmul_kernel_grad_conv", "nchw_conv"])
@pytest.mark.parametrize(
  "kernel,stride,padding",
  [
    (3, 1, ((1, 1), (1, 1))),
    (3, 2, ((1, 1), (1, 1))),
    (1, 2, ((0, 0), (0, 0))),
    (7, 2, ((3, 3), (3, 3))),
    (3, 1, "SAME"),
    (3, 2, "SAME"),
    (2, 2, "VALID"),
  ],
)
def test_convolutions_equal_the_library_conv_and_its_gradients(conv, kernel, stride, padding):
  rng = np.random.default_rng(kernel * 10 + stride)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 5)), jnp.float32)
  ours, ours_grads = _value_and_grads(getattr(formulations, conv), x, w, stride, padding)
  theirs, their_grads = _value_and_grads(jax.lax.conv_general_dilated, x, w, stride, padding)
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
  for a, b in zip(ours_grads, their_grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_matmul_conv_hands_other_convolutions_to_the_library():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
  kwargs = dict(dimension_numbers=NHWC)
  for extra in ({"feature_group_count": 2}, {"rhs_dilation": (2, 2)}):
    kernel = w if "feature_group_count" in extra else jnp.concatenate([w, w], axis=2)
    np.testing.assert_array_equal(
      formulations.matmul_conv(x, kernel, (1, 1), "SAME", **kwargs, **extra),
      jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", **kwargs, **extra),
    )


def test_closed_form_batch_norm_matches_autodiff_of_the_definition():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(4, 5, 5, 6)), jnp.float32)
  scale = jnp.asarray(rng.normal(size=6), jnp.float32)
  bias = jnp.asarray(rng.normal(size=6), jnp.float32)
  target = jnp.asarray(rng.normal(size=x.shape), jnp.float32)

  def reference(x, scale, bias):  # two-pass statistics, autodiff through them
    mean = x.mean((0, 1, 2))
    var = jnp.square(x - mean).mean((0, 1, 2))
    return (x - mean) / jnp.sqrt(var + 1e-5) * scale + bias, mean, var

  def loss(norm, x, scale, bias):
    y, mean, var = norm(x, scale, bias)
    return jnp.sum(jnp.sin(y) * target), (y, mean, var)

  closed = lambda x, s, b: formulations.batch_norm_closed_form(x, s, b, 1e-5)
  (_, ours), ours_grads = jax.value_and_grad(
    lambda *a: loss(closed, *a), argnums=(0, 1, 2), has_aux=True
  )(x, scale, bias)
  (_, theirs), their_grads = jax.value_and_grad(
    lambda *a: loss(reference, *a), argnums=(0, 1, 2), has_aux=True
  )(x, scale, bias)
  for a, b in zip(ours, theirs):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  for a, b in zip(ours_grads, their_grads):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_closed_form_batch_norm_context_keeps_flax_outputs_and_running_statistics():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(1.0, 2.0, size=(8, 3, 3, 4)), jnp.float32)
  library, patched = (nnx.BatchNorm(4, momentum=0.9, rngs=nnx.Rngs(0)) for _ in range(2))
  expected = library(x, use_running_average=False)
  with formulations.closed_form_batch_norm():
    got = patched(x, use_running_average=False)
    frozen = patched(x, use_running_average=True)  # inference mode: flax's own
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(patched.mean[...], library.mean[...], rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(patched.var[...], library.var[...], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(frozen, library(x, use_running_average=True), rtol=1e-6)
  assert nnx.BatchNorm.__call__.__name__ == "__call__"  # the patch is undone


def test_windowed_max_pool_context_reaches_the_cnn_and_keeps_its_outputs():
  model = spec.build_model("cnn_xs", {}, 10, (28, 28, 1), seed=0)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 28, 28, 1)), jnp.float32)

  def grad_jaxpr():
    loss = lambda x: jnp.sum(jnp.sin(model(x)[0]))
    return str(jax.make_jaxpr(jax.grad(loss))(x)), model(x)[0]

  reshaped, expected = grad_jaxpr()
  with formulations.windowed_max_pool():
    windowed, got = grad_jaxpr()
  # Traced inside the context, the gradient goes through the windowed pool's
  # select-and-scatter; outside it, through the reshape's elementwise mask.
  assert "select_and_scatter_add" in windowed
  assert "select_and_scatter_add" not in reshaped
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  assert common.max_pool_2x2.__name__ == "max_pool_2x2"  # the swap is undone
