"""The Python API for the common job: a duo of models you already have.

    duo = duojax.fit_duo([val_logits_large, val_logits_sidekick], val_labels)
    duo.weights                                  # [m] float: w_i = 1 / T_i
    duo.probabilities([test_large, test_sidekick])
    duo.uncertainty([test_large, test_sidekick])  # 1 − max softmax(Σ w_i z_i)
    duo.save("duo.json"); duo = duojax.load_duo("duo.json")
    duojax.score(duo.logits(test), test_labels, ood_logits=duo.logits(ood))
    detector = duojax.fit_mahalanobis(train_features, train_labels)
    duojax.score_ood(duojax.mahalanobis_score(detector, test_features),
                     duojax.mahalanobis_score(detector, ood_features))
    selection = duojax.guaranteed_threshold(duo.confidence(val), val_correct, risk=0.02)
    accept = duo.confidence(test) >= selection.threshold  # risk ≤ 2% w.p. ≥ 95%
    alarm = duojax.fit_shift_alarm([val_logits_large, val_logits_sidekick])
    shifted, p_value = alarm.check([batch_large, batch_sidekick])  # ≤ 5% false alarms

A thin layer over `duojax.core` (`temperature.fit_temperatures` for the joint
fit, `duo` for the combination, `metrics` for the scores): every function
takes and returns plain arrays, logits one [N, C] array per member, member 0
the large model. The fit is the Asymmetric Duo's (arXiv 2505.18636): weights
w minimising the mean validation NLL of softmax(Σ_i w_i z_i), found by L-BFGS;
m = 1 is temperature scaling, m > 2 a large model with several sidekicks.
For models rather than logits, `fused_forward` runs every member in one
jitted program (and hands back the large model's pre-logit features, for the
Mahalanobis OOD score of `fit_mahalanobis` / `mahalanobis_score`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from duojax import files
from duojax.core import duo as duo_lib
from duojax.core import mahalanobis, metrics, per_input_duo, temperature
from duojax.core.per_input_duo import PerInputDuo
from duojax.core.selective import Selection, guaranteed_threshold
from duojax.core.shift_alarm import ShiftAlarm, fit_shift_alarm, load_shift_alarm
from duojax.errors import ConfigError, FileError, InputError

FORMAT = per_input_duo.FORMAT  # "duojax.duo"
VERSION = 1  # a weighted duo: {"weights", "names"}
PER_INPUT_VERSION = per_input_duo.VERSION  # a per-input duo: {"method", "params", "names"}
SCORES = ("max_prob", "large_prediction")
# Re-exported: abstention with a guaranteed selective risk (`duojax.core.selective`).
__all__ = [
  "Duo",
  "PerInputDuo",
  "Selection",
  "ShiftAlarm",
  "fit_duo",
  "fused_forward",
  "fit_mahalanobis",
  "fit_shift_alarm",
  "guaranteed_threshold",
  "load_duo",
  "load_shift_alarm",
  "mahalanobis_score",
  "score",
  "score_ood",
]


@dataclasses.dataclass(frozen=True)
class Duo:
  """Fitted member weights; methods take the members' logits, m arrays [N, C]."""

  weights: np.ndarray  # float32 [m]
  names: tuple[str, ...] = ()

  def logits(self, member_logits, features=None) -> np.ndarray:
    """The duo's logits Σ_i w_i z_i, float32 [N, C]. (`features` is accepted, and
    unused, so that code written for `PerInputDuo` runs with a weighted duo.)"""
    del features
    stack = _stack(member_logits, len(self.weights))
    return np.asarray(duo_lib.combine(stack, self.weights))

  def probabilities(self, member_logits, features=None) -> np.ndarray:
    """softmax of the duo's logits, float32 [N, C]."""
    return np.asarray(jax.nn.softmax(self.logits(member_logits), axis=-1))

  def predict(self, member_logits, features=None) -> np.ndarray:
    """The duo's predicted class, int [N]."""
    return self.logits(member_logits).argmax(-1)

  @property
  def method(self) -> str:
    return "weighted"

  def confidence(self, member_logits, score: str = "max_prob", features=None) -> np.ndarray:
    """Confidence in [0, 1], float32 [N].

    "max_prob": the duo's max softmax probability (the paper's score, its
    uncertainty 1 − max softmax(z); `duo.msp_confidence`, "msp" in the
    report); "large_prediction": the duo's probability
    of the large model's (member 0's) prediction, the reference code's variant.
    """
    if score not in SCORES:
      raise ConfigError(f"score={score!r}; valid: {', '.join(SCORES)}")
    stack = _stack(member_logits, len(self.weights))
    combined = duo_lib.combine(stack, self.weights)
    if score == "max_prob":
      return np.asarray(duo_lib.msp_confidence(combined))
    return np.asarray(duo_lib.confidence_on(combined, jnp.argmax(stack[0], -1)))

  def uncertainty(self, member_logits, score: str = "max_prob", features=None) -> np.ndarray:
    """1 − `confidence`: higher means less certain, float32 [N]."""
    return 1.0 - self.confidence(member_logits, score)

  def save(self, path: str | os.PathLike) -> None:
    """Writes the duo as JSON, whole or not at all."""
    record = {
      "format": FORMAT,
      "version": VERSION,
      "weights": [float(w) for w in self.weights],
      "names": list(self.names),
    }
    files.write_atomically(os.fspath(path), json.dumps(record, indent=2))


