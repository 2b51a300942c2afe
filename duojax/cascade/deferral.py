"""Cascade analysis (arXiv 2502.19335): a small model answers, unsure inputs go on.

A cascade runs a small model first and defers an input to a larger model (or
to the duo, whose answer is w_L·z_L + w_S·z_S) when the small model's maximum
softmax probability (MSP) is below a threshold τ. It saves compute only if
the MSP ranks the small model's errors below its correct predictions, so
Gatekeeper fine-tunes the small model with (`gatekeeper_loss`)

    L = α/N·Σ_i [ŷ_i = y_i]·CE(p_i, y_i) + (1 − α)/N·Σ_i [ŷ_i ≠ y_i]·KL(p_i ‖ u):

sharpen the predictions it gets right, flatten the wrong ones towards the
uniform u. α trades the small model's accuracy for its deferral signal.

Deferral is scored with three accuracy-vs-deferral-ratio curves over r in
[0, 1] (r = fraction of inputs deferred):

    real    the cascade's accuracy when deferring the least confident r;
    random  (1 − r)·acc_S + r·acc_L, deferring a random r;
    ideal   acc_S + (acc_L − acc_S)·r/(1 − acc_S) up to r = 1 − acc_S, then
            acc_L: the small model's errors are deferred first.

s_d = ∫(real − random) / ∫(ideal − random) is 1 for an ideal gate, ~0 for a
random one and negative for one that defers correct predictions first
(`deferral_performance`); s_o, the overlap of the densities of the MSP of
correct and incorrect predictions, is lower when they separate better
(`distributional_overlap`).

The loss (`duojax.core.losses.gatekeeper_loss`) and the cascade's selection are jitted JAX in float32; the curve
analysis is host-side numpy (sorts and cumulative sums).
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from duojax.core import duo, metrics
from duojax.errors import ConfigError, InputError

# Data × grid elements of one chunk of the KDE sum (32 MB in float64).
_KDE_CHUNK_ELEMENTS = 1 << 22
# The KDE grid extends this many bandwidths past the data: a Gaussian kernel
# has < 4e-5 of its mass beyond, where 3 bandwidths would lose 1.3e-3.
_KDE_TAIL_BANDWIDTHS = 4.0


# --- Input checks (host side; shapes only where the input may be traced).


def _check_logits_pair(small_logits, other_logits, other: str):
  small_logits, other_logits = jnp.asarray(small_logits), jnp.asarray(other_logits)
  if small_logits.ndim != 2 or 0 in small_logits.shape:
    raise InputError(
      f"small_logits must be non-empty 2-D [N, C], got shape {tuple(small_logits.shape)}"
    )
  if other_logits.shape != small_logits.shape:
    raise InputError(
      f"{other} shape {tuple(other_logits.shape)} does not match small_logits "
      f"shape {tuple(small_logits.shape)}"
    )
  return small_logits.astype(jnp.float32), other_logits.astype(jnp.float32)


def _check_confidence(confidence) -> np.ndarray:
  # float32 like the MSPs: a threshold taken from these values splits them exactly.
  confidence = np.asarray(confidence, np.float32)
  if confidence.ndim != 1 or confidence.size == 0:
    raise InputError(f"confidence must be a non-empty 1-D array, got shape {confidence.shape}")
  if bad := int(np.sum(~np.isfinite(confidence))):
    raise InputError(f"confidence has {bad} non-finite values (NaN or inf)")
  return confidence


def _check_correct(correct, what: str, num_rows: int) -> np.ndarray:
  correct = np.asarray(correct)
  if correct.shape != (num_rows,):
    raise InputError(f"{what} shape {correct.shape} does not match the {num_rows} confidences")
  if correct.dtype != bool and not np.isin(correct, (0, 1)).all():
    raise InputError(f"{what} must be bool (or 0/1), got values outside {{0, 1}}")
  return correct.astype(bool)


def _check_ratio(ratio, what: str = "ratio") -> float:
  ratio = float(ratio)
  if not 0.0 <= ratio <= 1.0:
    raise ConfigError(f"{what} must be in [0, 1], got {ratio}")
  return ratio


# --- Deferral analysis.


def deferral_curve(confidence, correct_small, correct_large) -> dict[str, np.ndarray]:
  """The realized accuracy of the cascade at every achievable deferral ratio.

  Deferring the inputs with confidence < τ, the cascade is right where the
  large model is on deferred inputs and where the small one is on the rest.
  A threshold cannot split equal confidences, so each of the K = (distinct
  confidences) + 1 points defers whole tie groups, from nothing (r = 0,
  accuracy acc_S) to everything (r = 1, acc_L). Returns float32 arrays [K]:
  "ratio", "accuracy", and "threshold", the largest τ giving that point (the
  smallest confidence kept; inf for the last).
  """
  confidence = _check_confidence(confidence)
  num = confidence.size
  correct_small = _check_correct(correct_small, "correct_small", num)
  correct_large = _check_correct(correct_large, "correct_large", num)
  order = np.argsort(confidence, kind="stable")
  ordered = confidence[order]
  # Deferred counts: 0, every start of a new (higher) confidence, N.
  deferred = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1, [num]])
  cum_small = np.concatenate([[0], np.cumsum(correct_small[order])])
  cum_large = np.concatenate([[0], np.cumsum(correct_large[order])])
  right = cum_large[deferred] + cum_small[-1] - cum_small[deferred]
  return {
    "ratio": (deferred / num).astype(np.float32),
    "accuracy": (right / num).astype(np.float32),
    "threshold": np.append(ordered[deferred[:-1]], np.float32(np.inf)),
  }


def random_deferral(ratio, acc_small, acc_large) -> jax.Array:
  """Accuracy when deferring a random `ratio` of the inputs: (1 − r)·acc_S + r·acc_L."""
  ratio = jnp.asarray(ratio, jnp.float32)
  return (1.0 - ratio) * acc_small + ratio * acc_large


def ideal_deferral(ratio, acc_small, acc_large) -> jax.Array:
  """The ideal gate: acc_S + (acc_L − acc_S)·r/(1 − acc_S) for r ≤ 1 − acc_S,
  acc_L beyond (just acc_S at r = 0 when acc_S = 1)."""
  ratio = jnp.asarray(ratio, jnp.float32)
  kink = 1.0 - jnp.asarray(acc_small, jnp.float32)
  rising = acc_small + (acc_large - acc_small) * ratio / jnp.maximum(kink, 1e-30)
  return jnp.where(ratio <= kink, rising, jnp.asarray(acc_large, jnp.float32))


def deferral_performance(curve, acc_small, acc_large) -> float:
  """s_d = ∫(real − random) dr / ∫(ideal − random) dr over r in [0, 1].

  `curve` is a `deferral_curve` dict (its accuracy is integrated with the
  trapezoid rule); the random and ideal lines are integrated exactly:
  ∫random = (S + L)/2 and, with the kink k = 1 − S, ∫ideal = k(S + L)/2 +
  (1 − k)L, so the denominator is S(L − S)/2. It is not positive when the
  large model is no more accurate than the small one (or S = 0): no gate can
  gain anything over random then, and s_d is NaN.
  """
  ratio = np.asarray(curve["ratio"], np.float64)
  accuracy = np.asarray(curve["accuracy"], np.float64)
  if ratio.ndim != 1 or ratio.shape != accuracy.shape or ratio.size < 2:
    raise InputError(
      f"curve ratio {ratio.shape} and accuracy {accuracy.shape} must be 1-D "
      "of the same length (at least 2)"
    )
  if ratio[0] != 0.0 or ratio[-1] != 1.0 or np.any(np.diff(ratio) < 0):
    raise InputError("curve ratio must increase from 0 to 1")
  acc_small = _check_ratio(acc_small, "acc_small")
  acc_large = _check_ratio(acc_large, "acc_large")
  gap = acc_small * (acc_large - acc_small) / 2.0
  if not gap > 0.0:
    return math.nan
  real_gain = np.trapezoid(accuracy, ratio) - (acc_small + acc_large) / 2.0
  return float(real_gain / gap)


def _scott_bandwidth(data: np.ndarray) -> float:
  """scipy.stats.gaussian_kde's default in 1-D: std (ddof 1) · n^(−1/5)."""
  return float(np.std(data, ddof=1) * data.size**-0.2)


