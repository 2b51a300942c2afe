"""Split conformal prediction sets from any classifier's probabilities.

A score s(x, y) says how badly label y fits input x (larger: worse). On a
calibration split of n labelled rows the scores S_i = s(x_i, y_i) are sorted,

    k = ⌈(n + 1)(1 − α)⌉,   q̂ = S_(k), the k-th smallest   (q̂ = +inf when k > n),

and a new input gets the set C(x) = {y : s(x, y) ≤ q̂}.

Why k gives coverage ≥ 1 − α. Let the test row's score be S_{n+1}; the n + 1
scores are exchangeable (calibration and test rows drawn alike, the score
function fixed beforehand). S_{n+1} ≤ S_(k) exactly when fewer than k
calibration scores lie strictly below S_{n+1}, i.e. when R_{n+1} ≤ k with
R_j = 1 + #{i ≠ j : S_i < S_j}. Order the n + 1 scores, ties in any way: each
of the first k has fewer than k scores strictly below it, so Σ_j 1[R_j ≤ k] ≥ k
always. Exchangeability gives every j the same P(R_j ≤ k), hence

    P(y_{n+1} ∈ C(x_{n+1})) = P(R_{n+1} ≤ k) ≥ k / (n + 1) ≥ 1 − α,

since k ≥ (n + 1)(1 − α). When k > n the set is every label and covers with
probability 1 (this happens for α < 1/(n + 1)). Without ties (continuous
scores) exactly k of the R_j are ≤ k, so the coverage is exactly
k/(n + 1) < ((n + 1)(1 − α) + 1)/(n + 1) = 1 − α + 1/(n + 1). Ties only add
coverage above that: an atom in the score distribution (a probability saturated
at 1.0, a label of rank 1 whose non-randomised APS score is p_top ≈ 1) makes the
sets larger than the level asks. Conditionally on the calibration split the
coverage of continuous scores is Beta(k, n + 1 − k), whose mean is k/(n + 1).

k is computed in exact rational arithmetic on α's shortest decimal form (α =
0.7 is 7/10, not the float just below it), so a product such as (n + 1)·0.3 =
3.0000000000000004 does not round k up by one.

Scores, with p the row's probabilities and o(y) the 1-based rank of y when the
classes are sorted by descending probability (o = 1 for the top class):

  * "lac" (Sadinle, Lei, Wasserman 2019, least ambiguous set-valued
    classifiers): s = 1 − p_y, so C(x) = {y : p_y ≥ 1 − q̂}. With correct
    probabilities no rule has a smaller mean set at that coverage, but the
    coverage is spent unevenly: hard inputs are covered less than easy ones.
  * "aps" (Romano, Sesia, Candès 2020): s = Σ_{o(c) < o(y)} p_c + U·p_y, the
    mass ranked strictly above y plus U times y's own. Non-randomised, U = 1
    (the mass up to and including y); randomised, U ~ Uniform(0, 1). For one
    row s rises with the rank (the step from y to the next class adds
    (1 − U)·p_y + U·p_next ≥ 0), so every set is a top-k list of the row.
  * "raps" (Angelopoulos, Bates, Malik, Jordan 2021): the APS score plus
    λ·max(0, o(y) − k_reg). Ranks past k_reg pay λ each, which stops a set
    from growing through a long tail of tiny, noisy probabilities.

Randomisation. U makes the score continuous whenever p_y > 0: it spreads the
atoms of the non-randomised score (ties between rows, saturated probabilities)
so the coverage is near 1 − α rather than above it. One U is drawn per row and
shared by all its classes, as in the papers; a randomised set may then be
empty (U·p_top > q̂). Draws come from numpy Generators: calibration row i uses
the i-th value of `np.random.default_rng([seed, 0]).random(n)`, and a call of
`sets` on m rows the values of `np.random.default_rng([seed, 1]).random(m)`.
The two streams are independent and every call is reproducible; a test row's
draw depends on its position in the call, so batches should pass their own
`seed` (or one call should take every row).

RAPS defaults: λ = 0.01 and k_reg = 5. The paper picks both on a held-out
tuning split (k_reg near the rank the true label needs for 1 − α top-k
coverage, λ for the smallest mean set); as fixed values, the authors' released
code uses λ = 0.01, k_reg = 5 in its example and notes that k_reg = 5 suffices
for many ImageNet models and matters less the smaller λ is. Tuning is not done
here: tuned on the calibration rows, the score would depend on them and break
exchangeability, so tune on a separate split and pass `lam=` and `k_reg=`.
With C ≤ k_reg classes, or λ = 0, RAPS is APS.

Ties in probability are broken by class index (a stable sort: the lower index
ranks first), so the scores, and hence the sets, are deterministic.

Everything is numpy in float64 (inputs are upcast once); calibration and test
scores go through the same code, so a test row equal to a calibration row gets
bit-identical scores. Bad inputs raise a one-line InputError, bad options a
ConfigError.
"""

