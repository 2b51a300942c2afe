"""FLOPs from the traced program: numpy references on tiny shapes, published figures at full size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from duojax import models
from duojax.models import flops, functional


def shapes(*arrays):
  return [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays]


def test_dot_general_counts_every_multiply_add_once():
  a, b = np.zeros((3, 5, 7), np.float32), np.zeros((3, 7, 11), np.float32)
  fn = lambda x, y: jnp.einsum("bij,bjk->bik", x, y)
  assert flops.count_flops(fn, *shapes(a, b)) == 2 * 3 * 5 * 7 * 11
  # XLA's CPU count of a pure matmul is the same figure.
  cost = jax.jit(fn).lower(a, b).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost["flops"] == pytest.approx(2 * 3 * 5 * 7 * 11)


@pytest.mark.parametrize(
  "stride, padding, groups", [(1, "SAME", 1), (2, "SAME", 1), (1, "VALID", 1), (1, "SAME", 4)]
)
def test_convolution_counts_padding_as_published_tables_do(stride, padding, groups):
  x = np.zeros((2, 9, 9, 8), np.float32)
  w = np.zeros((3, 3, 8 // groups, 12), np.float32)

  def conv(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=groups,
    )  # fmt: skip

  out = jax.eval_shape(conv, x, w).shape
  # Each output element: a 3×3 window over the 8 / groups input features of its group.
  expected = 2 * np.prod(out) * 3 * 3 * (8 // groups)
  assert flops.count_flops(conv, *shapes(x, w)) == expected


def test_nested_calls_loops_and_branches():
  x = jax.ShapeDtypeStruct((4, 4), jnp.float32)
  matmul = 2 * 4**3

  def scanned(x):
    return jax.lax.scan(lambda c, _: (c @ c, None), x, None, length=5)[0]

  assert flops.count_flops(scanned, x) == 5 * matmul
  assert flops.count_flops(jax.jit(lambda x: x @ x @ x), x) == 2 * matmul
  assert flops.count_flops(jax.checkpoint(lambda x: x @ x), x) == matmul
  # A cond costs its costliest branch.
  branches = lambda p, x: jax.lax.cond(p, lambda x: x @ x @ x, lambda x: x, x)
  assert flops.count_flops(branches, jax.ShapeDtypeStruct((), jnp.bool_), x) == 2 * matmul
  assert flops.count_flops(jax.nn.relu, x) == 0  # elementwise work is not counted


@pytest.mark.parametrize(
  # 2 × the multiply-adds of torchvision's and timm's model tables at 224 px.
  "name, published",
  [("vit_b16", 2 * 17.56e9), ("resnet18", 2 * 1.814e9), ("resnet50", 2 * 4.089e9)],
)
def test_full_size_models_match_the_published_figures(name, published):
  model = nnx.eval_shape(lambda: models.get_model(name, 1000, rngs=0, image_size=224))
  counted = functional.flops_per_image(*functional.split_model(model), (224, 224, 3))
  assert counted == pytest.approx(published, rel=0.01)


def test_the_count_is_per_image_and_independent_of_the_batch():
  model = models.get_model("resnet8", 10, rngs=0, width=4)
  parts = functional.split_model(model)
  one = functional.flops_per_image(*parts, (32, 32, 3), batch=1)
  assert one > 0 and functional.flops_per_image(*parts, (32, 32, 3), batch=8) == one