def _stack(member_logits, m: int) -> jax.Array:
  stack = duo_lib.as_stack(member_logits)  # shape and dtype checks, one-line errors
  if stack.shape[0] != m:
    raise InputError(f"the duo has {m} members but {stack.shape[0]} logits arrays were given")
  return stack


def fit_duo(
  member_logits: Sequence,
  labels,
  *,
  names: Sequence[str] = (),
  solver: str = "jaxopt",
  method: str = "weighted",
  features: Sequence | None = None,
  alarm_options: dict | bool | None = None,
) -> Duo | PerInputDuo:
  """Fits a duo on validation logits and labels.

  Args:
    member_logits: m arrays [N, C] (or one [m, N, C] stack), the large model first.
    labels: int [N] in [0, C).
    names: optional member names, kept with the weights.
    solver: "jaxopt" (jaxopt.LBFGS) or "optax" (optax.lbfgs).
    method: "weighted" (one weight per member, the paper's duo: a `Duo`), or a
      per-input duo (a `PerInputDuo`, `duojax.core.per_input_duo`): "dynamic"
      (temperatures from the members' features), "entropy" (weights from each
      member's predictive entropy) or "guarded" (a mixture with the large model
      alone that cannot do much worse than it).
    features: for "dynamic", one [N, D_i] array of pre-logit features per member
      (`fused_forward(..., with_features="all")`); None falls back to the
      members' logit summaries. Their `.logits(member_logits, features)` then
      take the same kind of features.
    alarm_options: for "guarded", `fit_shift_alarm`'s options for the duo's own
      shift alarm (alpha, batch_size, resamples, seed; default α = 0.05 on
      batches of 500), or False for none. Its `.logits(member_logits)` then
      treat the rows as a stream of batches and mix equally with large+TS on
      the batches the alarm flags (`duojax.core.guarded_duo`).
  """
  stack = duo_lib.as_stack(member_logits)
  if names and len(names) != stack.shape[0]:
    raise InputError(f"{len(names)} names for {stack.shape[0]} members")
  if method == "weighted" and alarm_options not in (None, False):
    raise InputError('method="weighted" has no shift alarm (only "guarded" does)')
  if method != "weighted":
    return per_input_duo.fit(
      method,
      list(np.asarray(stack)),
      labels,
      features=features,
      names=names,
      solver=solver,
      alarm_options=alarm_options,
    )
  weights = temperature.fit_temperatures(stack, np.asarray(labels), solver=solver)
  return Duo(np.asarray(weights, np.float32), tuple(names))


