"""Model soups (Wortsman et al., 2022): average the weights of fine-tunes.

Soup ingredients must share a starting point (here: short fine-tunes of one
trained model with different learning rates or seeds), otherwise averaging
weights is meaningless. BatchNorm running statistics are averaged like the
weights; that is an approximation (recomputing them on training data would be
exact) that holds well for fine-tunes that stay close to their start.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.errors import InputError


def average(models: Sequence[nnx.Module], weights: Sequence[float] | None = None) -> nnx.Module:
  """A model whose every variable is the (weighted) mean of the ingredients'."""
  if not models:
    raise InputError("a soup needs at least one ingredient")
  graphdef, first = nnx.split(models[0])
  states = [first]
  for i, model in enumerate(models[1:], start=1):
    other_graphdef, state = nnx.split(model)
    if other_graphdef != graphdef:
      raise InputError(f"soup ingredient {i} has another architecture than ingredient 0")
    states.append(state)
  weights = (
    jnp.full(len(models), 1.0 / len(models))
    if weights is None
    else jnp.asarray(weights, jnp.float32) / jnp.sum(jnp.asarray(weights, jnp.float32))
  )
  mixed = jax.tree.map(lambda *leaves: sum(w * leaf for w, leaf in zip(weights, leaves)), *states)
  return nnx.merge(graphdef, mixed)


def greedy(
  models: Sequence[nnx.Module], score: Callable[[nnx.Module], float]
) -> tuple[nnx.Module, list[int]]:
  """Greedy soup: try ingredients best-first, keep each one that does not lower `score`.

  `score` is a held-out metric where higher is better (validation accuracy).
  Returns the soup and the indices of the ingredients it kept.
  """
  if not models:
    raise InputError("a soup needs at least one ingredient")
  scores = [score(m) for m in models]
  order = sorted(range(len(models)), key=lambda i: -scores[i])
  kept, best = [order[0]], scores[order[0]]
  for i in order[1:]:
    candidate = average([models[j] for j in kept + [i]])
    candidate_score = score(candidate)
    if candidate_score >= best:
      kept.append(i)
      best = candidate_score
  return average([models[j] for j in kept]), sorted(kept)
