"""Abstention with a guaranteed risk: a confidence threshold chosen on labelled
validation rows so that the error rate among the inputs it accepts is at most r,
with probability at least 1 − δ over the draw of those rows.

The procedure is Selection with Guaranteed Risk (SGR; Geifman & El-Yaniv 2017,
"Selective classification for deep neural networks"): a binary search over the
thresholds the rows themselves offer, each candidate tested with an exact
binomial tail bound, δ split evenly over the at most K tests the search can run.
It is preferred here to Learn-then-Test's fixed-sequence testing (Angelopoulos et
al. 2021) because the latter needs a grid of thresholds fixed before seeing the
data and stops at the first test that fails: started at high confidence, where
few rows are accepted and every test fails, it returns nothing, and a start
low enough to pass gives up the coverage above it. SGR's search starts at the median
confidence and pays only ln K (K ≈ log2 N) for its adaptivity.

The bound at one threshold. Fix t and let g(x) = 1[c(x) ≥ t] accept. Of N rows
drawn i.i.d., n are accepted; given n, the accepted rows are i.i.d. draws of the
distribution conditioned on acceptance, so their error count k is Bin(n, R(t))
with R(t) = P(wrong | c ≥ t), the selective risk. For b ≥ R(t) the CDF
F(k; n, b) = P[Bin(n, b) ≤ k] falls as b grows, so with

    B*(n, k, δ') = sup{b ∈ [0, 1] : F(k; n, b) ≥ δ'}

(the Clopper-Pearson upper limit: F(k; n, b) = 1 − I_b(k + 1, n − k)) the bound
fails, R(t) > B*(n, k, δ'), only when the observed k is among the draws whose
CDF at R(t) is below δ': P[R(t) > B*] ≤ P[F(k; n, R(t)) < δ'] ≤ δ' (the CDF of
a discrete variable evaluated at that variable is stochastically no smaller than
a uniform). B* = 1 when k ≥ n (nothing to bound) or n = 0.

The search. Sort the confidences descending, c_(1) ≥ … ≥ c_(N); candidate j is
t_j = c_(j), accepting every row with c ≥ c_(j) (ties included, so n_j ≥ j).
With lo = 0 and hi = N + 1, repeat while hi − lo > 1: j = ⌊(lo + hi)/2⌋; if
B*(n_j, k_j, δ/K) ≤ r the candidate passes and lo = j (try more coverage), else
hi = j. Each step halves the N + 1 gaps between lo and hi, so K = ⌈log2(N + 1)⌉
(N's bit length) bounds the number of tests for every data set; it is fixed by
N alone, so δ' = δ/K is too. The output is the last candidate that passed, the
one of largest coverage: after a pass at j every later test is at some j' > j,
after a failure at j every later one lies between the last pass and j.
By the union bound, P[some tested candidate has R(t_j) > B*_j] ≤ K · δ/K = δ,
so with probability ≥ 1 − δ the returned threshold's risk is ≤ its bound ≤ r.
Two departures from the paper's Algorithm 1, both for exactness: its midpoint
⌈(z_min + z_max)/2⌉ never tests the last row, so it cannot accept every row (here
j = N can be tested, at the cost of ⌈log2(N + 1)⌉ rather than ⌈log2 N⌉ tests,
which differ only when N is a power of two); and it outputs the last candidate
tested, whose bound may exceed r, where this returns the last that passed (or
raises). As in the paper, the union bound treats each tested threshold as
fixed; the thresholds are order statistics picked by the search, so this is the paper's
guarantee rather than a fully conditional one, and tests/test_selective.py
checks it by simulation on a distribution whose selective risk is known.

Reachable risks. With no errors, B*(n, 0, δ') = 1 − δ'^(1/n), falling in n;
the first test is at j = ⌊(N + 1)/2⌋, and if it fails every later test accepts
fewer rows and fails too. So rows of distinct confidences reach no r below
r_min(N, δ) = 1 − (δ/K)^(1/⌊(N + 1)/2⌋), whatever their errors. Ties at the
median confidence make the first test accept n_1 > ⌊(N + 1)/2⌋ rows, and the
floor is then B*(n_1, 0, δ/K); `guaranteed_threshold` names that floor (which is
r_min unless there are ties) when it finds no threshold.

Everything is numpy in float64; bad arrays are a one-line InputError, bad
r or δ a ConfigError.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from duojax.errors import ConfigError, InputError

_BISECTIONS = 60  # 2^-60 of [0, 1]: below float64 resolution near any bound


@dataclasses.dataclass(frozen=True)
class Selection:
  """A threshold chosen by `guaranteed_threshold`: accept when confidence ≥ threshold."""

  threshold: float
  coverage: float  # the fraction of validation rows accepted
  bound: float  # B*: the selective risk bound at the threshold, ≤ risk
  risk: float  # the target r
  delta: float  # the failure probability δ
  rows: int  # N, the validation rows
  accepted: int  # n, the validation rows accepted
  errors: int  # k, the accepted rows that were wrong
  tests: int  # K, the tests δ is split over


def _log_binom_cdf(k: int, n: int, b: float, log_factorial: np.ndarray) -> float:
  """log P[Bin(n, b) ≤ k], a log-sum-exp of the pmf terms (0 < b < 1)."""
  i = np.arange(k + 1)
  terms = (
    log_factorial[n]
    - log_factorial[i]
    - log_factorial[n - i]
    + i * math.log(b)
    + (n - i) * math.log1p(-b)
  )
  top = terms.max()
  return float(top + np.log(np.exp(terms - top).sum()))


def _log_factorials(n: int) -> np.ndarray:
  return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def binomial_tail_bound(n: int, k: int, delta: float, *, _log_factorial=None) -> float:
  """B*(n, k, δ): the largest b with P[Bin(n, b) ≤ k] ≥ δ, by bisection.

  Returns the upper end of the last bracket, so the value is never below the
  exact one (a bound that errs, errs on the safe side).
  """
  n, k = int(n), int(k)
  if not 0 < delta < 1:
    raise ConfigError(f"delta must be in (0, 1), got {delta}")
  if n < 0 or k < 0:
    raise InputError(f"n and k must be >= 0, got n={n}, k={k}")
  if k >= n:
    return 1.0
  log_factorial = _log_factorials(n) if _log_factorial is None else _log_factorial
  log_delta = math.log(delta)
  lo, hi = 0.0, 1.0  # F(k; n, 0) = 1 ≥ δ and F(k; n, 1) = 0 < δ for k < n
  for _ in range(_BISECTIONS):
    mid = 0.5 * (lo + hi)
    if mid <= lo or mid >= hi:
      break
    if _log_binom_cdf(k, n, mid, log_factorial) >= log_delta:
      lo = mid
    else:
      hi = mid
  return hi


def num_tests(rows: int) -> int:
  """K = ⌈log2(N + 1)⌉: the most tests the search makes on N rows."""
  return int(rows).bit_length()


def smallest_reachable_risk(rows: int, delta: float) -> float:
  """r_min(N, δ): below it no N rows of distinct confidences, however accurate,
  give a threshold (ties at the median can lower it; see the module docstring)."""
  first = (int(rows) + 1) // 2
  return binomial_tail_bound(first, 0, delta / num_tests(rows))


def _check(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
  try:
    c = np.asarray(confidence, np.float64)
  except (TypeError, ValueError):
    raise InputError("confidence must be an array of real numbers") from None
  ok = np.asarray(correct)
  if c.ndim != 1 or c.size == 0:
    raise InputError(f"confidence must be a non-empty 1-D array, got shape {c.shape}")
  if not np.all(np.isfinite(c)):
    raise InputError(f"confidence has {int(np.sum(~np.isfinite(c)))} non-finite values")
  if ok.shape != c.shape:
    raise InputError(f"correct has shape {ok.shape}; expected {c.shape}, one per confidence")
  if ok.dtype != bool and not (
    np.issubdtype(ok.dtype, np.number) and np.all((ok == 0) | (ok == 1))
  ):
    raise InputError("correct must be booleans (or 0/1): whether each prediction was right")
  return c, ok.astype(bool)


def _check_level(risk: float, delta: float) -> None:
  if not 0 < risk < 1:
    raise ConfigError(f"risk must be in (0, 1), got {risk}")
  if not 0 < delta < 1:
    raise ConfigError(f"delta must be in (0, 1), got {delta}")


def guaranteed_threshold(confidence, correct, risk: float, delta: float = 0.05) -> Selection:
  """SGR's threshold on validation `confidence` [N] and `correct` [N] (bool).

  With probability ≥ 1 − δ over the validation rows, accepting new inputs whose
  confidence is ≥ `threshold` errs on at most a fraction `risk` of those accepted.
  Raises InputError when no threshold reaches `risk` on these rows.
  """
  c, ok = _check(confidence, correct)
  risk, delta = float(risk), float(delta)
  _check_level(risk, delta)
  rows = c.size
  tests = num_tests(rows)
  order = np.argsort(-c, kind="stable")
  sorted_c = c[order]
  wrong_before = np.concatenate([[0], np.cumsum(~ok[order])])  # errors among the first j
  log_factorial = _log_factorials(rows)
  best, smallest, floor = None, math.inf, None
  lo, hi = 0, rows + 1
  while hi - lo > 1:
    j = (lo + hi) // 2
    threshold = sorted_c[j - 1]
    accepted = int(np.searchsorted(-sorted_c, -threshold, side="right"))  # ties included
    errors = int(wrong_before[accepted])
    bound = binomial_tail_bound(accepted, errors, delta / tests, _log_factorial=log_factorial)
    smallest = min(smallest, bound)
    if floor is None:  # the first test's bound had it made no errors: see the docstring
      floor = binomial_tail_bound(accepted, 0, delta / tests, _log_factorial=log_factorial)
    if bound <= risk:
      best, lo = (float(threshold), accepted, errors, bound), j
    else:
      hi = j
  if best is None:
    raise InputError(
      f"no threshold reaches risk={risk:g} at delta={delta:g} on these {rows} rows (the "
      f"smallest bound the search found is {smallest:.4g}); the smallest risk any {rows} rows "
      f"can reach at delta={delta:g} is {floor:.4g}"
    )
  threshold, accepted, errors, bound = best
  return Selection(
    threshold=threshold,
    coverage=accepted / rows,
    bound=float(bound),
    risk=risk,
    delta=delta,
    rows=rows,
    accepted=accepted,
    errors=errors,
    tests=tests,
  )


def selective_risk_coverage(confidence, correct, threshold: float) -> tuple[float, float]:
  """(selective risk, coverage) of accepting confidence ≥ `threshold` on labelled rows:
  the error rate among accepted rows (NaN when none is) and the fraction accepted."""
  c, ok = _check(confidence, correct)
  accept = c >= float(threshold)
  coverage = float(accept.mean())
  risk = float((~ok[accept]).mean()) if accept.any() else math.nan
  return risk, coverage