from __future__ import annotations

import dataclasses
import fractions
import math

import numpy as np

from duojax.errors import ConfigError, InputError

METHODS = ("lac", "aps", "raps")
RAPS_LAM = 0.01
RAPS_K_REG = 5
ROW_SUM_TOLERANCE = 1e-3
# Rows scored per chunk in the sorting methods: a few [rows, C] float64 arrays
# of about this many elements (tens of MB) at a time.
_CHUNK_ELEMENTS = 1 << 22
_CALIBRATION_STREAM, _TEST_STREAM = 0, 1


# --- Input checks.


def _check_probs(probs, what: str = "probs") -> np.ndarray:
  try:
    probs = np.asarray(probs)
  except ValueError:  # numpy's message does not say which input is ragged
    raise InputError(f"{what} must be a rectangular array (rows of equal length)") from None
  # bfloat16 (from a jax array) is no numpy floating type but converts exactly.
  real = probs.dtype.name == "bfloat16" or any(
    np.issubdtype(probs.dtype, kind) for kind in (np.floating, np.integer)
  )
  if not real:
    raise InputError(f"{what} must be real numbers, got dtype {probs.dtype}")
  if probs.ndim != 2:
    raise InputError(f"{what} must be 2-D [N, C], got shape {probs.shape}")
  if 0 in probs.shape:
    raise InputError(f"{what} are empty (shape {probs.shape})")
  probs = probs.astype(np.float64)
  if bad := int(np.sum(~np.isfinite(probs))):
    raise InputError(f"{what} has {bad} non-finite values (NaN or inf)")
  if bad := int(np.sum(probs < 0)):
    raise InputError(f"{what} has {bad} negative values; pass probabilities, not logits")
  if bad := int(np.sum(np.abs(probs.sum(axis=1) - 1.0) > ROW_SUM_TOLERANCE)):
    raise InputError(
      f"{what} has {bad} rows whose sum is not 1 (within "
      f"{ROW_SUM_TOLERANCE}); pass softmax probabilities, not logits"
    )
  return probs


