"""Metrics of classifiers and of their confidence: calibration, ranking, OOD.

`evaluate(logits, labels, confidence)` scores a classifier on one split (the
definitions are in its docstring), `ood` scores out-of-distribution detection,
and `MetricsAccumulator` computes `evaluate` batch by batch.

`confidence` is any score in [0, 1], by default the maximum softmax probability
(MSP); all but ECE depend on its order only.

Ties in confidence. The order inside a group of equal confidences is
arbitrary, so the risk-coverage quantities are defined on tie groups. Sorted
most confident first, a group covers k in (a, b]; the error counts E_a and E_b
at its ends do not depend on any order. Inside the group the error count is
interpolated linearly, E_k = E_a + (k − a)/(b − a)·(E_b − E_a): its expected
value when ties are broken uniformly at random, so aurc and augrc (means of
this curve) are expectations over random tie-breaking. A threshold on the
confidence accepts whole tie groups, so sac looks at group ends k = b only.
No result depends on the order of the samples.

The heavy parts (the pass over the logits, sorting, cumulative sums) are jitted;
inputs are checked on the host first, and bad ones raise a one-line InputError
(ConfigError for a bad option).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from duojax.core import ranking
from duojax.errors import ConfigError, InputError

ECE_BINS = 15
SAC_TARGETS = (90, 95, 98, 99)  # accuracy (%) the selective classifier must reach
METRIC_NAMES = (
  "acc",
  "nll",
  "brier",
  "ece",
  "auroc",
  "aurc",
  "eaurc",
  "augrc",
  *(f"sac{t}" for t in SAC_TARGETS),
)
OOD_METRIC_NAMES = ("auroc", "aupr", "fpr95")
# evaluate_resamples gathers at most this many samples at once (a few [R, N]
# float32 and int32 arrays, tens of MB).
RESAMPLE_CHUNK_SAMPLES = 2**22


# --- Input checks (host side, before the jitted math).


def _as_array(x, what: str):
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):  # keeps jax arrays on device
    try:
      x = np.asarray(x)
    except ValueError:  # numpy's message does not say which input is ragged
      raise InputError(f"{what} must be a rectangular array (rows of equal length)") from None
  if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
    raise InputError(f"{what} must be real numbers, got dtype {x.dtype}")
  return x


def _check_logits(logits):
  logits = _as_array(logits, "logits")
  if logits.ndim != 2:
    raise InputError(f"logits must be 2-D [N, C], got shape {tuple(logits.shape)}")
  if 0 in logits.shape:
    raise InputError(f"logits are empty (shape {tuple(logits.shape)})")
  return logits


def _check_scores(
  scores, what: str, num_rows: int | None = None, valid=None, unit_interval: bool = False
) -> jax.Array:
  """1-D float scores: [num_rows] if given, finite, and in [0, 1] if asked."""
  scores = _as_array(scores, what)
  if num_rows is None and (scores.ndim != 1 or scores.shape[0] == 0):
    raise InputError(f"{what} must be a non-empty 1-D array, got shape {tuple(scores.shape)}")
  if num_rows is not None and tuple(scores.shape) != (num_rows,):
    raise InputError(f"{what} shape {tuple(scores.shape)} does not match the {num_rows} rows")
  host = np.asarray(scores, np.float64)[slice(None) if valid is None else valid]
  if unit_interval and (bad := int(np.sum(~((host >= 0) & (host <= 1))))):
    raise InputError(f"{what} has {bad} values outside [0, 1] (NaN included)")
  if not unit_interval and (bad := int(np.sum(~np.isfinite(host)))):
    raise InputError(f"{what} has {bad} non-finite values (NaN or inf)")
  return jnp.asarray(scores, jnp.float32)


def _check_labels(labels, num_rows: int, num_classes: int, valid=None) -> jax.Array:
  labels = _as_array(labels, "labels")
  if tuple(labels.shape) != (num_rows,):
    raise InputError(
      f"labels shape {tuple(labels.shape)} does not match the {num_rows} rows of logits"
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise InputError(f"labels must be integers, got dtype {labels.dtype}")
  host = np.asarray(labels)[slice(None) if valid is None else valid]
  if bad := int(np.sum((host < 0) | (host >= num_classes))):
    raise InputError(f"labels have {bad} values outside [0, {num_classes})")
  return jnp.asarray(labels, jnp.int32)


# --- Per-sample quantities.


class _PerSample(NamedTuple):
  msp: jax.Array
  correct: jax.Array
  nll: jax.Array
  brier: jax.Array


@jax.jit
def _row_statistics(logits, labels, valid):
  """The one pass over the logits: per-row reductions, and the number of valid
  rows whose sum is not finite (NaN or inf somewhere, barring overflow).

  Each pass over [N, C] is a plain reduction of the logits: the CPU backend
  runs those vectorised on all cores but argmax ((value, index) pairs) and
  boolean masks several times slower, and it writes out a broadcast of `top`
  shared by two reductions as a full [N, C] array.
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[1]
  top = jnp.max(logits, axis=-1)
  top_for_argmax = jax.lax.optimization_barrier(top)  # its own broadcast, see above
  # argmax as a min-reduction: ceil(min(top − l, 1)) is 0 at the max and 1
  # below it, so the smallest key c + C·that is the first maximal class
  # (exact while C < 2^23; denormal gaps are ties, as for jnp.argmax on CPU).
  below_top = jnp.ceil(jnp.minimum(top_for_argmax[:, None] - logits, 1.0))
  class_key = jnp.arange(num_classes, dtype=jnp.float32) + num_classes * below_top
  rows = (
    top,
    jnp.min(class_key, axis=-1).astype(jnp.int32),
    jnp.sum(jnp.exp(logits - top[:, None]), axis=-1),
    jnp.sum(jnp.exp(2.0 * logits - 2.0 * top[:, None]), axis=-1),
    jnp.take_along_axis(logits, labels[:, None], axis=-1, mode="clip")[:, 0],
  )
  row_sum = jnp.sum(logits, axis=-1)
  return rows, jnp.sum(~jnp.isfinite(row_sum) & valid)


