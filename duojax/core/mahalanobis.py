"""The Mahalanobis OOD score on a model's features: class means and one tied covariance.

Lee et al. (2018), "A Simple Unified Framework for Detecting Out-of-Distribution
Samples and Adversarial Attacks", model the training features of class c as
N(μ_c, Σ) with one covariance Σ shared by every class (linear discriminant
analysis). From training features x_i [D] with labels y_i (N rows, C classes):

    μ_c = (1/N_c) Σ_{i: y_i = c} x_i                                   [C, D]
    Σ   = (1/N) Σ_i (x_i − μ_{y_i})(x_i − μ_{y_i})ᵀ                     [D, D]

(sklearn's `EmpiricalCovariance` of the class-centred rows), and an input x
scores

    score(x) = − min_c (x − μ_c)ᵀ Σ⁺ (x − μ_c),

higher = closer to some class = more in-distribution, so it feeds
`metrics.ood` as the softmax scores do. The squared distance is affine
invariant: features x ↦ A x + b (A invertible) give the same score.

Numerics, all in float32:
  * centring first: the covariance is a sum of products of class-centred
    rows, never E[xxᵀ] − μμᵀ (which cancels catastrophically when the
    features' means dwarf their spread, as ReLU features' do). The means get
    one correction pass (Chan, Golub and LeVeque's corrected two-pass
    algorithm): with r_c the sum of class c's residuals x_i − μ_c,
    μ_c += r_c / N_c and Σ −= Σ_c r_c r_cᵀ / (N_c N).
  * rows are summed in blocks of `_BLOCK` (each block's Gram matrix is one
    matmul, the blocks are then added), and every matmul asks for float32
    precision: accelerators otherwise multiply float32 in bfloat16/TF32 passes.
  * the inverse is a pseudo-inverse by eigendecomposition with a relative
    cutoff, taken on the correlation matrix R = S⁻¹ Σ S⁻¹ (S = the units'
    standard deviations): Σ⁺ = S⁻¹ R⁺ S⁻¹. Distances do not depend on the
    units' scales, and R's unit diagonal keeps eigh's absolute error
    (≈ eps·λ_max) from swamping a unit that merely has a small scale. A unit
    whose spread is below `RCOND` of its own magnitude (a constant unit; a
    ReLU unit that never fires: both common in pre-logit features) carries no
    estimate of spread and is left out, and so are the directions of R with
    eigenvalues below `RCOND` times the largest (collinear units; N − C < D
    rows): below that an eigenvalue is mostly rounding, and its inverse
    would multiply the rounding by up to 1/eps. A full-rank covariance thus
    gives sklearn's numbers (`EmpiricalCovariance`, whose pinvh drops null
    directions too); a rank-deficient one the exact distance for inputs in
    the span of the training rows, leaving out the part of x − μ_c outside
    it (Σ Σ⁺ Σ = Σ; orthogonally in standardised units, where sklearn's
    pinvh projects in raw ones). A ridge Σ + λI was the alternative: it
    biases every direction, and it would give the directions with no
    training spread (units dead on the training rows) weights of order 1/λ,
    letting the least estimated directions decide the score.
`MahalanobisModel.rank` says how many directions were kept.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from duojax.errors import InputError

# Relative cutoff for spreads and eigenvalues: about 100 float32 eps (1.2e-7).
RCOND = 1e-5
# Rows per block of the covariance's sums, and per chunk of the scores.
_BLOCK = 2048
_SCORE_CHUNK = 8192
_HIGHEST = jax.lax.Precision.HIGHEST


class MahalanobisModel(NamedTuple):
  """What `fit` learns (a pytree: passes through jit).

  means [C, D] class means; whitener [D, D] W with Σ⁺ = W Wᵀ (the scores
  use it); rank: the number of directions Σ⁺ keeps (≤ D).
  """

  means: jax.Array
  whitener: jax.Array
  rank: jax.Array

  @property
  def precision(self) -> jax.Array:
    """Σ⁺ = S⁻¹ R⁺ S⁻¹ [D, D] (Σ⁻¹ for a full-rank shared covariance)."""
    return jnp.dot(self.whitener, self.whitener.T, precision=_HIGHEST)


def _check_features(features, what: str, dim: int | None = None):
  if not (hasattr(features, "shape") and hasattr(features, "dtype")):
    features = np.asarray(features)
  if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
    raise InputError(f"{what} must be a non-empty [N, D] array, got shape {tuple(features.shape)}")
  if not (
    jnp.issubdtype(features.dtype, jnp.floating) or jnp.issubdtype(features.dtype, jnp.integer)
  ):
    raise InputError(f"{what} must be real numbers, got dtype {features.dtype}")
  if dim is not None and features.shape[1] != dim:
    raise InputError(f"{what} have {features.shape[1]} dimensions, the model's means {dim}")
  return features


def _blocks(x, *rest, size: int):
  """`x` [N, ...] and `rest` as [K, size, ...] blocks (zero-padded) and the rows' mask."""
  n = x.shape[0]
  k = -(-n // size)
  pad = lambda a: jnp.pad(a, [(0, k * size - n)] + [(0, 0)] * (a.ndim - 1))
  shape = lambda a: pad(a).reshape(k, size, *a.shape[1:])
  return shape(x), *(shape(a) for a in rest), shape(jnp.ones(n, bool))


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _fit(features, labels, num_classes: int):
  x = features.astype(jnp.float32)
  n, d = x.shape
  xs, ys, valid = _blocks(x, labels.astype(jnp.int32), size=min(_BLOCK, n))

  def class_sums(carry, block):
    sums, counts, squares = carry
    xb, yb, vb = block
    xb = jnp.where(vb[:, None], xb, 0.0)
    return (
      sums + jax.ops.segment_sum(xb, yb, num_classes),
      counts + jax.ops.segment_sum(vb.astype(jnp.int32), yb, num_classes),
      squares + jnp.sum(xb * xb, axis=0),
    ), None

  zeros = (jnp.zeros((num_classes, d)), jnp.zeros(num_classes, jnp.int32), jnp.zeros(d))
  (sums, counts, squares), _ = jax.lax.scan(class_sums, zeros, (xs, ys, valid))
  per_class = jnp.maximum(counts, 1).astype(jnp.float32)[:, None]
  means = sums / per_class

  def residual_gram(carry, block):
    gram, residuals = carry
    xb, yb, vb = block
    r = jnp.where(vb[:, None], xb - means[yb], 0.0)
    return (
      gram + jnp.dot(r.T, r, precision=_HIGHEST),
      residuals + jax.ops.segment_sum(r, yb, num_classes),
    ), None

  (gram, residuals), _ = jax.lax.scan(
    residual_gram, (jnp.zeros((d, d)), jnp.zeros((num_classes, d))), (xs, ys, valid)
  )
  means = means + residuals / per_class  # the corrected two-pass mean
  cov = (gram - jnp.dot(residuals.T, residuals / per_class, precision=_HIGHEST)) / n
  cov = (cov + cov.T) / 2

  # Units: left out when their spread is below RCOND of their magnitude.
  variance = jnp.maximum(jnp.diag(cov), 0.0)
  live = variance > RCOND**2 * (squares / n)
  inv_std = jnp.where(live, jax.lax.rsqrt(jnp.where(live, variance, 1.0)), 0.0)
  corr = cov * inv_std[:, None] * inv_std[None, :]
  eigenvalues, vectors = jnp.linalg.eigh((corr + corr.T) / 2)
  keep = eigenvalues > RCOND * jnp.max(eigenvalues)
  scale = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, eigenvalues, 1.0)), 0.0)
  whitener = inv_std[:, None] * vectors * scale[None, :]
  model = MahalanobisModel(means, whitener, jnp.sum(keep).astype(jnp.int32))
  return model, counts, jnp.sum(~jnp.isfinite(x))


