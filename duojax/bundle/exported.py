"""The fused duo as `jax.export` programs, one per platform, its weights arguments.

    f(arrays, images) -> (logits [B, C], probabilities [B, C], confidence [B],
                          member_classes [m, B])

runs in one program what `duojax.core.duo.make_fused_forward` and `Duo` run:
each member cuts, resizes and normalises the uint8 batch its own way
(`duojax.data.prepare`), runs its forward pass, and the duo combines the
members' float32 logits as z = Σ_i w_i z_i (a per-input duo: its own
combination, `duojax.core.per_input_duo.combine`, reading the members'
pre-logit features where it was fit on them); probabilities are softmax(z)
and confidence max softmax(z). `member_classes` (argmax z_i) tells a caller where
the large model and its sidekick disagree.

The members' parameters and BatchNorm statistics are ARGUMENTS, a flat list in
the order of the manifest's "arguments" (member, name), not constants baked in:
the serialised program stays a few tens of kB whatever the models weigh, and
the weights stay readable safetensors beside it. Each member's NNX graph and
the tree of its state are closed over, so the program rebuilds the modules
from the list while tracing. The batch dimension is symbolic ("b"): one
program takes any batch size. Lowering needs no device of the target
platform, so a CPU machine writes the cuda and tpu programs too.
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.core import per_input_duo
from duojax.data.preprocess import InputSpec, prepare

PLATFORMS = ("cpu", "cuda", "tpu")
_WEIGHTS = (nnx.Param, nnx.BatchStat)


def _name(path) -> str:
  # State paths end in the Variable's own `.value` attribute, which the
  # dotted names of `duojax.convert.flat_state` leave out.
  keys = [k for k in path if not isinstance(k, jax.tree_util.GetAttrKey)]
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def member_arrays(model: nnx.Module) -> tuple[list[str], list[np.ndarray]]:
  """(dotted names, arrays) of a model's parameters and batch statistics, in state order."""
  _, weights, _ = nnx.split(model, _WEIGHTS, ...)
  pairs = jax.tree_util.tree_flatten_with_path(weights)[0]
  return [_name(p) for p, _ in pairs], [np.asarray(v) for _, v in pairs]


def fused_program(
  models: Sequence[nnx.Module],
  inputs: Sequence[InputSpec],
  duo,
  crop: float,
  member_temperatures: Sequence[float] | None = None,
  shifted_too: bool = False,
):
  """The function `f(arrays, images)` of the module docstring, and its argument names
  [(member, name)]. `duo`: the weighted duo's weights [m] (or a `Duo`), or a
  `PerInputDuo`, whose combination (and, for a dynamic duo, the members'
  features) then runs in the program; `crop`: the crop fraction the batch is
  cut at (the widest member's). With `member_temperatures` (T_i, one per
  member), f returns a fifth output, member_confidence [m, B] = max softmax(z_i / T_i):
  what a shift alarm reads (`duojax.core.shift_alarm`); the exported programs
  have four."""
  parts, names = [], []
  for i, (model, spec) in enumerate(zip(models, inputs)):
    graphdef, state, rest = nnx.split(model, _WEIGHTS, ...)
    leaves, treedef = jax.tree.flatten(state)
    member_names, _ = member_arrays(model)
    names += [(i, n) for n in member_names]
    parts.append((graphdef, treedef, rest, len(leaves), functools.partial(prepare, spec=spec)))
  if not isinstance(duo, per_input_duo.PerInputDuo) and not hasattr(duo, "weights"):
    duo = _Weights(np.asarray(duo, np.float32))

  def f(arrays, images):
    member_logits, features, start = [], [], 0
    for graphdef, treedef, rest, count, prep in parts:
      state = jax.tree.unflatten(treedef, arrays[start : start + count])
      start += count
      x = prep(images, source_crop=crop)
      z, out = nnx.merge(graphdef, state, rest)(x, train=False)
      member_logits.append(z.astype(jnp.float32))
      features.append(out["pre_logits"].astype(jnp.float32))
    stack = jnp.stack(member_logits)
    logits = per_input_duo.combine(duo, stack, features)
    probabilities = jax.nn.softmax(logits, axis=-1)
    confidence = jnp.max(probabilities, axis=-1)
    classes = jnp.argmax(stack, axis=-1).astype(jnp.int32)
    if member_temperatures is None:
      return logits, probabilities, confidence, classes
    scaled = stack / jnp.asarray(member_temperatures, jnp.float32)[:, None, None]
    member_confidence = jnp.max(jax.nn.softmax(scaled, axis=-1), axis=-1)
    if not shifted_too:
      return logits, probabilities, confidence, classes, member_confidence
    shifted = per_input_duo.combine(duo, stack, features, shifted=True)
    return logits, probabilities, confidence, classes, member_confidence, shifted

  return f, names


class _Weights(NamedTuple):
  """A weighted duo given as its weights alone."""

  weights: np.ndarray


def export(f, arrays: Sequence[np.ndarray], image_shape, platform: str) -> jax.export.Exported:
  """`f` exported for `platform`, for uint8 images [b, *image_shape] with b symbolic."""
  (batch,) = jax.export.symbolic_shape("b")
  args = (
    [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in arrays],
    jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8),
  )
  return jax.export.export(jax.jit(f), platforms=(platform,))(*args)


def serialized(f, arrays, image_shape, platforms=PLATFORMS) -> dict[str, bytes]:
  """{platform: the serialised program} (`jax.export.deserialize` reads it back)."""
  return {p: bytes(export(f, arrays, image_shape, p).serialize()) for p in platforms}
