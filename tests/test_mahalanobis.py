"""The Mahalanobis OOD score: against its definition and sklearn, its invariances, its errors."""

import jax
import numpy as np
import pytest
from sklearn.covariance import EmpiricalCovariance

from duojax.core import mahalanobis, metrics


def _classes(rng, n, d, c, *, offset=0.0, spread=1.0):
  """Rows of c Gaussian classes [n, d] float32 with one shared covariance, and labels."""
  labels = rng.integers(0, c, n)
  labels[:c] = np.arange(c)  # every class has a row
  # A rotation times scales in [0.5, 2]: a well-conditioned covariance (condition
  # number about 16), so float32 errors stay near eps × 16 and tolerances can be tight.
  mix = np.linalg.qr(rng.normal(size=(d, d)))[0] * np.linspace(0.5, 2.0, d)
  centres = 3 * rng.normal(size=(c, d))
  x = offset + spread * (rng.normal(size=(n, d)) @ mix + centres[labels])
  return x.astype(np.float32), labels


def _reference(x, labels, c, queries):
  """The score from its definition, in float64: class means, tied covariance, its inverse."""
  x = x.astype(np.float64)
  means = np.stack([x[labels == k].mean(0) for k in range(c)])
  centred = x - means[labels]
  precision = np.linalg.inv(centred.T @ centred / len(x))
  diff = queries.astype(np.float64)[:, None, :] - means[None]  # [N, C, D]: tiny shapes only
  return -np.einsum("ncd,de,nce->nc", diff, precision, diff).min(1), means, precision


def _sklearn(x, labels, c, queries):
  """sklearn's squared distances: EmpiricalCovariance of the class-centred rows."""
  x = x.astype(np.float64)
  means = np.stack([x[labels == k].mean(0) for k in range(c)])
  fitted = EmpiricalCovariance().fit(x - means[labels])
  return -np.stack([fitted.mahalanobis(queries.astype(np.float64) - m) for m in means], 1).min(1)


