"""An alarm for a batch of deployment inputs that no longer looks like validation data.

A duo's weights are fit once on clean validation rows; under a shift the
sidekick's reliability changes and fixed weights can hurt. The members' logits
alone show it: the two models disagree at another rate, and their confidences
move apart or together. The alarm tests whether a batch of n unlabelled
inputs is compatible with the validation rows on both counts.

Per-row statistics. With z_L, z_S the large model's and the sidekick's logits
and T_L, T_S their temperatures (default 1; the members' own temperature
scaling is the natural choice, `1 / single_weights` of a fitted duo),

    d = 1[argmax z_L ≠ argmax z_S],    g = max softmax(z_L / T_L) − max softmax(z_S / T_S).

d is the D3M disagreement signal (arXiv 2506.05047). g is signed and the test
on it two-sided: a corruption that hurts the large model more lowers its
confidence and g, one that hurts the sidekick more raises it, and both are
the cells where fixed weights go wrong. With temperature-scaled members each
member's mean confidence is near its accuracy in distribution, so the batch
mean of g estimates the accuracy gap and its shift is a shift of that gap;
|g| would hide the direction and mix the two cases. The disagreement test is
two-sided too: severe corruptions can make both models predict the same few
classes, so agreement can rise as well as fall.

The statistic. With r_i = (d_i, g_i) for the N validation rows, μ̂ their mean,
s their standard deviation per coordinate (1 where a coordinate is constant),
and m_X the mean of r over a batch X of n rows,

    Z(X) = (m_X − μ̂) / (s · √(1/n + 1/N)),    T(X) = max(|Z_d|, |Z_g|).

The max reacts to a shift that moves either signal strongly, and its null
distribution is taken jointly, so the correlation of d and g costs nothing
(no Bonferroni split of α); Fisher's combination would need a p-value per
coordinate and favours shifts that move both a little. The factor
√(1/n + 1/N) only makes each Z about standard normal in distribution; the
p-value does not depend on it.

The null distribution, a D3M-style bootstrap. The real-world T compares a fresh
batch with μ̂, itself an estimate from N rows: Var(m_X − μ̂) = Σ(1/n + 1/N)
with Σ the rows' covariance. Resampling only batches from the validation rows
(and comparing them with the fixed μ̂) would give the null Σ/n, too narrow by
√(1 + n/N): at n/N = 0.1 a nominal 5% alarm fired on 6.1% of clean batches
of tests/test_shift_alarm.py's members. So each of the B resamples draws both
sides, in the bootstrap world whose population is the rows' empirical law:
a batch X*_b of n rows and a reference V*_b of N rows, both with replacement,
and T*_b = max |(m_{X*_b} − m_{V*_b}) / (s · √(1/n + 1/N))|. The p-value of a
batch is

    p = (1 + #{b : T*_b ≥ T(X)}) / (1 + B),

and the alarm is p ≤ α.

The guarantee and what it assumes. A Monte Carlo p-value is exact for the
law it resamples: if T has the law of the T*_b (B + 1 i.i.d. statistics),
P(p ≤ α) = ⌊α(B + 1)⌋ / (B + 1) ≤ α, less with ties (counted against the
alarm). T has that law when validation set and batch are drawn from the
rows' empirical distribution; with validation rows and deployment inputs i.i.d.
from one distribution (exchangeable), the bootstrap approximates it, with the
right centre and covariance up to O(1/√N) and the shape of a maximum of two
means of n rows up to the bootstrap's O(1/√n) skewness error. The rate is
over the draw of the validation set too: given one set it varies around α
(that set's μ̂ is off by about √(Σ/N)). tests/test_shift_alarm.py measures it
over many batches and validation sets. Dependent rows in a batch (frames of
one video, crops of one image) break the i.i.d. assumption and raise it.

Other batch sizes. The null is drawn at fit time for `batch_size`; a batch of
another size n gets a null drawn for n from the same reference resamples (the
V*_b do not depend on n) and a stream seeded by (seed, 1, n), in B·n draws:
milliseconds for the sizes a deployment uses, and reproducible for one numpy.

Everything is numpy in float64; bad arrays are a one-line InputError, bad
options a ConfigError, a damaged file a FileError.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from duojax import files
from duojax.errors import ConfigError, FileError, InputError

FORMAT = "duojax.shift_alarm"
VERSION = 1
STATISTICS = ("disagreement", "confidence_gap")
# Rows per chunk of the softmax and of the reference resamples: a few float64
# arrays of about this many elements (tens of MB) at a time.
_CHUNK_ELEMENTS = 1 << 22


# --- Input checks.


def _check_logits(logits, what: str) -> np.ndarray:
  try:
    logits = np.asarray(logits)
  except ValueError:
    raise InputError(f"{what} must be a rectangular array (rows of equal length)") from None
  if not (logits.dtype.name == "bfloat16" or logits.dtype.kind in "fiu"):
    raise InputError(f"{what} must be real numbers, got dtype {logits.dtype}")
  if logits.ndim != 2:
    raise InputError(f"{what} must be 2-D [N, C], got shape {logits.shape}")
  if 0 in logits.shape:
    raise InputError(f"{what} are empty (shape {logits.shape})")
  logits = logits.astype(np.float64)
  if bad := int(np.sum(~np.isfinite(logits))):
    raise InputError(f"{what} has {bad} non-finite values (NaN or inf)")
  return logits


def _check_pair(member_logits) -> tuple[np.ndarray, np.ndarray]:
  """(large, sidekick) logits [N, C] each, from two arrays or one [2, N, C] stack."""
  if not (isinstance(member_logits, (list, tuple)) or np.ndim(member_logits) == 3):
    raise InputError("member logits must be a list of two [N, C] arrays or one [2, N, C] stack")
  if len(member_logits) != 2:
    raise InputError(f"a shift alarm takes two members' logits, got {len(member_logits)}")
  large = _check_logits(member_logits[0], "large model logits")
  sidekick = _check_logits(member_logits[1], "sidekick logits")
  if large.shape != sidekick.shape:
    raise InputError(
      f"large model logits {large.shape} and sidekick logits {sidekick.shape} differ"
    )
  return large, sidekick


def _check_temperatures(temperatures) -> tuple[float, float]:
  if temperatures is None:
    return (1.0, 1.0)
  try:
    values = [float(t) for t in temperatures]
  except (TypeError, ValueError):
    raise ConfigError(f"temperatures must be two positive numbers, got {temperatures!r}") from None
  if len(values) != 2 or not all(0 < t < math.inf for t in values):
    raise ConfigError(f"temperatures must be two finite numbers > 0, got {temperatures!r}")
  return values[0], values[1]


def temperatures_from_weights(weights) -> tuple[float, float]:
  """(T_L, T_S) from the two members' temperature-scaling weights s_i = 1 / T_i. A
  member no better than chance fits a weight ≤ 0 (its logits point away from the
  labels); its confidence is then read from its raw logits (T = 1)."""
  return tuple(float(1 / w) if np.isfinite(w) and w > 0 else 1.0 for w in np.asarray(weights)[:2])


def _check_int(value, what: str, least: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
    raise ConfigError(f"{what} must be an integer >= {least}, got {value!r}")
  return int(value)


def _check_alpha(alpha) -> float:
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
    raise ConfigError(f"alpha must be a number in (0, 1), got {alpha!r}")
  if not 0 < alpha < 1:  # NaN fails too
    raise ConfigError(f"alpha must be in (0, 1), got {alpha!r}")
  return float(alpha)


# --- Statistics.


def _max_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
  """max softmax(z / T) per row, float64 [N]: 1 / Σ_c exp((z_c − max z) / T)."""
  out = np.empty(logits.shape[0])
  step = max(1, _CHUNK_ELEMENTS // logits.shape[1])
  for start in range(0, logits.shape[0], step):
    z = logits[start : start + step] / temperature
    out[start : start + step] = 1.0 / np.exp(z - z.max(axis=1, keepdims=True)).sum(axis=1)
  return out


def _rows(large: np.ndarray, sidekick: np.ndarray, temperatures) -> np.ndarray:
  """Per row (d, g), float64 [N, 2] (module docstring)."""
  t_large, t_sidekick = temperatures
  disagree = (large.argmax(axis=1) != sidekick.argmax(axis=1)).astype(np.float64)
  gap = _max_softmax(large, t_large) - _max_softmax(sidekick, t_sidekick)
  return np.stack([disagree, gap], axis=1)


def _standardised(means: np.ndarray, reference: np.ndarray, scale: np.ndarray, n: int, N: int):
  """T = max_k |m_k − μ_k| / (s_k √(1/n + 1/N)) over the last axis."""
  return np.max(np.abs(means - reference) / (scale * math.sqrt(1 / n + 1 / N)), axis=-1)


def _batch_means(rows: np.ndarray, count: int, size: int, rng) -> np.ndarray:
  """Means [count, 2] of `count` batches of `size` rows drawn with replacement."""
  columns, out = rows.T.copy(), np.empty((count, rows.shape[1]))
  step = max(1, _CHUNK_ELEMENTS // size)
  for start in range(0, count, step):
    draws = rng.integers(0, rows.shape[0], (min(step, count - start), size), dtype=np.int32)
    for k, column in enumerate(columns):  # one gather per statistic: faster than rows[draws]
      out[start : start + step, k] = np.take(column, draws).mean(axis=1)
  return out


# --- The alarm.


@dataclasses.dataclass(frozen=True, eq=False)  # == on its arrays is ambiguous
class ShiftAlarm:
  """A calibrated alarm: `check(batch_logits)` gives (alarm, p-value) for one batch."""

  alpha: float
  batch_size: int  # the n of the null drawn at fit time
  seed: int
  temperatures: tuple[float, float]  # (T_L, T_S)
  num_classes: int
  rows: np.ndarray  # float64 [N, 2]: the validation rows' (d, g)
  reference_means: np.ndarray  # float64 [B, 2]: m_{V*_b}
  null: np.ndarray  # float64 [B]: T*_b for batches of batch_size
  # Nulls drawn for other batch sizes, kept: `duojax.predict` checks every chunk of one
  # size, and each draw is B·n samples (the same ones every time: seeded by n).
  _drawn: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def mean(self) -> np.ndarray:
    """μ̂: the validation rows' mean disagreement and confidence gap, [2]."""
    return self.rows.mean(axis=0)

  @property
  def scale(self) -> np.ndarray:
    """s: the rows' standard deviations, 1 where a statistic is constant, [2]."""
    return _scale(self.rows)

  def null_for(self, n: int) -> np.ndarray:
    """T*_b, b = 1..B, for batches of n rows [B]: the stored null for batch_size,
    else drawn for n (module docstring, "Other batch sizes")."""
    n = _check_int(n, "the batch size", 1)
    if n == self.batch_size:
      return self.null
    if n not in self._drawn:
      self._drawn[n] = _null(self.rows, self.reference_means, n, self.seed)
    return self._drawn[n]

  def statistics(self, batch_logits) -> np.ndarray:
    """Per-row (d, g) of a batch, [n, 2], with the alarm's temperatures."""
    large, sidekick = _check_pair(batch_logits)
    if large.shape[1] != self.num_classes:
      raise InputError(
        f"batch logits have {large.shape[1]} classes; the alarm was fit on {self.num_classes}"
      )
    return _rows(large, sidekick, self.temperatures)

  def statistic(self, rows) -> float:
    """T of a batch given its per-row statistics [n, 2] (`statistics`)."""
    rows = np.asarray(rows, np.float64)
    return float(_standardised(rows.mean(axis=0), self.mean, self.scale, len(rows), len(self.rows)))

  def p_values(self, rows, batches) -> np.ndarray:
    """p-values [K] of K batches of one size, `batches` int [K, n] indexing `rows` [M, 2]
    (per-row statistics of M inputs); what `check` does for each batch, vectorised."""
    rows, batches = np.asarray(rows, np.float64), np.asarray(batches)
    if rows.ndim != 2 or rows.shape[1] != 2:
      raise InputError(f"rows must be per-row statistics [M, 2], got shape {rows.shape}")
    if (
      batches.ndim != 2
      or 0 in batches.shape
      or not np.issubdtype(batches.dtype, np.integer)
      or not (0 <= batches.min() and batches.max() < len(rows))
    ):
      raise InputError(f"batches must be int [K, n] indices of the {len(rows)} rows, n >= 1")
    n = batches.shape[1]
    observed = _standardised(rows[batches].mean(axis=1), self.mean, self.scale, n, len(self.rows))
    null = np.sort(self.null_for(n))
    at_least = len(null) - np.searchsorted(null, observed, side="left")  # #{T* ≥ T}
    return (1.0 + at_least) / (1.0 + len(null))

  def check(self, batch_logits) -> tuple[bool, float]:
    """(alarm, p-value) for one batch: two arrays [n, C] (large model, sidekick), any n ≥ 1.

    The alarm is p ≤ alpha; in distribution it fires on at most about α of batches."""
    rows = self.statistics(batch_logits)
    p = float(self.p_values(rows, np.arange(len(rows))[None])[0])
    return p <= self.alpha, p

  def save(self, path: str | os.PathLike) -> None:
    """Writes the alarm as JSON, whole or not at all."""
    files.write_atomically(os.fspath(path), json.dumps(self.record()))

  def record(self) -> dict:
    """The alarm as a JSON-ready object (what `save` writes; a guarded duo's file
    holds one too)."""
    return {
      "format": FORMAT,
      "version": VERSION,
      "alpha": self.alpha,
      "batch_size": self.batch_size,
      "seed": self.seed,
      "temperatures": list(self.temperatures),
      "num_classes": self.num_classes,
      "statistics": list(STATISTICS),
      "rows": self.rows.T.tolist(),
      "reference_means": self.reference_means.T.tolist(),
      "null": self.null.tolist(),
    }