def _gaussian_kde(data, points, bandwidth: float | None = None) -> np.ndarray:
  """Gaussian kernel density of `data` at `points` (float64), summed over
  chunks of the data so that N × points never sits in memory at once."""
  data, points = np.asarray(data, np.float64), np.asarray(points, np.float64)
  bandwidth = _scott_bandwidth(data) if bandwidth is None else bandwidth
  density = np.zeros(points.shape)
  step = max(1, _KDE_CHUNK_ELEMENTS // max(points.size, 1))
  for start in range(0, data.size, step):
    z = (points[:, None] - data[None, start : start + step]) / bandwidth
    density += np.sum(np.exp(-0.5 * z * z), axis=1)
  return density / (data.size * bandwidth * math.sqrt(2.0 * math.pi))


def distributional_overlap(confidence, correct, *, grid: int = 1000) -> float:
  """s_o = ∫ min(f_correct, f_incorrect) dx, in [0, 1]; lower is better.

  f are Gaussian KDEs (Scott's bandwidth, as scipy.stats.gaussian_kde) of the
  confidences of the correct and of the incorrect predictions. The integral
  is the trapezoid rule on `grid` even points over the data's range widened
  by 4 bandwidths each side: not [0, 1], since MSPs pile up near 1 and half
  of their kernels' mass lies beyond it. NaN when a group has fewer than 2
  points or no spread (its KDE is undefined).
  """
  confidence = _check_confidence(confidence).astype(np.float64)
  correct = _check_correct(correct, "correct", confidence.size)
  if int(grid) < 2:
    raise ConfigError(f"grid must be at least 2 points, got {grid}")
  groups = confidence[correct], confidence[~correct]
  if min(g.size for g in groups) < 2:
    return math.nan
  bandwidths = [_scott_bandwidth(g) for g in groups]
  if not min(bandwidths) > 0.0:
    return math.nan
  reach = _KDE_TAIL_BANDWIDTHS * max(bandwidths)
  points = np.linspace(confidence.min() - reach, confidence.max() + reach, int(grid))
  densities = [_gaussian_kde(g, points, h) for g, h in zip(groups, bandwidths)]
  return float(np.trapezoid(np.minimum(*densities), points))


# --- Cascades from precomputed logits.


@jax.jit
def _msp(logits):
  return duo.msp_confidence(logits)


@jax.jit
def _select(small_logits, answer_logits, small_confidence, answer_confidence, threshold):
  deferred = small_confidence < threshold
  logits = jnp.where(deferred[:, None], answer_logits, small_logits)
  return logits, jnp.where(deferred, answer_confidence, small_confidence), deferred


def cascade_outputs(small_logits, answer_logits, threshold):
  """(logits [N, C], confidence [N], deferred [N] bool) of a cascade.

  deferred = MSP(small_logits) < threshold; the logits are answer_logits on
  deferred rows and small_logits elsewhere, the confidence the MSP of the
  chosen logits. answer_logits are the large model's (Gatekeeper's cascade)
  or the duo's combined w_L·z_L + w_S·z_S (the duo cascade). threshold 0
  defers nothing, inf everything; it may be traced.
  """
  small_logits, answer_logits = _check_logits_pair(small_logits, answer_logits, "answer_logits")
  if isinstance(threshold, (int, float, np.number)) and math.isnan(threshold):
    raise ConfigError("threshold is NaN")
  # Each MSP from its own jitted program, as in `cascade_sweep`: the same
  # values its thresholds were picked from, so a split never moves by an ulp.
  return _select(
    small_logits,
    answer_logits,
    _msp(small_logits),
    _msp(answer_logits),
    jnp.asarray(threshold, jnp.float32),
  )


def threshold_for_ratio(confidence, ratio) -> float:
  """A threshold τ deferring (confidence < τ) about `ratio` of the inputs.

  The exact ratio-quantile when no tie straddles it; otherwise the tie
  group's nearer end (its lower one on a draw), since ties go together. τ is
  one of the confidences (exact in float32 comparisons), or inf to defer
  everything; τ = 0 would also defer nothing for MSPs.
  """
  ratio = _check_ratio(ratio)
  ordered = np.sort(_check_confidence(confidence))
  num = ordered.size
  target = int(np.rint(ratio * num))
  ends = np.concatenate([[0], np.flatnonzero(ordered[1:] != ordered[:-1]) + 1, [num]])
  upper = int(np.searchsorted(ends, target))
  lower = upper if ends[upper] == target else upper - 1
  count = ends[lower] if target - ends[lower] <= ends[upper] - target else ends[upper]
  return math.inf if count == num else float(ordered[count])


def cascade_sweep(
  small_logits,
  answer_logits,
  labels,
  *,
  ratios: Sequence[float],
  flops_small: float,
  flops_answer_extra: float,
) -> list[dict[str, float]]:
  """The cascade at each target deferral ratio, one dict per ratio.

  Keys: "target_ratio"; "threshold" (from `threshold_for_ratio` on the small
  model's MSP); "ratio", the realized fraction deferred; every
  metrics.METRIC_NAMES score of the cascade's logits ("acc", "nll", "auroc",
  "aurc", "sac98", ...); and "flops", the expected FLOPs per image
  flops_small + ratio·flops_answer_extra: the small model always runs, the
  rest of the answer (the large model) only on deferred inputs.
  """
  small_logits, answer_logits = _check_logits_pair(small_logits, answer_logits, "answer_logits")
  if not (flops_small >= 0 and flops_answer_extra >= 0):
    raise ConfigError(
      f"flops must be non-negative, got flops_small={flops_small}, "
      f"flops_answer_extra={flops_answer_extra}"
    )
  small_confidence, answer_confidence = _msp(small_logits), _msp(answer_logits)
  host_confidence = np.asarray(small_confidence)
  num = small_logits.shape[0]
  rows = []
  for target in ratios:
    threshold = threshold_for_ratio(host_confidence, target)
    logits, _, deferred = _select(
      small_logits, answer_logits, small_confidence, answer_confidence, jnp.float32(threshold)
    )
    realized = int(jnp.sum(deferred)) / num
    rows.append(
      {
        "target_ratio": float(target),
        "threshold": threshold,
        "ratio": realized,
        **metrics.evaluate(logits, labels),
        "flops": float(flops_small + realized * flops_answer_extra),
      }
    )
  return rows


def deferral_report(small_logits, large_logits, labels, *, grid: int = 1000) -> dict:
  """How well the small model's MSP gates a cascade to the large model.

  Returns {"acc_small", "acc_large", "auroc_small" (metrics.evaluate's
  correctness AUROC of the small model), "s_d", "s_o", "curve"}, the last a
  dict of float32 arrays [K] for plotting: "ratio", "accuracy" and
  "threshold" (`deferral_curve`), and the "random" and "ideal" lines at
  those ratios.
  """
  small_logits, large_logits = _check_logits_pair(small_logits, large_logits, "large_logits")
  small, large = metrics.evaluate(small_logits, labels), metrics.evaluate(large_logits, labels)
  labels = jnp.asarray(labels)
  confidence = np.asarray(_msp(small_logits))
  correct_small = np.asarray(jnp.argmax(small_logits, axis=-1) == labels)
  correct_large = np.asarray(jnp.argmax(large_logits, axis=-1) == labels)
  curve = deferral_curve(confidence, correct_small, correct_large)
  acc_small, acc_large = small["acc"], large["acc"]
  curve["random"] = np.asarray(random_deferral(curve["ratio"], acc_small, acc_large))
  curve["ideal"] = np.asarray(ideal_deferral(curve["ratio"], acc_small, acc_large))
  return {
    "acc_small": acc_small,
    "acc_large": acc_large,
    "auroc_small": small["auroc"],
    "s_d": deferral_performance(curve, acc_small, acc_large),
    "s_o": distributional_overlap(confidence, correct_small, grid=grid),
    "curve": curve,
  }