@pytest.mark.parametrize("chunk", [8192, 7])
def test_matches_the_definition_and_sklearn(chunk):
  rng = np.random.default_rng(0)
  x, labels = _classes(rng, 120, 5, 3, offset=4.0)
  queries = (4.0 + 6 * rng.normal(size=(30, 5))).astype(np.float32)
  model = mahalanobis.fit(x, labels, 3)
  scores = np.asarray(mahalanobis.score(model, queries, chunk=chunk))
  expected, means, precision = _reference(x, labels, 3, queries)
  np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(scores, _sklearn(x, labels, 3, queries), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(model.means, means, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
    model.precision, precision, rtol=1e-4, atol=1e-5 * np.abs(precision).max()
  )
  assert int(model.rank) == 5 and scores.shape == (30,) and scores.dtype == np.float32
  # The unchecked distances run inside a caller's jit; the model is a pytree.
  d2 = jax.jit(mahalanobis.squared_distances)(model, queries)
  # Same arithmetic up to XLA's reassociation, which differs between CPU types: a
  # small distance is a difference of large terms, so its error scales with theirs.
  np.testing.assert_allclose(
    -np.asarray(d2).min(1), scores, rtol=1e-6, atol=1e-7 * np.abs(scores).max()
  )


def test_features_far_from_the_origin_keep_their_digits():
  """Spread 1e-3 of the offset: E[xxᵀ] − μμᵀ in float32 would lose most digits here."""
  rng = np.random.default_rng(1)
  x, labels = _classes(rng, 600, 6, 4, offset=100.0, spread=0.1)
  queries = (100.0 + 0.5 * rng.normal(size=(40, 6))).astype(np.float32)
  scores = mahalanobis.score(mahalanobis.fit(x, labels, 4), queries)
  np.testing.assert_allclose(scores, _reference(x, labels, 4, queries)[0], rtol=2e-4)


@pytest.mark.parametrize("seed", range(3))
def test_an_invertible_affine_map_of_the_features_leaves_the_scores(seed):
  rng = np.random.default_rng(seed)
  x, labels = _classes(rng, 200, 4, 3)
  queries = (4 * rng.normal(size=(25, 4))).astype(np.float32)
  a = rng.normal(size=(4, 4)) + 2 * np.eye(4)
  b = 10 * rng.normal(size=4)
  mapped = lambda f: (f @ a + b).astype(np.float32)
  scores = mahalanobis.score(mahalanobis.fit(x, labels, 3), queries)
  moved = mahalanobis.score(mahalanobis.fit(mapped(x), labels, 3), mapped(queries))
  np.testing.assert_allclose(moved, scores, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("seed", range(3))
def test_relabelling_the_classes_leaves_the_scores(seed):
  rng = np.random.default_rng(seed)
  x, labels = _classes(rng, 150, 3, 5)
  queries = (3 * rng.normal(size=(20, 3))).astype(np.float32)
  permutation = rng.permutation(5)
  scores = mahalanobis.score(mahalanobis.fit(x, labels, 5), queries)
  relabelled = mahalanobis.score(mahalanobis.fit(x, permutation[labels], 5), queries)
  np.testing.assert_allclose(relabelled, scores, rtol=1e-5, atol=1e-5)


def test_points_far_from_every_class_score_low():
  rng = np.random.default_rng(2)
  rows, labels = _classes(rng, 2500, 8, 4)
  x, labels, test = rows[:2000], labels[:2000], rows[2000:]  # test: new rows of the classes
  far = (40 + 5 * rng.normal(size=(300, 8))).astype(np.float32)
  model = mahalanobis.fit(x, labels, 4)
  ood = metrics.ood(mahalanobis.score(model, test), mahalanobis.score(model, far))
  assert ood["auroc"] > 0.999 and ood["fpr95"] < 0.01


def test_units_without_spread_are_left_out():
  """A dead (all-zero) and a constant unit add nothing, as sklearn's pinvh drops them."""
  rng = np.random.default_rng(3)
  x, labels = _classes(rng, 300, 4, 3)
  queries = (3 * rng.normal(size=(20, 4))).astype(np.float32)
  padded = lambda f, extra: np.concatenate([f, extra], 1).astype(np.float32)
  wide = padded(x, np.stack([np.zeros(300), np.full(300, 7.0)], 1))
  wide_queries = padded(queries, rng.normal(size=(20, 2)))  # they fire on the queries
  model = mahalanobis.fit(wide, labels, 3)
  scores = np.asarray(mahalanobis.score(model, wide_queries))
  assert int(model.rank) == 4
  np.testing.assert_allclose(
    scores, mahalanobis.score(mahalanobis.fit(x, labels, 3), queries), rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(scores, _sklearn(wide, labels, 3, wide_queries), rtol=1e-4, atol=1e-4)


def test_fewer_rows_than_dimensions_measure_within_their_span():
  """N − C < D: rows on a k-dim affine subspace score as in the subspace's own coordinates."""
  rng = np.random.default_rng(4)
  low, labels = _classes(rng, 9, 3, 2)  # rank 9 − 2 = 7 > 3: the 3-dim covariance is full
  embed = rng.normal(size=(3, 10))
  shift = rng.normal(size=10)
  queries = (2 * rng.normal(size=(15, 3))).astype(np.float32)
  high = lambda f: (f @ embed + shift).astype(np.float32)
  model = mahalanobis.fit(high(low), labels, 2)
  assert int(model.rank) == 3
  np.testing.assert_allclose(
    mahalanobis.score(model, high(queries)),
    _reference(low, labels, 2, queries)[0],
    rtol=2e-3,
    atol=2e-3,
  )


@pytest.mark.parametrize(
  "change, message",
  [
    (
      lambda x, y: (np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x), y),
      "training features have 1 non-finite values",
    ),
    (lambda x, y: (x, np.where(y == 2, 0, y)), "1 of 3 classes have no training rows (first: [2])"),
    (lambda x, y: (x, np.where(y == 2, 3, y)), "labels must lie in [0, 3)"),
    (lambda x, y: (x, y[:-1]), "labels must be [N] = [60] integers"),
    (lambda x, y: (x, y.astype(np.float32)), "labels must be [N] = [60] integers"),
    (lambda x, y: (x[:, :0], y), "training features must be a non-empty [N, D] array"),
    (lambda x, y: (x[:3], np.arange(3)), "do not vary around their class means"),
  ],
)
def test_bad_training_inputs_are_one_line_errors(change, message):
  x, labels = _classes(np.random.default_rng(5), 60, 3, 3)
  x, labels = change(x, labels)
  with pytest.raises(ValueError) as error:
    mahalanobis.fit(x, labels, 3)
  assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize(
  "queries, message",
  [
    (np.array([[0.0, np.nan, 1.0]], np.float32), "features have 1 non-finite values"),
    (np.zeros((2, 4), np.float32), "features have 4 dimensions, the model's means 3"),
    (np.zeros(3, np.float32), "features must be a non-empty [N, D] array"),
  ],
)
def test_bad_features_to_score_are_one_line_errors(queries, message):
  x, labels = _classes(np.random.default_rng(6), 60, 3, 3)
  with pytest.raises(ValueError) as error:
    mahalanobis.score(mahalanobis.fit(x, labels, 3), queries)
  assert message in str(error.value) and "\n" not in str(error.value)