# A separate jit: fused into the jit above, XLA merges this arithmetic into a
# reduction over [N, C] and makes that reduction twice as slow on CPU.
@jax.jit
def _per_sample(top, predicted, sum_exp, sum_exp_squared, label_logit, labels):
  """With e_c = e^(l_c − top) and s = Σ_c e_c: p_c = e_c/s, −log p_y =
  log s + top − l_y, MSP = 1/s, and Brier = Σ_{c≠y} p_c² + (1 − p_y)² =
  (Σ_c e_c² − e_y²)/s² + (1 − e_y/s)²."""
  exp_label = jnp.exp(label_logit - top)
  others_squared = jnp.maximum(sum_exp_squared - exp_label**2, 0.0) / sum_exp**2
  return _PerSample(
    msp=jnp.minimum(1.0 / sum_exp, 1.0),  # the top class has e^0 = 1
    correct=predicted == labels,
    nll=jnp.log(sum_exp) + top - label_logit,
    brier=others_squared + (1.0 - exp_label / sum_exp) ** 2,
  )


@jax.jit
def _count_nonfinite(logits, valid):
  return jnp.sum(~jnp.isfinite(logits) & valid[:, None])


def _checked_per_sample(logits, labels, confidence, valid: np.ndarray | None):
  """Checks a batch (only its `valid` rows) and computes its per-sample vectors."""
  logits = _check_logits(logits)
  num_rows, num_classes = logits.shape
  labels = _check_labels(labels, num_rows, num_classes, valid)
  if confidence is not None:
    confidence = _check_scores(confidence, "confidence", num_rows, valid, unit_interval=True)
  valid = jnp.ones(num_rows, bool) if valid is None else jnp.asarray(valid)
  rows, suspect_rows = _row_statistics(logits, labels, valid)
  if int(suspect_rows) and (bad := int(_count_nonfinite(logits, valid))):
    raise InputError(f"logits have {bad} non-finite values (NaN or inf)")
  per_sample = _per_sample(*rows, labels)
  return per_sample, per_sample.msp if confidence is None else confidence