def load_duo(path: str | os.PathLike) -> Duo | PerInputDuo:
  """A duo written by `Duo.save` or `PerInputDuo.save`; a missing, damaged or foreign
  file is a one-line FileError."""
  path = os.fspath(path)
  versions = (VERSION, *per_input_duo.READABLE)
  record = files.read_record(path, FORMAT, versions, "duo file")
  if record["version"] in per_input_duo.READABLE:
    try:
      return per_input_duo.from_record(record, record.get("names", []), path)
    except FileError:  # already one line naming the file
      raise
    except (KeyError, TypeError, ValueError) as e:
      raise FileError(f"{path!r}: damaged per-input duo ({type(e).__name__}: {e})") from None
  weights, names = record.get("weights"), record.get("names", [])
  if (
    not isinstance(weights, list)
    or not weights
    or not all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
    or not np.all(np.isfinite(weights))
  ):
    raise FileError(f'{path!r}: "weights" must be a non-empty list of finite numbers')
  if (
    not isinstance(names, list)
    or not all(isinstance(n, str) for n in names)
    or (names and len(names) != len(weights))
  ):
    raise FileError(f'{path!r}: "names" must be one string per weight')
  return Duo(np.asarray(weights, np.float32), tuple(names))


def score(logits, labels, *, confidence=None, ood_logits=None, ood_confidence=None) -> dict:
  """Every metric of the report for one method's logits [N, C] and labels [N].

  `confidence` defaults to the max softmax probability. With `ood_logits`
  (logits of out-of-distribution inputs) or `ood_confidence`, the OOD metrics
  (AUROC, AUPR, FPR at 95% TPR) of telling the test rows from the OOD rows by
  that confidence come under "ood". Returns plain floats.
  """
  logits = np.asarray(logits)
  if confidence is None:
    confidence = np.asarray(duo_lib.msp_confidence(jnp.asarray(logits, jnp.float32)))
  result = dict(metrics.evaluate(logits, labels, confidence))
  if ood_logits is not None and ood_confidence is None:
    ood_confidence = np.asarray(duo_lib.msp_confidence(jnp.asarray(ood_logits, jnp.float32)))
  if ood_confidence is not None:
    result["ood"] = dict(metrics.ood(confidence, ood_confidence))
  return result


def fused_forward(
  models: Sequence,
  *,
  preprocess: Sequence[Callable] | None = None,
  mesh=None,
  with_features: bool | str = False,
) -> tuple[Callable, tuple]:
  """(jitted forward, states) running NNX `models` in one program.

  `forward(states, images)` returns the members' logits [m, B, C], and with
  `with_features=True` the pair (logits, features [B, D]): model 0's pre-logit
  features, which `fit_mahalanobis` and `mahalanobis_score` take; with
  `with_features="all"` the pair (logits, (features of each model)), which
  `fit_duo(..., method="dynamic", features=...)` takes.
  `preprocess[i]` (e.g. `functools.partial(duojax.data.prepare, spec=...)`)
  turns the batch into model i's input inside the same program.
  """
  graphdefs, states = duo_lib.split_members(list(models))
  forward = duo_lib.make_fused_forward(
    graphdefs, mesh=mesh, preprocess=preprocess, with_features=with_features
  )
  return forward, states


def score_ood(in_scores, out_scores) -> dict:
  """AUROC, AUPR and FPR at 95% TPR of telling in-distribution rows from OOD rows
  by any score where higher means in-distribution (max softmax, −entropy, energy,
  max logit, `mahalanobis_score`): `in_scores` [N], `out_scores` [M], finite reals.
  """
  return dict(metrics.ood(in_scores, out_scores))


def fit_mahalanobis(features, labels, num_classes: int | None = None):
  """The Mahalanobis OOD detector (Lee et al. 2018) of training features [N, D].

  Class means μ_c and the shared covariance Σ of the class-centred features
  (its pseudo-inverse Σ⁺ where rows or spread run short; see
  `duojax.core.mahalanobis`). `num_classes` defaults to max(labels) + 1; every
  class needs rows. Returns the fitted model (a pytree) for `mahalanobis_score`.
  """
  if num_classes is None:
    labels = np.asarray(labels)
    num_classes = int(labels.max()) + 1 if labels.size else 0
  return mahalanobis.fit(features, labels, num_classes)


def mahalanobis_score(detector, features) -> np.ndarray:
  """−min_c (x − μ_c)ᵀ Σ⁺ (x − μ_c) per row of `features` [N, D]: higher means
  closer to the training data; `score_ood(test_scores, ood_scores)` turns two
  sets of them into AUROC, AUPR and FPR95."""
  return np.asarray(mahalanobis.score(detector, features))