def _check_labels(labels, num_rows: int, num_classes: int, of: str = "probs") -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (num_rows,):
    raise InputError(f"labels shape {labels.shape} does not match the {num_rows} rows of {of}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise InputError(f"labels must be integers, got dtype {labels.dtype}")
  if bad := int(np.sum((labels < 0) | (labels >= num_classes))):
    raise InputError(f"labels have {bad} values outside [0, {num_classes})")
  return labels.astype(np.int64)


def _check_options(method: str, randomized, lam, k_reg):
  """(randomized, lam, k_reg) resolved to the method's defaults, or a ConfigError."""
  if method not in METHODS:
    raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
  if randomized is None:
    randomized = method != "lac"
  elif randomized and method == "lac":
    raise ConfigError("randomized=True applies to 'aps' and 'raps' only; LAC scores are 1 - p_y")
  if method != "raps":
    if lam is not None or k_reg is not None:
      raise ConfigError(f"lam and k_reg are RAPS parameters; method {method!r} takes neither")
    return bool(randomized), None, None
  lam = RAPS_LAM if lam is None else lam
  k_reg = RAPS_K_REG if k_reg is None else k_reg
  if (
    isinstance(lam, bool)
    or not isinstance(lam, (int, float, np.floating, np.integer))
    or not 0 <= lam < math.inf
  ):
    raise ConfigError(f"lam must be a finite number >= 0, got {lam!r}")
  if isinstance(k_reg, bool) or not isinstance(k_reg, (int, np.integer)) or k_reg < 0:
    raise ConfigError(f"k_reg must be an integer >= 0, got {k_reg!r}")
  return bool(randomized), float(lam), int(k_reg)


def _check_seed(seed) -> int:
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")
  return int(seed)


def _uniforms(seed: int, stream: int, num_rows: int) -> np.ndarray:
  return np.random.default_rng([seed, stream]).random(num_rows)


# --- Scores and the quantile.


def scores(probs, method: str, *, labels=None, uniforms=None, lam=None, k_reg=None) -> np.ndarray:
  """Conformity scores s(x, y) of `method` (definitions in the module docstring).

  With labels [N], the score of each row's label, [N]; without, every class's
  score, [N, C]. `uniforms` [N] are the U of APS and RAPS (None: U = 1, the
  non-randomised score); LAC takes none. lam and k_reg default to RAPS's.
  """
  probs = _check_probs(probs)
  num_rows, num_classes = probs.shape
  _, lam, k_reg = _check_options(method, False, lam, k_reg)
  if labels is not None:
    labels = _check_labels(labels, num_rows, num_classes)
  if uniforms is not None:
    if method == "lac":
      raise ConfigError("uniforms apply to 'aps' and 'raps' only; LAC scores are 1 - p_y")
    uniforms = np.asarray(uniforms, np.float64)
    if uniforms.shape != (num_rows,):
      raise InputError(f"uniforms shape {uniforms.shape} does not match the {num_rows} rows")
    if bad := int(np.sum(~((uniforms >= 0) & (uniforms <= 1)))):
      raise InputError(f"uniforms have {bad} values outside [0, 1] (NaN included)")
  return _scores(probs, method, labels, uniforms, lam, k_reg)


def _scores(probs, method, labels, uniforms, lam, k_reg) -> np.ndarray:
  """`scores` on checked inputs."""
  num_rows, num_classes = probs.shape
  if method == "lac":
    out = 1.0 - probs
  else:
    out = np.empty_like(probs)
    step = max(1, _CHUNK_ELEMENTS // num_classes)
    for start in range(0, num_rows, step):
      rows = slice(start, start + step)
      out[rows] = _ranked_scores(
        probs[rows], None if uniforms is None else uniforms[rows], lam or 0.0, k_reg or 0
      )
  return out if labels is None else out[np.arange(num_rows), labels]


def _ranked_scores(probs, uniforms, lam: float, k_reg: int) -> np.ndarray:
  """APS (lam = 0) or RAPS scores of every class, [N, C]."""
  num_rows, num_classes = probs.shape
  order = np.argsort(-probs, axis=1, kind="stable")  # descending; ties: lower index first
  ranked = np.take_along_axis(probs, order, axis=1)
  # Mass strictly above each rank: an exclusive running sum, added left to
  # right (np.cumsum is sequential), so it is the same sum a loop would give.
  above = np.zeros_like(ranked)
  np.cumsum(ranked[:, :-1], axis=1, out=above[:, 1:])
  own = ranked if uniforms is None else uniforms[:, None] * ranked
  ranked_scores = above + own
  if lam:
    rank = np.arange(1, num_classes + 1, dtype=np.float64)
    ranked_scores = ranked_scores + lam * np.maximum(0.0, rank - k_reg)
  out = np.empty_like(ranked_scores)
  np.put_along_axis(out, order, ranked_scores, axis=1)
  return out


def quantile_index(num_scores: int, alpha: float) -> int:
  """k = ⌈(n + 1)(1 − α)⌉, exactly (α read as its shortest decimal); k > n means q̂ = +inf."""
  return math.ceil((num_scores + 1) * (1 - fractions.Fraction(repr(float(alpha)))))


def _check_alpha(alpha) -> float:
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
    raise ConfigError(f"alpha must be a number in (0, 1), got {alpha!r}")
  if not 0 < alpha < 1:  # NaN fails too
    raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
  return float(alpha)


# --- Calibration and sets.


@dataclasses.dataclass(frozen=True)
class ConformalPredictor:
  """A calibrated threshold: `sets(probs)` gives {y : s(x, y) ≤ threshold}."""

  method: str
  alpha: float
  threshold: float  # q̂; +inf when α < 1/(n + 1): every set is full
  randomized: bool
  lam: float | None  # RAPS only
  k_reg: int | None  # RAPS only
  seed: int
  num_classes: int
  num_calibration: int  # n

  def scores(self, probs, *, labels=None, seed: int | None = None) -> np.ndarray:
    """The method's scores of new rows ([N, C], or [N] at `labels`), drawn
    with the test stream of `seed` (default: the predictor's)."""
    probs = _check_probs(probs)
    if probs.shape[1] != self.num_classes:
      raise InputError(
        f"probs have {probs.shape[1]} classes; the predictor was calibrated on {self.num_classes}"
      )
    seed = self.seed if seed is None else _check_seed(seed)
    uniforms = _uniforms(seed, _TEST_STREAM, probs.shape[0]) if self.randomized else None
    if labels is not None:
      labels = _check_labels(labels, *probs.shape)
    return _scores(probs, self.method, labels, uniforms, self.lam, self.k_reg)

  def sets(self, probs, *, seed: int | None = None) -> np.ndarray:
    """Prediction sets, bool [N, C]: True where s(x, y) ≤ threshold."""
    return self.scores(probs, seed=seed) <= self.threshold


def calibrate(
  probs,
  labels,
  *,
  alpha: float = 0.1,
  method: str = "lac",
  randomized: bool | None = None,
  lam: float | None = None,
  k_reg: int | None = None,
  seed: int = 0,
) -> ConformalPredictor:
  """Calibrate split conformal sets of level 1 − α on held-out rows.

  Args:
    probs: [n, C] probabilities (rows summing to 1) of rows not used in training.
    labels: [n] integer labels in [0, C).
    alpha: the miscoverage allowed, in (0, 1).
    method: "lac", "aps" or "raps".
    randomized: U ~ Uniform(0, 1) in the APS/RAPS score (default True for
      them); LAC has no randomised form.
    lam, k_reg: RAPS's penalty λ·max(0, o(y) − k_reg); default 0.01 and 5.
    seed: seeds the uniforms of calibration (stream 0) and of `sets` (stream 1).
  """
  alpha = _check_alpha(alpha)
  randomized, lam, k_reg = _check_options(method, randomized, lam, k_reg)
  seed = _check_seed(seed)
  probs = _check_probs(probs, "calibration probs")
  num_rows, num_classes = probs.shape
  labels = _check_labels(labels, num_rows, num_classes)
  uniforms = _uniforms(seed, _CALIBRATION_STREAM, num_rows) if randomized else None
  calibration = _scores(probs, method, labels, uniforms, lam, k_reg)
  k = quantile_index(num_rows, alpha)
  threshold = math.inf if k > num_rows else float(np.partition(calibration, k - 1)[k - 1])
  return ConformalPredictor(
    method=method,
    alpha=alpha,
    threshold=threshold,
    randomized=randomized,
    lam=lam,
    k_reg=k_reg,
    seed=seed,
    num_classes=num_classes,
    num_calibration=num_rows,
  )


def _check_sets(sets) -> np.ndarray:
  sets = np.asarray(sets)
  if sets.dtype != bool or sets.ndim != 2:
    raise InputError(f"sets must be a bool [N, C] array, got {sets.dtype} of shape {sets.shape}")
  return sets


def set_sizes(sets) -> np.ndarray:
  """Labels in each set, int [N]."""
  return _check_sets(sets).sum(axis=1)


def coverage(sets, labels) -> float:
  """Fraction of rows whose set holds their label."""
  sets = _check_sets(sets)
  if sets.shape[0] == 0:
    raise InputError("sets are empty: coverage of no rows is undefined")
  labels = _check_labels(labels, *sets.shape, of="sets")
  return float(np.mean(sets[np.arange(sets.shape[0]), labels]))