# --- Summaries.


def _bin_sums(confidence, correct, num_bins: int):
  """Per equal-width bin on (0, 1]: (count, Σ confidence, Σ correct)."""
  # Exact comparisons with the float32 edges b/num_bins make the bins open on
  # the left: a confidence equal to b/num_bins lands in bin b − 1.
  inner_edges = (np.arange(1, num_bins) / num_bins).astype(np.float32)
  bins = jnp.sum(confidence[:, None] > inner_edges, axis=-1)
  in_bin = (bins[:, None] == jnp.arange(num_bins)).astype(jnp.float32)
  return jnp.sum(in_bin, axis=0), confidence @ in_bin, correct.astype(jnp.float32) @ in_bin


@jax.jit
def _summary(confidence, correct, nll, brier) -> dict[str, jax.Array]:
  num = confidence.shape[0]
  k = jnp.arange(1, num + 1)
  _, conf_sums, correct_sums = _bin_sums(confidence, correct, ECE_BINS)
  # Σ_b (n_b/N)·|acc_b − conf_b| = Σ_b |Σ_{i∈b} (correct_i − conf_i)| / N.
  ece = jnp.sum(jnp.abs(correct_sums - conf_sums)) / num
  errors = ranking.rank(confidence, ~correct)
  errors_at_k = ranking.interpolated_errors(errors)
  aurc = jnp.mean(errors_at_k / k)
  ideal_errors_at_k = jnp.maximum(k - (num - errors.cum[-1]), 0)
  # risk ≤ 1 − t/100 ⇔ 100·errors ≤ (100 − t)·k: exact in int32 up to N ≈ 2·10⁷,
  # where a float comparison needs a tolerance.
  allowed_error_percent = 100 - jnp.array(SAC_TARGETS)[:, None]
  reaches = errors.last & (100 * errors.cum[1:] <= allowed_error_percent * k)  # [targets, N]
  sac = jnp.max(jnp.where(reaches, k, 0), axis=-1) / num
  return {
    "acc": jnp.mean(correct.astype(jnp.float32)),
    "nll": jnp.mean(nll),
    "brier": jnp.mean(brier),
    "ece": ece,
    "auroc": ranking.auroc(errors, flags_are_positive=False),
    "aurc": aurc,
    "eaurc": aurc - jnp.mean(ideal_errors_at_k / k),
    "augrc": jnp.mean(errors_at_k) / num,
    **{f"sac{t}": sac[i] for i, t in enumerate(SAC_TARGETS)},
  }


def _to_floats(arrays: dict, names: tuple[str, ...]) -> dict[str, float]:
  host = jax.device_get(arrays)  # one transfer; jit returns dicts sorted by key
  return {name: float(host[name]) for name in names}


