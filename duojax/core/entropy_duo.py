"""The entropy-weighted duo: per-input weights from each member's predictive entropy.

In the spirit of DaWin (arXiv 2410.03782), which interpolates two models per
test input by their prediction entropies, with no training: a member that is
unsure of an input (high entropy) gets less say in it. Here, with m members,

    α_i(x) = m · exp(−H_i(x)) / Σ_j exp(−H_j(x)),      z(x) = Σ_i α_i(x) · w_i · z_i(x),

where H_i(x) is the entropy of member i's own temperature-scaled predictive
softmax(s_i z_i(x)) (s_i its single-model temperature weight, fit on
validation), so that the entropies of a sharp and a soft model are
comparable. The α_i average to 1, so where the members are equally sure the
duo is the weighted duo; the weights w are fit jointly on validation NLL with
α held at its per-input values — a weighted duo of the members' logits
α_i(x)·z_i(x), which `temperature.fit_temperatures` fits exactly as it fits
the plain one. Under a shift that makes one member unsure, its α falls on
those inputs without any refit: the adaptation validation data cannot show.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from duojax.core import per_input, temperature


@dataclasses.dataclass(frozen=True)
class EntropyParams:
  single_weights: np.ndarray  # [m] s_i: each member's own temperature weight
  weights: np.ndarray  # [m] w_i: the duo's weights on α_i(x) z_i(x)


def alphas(single_weights, member_logits) -> jnp.ndarray:
  """α_i(x) [m, N]: m × softmax over members of −H_i(x)."""
  h = jnp.stack([per_input.entropy(s * z) for s, z in zip(single_weights, member_logits)])
  return (
    len(member_logits)
    * jnp.exp(-h - jnp.max(-h, axis=0))
    / jnp.sum(jnp.exp(-h - jnp.max(-h, axis=0)), axis=0)
  )


def _scaled(single_weights, arrays) -> list:
  a = alphas(single_weights, arrays)
  return [a[i][:, None] * jnp.asarray(z) for i, z in enumerate(arrays)]


def combine(params: EntropyParams, members) -> jnp.ndarray:
  """`logits` for traced arrays (inside a jitted or exported program)."""
  scaled = _scaled(params.single_weights, members)
  return sum(w * z for w, z in zip(params.weights, scaled))


def logits(params: EntropyParams, member_logits) -> jnp.ndarray:
  """The entropy-weighted duo's logits Σ_i α_i(x) w_i z_i(x), [N, C]."""
  arrays, _ = per_input.check_members(member_logits)
  return combine(params, arrays)


def fit(member_logits, labels, *, solver: str = "jaxopt") -> EntropyParams:
  """Fits s_i (each member alone) and then w (jointly, on α-scaled logits) on validation."""
  arrays, labels = per_input.check_members(member_logits, labels)
  single = np.asarray(
    [temperature.fit_temperatures([z], labels, solver=solver)[0] for z in arrays], np.float32
  )
  scaled = [np.asarray(z) for z in _scaled(single, arrays)]
  weights = np.asarray(temperature.fit_temperatures(scaled, labels, solver=solver), np.float32)
  return EntropyParams(single, weights)