def fit(features, labels, num_classes: int) -> MahalanobisModel:
  """Class means and the tied covariance's pseudo-inverse from training features.

  Args:
    features: [N, D] real features (float32 or narrower; cast to float32).
    labels: [N] integer classes in [0, num_classes).
    num_classes: C; every class needs at least one row.

  Raises a one-line InputError for bad shapes, labels out of range, a class
  without rows, NaN or inf features, or features with no spread around
  their class means (every class a single row, or constant features).
  N − C < D rows leave the covariance rank-deficient: the score is then
  measured in the span the rows determine (see the module docstring), and
  `rank` says how many directions that is.
  """
  features = _check_features(features, "training features")
  labels = np.asarray(labels)
  if labels.shape != (features.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise InputError(
      f"labels must be [N] = [{features.shape[0]}] integers, got "
      f"{labels.dtype} {tuple(labels.shape)}"
    )
  if num_classes < 1 or labels.min() < 0 or labels.max() >= num_classes:
    raise InputError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
  model, counts, nonfinite = _fit(features, labels, num_classes)
  if bad := int(nonfinite):
    raise InputError(f"training features have {bad} non-finite values (NaN or inf)")
  empty = np.flatnonzero(np.asarray(counts) == 0)
  if len(empty):
    raise InputError(
      f"{len(empty)} of {num_classes} classes have no training rows (first: "
      f"{empty[:5].tolist()}): every class needs a mean"
    )
  if int(model.rank) == 0:
    raise InputError(
      f"the {features.shape[0]} training features do not vary around their "
      "class means: no covariance to measure distances with"
    )
  return model


@jax.jit
def squared_distances(model: MahalanobisModel, features) -> jax.Array:
  """(x − μ_c)ᵀ Σ⁺ (x − μ_c) for every row and class: [N, C], unchecked (jit-friendly).

  Expanded as |z|² − 2 z·ν_c + |ν_c|² with z = (x − m) W, ν_c = (μ_c − m) W and
  m the mean of the class means: two matmuls instead of an [N, C, D] tensor.
  Distances do not depend on m; subtracting it first keeps |z|² and |ν_c|²
  near the size of the distances themselves, so their difference does not
  cancel away float32's digits when the features sit far from the origin.
  """
  centre = jnp.mean(model.means, axis=0)
  z = jnp.dot(features.astype(jnp.float32) - centre, model.whitener, precision=_HIGHEST)
  nu = jnp.dot(model.means - centre, model.whitener, precision=_HIGHEST)
  cross = jnp.dot(z, nu.T, precision=_HIGHEST)
  d2 = jnp.sum(z * z, axis=1)[:, None] - 2.0 * cross + jnp.sum(nu * nu, axis=1)[None, :]
  return jnp.maximum(d2, 0.0)  # rounding can dip below 0 at a class mean


@jax.jit
def _score_chunk(model: MahalanobisModel, features):
  return (-jnp.min(squared_distances(model, features), axis=1), jnp.sum(~jnp.isfinite(features)))


def score(model: MahalanobisModel, features, *, chunk: int = _SCORE_CHUNK) -> jax.Array:
  """− min_c (x − μ_c)ᵀ Σ⁺ (x − μ_c) per row [N]: higher = more in-distribution.

  Runs over chunks of `chunk` rows (the last one zero-padded, so one
  compiled program serves every chunk); memory is chunk × (C + D) floats.
  NaN or inf features are a one-line InputError.
  """
  features = _check_features(features, "features", dim=int(model.means.shape[1]))
  n = features.shape[0]
  size = min(chunk, n)
  parts, nonfinite = [], 0
  for start in range(0, n, size):
    block = jnp.asarray(features[start : start + size])
    rows = block.shape[0]
    if rows < size:
      block = jnp.pad(block, ((0, size - rows), (0, 0)))
    scores, bad = _score_chunk(model, block)
    parts.append(scores[:rows])
    nonfinite = nonfinite + bad
  if bad := int(nonfinite):
    raise InputError(f"features have {bad} non-finite values (NaN or inf)")
  return jnp.concatenate(parts)