def _scale(rows: np.ndarray) -> np.ndarray:
  spread = rows.std(axis=0)
  return np.where(spread > 0, spread, 1.0)


def _null(rows: np.ndarray, reference: np.ndarray, n: int, seed: int) -> np.ndarray:
  """T*_b of B batches of n rows (stream (seed, 1, n)) against the reference means."""
  rng = np.random.default_rng([seed, 1, n])
  means = _batch_means(rows, reference.shape[0], n, rng)
  return _standardised(means, reference, _scale(rows), n, rows.shape[0])


def fit_shift_alarm(
  member_logits,
  *,
  batch_size: int = 500,
  alpha: float = 0.05,
  resamples: int = 1999,
  seed: int = 0,
  temperatures=None,
) -> ShiftAlarm:
  """Calibrates the alarm on validation logits (module docstring).

  Args:
    member_logits: the large model's and the sidekick's validation logits, two
      arrays [N, C] (or one [2, N, C] stack), rows exchangeable with deployment inputs.
    batch_size: the n the null is drawn for now; other sizes are drawn on use.
    alpha: the false-alarm rate allowed on in-distribution batches, in (0, 1).
    resamples: B, the bootstrap resamples; p-values are multiples of 1/(B + 1),
      so B + 1 ≥ 1/α is needed for any alarm (1999: α = 0.05 is exactly 100/2000).
    seed: seeds the resamples.
    temperatures: (T_L, T_S) for the confidence gap; default (1, 1).
  """
  alpha = _check_alpha(alpha)
  batch_size = _check_int(batch_size, "batch_size", 1)
  resamples = _check_int(resamples, "resamples", 1)
  seed = _check_int(seed, "seed", 0)
  if (resamples + 1) * alpha < 1:
    raise ConfigError(
      f"resamples={resamples} cannot reach alpha={alpha:g}: the smallest p-value is "
      f"1/{resamples + 1}; use resamples >= {math.ceil(1 / alpha) - 1}"
    )
  temperatures = _check_temperatures(temperatures)
  large, sidekick = _check_pair(member_logits)
  rows = _rows(large, sidekick, temperatures)
  if len(rows) < 2:
    raise InputError(f"a shift alarm needs at least 2 validation rows, got {len(rows)}")
  # m_{V*_b}: B resamples of all N rows (stream (seed, 0)).
  reference = _batch_means(rows, resamples, len(rows), np.random.default_rng([seed, 0]))
  return ShiftAlarm(
    alpha=alpha,
    batch_size=batch_size,
    seed=seed,
    temperatures=temperatures,
    num_classes=int(large.shape[1]),
    rows=rows,
    reference_means=reference,
    null=_null(rows, reference, batch_size, seed),
  )


