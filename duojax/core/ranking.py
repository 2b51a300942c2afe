"""Ranking samples by a score, with ties, and what the metrics read off it.

All integer counts and cumulative sums over one sort: AUROC (Mann–Whitney,
ties counted half) and the errors among the k most confident samples
(interpolated linearly inside tie groups) without N² comparisons. Jittable.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Ranking(NamedTuple):
  """Samples sorted by score, highest first, with their tie groups.

  cum[k] counts the flagged samples among the first k (cum[0] = 0). The sample
  at sorted position i is in the tie group spanning the counts (start[i],
  end[i]], i.e. positions start[i]..end[i]−1; last[i] says if i ends its group.
  """

  flags: jax.Array
  cum: jax.Array
  start: jax.Array
  end: jax.Array
  last: jax.Array


def rank(scores, flags) -> Ranking:
  num = scores.shape[0]
  neg_sorted, flags_sorted = jax.lax.sort((-scores, flags.astype(jnp.int32)), num_keys=1)
  boundary = neg_sorted[1:] != neg_sorted[:-1]  # != also merges −0.0 with +0.0
  first = jnp.concatenate([jnp.ones(1, bool), boundary])
  last = jnp.concatenate([boundary, jnp.ones(1, bool)])
  position = jnp.arange(num)
  start = jax.lax.cummax(jnp.where(first, position, 0))
  end = jax.lax.cummin(jnp.where(last, position + 1, num), reverse=True)
  cum = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(flags_sorted)])
  return Ranking(flags_sorted.astype(bool), cum, start, end, last)


def auroc(ranking: Ranking, flags_are_positive: bool):
  """Mann–Whitney AUC, ties half: each positive beats the negatives below it
  and half of those tied with it, n_neg − (neg_cum[start] + neg_cum[end])/2.
  Integer counts and one normalised mean: no rank sums of size N²."""
  num = ranking.flags.shape[0]
  neg_cum = jnp.arange(num + 1) - ranking.cum if flags_are_positive else ranking.cum
  is_positive = ranking.flags if flags_are_positive else ~ranking.flags
  num_neg = neg_cum[-1]
  num_pos = num - num_neg
  wins = num_neg - 0.5 * (neg_cum[ranking.start] + neg_cum[ranking.end])
  share = jnp.where(is_positive, wins / jnp.maximum(num_neg, 1), 0.0)
  auc = jnp.sum(share) / jnp.maximum(num_pos, 1)
  return jnp.where((num_pos > 0) & (num_neg > 0), auc, jnp.nan)


def interpolated_errors(errors: Ranking):
  """Errors among the k most confident, k = 1..N, linear inside tie groups."""
  k = jnp.arange(1, errors.flags.shape[0] + 1)
  at_start = errors.cum[errors.start].astype(jnp.float32)
  at_end = errors.cum[errors.end].astype(jnp.float32)
  fraction = ((k - errors.start) / (errors.end - errors.start)).astype(jnp.float32)
  return at_start + fraction * (at_end - at_start)
