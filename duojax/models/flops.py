"""FLOPs of a program counted from its jaxpr: the published convention, on any backend.

A model's FLOPs are a property of the model, not of the device that runs it,
but XLA's cost analysis makes them one. On a GPU, matmuls and convolutions
handed to cuBLAS and cuDNN count as −1 FLOPs each (the total stays positive
from the elementwise ops, so nothing looks wrong), and on the CPU a
convolution counts only the multiply-adds that touch real input, not the
zero padding (ResNet-18 at 224: 3.37 GFLOP instead of the 3.64 every
published table gives). So the count here reads the traced program instead:

    FLOPs = 2 × multiply-adds of every matmul (`dot_general`) and
            convolution (`conv_general_dilated`), padding included,

which is how torchvision, timm and the papers count (their "GFLOPs" columns
often give the multiply-adds alone: twice the figure here equals them).
Elementwise work (normalisation, activations, softmax) is left out, as
there: it is memory-bound and at most a few percent of the arithmetic.

    dot_general:  lhs [batch…, free_l…, contract…] · rhs [batch…, contract…, free_r…]
                  multiply-adds = |lhs| · ∏ free_r   (every lhs element meets every
                  rhs column once)
    convolution:  each output element sums a kernel window over the input
                  features of its group: multiply-adds = |out| · |kernel| / C_out

Tracing needs shapes only (`jax.ShapeDtypeStruct`), no device and no
compilation, so a ViT-B/16 counts in well under a second anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax

from duojax.models import depthwise


def _size(aval) -> int:
  return math.prod(aval.shape)


def _dot_flops(eqn) -> float:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  skip = set(rhs_contract) | set(rhs_batch)
  free_r = math.prod(d for i, d in enumerate(rhs.shape) if i not in skip)
  return 2.0 * _size(lhs) * free_r


def _conv_flops(eqn) -> float:
  rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
  out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
  return 2.0 * _size(out) * _size(rhs) / out_features


COUNTED = {"dot_general": _dot_flops, "conv_general_dilated": _conv_flops}


def _subjaxprs(value):
  """The jaxprs inside one equation parameter (a jaxpr, a closed one, or a tuple of them)."""
  if isinstance(value, (tuple, list)):
    for item in value:
      yield from _subjaxprs(item)
  elif hasattr(value, "eqns"):
    yield value
  elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    yield value.jaxpr


def jaxpr_flops(jaxpr) -> float:
  """2 × multiply-adds of a jaxpr, into every nested call, loop body and branch.

  A `scan` body counts `length` times and a `cond` its costliest branch; a
  `while` body counts once (its trip count is not in the program).
  """
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in COUNTED:
      total += COUNTED[name](eqn)
      continue
    if name == "cond":
      total += max((jaxpr_flops(b) for b in _subjaxprs(eqn.params["branches"])), default=0.0)
      continue
    inner = sum(jaxpr_flops(sub) for value in eqn.params.values() for sub in _subjaxprs(value))
    total += inner * (eqn.params["length"] if name == "scan" else 1)
  return total


def count_flops(fn: Callable, *args) -> float:
  """FLOPs of one call of `fn(*args)`; args may be arrays or `jax.ShapeDtypeStruct`s.

  Depthwise convolutions are traced as convolutions (`depthwise.forms`): the CPU runs
  them as shifted multiply-adds, which are the same FLOPs, not matmuls to count."""
  with depthwise.forms("conv"):
    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
  return jaxpr_flops(jaxpr)