def evaluate(logits, labels, confidence=None) -> dict[str, float]:
  """Scores a classifier: {name: float} for the METRIC_NAMES below.

  logits [N, C] of any float dtype (computed in float32), int labels [N] in
  [0, C), confidence [N] in [0, 1] (default: the maximum softmax probability).
  Ties in confidence follow the module docstring.

    acc     mean of [argmax(logits) == label] (the first maximal class on ties).
    nll     mean of −log p_y with p = softmax(logits), computed stably as
            log Σ_c e^(l_c − max l) + max l − l_y (the log_softmax).
    brier   mean over samples of Σ_c (p_c − onehot(y)_c)², in [0, 2]. The
            Asymmetric Duo reference code divides this by C; we do not.
    ece     15 equal-width bins on (0, 1]: bin b = 0..14 holds confidences in
            (b/15, (b+1)/15] (a confidence of exactly 0 goes into bin 0);
            ECE = Σ_b (n_b/N)·|acc_b − conf_b|, correctness from argmax p.
    auroc   ROC AUC of the confidence for telling correct (positive) from wrong
            predictions, ties counted half (sklearn's roc_auc_score), via the
            Mann–Whitney U statistic; NaN when all predictions are right or all
            are wrong.
    aurc    mean over k = 1..N of risk_k = (errors among the k most confident) / k.
    eaurc   aurc − the aurc of the ideal order (all correct samples first).
    augrc   mean over k = 1..N of (errors among the k most confident) / N.
    sac{t}  t in 90, 95, 98, 99: the largest coverage k/N with risk_k ≤ 1 − t/100
            (0 if none), compared exactly in integers (100·errors ≤ (100 − t)·k).
  """
  per_sample, confidence = _checked_per_sample(logits, labels, confidence, valid=None)
  return _to_floats(
    _summary(confidence, per_sample.correct, per_sample.nll, per_sample.brier), METRIC_NAMES
  )


@functools.partial(jax.jit, static_argnames="names")
def _resampled_summaries(rows, confidence, correct, nll, brier, names):
  summary = lambda r: _summary(confidence[r], correct[r], nll[r], brier[r])
  return {name: value for name, value in jax.vmap(summary)(rows).items() if name in names}