def _numbers(value, shape_ok) -> np.ndarray | None:
  """value as a float64 array if it is a list of finite numbers of an accepted shape."""
  try:
    array = np.asarray(value, np.float64)
  except (TypeError, ValueError):
    return None
  if array.dtype != np.float64 or not shape_ok(array.shape) or not np.isfinite(array).all():
    return None
  return array


def load_shift_alarm(path: str | os.PathLike) -> ShiftAlarm:
  """An alarm written by `ShiftAlarm.save`; a missing, damaged or foreign file is a
  one-line FileError."""
  path = os.fspath(path)
  return alarm_from_record(files.read_record(path, FORMAT, (VERSION,), "shift alarm file"), path)


def alarm_from_record(record, where: str) -> ShiftAlarm:
  """The alarm of a `ShiftAlarm.record()`; a malformed one is a one-line FileError
  naming `where` (the file it came from)."""
  path = where
  if not isinstance(record, dict) or record.get("format") != FORMAT:
    raise FileError(f'{path!r}: the shift alarm is not a "{FORMAT}" record')
  if record.get("version") != VERSION:
    raise FileError(
      f"{path!r}: shift alarm version {record.get('version')!r}; this duojax reads {VERSION}"
    )
  rows = _numbers(record.get("rows"), lambda s: len(s) == 2 and s[0] == 2 and s[1] >= 2)
  reference = _numbers(record.get("reference_means"), lambda s: len(s) == 2 and s[0] == 2)
  null = _numbers(record.get("null"), lambda s: len(s) == 1 and s[0] >= 1)
  temperatures = _numbers(record.get("temperatures"), lambda s: s == (2,))
  if rows is None or reference is None or null is None or temperatures is None:
    raise FileError(
      f'{path!r}: "rows", "reference_means", "null" and "temperatures" must be lists of finite numbers'
    )
  if reference.shape[1] != null.shape[0]:
    raise FileError(f'{path!r}: "reference_means" and "null" hold different numbers of resamples')
  if record.get("statistics") != list(STATISTICS):
    raise FileError(f'{path!r}: "statistics" must be {list(STATISTICS)}')
  try:
    alpha = _check_alpha(record.get("alpha"))
    batch_size = _check_int(record.get("batch_size"), "batch_size", 1)
    seed = _check_int(record.get("seed"), "seed", 0)
    num_classes = _check_int(record.get("num_classes"), "num_classes", 1)
    temperatures = _check_temperatures(temperatures)
  except ConfigError as e:
    raise FileError(f"{path!r}: {e}") from None
  return ShiftAlarm(
    alpha=alpha,
    batch_size=batch_size,
    seed=seed,
    temperatures=temperatures,
    num_classes=num_classes,
    rows=np.ascontiguousarray(rows.T),
    reference_means=np.ascontiguousarray(reference.T),
    null=null,
  )
