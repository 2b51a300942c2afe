"""Metrics of classifiers and of their confidence: calibration, ranking, OOD.

`evaluate(logits, labels, confidence)` scores one classifier on one split:

  acc     mean of [argmax(logits) == label].
  nll     mean of −log p_y, p = softmax(logits) (via log_softmax, so stable).
  brier   mean over samples of Σ_c (p_c − onehot(y)_c)², in [0, 2]. The
          Asymmetric Duo reference code divides this by C; we do not.
  ece     15 equal-width bins on (0, 1]: bin b = 0..14 holds confidences in
          (b/15, (b+1)/15] (a confidence of exactly 0 goes into bin 0);
          ECE = Σ_b (n_b/N)·|acc_b − conf_b|, with correctness from argmax p.
  auroc   ROC AUC of the confidence for telling correct (positive) from wrong
          predictions; ties count half (sklearn's roc_auc_score); NaN when all
          predictions are right or all are wrong.
  aurc    mean over k = 1..N of risk_k, where risk_k = (errors among the k most
          confident samples) / k.
  eaurc   aurc − the aurc of the ideal order (all correct samples first).
  augrc   mean over k = 1..N of (errors among the k most confident) / N.
  sac{t}  for t in 90, 95, 98, 99: the largest coverage k/N whose risk_k is at
          most 1 − t/100 (0 if there is none).

`confidence` is any score in [0, 1] (the maximum softmax probability, MSP, by
default); everything but ECE depends on its order only.

Ties in confidence. The order within a group of equal confidences is
arbitrary, so the risk-coverage quantities are defined on tie groups. Sorted
most confident first, a group occupies coverages k in (a, b], and the error
counts E_a, E_b at its ends do not depend on any order. Inside the group the
error count is interpolated linearly, E_k = E_a + (k − a)/(b − a)·(E_b − E_a),
which is its expected value when ties are broken uniformly at random; aurc and
augrc average this curve, so they are the expectation over random
tie-breaking. A threshold on the confidence accepts whole tie groups, so sac
only considers the group ends k = b. No result depends on the order of the
samples.

Everything heavy (the pass over the logits, sorting, cumulative sums) is one
of a few jitted functions; the checks of the inputs run on the host first and
raise a one-line ValueError.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ECE_BINS = 15
SAC_TARGETS = (90, 95, 98, 99)  # percent accuracy the selective classifier must reach
METRIC_NAMES = ("acc", "nll", "brier", "ece", "auroc", "aurc", "eaurc", "augrc",
                *(f"sac{t}" for t in SAC_TARGETS))
OOD_METRIC_NAMES = ("auroc", "aupr", "fpr95")


# ----------------------------------------------------------------------------
# Input checks (host side, before any jitted math).


def _as_array(x, what: str):
  """Keeps jax/numpy arrays where they are; anything else goes through numpy."""
  if x is None:
    raise ValueError(f"{what} is None")
  if not (hasattr(x, "shape") and hasattr(x, "dtype")):
    x = np.asarray(x)
  if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
    raise ValueError(f"{what} must be real numbers, got dtype {x.dtype}")
  return x


def _check_logits(logits):
  logits = _as_array(logits, "logits")
  if logits.ndim != 2:
    raise ValueError(f"logits must be 2-D [N, C], got shape {tuple(logits.shape)}")
  if logits.shape[0] == 0 or logits.shape[1] == 0:
    raise ValueError(f"logits are empty (shape {tuple(logits.shape)})")
  return logits


def _check_scores(scores, what: str, num_rows: int | None = None, valid=None,
                  unit_interval: bool = False):
  """1-D scores: shape [num_rows], finite, and in [0, 1] if `unit_interval`."""
  scores = _as_array(scores, what)
  if num_rows is None and (scores.ndim != 1 or scores.shape[0] == 0):
    raise ValueError(f"{what} must be a non-empty 1-D array, got shape {tuple(scores.shape)}")
  if num_rows is not None and tuple(scores.shape) != (num_rows,):
    raise ValueError(f"{what} shape {tuple(scores.shape)} does not match ({num_rows},)")
  host = np.asarray(scores, dtype=np.float64)
  host = host if valid is None else host[valid]
  if unit_interval:
    outside = int(np.sum(~((host >= 0.0) & (host <= 1.0))))  # NaN counts as outside
    if outside:
      raise ValueError(f"{what} has {outside} values outside [0, 1] (or NaN)")
  else:
    nonfinite = int(np.sum(~np.isfinite(host)))
    if nonfinite:
      raise ValueError(f"{what} has {nonfinite} non-finite values (NaN or inf)")
  return jnp.asarray(scores, jnp.float32)


def _check_labels(labels, num_rows: int, num_classes: int, valid=None):
  labels = _as_array(labels, "labels")
  if tuple(labels.shape) != (num_rows,):
    raise ValueError(f"labels shape {tuple(labels.shape)} does not match logits rows ({num_rows},)")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  host = np.asarray(labels)
  host = host if valid is None else host[valid]
  outside = int(np.sum((host < 0) | (host >= num_classes)))
  if outside:
    raise ValueError(f"labels has {outside} values outside the range [0, {num_classes})")
  return jnp.asarray(labels, jnp.int32)


def _check_mask(mask, num_rows: int) -> np.ndarray:
  mask = np.asarray(mask)
  if mask.shape != (num_rows,):
    raise ValueError(f"mask shape {mask.shape} does not match logits rows ({num_rows},)")
  return mask.astype(bool)


def _raise_if_nonfinite(count, what: str = "logits") -> None:
  count = int(count)  # a scalar computed on device, next to the metrics
  if count:
    raise ValueError(f"{what} have {count} non-finite values (NaN or inf)")


# ----------------------------------------------------------------------------
# Per-sample quantities (one pass over the logits).


class _PerSample(NamedTuple):
  """What the ranking metrics need of each sample; small [N] vectors."""
  msp: jax.Array
  correct: jax.Array
  nll: jax.Array
  brier: jax.Array


@jax.jit
def _per_sample(logits, labels, valid):
  """Returns (_PerSample, number of valid rows whose logits may be non-finite).

  With top = max_c l_c and s = Σ_c e^(l_c − top): p_c = e^(l_c − top)/s,
  −log p_y = log s + top − l_y (the log_softmax), MSP = 1/s, and
  Σ_c (p_c − onehot_c)² = Σ_{c≠y} p_c² + (1 − p_y)².

  Every pass over [N, C] is a plain reduction that reads the logits directly:
  the CPU backend runs those vectorised and multi-threaded, while argmax (a
  reduction over (value, index) pairs) or isfinite masks run several times
  slower there, and a shared broadcast of `top` gets written out as [N, C].
  """
  logits = logits.astype(jnp.float32)
  num_classes = logits.shape[1]
  top = jnp.max(logits, axis=-1)
  # Separate copies of `top`, so each reduction broadcasts its own in-register.
  top_for_argmax = jax.lax.optimization_barrier(top)
  # argmax as a min-reduction: class c has key c if l_c == top, else c + C, so
  # the smallest key is the first maximal class, exactly (keys < 2^24).
  # ceil(min(top − l, 1)) is 0 at the max and 1 below it (faster than sign or >).
  class_index = jnp.arange(num_classes, dtype=jnp.float32)
  is_below_top = jnp.ceil(jnp.minimum(top_for_argmax[:, None] - logits, 1.0))
  predicted = jnp.min(class_index + num_classes * is_below_top, axis=-1).astype(jnp.int32)
  sum_exp = jnp.sum(jnp.exp(logits - top[:, None]), axis=-1)
  sum_exp_squared = jnp.sum(jnp.exp(2.0 * logits - 2.0 * top[:, None]), axis=-1)
  # A row sum is finite iff every logit in the row is (barring overflow).
  row_sum = jnp.sum(logits, axis=-1)

  label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1, mode="clip")[:, 0]
  exp_label = jnp.exp(label_logit - top)
  prob_label = exp_label / sum_exp
  others_squared = jnp.maximum(sum_exp_squared - jnp.square(exp_label), 0.0) / jnp.square(sum_exp)
  per_sample = _PerSample(
      msp=jnp.minimum(1.0 / sum_exp, 1.0),  # the max class has e^0 = 1 (up to an ulp)
      correct=predicted == labels,
      nll=jnp.log(sum_exp) + top - label_logit,
      brier=others_squared + jnp.square(1.0 - prob_label))
  return per_sample, jnp.sum(~jnp.isfinite(row_sum) & valid)


@jax.jit
def _count_nonfinite(logits, valid):
  return jnp.sum(~jnp.isfinite(logits) & valid[:, None])


# ----------------------------------------------------------------------------
# Ranking with ties.


class _Ranking(NamedTuple):
  """Samples sorted by score, highest first, with their tie groups.

  `cum[k]` counts flagged samples among the first k (cum[0] = 0). The sample
  at sorted position i belongs to the group of equal scores that spans the
  sorted counts (start[i], end[i]]; `last[i]` says whether i ends its group.
  """
  flags: jax.Array
  cum: jax.Array
  start: jax.Array
  end: jax.Array
  last: jax.Array


def _rank(scores, flags) -> _Ranking:
  num = scores.shape[0]
  neg_sorted, flags_sorted = jax.lax.sort((-scores, flags.astype(jnp.int32)), num_keys=1)
  boundary = neg_sorted[1:] != neg_sorted[:-1]  # == also merges −0.0 with +0.0
  first = jnp.concatenate([jnp.ones(1, bool), boundary])
  last = jnp.concatenate([boundary, jnp.ones(1, bool)])
  position = jnp.arange(num)
  start = jax.lax.cummax(jnp.where(first, position, 0))
  end = jax.lax.cummin(jnp.where(last, position + 1, num), reverse=True)
  cum = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(flags_sorted)])
  return _Ranking(flags_sorted.astype(bool), cum, start, end, last)


def _auroc(ranking: _Ranking, flags_are_positive: bool):
  """Mann–Whitney AUC (ties half) from a ranking whose flags mark one class.

  Each positive beats the negatives ranked strictly below it and half of
  those tied with it: n_neg − (neg_cum[start] + neg_cum[end]) / 2. Only
  integer counts and one normalised sum, so no rank sums of size N².
  """
  num = ranking.flags.shape[0]
  neg_cum = jnp.arange(num + 1) - ranking.cum if flags_are_positive else ranking.cum
  is_positive = ranking.flags if flags_are_positive else ~ranking.flags
  num_neg = neg_cum[-1]
  num_pos = num - num_neg
  wins = num_neg - 0.5 * (neg_cum[ranking.start] + neg_cum[ranking.end])
  share = jnp.where(is_positive, wins / jnp.maximum(num_neg, 1), 0.0)
  auc = jnp.sum(share) / jnp.maximum(num_pos, 1)
  return jnp.where((num_pos > 0) & (num_neg > 0), auc, jnp.nan)


def _interpolated_errors(errors: _Ranking):
  """Errors among the k most confident, k = 1..N, linear inside tie groups."""
  k = jnp.arange(1, errors.flags.shape[0] + 1)
  at_start = errors.cum[errors.start].astype(jnp.float32)
  at_end = errors.cum[errors.end].astype(jnp.float32)
  fraction = (k - errors.start) / (errors.end - errors.start)
  return at_start + fraction.astype(jnp.float32) * (at_end - at_start)


# ----------------------------------------------------------------------------
# Summaries.


def _bin_sums(confidence, correct, num_bins: int):
  """Per equal-width bin on (0, 1]: (count, Σ confidence, Σ correct)."""
  # Exact comparisons with float32 edges b/num_bins keep the bins half-open
  # on the left: confidence b/num_bins itself belongs to bin b − 1.
  inner_edges = (np.arange(1, num_bins) / num_bins).astype(np.float32)
  bins = jnp.sum(confidence[:, None] > inner_edges[None, :], axis=-1)
  in_bin = (bins[:, None] == jnp.arange(num_bins)).astype(jnp.float32)
  return (jnp.sum(in_bin, axis=0), confidence @ in_bin,
          correct.astype(jnp.float32) @ in_bin)


@jax.jit
def _summary(confidence, correct, nll, brier) -> dict[str, jax.Array]:
  num = confidence.shape[0]
  k = jnp.arange(1, num + 1)
  _, conf_sums, correct_sums = _bin_sums(confidence, correct, ECE_BINS)
  # Σ_b (n_b/N)·|acc_b − conf_b| = Σ_b |Σ_{i∈b} (correct_i − conf_i)| / N.
  ece = jnp.sum(jnp.abs(correct_sums - conf_sums)) / num

  errors = _rank(confidence, ~correct)
  errors_at_k = _interpolated_errors(errors)
  aurc = jnp.mean(errors_at_k / k)
  num_errors = errors.cum[-1]
  ideal_errors_at_k = jnp.maximum(k - (num - num_errors), 0)
  eaurc = aurc - jnp.mean(ideal_errors_at_k / k)

  out = {"acc": jnp.mean(correct.astype(jnp.float32)), "nll": jnp.mean(nll),
         "brier": jnp.mean(brier), "ece": ece,
         "auroc": _auroc(errors, flags_are_positive=False), "aurc": aurc, "eaurc": eaurc,
         "augrc": jnp.mean(errors_at_k) / num}
  # risk ≤ 1 − t/100 ⇔ 100·errors ≤ (100 − t)·k, exact in int32 up to N ≈ 2·10⁷
  # (this is what a float comparison with a tolerance approximates).
  allowed_error_percent = 100 - jnp.array(SAC_TARGETS)[:, None]
  ok = errors.last & (100 * errors.cum[1:] <= allowed_error_percent * k)  # [targets, N]
  sac = jnp.max(jnp.where(ok, k, 0), axis=-1) / num
  out.update({f"sac{target}": sac[i] for i, target in enumerate(SAC_TARGETS)})
  return out


def _to_floats(arrays: dict, names: tuple[str, ...]) -> dict[str, float]:
  host = jax.device_get(arrays)  # one transfer; jit returns dicts sorted by key
  return {name: float(host[name]) for name in names}


def evaluate(logits, labels, confidence=None) -> dict[str, float]:
  """Scores a classifier on one split; see the module docstring for definitions.

  Args:
    logits: float [N, C], any float dtype (computed in float32).
    labels: int [N] in [0, C).
    confidence: float [N] in [0, 1]; defaults to the maximum softmax probability.

  Returns:
    {name: float} for acc, nll, brier, ece, auroc, aurc, eaurc, augrc,
    sac90, sac95, sac98, sac99.
  """
  logits = _check_logits(logits)
  num_rows, num_classes = logits.shape
  labels = _check_labels(labels, num_rows, num_classes)
  if confidence is not None:
    confidence = _check_scores(confidence, "confidence", num_rows, unit_interval=True)
  valid = jnp.ones(num_rows, bool)
  per_sample, suspect_rows = _per_sample(logits, labels, valid)
  if int(suspect_rows):  # rare: count exactly (a huge row sum may have overflowed)
    _raise_if_nonfinite(_count_nonfinite(logits, valid))
  confidence = per_sample.msp if confidence is None else confidence
  return _to_floats(_summary(confidence, per_sample.correct, per_sample.nll, per_sample.brier),
                    METRIC_NAMES)


@jax.jit
def _ood(conf_in, conf_out) -> dict[str, jax.Array]:
  num_in, num_out = conf_in.shape[0], conf_out.shape[0]
  scores = jnp.concatenate([conf_in, conf_out])
  is_in = jnp.concatenate([jnp.ones(num_in, bool), jnp.zeros(num_out, bool)])
  inside = _rank(scores, is_in)
  k = jnp.arange(1, num_in + num_out + 1)
  true_pos = inside.cum[1:]  # in-distribution samples with score ≥ this one's
  # Average precision: Σ over distinct thresholds of Δrecall · precision.
  recall_gain = (true_pos - inside.cum[inside.start]) / num_in
  aupr = jnp.sum(jnp.where(inside.last, recall_gain * true_pos / k, 0.0))
  # The first ROC point (highest threshold) with TPR ≥ 0.95, exactly in ints.
  reached = inside.last & (20 * true_pos >= 19 * num_in)
  first = jnp.argmax(reached)
  fpr95 = (k[first] - true_pos[first]) / num_out
  return {"auroc": _auroc(inside, flags_are_positive=True), "aupr": aupr, "fpr95": fpr95}


def ood(conf_in, conf_out) -> dict[str, float]:
  """Out-of-distribution detection by a score, in-distribution = positive.

  Higher scores mean more in-distribution; any finite reals work.
    auroc  ROC AUC, ties counted half (sklearn's roc_auc_score).
    aupr   average precision, Σ_n (R_n − R_{n−1})·P_n over the distinct scores
           as thresholds, highest first (sklearn's average_precision_score).
    fpr95  with τ the largest score such that TPR(τ) = mean(conf_in ≥ τ) ≥ 0.95,
           FPR = mean(conf_out ≥ τ): the FPR of the first point of sklearn's
           roc_curve (drop_intermediate=False) whose TPR is at least 0.95.
  """
  conf_in = _check_scores(conf_in, "conf_in")
  conf_out = _check_scores(conf_out, "conf_out")
  return _to_floats(_ood(conf_in, conf_out), OOD_METRIC_NAMES)


@jax.jit
def _confidence_scores(logits) -> dict[str, jax.Array]:
  logits = logits.astype(jnp.float32)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  probs = jnp.exp(log_probs)
  scores = {"msp": jnp.max(probs, axis=-1),
            "neg_entropy": jnp.sum(probs * log_probs, axis=-1),
            "energy": jax.nn.logsumexp(logits, axis=-1)}
  return scores, jnp.sum(~jnp.isfinite(logits))


def confidence_scores(logits) -> dict[str, jax.Array]:
  """Per-sample scores, higher = more confident / more in-distribution.

    msp          max_c p_c, p = softmax(logits).
    neg_entropy  −H(p) = Σ_c p_c log p_c.
    energy       logsumexp(logits) (the negative free energy at temperature 1).
  """
  scores, num_nonfinite = _confidence_scores(_check_logits(logits))
  _raise_if_nonfinite(num_nonfinite)
  return scores


@jax.jit
def _risk_coverage(correct, confidence):
  errors = _rank(confidence, ~correct)
  k = jnp.arange(1, correct.shape[0] + 1)
  return k / correct.shape[0], _interpolated_errors(errors) / k


def risk_coverage_curve(correct, confidence) -> tuple[jax.Array, jax.Array]:
  """(coverage [N], risk [N]) for k = 1..N: coverage k/N and risk_k.

  risk_k = errors among the k most confident / k, with the error count
  interpolated linearly inside tie groups (module docstring); aurc is the
  mean of this risk. `confidence` may be any finite scores (only their order
  matters); `correct` is bool [N].
  """
  correct = np.asarray(correct)
  if correct.ndim != 1 or correct.shape[0] == 0:
    raise ValueError(f"correct must be a non-empty 1-D array, got shape {correct.shape}")
  confidence = _check_scores(confidence, "confidence", correct.shape[0])
  return _risk_coverage(jnp.asarray(correct.astype(bool)), confidence)


@functools.partial(jax.jit, static_argnames=("num_bins", "from_logits"))
def _reliability(scores, targets, num_bins: int, from_logits: bool):
  """Returns (diagram, number of non-finite scores)."""
  scores = scores.astype(jnp.float32)
  if scores.ndim == 2:  # logits or probabilities with int labels
    probs = jax.nn.softmax(scores, axis=-1) if from_logits else scores
    confidence, correct = jnp.max(probs, axis=-1), jnp.argmax(probs, axis=-1) == targets
  else:
    confidence, correct = scores, targets.astype(bool)
  count, conf_sums, correct_sums = _bin_sums(confidence, correct, num_bins)
  empty = count == 0
  safe_count = jnp.maximum(count, 1.0)
  diagram = {"confidence": jnp.where(empty, jnp.nan, conf_sums / safe_count),
             "accuracy": jnp.where(empty, jnp.nan, correct_sums / safe_count),
             "count": count.astype(jnp.int32)}
  return diagram, jnp.sum(~jnp.isfinite(scores))


def reliability_diagram(scores, targets, num_bins: int = ECE_BINS, *,
                        from_logits: bool = True) -> dict[str, jax.Array]:
  """Per equal-width confidence bin (the ECE bins): mean confidence, accuracy, count.

  Either `scores` = confidence [N] in [0, 1] with `targets` = correctness [N]
  (bool or 0/1), or `scores` = logits [N, C] (probabilities if
  `from_logits=False`) with `targets` = int labels [N]; then the confidence is
  the max probability and correctness is argmax == label. Returns
  {"confidence", "accuracy", "count"}, each [num_bins]; empty bins have NaN
  confidence and accuracy.
  """
  if num_bins < 1:
    raise ValueError(f"num_bins must be at least 1, got {num_bins}")
  if np.ndim(scores) == 2:
    scores = _check_logits(scores)
    targets = _check_labels(targets, *scores.shape)
  else:
    correct = np.asarray(targets)
    if correct.ndim != 1 or correct.shape[0] == 0:
      raise ValueError(f"correct must be a non-empty 1-D array, got shape {correct.shape}")
    scores = _check_scores(scores, "confidence", correct.shape[0], unit_interval=True)
    targets = jnp.asarray(correct.astype(bool))
  diagram, num_nonfinite = _reliability(scores, targets, num_bins, from_logits)
  _raise_if_nonfinite(num_nonfinite, "scores")
  return diagram


# ----------------------------------------------------------------------------
# Batch-wise accumulation.


class MetricsAccumulator:
  """`evaluate` over batches: equals `evaluate` on the concatenated valid rows.

  The ranking metrics need every confidence at once, so each batch leaves its
  per-sample (confidence, correct, nll, brier) vectors on device, never the
  logits; `result()` concatenates them and scores them in one jitted call.

      accumulator = MetricsAccumulator()
      for batch in batches:
        accumulator.update(logits, batch["label"], mask=batch["mask"])
      scores = accumulator.result()
  """

  def __init__(self):
    self._batches: list[tuple[_PerSample, jax.Array, np.ndarray]] = []
    self._num_classes: int | None = None

  def reset(self) -> None:
    self._batches, self._num_classes = [], None

  def update(self, logits, labels, confidence=None, mask=None) -> None:
    """Adds a batch; rows whose `mask` is False (padding) are ignored entirely."""
    logits = _check_logits(logits)
    num_rows, num_classes = logits.shape
    if self._num_classes not in (None, num_classes):
      raise ValueError(f"logits have {num_classes} classes but earlier batches had "
                       f"{self._num_classes}")
    valid = np.ones(num_rows, bool) if mask is None else _check_mask(mask, num_rows)
    labels = _check_labels(labels, num_rows, num_classes, valid)
    if confidence is not None:
      confidence = _check_scores(confidence, "confidence", num_rows, valid, unit_interval=True)
    valid_on_device = jnp.asarray(valid)
    per_sample, suspect_rows = _per_sample(logits, labels, valid_on_device)
    if int(suspect_rows):
      _raise_if_nonfinite(_count_nonfinite(logits, valid_on_device))
    confidence = per_sample.msp if confidence is None else confidence
    self._num_classes = num_classes
    self._batches.append((per_sample, confidence, valid))

  def result(self) -> dict[str, float]:
    if not self._batches:
      raise ValueError("no samples to evaluate: no batches were added")
    # The vectors are small (4 numbers a sample): joining them on the host is
    # one transfer and compiles nothing per number or size of batches.
    batches = jax.device_get(self._batches)
    valid = np.concatenate([v for _, _, v in batches])
    if not valid.any():
      raise ValueError("no samples to evaluate: every row is masked out")
    join = lambda parts: np.concatenate(parts)[valid]
    per_sample = _PerSample(*map(join, zip(*(p for p, _, _ in batches))))
    confidence = join([c for _, c, _ in batches])
    return _to_floats(
        _summary(confidence, per_sample.correct, per_sample.nll, per_sample.brier), METRIC_NAMES)