def evaluate_resamples(
  logits, labels, confidence=None, *, rows, names: tuple[str, ...] = METRIC_NAMES
) -> dict[str, np.ndarray]:
  """`evaluate` on many resamples of the rows at once: {name: [R]} for rows [R, N'].

  Row r of `rows` lists the sample indices of resample r (a bootstrap draws
  them with replacement). The per-sample quantities are computed once; each
  resample only gathers them and summarises (sorts) them, vmapped over
  resamples in chunks of RESAMPLE_CHUNK_SAMPLES gathered samples.
  """
  per_sample, confidence = _checked_per_sample(logits, labels, confidence, valid=None)
  rows = np.asarray(rows)
  if rows.ndim != 2 or rows.shape[1] == 0 or not np.issubdtype(rows.dtype, np.integer):
    raise InputError(
      f"rows must be a non-empty 2-D integer array [R, N], got shape "
      f"{rows.shape} and dtype {rows.dtype}"
    )
  if rows.size and (rows.min() < 0 or rows.max() >= confidence.shape[0]):
    raise InputError(f"rows must index the {confidence.shape[0]} samples")
  chunk = max(1, RESAMPLE_CHUNK_SAMPLES // rows.shape[1])
  parts = [
    jax.device_get(
      _resampled_summaries(
        jnp.asarray(rows[i : i + chunk]),
        confidence,
        per_sample.correct,
        per_sample.nll,
        per_sample.brier,
        names=tuple(names),
      )
    )
    for i in range(0, len(rows), chunk)
  ]
  return {name: np.concatenate([p[name] for p in parts]).astype(np.float64) for name in names}


@jax.jit
def _ood(conf_in, conf_out) -> dict[str, jax.Array]:
  num_in, num_out = conf_in.shape[0], conf_out.shape[0]
  is_in = jnp.concatenate([jnp.ones(num_in, bool), jnp.zeros(num_out, bool)])
  inside = ranking.rank(jnp.concatenate([conf_in, conf_out]), is_in)
  k = jnp.arange(1, num_in + num_out + 1)
  true_pos = inside.cum[1:]
  # Average precision: Σ over distinct thresholds of Δrecall · precision.
  recall_gain = (true_pos - inside.cum[inside.start]) / num_in
  aupr = jnp.sum(jnp.where(inside.last, recall_gain * true_pos / k, 0.0))
  # The first ROC point (highest threshold) with TPR ≥ 0.95, exactly in integers.
  first = jnp.argmax(inside.last & (20 * true_pos >= 19 * num_in))
  fpr95 = (k[first] - true_pos[first]) / num_out
  return {"auroc": ranking.auroc(inside, flags_are_positive=True), "aupr": aupr, "fpr95": fpr95}


def ood(conf_in, conf_out) -> dict[str, float]:
  """Out-of-distribution detection by a score, in-distribution = positive.

  Higher scores mean more in-distribution; any finite reals work.
    auroc  ROC AUC, ties counted half (sklearn's roc_auc_score).
    aupr   average precision Σ_n (R_n − R_{n−1})·P_n over the distinct scores
           as thresholds, highest first (sklearn's average_precision_score).
    fpr95  FPR(τ) = mean(conf_out ≥ τ) at the largest score τ with
           TPR(τ) = mean(conf_in ≥ τ) ≥ 0.95: the FPR of the first point of
           sklearn's roc_curve(drop_intermediate=False) with TPR ≥ 0.95.
  """
  conf_in, conf_out = _check_scores(conf_in, "conf_in"), _check_scores(conf_out, "conf_out")
  return _to_floats(_ood(conf_in, conf_out), OOD_METRIC_NAMES)


@jax.jit
def _confidence_scores(logits):
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  scores = {
    "msp": jnp.max(probs, axis=-1),
    "neg_entropy": jnp.sum(probs * log_probs, axis=-1),
    "energy": jax.nn.logsumexp(logits, axis=-1),
    "max_logit": jnp.max(logits, axis=-1),
  }
  return scores, jnp.sum(~jnp.isfinite(logits))


def confidence_scores(logits) -> dict[str, jax.Array]:
  """Per-sample scores [N], all higher = more confident / more in-distribution.

  msp          max_c p_c with p = softmax(logits).
  neg_entropy  −H(p) = Σ_c p_c log p_c.
  energy       logsumexp(logits), the negative free energy at temperature 1.
  max_logit    max_c logits_c (Hendrycks et al. 2022): unlike msp it keeps the
               logits' scale, which separates OOD inputs better when many
               classes share the probability mass.
  """
  scores, nonfinite = _confidence_scores(_check_logits(logits))
  if bad := int(nonfinite):
    raise InputError(f"logits have {bad} non-finite values (NaN or inf)")
  return scores


@jax.jit
def _risk_coverage(correct, confidence):
  k = jnp.arange(1, correct.shape[0] + 1)
  return k / correct.shape[0], ranking.interpolated_errors(ranking.rank(confidence, ~correct)) / k


def _check_correct(correct) -> jax.Array:
  correct = np.asarray(correct)
  if correct.ndim != 1 or correct.shape[0] == 0:
    raise InputError(f"correct must be a non-empty 1-D array, got shape {correct.shape}")
  return jnp.asarray(correct.astype(bool))


def risk_coverage_curve(correct, confidence) -> tuple[jax.Array, jax.Array]:
  """(coverage, risk), each [N]: coverage k/N and risk_k for k = 1..N.

  risk_k = (errors among the k most confident) / k, with the error count
  interpolated linearly inside tie groups (module docstring), so that
  mean(risk) = aurc. `correct` is bool [N]; `confidence` any finite [N]
  scores (only their order matters).
  """
  correct = _check_correct(correct)
  return _risk_coverage(correct, _check_scores(confidence, "confidence", correct.shape[0]))


@functools.partial(jax.jit, static_argnames=("num_bins", "from_logits"))
def _reliability(scores, targets, num_bins: int, from_logits: bool):
  scores = scores.astype(jnp.float32)
  if scores.ndim == 2:
    probs = jax.nn.softmax(scores, axis=-1) if from_logits else scores
    confidence, correct = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1) == targets
  else:
    confidence, correct = scores, targets
  count, conf_sums, correct_sums = _bin_sums(confidence, correct, num_bins)
  mean = lambda sums: jnp.where(count > 0, sums / jnp.maximum(count, 1.0), jnp.nan)
  diagram = {
    "confidence": mean(conf_sums),
    "accuracy": mean(correct_sums),
    "count": count.astype(jnp.int32),
  }
  return diagram, jnp.sum(~jnp.isfinite(scores))


