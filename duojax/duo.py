"""The Asymmetric Duo (arXiv 2505.18636), generalised to m members.

A large model and a small sidekick (or any m members: a large model plus k
sidekicks, an ensemble, soups) run in ONE jitted XLA program per batch; their
logits are combined as

    z = Σ_i w_i · z_i          (w_i = 1 / T_i, fit jointly on validation data)

Prediction is argmax z; the uncertainty score is 1 − max softmax(z). The
reference code's variant, 1 − softmax(z)[argmax z_L] (the duo's confidence in
the large model's prediction), is `confidence_on(z, argmax z_L)`.

Modes (see `combine_mode`):
  * "weighted":   w fit jointly on the validation split (the method);
  * "unweighted": each member temperature-scaled alone, then logits averaged;
  * "uq_only":    prediction from the large model (member 0), uncertainty from
                  the weighted duo.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from duojax import sharding

MODES = ("weighted", "unweighted", "uq_only")


def split_members(members: Sequence[nnx.Module]):
  """(graphdefs, states) of NNX models; states are what the fused forward takes."""
  graphdefs, states = zip(*(nnx.split(m) for m in members))
  return tuple(graphdefs), tuple(states)


def make_fused_forward(graphdefs, *, mesh: Mesh | None = None,
                       with_features: bool = False) -> Callable:
  """Jitted `(states, images) -> logits [m, B, C]` running every member at once.

  All members' forward passes live in one XLA program, so the small models
  add their FLOPs and nothing else (one dispatch, one host sync, XLA free to
  overlap them). With a mesh, images are split by rows over every device and
  the member states replicated. `with_features=True` also returns member
  0's pre-logit features [B, D] (for last-layer MC dropout without a second
  backbone pass).
  """
  def forward(states, images):
    logits, features = [], None
    for i, (graphdef, state) in enumerate(zip(graphdefs, states)):
      z, out = nnx.merge(graphdef, state)(images, train=False)
      logits.append(z.astype(jnp.float32))
      if i == 0:
        features = out["pre_logits"]
    return (jnp.stack(logits), features) if with_features else jnp.stack(logits)

  if mesh is None:
    return jax.jit(forward)
  rows, out_logits = sharding.batch_sharding(mesh), sharding.stacked_batch_sharding(mesh)
  return jax.jit(forward, in_shardings=(sharding.replicated(mesh), rows),
                 out_shardings=(out_logits, rows) if with_features else out_logits)


def combine(logits_stack, weights) -> jax.Array:
  """z = Σ_i w_i z_i for logits [m, N, C] and weights [m] (one pass, float32)."""
  logits_stack = jnp.asarray(logits_stack, jnp.float32)
  return jnp.einsum("m,mnc->nc", jnp.asarray(weights, jnp.float32), logits_stack)


def msp_confidence(logits) -> jax.Array:
  """Max softmax probability; the uncertainty score is 1 minus this."""
  return jnp.max(jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1), axis=-1)


def confidence_on(logits, predictions) -> jax.Array:
  """softmax(logits)[n, predictions[n]]: confidence in a given prediction."""
  probs = jax.nn.softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  return jnp.take_along_axis(probs, jnp.asarray(predictions)[:, None], axis=-1)[:, 0]


def combine_mode(logits_stack, mode: str, *, joint_weights=None, single_weights=None):
  """(logits, confidence) of a duo in `mode`; member 0 is the large model.

  Args:
    logits_stack: [m, N, C] member logits.
    mode: "weighted" | "unweighted" | "uq_only".
    joint_weights: [m] weights fit jointly (weighted, uq_only).
    single_weights: [m] per-member temperature-scaling weights (unweighted).

  Returns:
    logits [N, C] whose argmax is the prediction, and confidence [N] in [0, 1]
    (1 − confidence is the uncertainty score).
  """
  if mode not in MODES:
    raise ValueError(f"unknown duo mode {mode!r}; valid: {', '.join(MODES)}")
  logits_stack = jnp.asarray(logits_stack, jnp.float32)
  if mode == "unweighted":
    if single_weights is None:
      raise ValueError("mode 'unweighted' needs single_weights (per-member temperatures)")
    z = combine(logits_stack, jnp.asarray(single_weights) / logits_stack.shape[0])
    return z, msp_confidence(z)
  if joint_weights is None:
    raise ValueError(f"mode {mode!r} needs joint_weights (fit on validation data)")
  z = combine(logits_stack, joint_weights)
  if mode == "weighted":
    return z, msp_confidence(z)
  # uq_only: the large model's prediction, scored by the duo's belief in it.
  # Its logits are the large model's own, temperature-scaled by its joint
  # weight's single-model counterpart when given, so acc/NLL are the large model's.
  large = logits_stack[0] * (1.0 if single_weights is None else single_weights[0])
  return large, confidence_on(z, jnp.argmax(logits_stack[0], axis=-1))