def reliability_diagram(
  scores, targets, num_bins: int = ECE_BINS, *, from_logits: bool = True
) -> dict[str, jax.Array]:
  """Mean confidence, accuracy and count per equal-width bin (the ECE bins).

  Takes either `scores` = confidence [N] in [0, 1] and `targets` = correct
  [N] (bool), or `scores` = logits [N, C] (probabilities if not
  `from_logits`) and `targets` = int labels [N], where the confidence is the
  max probability and correct is argmax == label. Returns {"confidence",
  "accuracy", "count"}, each [num_bins]; empty bins have NaN means.
  """
  if num_bins < 1:
    raise ConfigError(f"num_bins must be at least 1, got {num_bins}")
  if np.ndim(scores) == 2:
    scores = _check_logits(scores)
    targets = _check_labels(targets, *scores.shape)
  else:
    targets = _check_correct(targets)
    scores = _check_scores(scores, "confidence", targets.shape[0], unit_interval=True)
  diagram, nonfinite = _reliability(scores, targets, num_bins, from_logits)
  if bad := int(nonfinite):
    raise InputError(f"scores have {bad} non-finite values (NaN or inf)")
  return diagram


# --- Batch-wise accumulation.


class MetricsAccumulator:
  """`evaluate` over batches: equals `evaluate` on all valid rows together.

  The ranking metrics need every confidence at once, so each batch keeps its
  per-sample (confidence, correct, nll, brier) vectors on device, not its
  logits, and `result()` scores them all in one jitted call.

      accumulator = MetricsAccumulator()
      for batch in batches:
        accumulator.update(model(batch["image"]), batch["label"], mask=batch["mask"])
      scores = accumulator.result()
  """

  def __init__(self):
    self._batches: list[tuple[_PerSample, jax.Array, np.ndarray]] = []
    self._num_classes: int | None = None

  def reset(self) -> None:
    self._batches, self._num_classes = [], None

  def update(self, logits, labels, confidence=None, mask=None) -> None:
    """Adds a batch. Rows where `mask` (bool [B]) is False are padding: they
    are neither checked nor counted."""
    num_rows, num_classes = _check_logits(logits).shape
    if self._num_classes not in (None, num_classes):
      raise InputError(
        f"logits have {num_classes} classes, earlier batches had {self._num_classes}"
      )
    valid = np.ones(num_rows, bool) if mask is None else np.asarray(mask).astype(bool)
    if valid.shape != (num_rows,):
      raise InputError(f"mask shape {valid.shape} does not match the {num_rows} rows of logits")
    per_sample, confidence = _checked_per_sample(logits, labels, confidence, valid)
    self._num_classes = num_classes
    self._batches.append((per_sample, confidence, valid))

  def result(self) -> dict[str, float]:
    """The `evaluate` dict over every valid row added so far."""
    if not self._batches:
      raise InputError("no samples to evaluate: no batches were added")
    # The vectors are small (4 numbers a sample): joining them on the host is
    # one transfer and compiles nothing per number or size of batches.
    batches = jax.device_get(self._batches)
    valid = np.concatenate([v for _, _, v in batches])
    if not valid.any():
      raise InputError("no samples to evaluate: every row is masked out")
    join = lambda parts: np.concatenate(parts)[valid]
    per_sample = _PerSample(*map(join, zip(*(p for p, _, _ in batches))))
    confidence = join([c for _, c, _ in batches])
    return _to_floats(
      _summary(confidence, per_sample.correct, per_sample.nll, per_sample.brier), METRIC_NAMES
    )
