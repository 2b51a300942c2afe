"""A duo whose combination is computed per input: dynamic, entropy-weighted or guarded.

`PerInputDuo` has the weighted `Duo`'s interface (`logits`, `probabilities`,
`predict`, `confidence`, `uncertainty`, `save`), each taking the members'
logits and, for the dynamic duo, their pre-logit features:

  "dynamic"   per-input temperatures from both members' features (`dynamic_duo`);
  "entropy"   per-input weights from each member's predictive entropy (`entropy_duo`);
  "guarded"   a per-input mixture of the duo and the large model alone, never
              much worse than the latter (`guarded_duo`).

Its record (what `save` writes inside the "duojax.duo" file format, version 3)
holds the method and the fitted arrays by name and, for a guarded duo, its shift
alarm. Version 2 files (before guarded duos held one) still load: their guarded
duo applies its per-input guards alone.

A guarded duo with an alarm treats the rows it is given as a stream of
deployment batches: `logits` (and every method built on it) cuts them into
consecutive batches of about the alarm's batch size and mixes equally on the
batches the alarm flags (`guarded_duo`, "What no rule on one input can see");
`shifted=` overrides the verdicts (`shifted_rows` gives them, for any order).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from duojax import files
from duojax.core import dynamic_duo, entropy_duo, guarded_duo, shift_alarm
from duojax.errors import ConfigError, FileError, InputError

FORMAT, VERSION = "duojax.duo", 3  # the file format of `duojax.api.load_duo`
READABLE = (2, 3)  # version 2: a guarded duo without its shift alarm
METHODS = ("dynamic", "entropy", "guarded")
_PARAMS = {
  "dynamic": dynamic_duo.DynamicParams,
  "entropy": entropy_duo.EntropyParams,
  "guarded": guarded_duo.GuardedParams,
}
SCORES = ("max_prob", "large_prediction")


@dataclasses.dataclass(frozen=True)
class PerInputDuo:
  """A fitted per-input duo; methods take m logits arrays [N, C], large model first."""

  method: str
  params: object  # the method's *Params dataclass
  names: tuple[str, ...] = ()
  alarm: shift_alarm.ShiftAlarm | None = None  # a guarded duo's batch alarm

  def logits(self, member_logits, features=None, shifted=None) -> np.ndarray:
    """Logits [N, C] whose softmax is the duo's predictive (for "guarded", log p).
    `shifted` (guarded only): a bool or bool [N], the alarm's verdicts on the rows'
    batches; None runs the duo's alarm on consecutive batches (`shifted_rows`)."""
    arrays = stack_list(member_logits)
    if shifted is not None and self.method != "guarded":
      raise InputError(f'shifted= is for a guarded duo; this one is "{self.method}"')
    if self.method == "dynamic":
      return np.asarray(dynamic_duo.logits(self.params, arrays, features))
    if self.method == "entropy":
      return np.asarray(entropy_duo.logits(self.params, arrays))
    if shifted is None:
      shifted = self.shifted_rows(arrays)
    return np.asarray(guarded_duo.log_probabilities(self.params, arrays, shifted))

  def shifted_rows(self, member_logits, order=None) -> np.ndarray:
    """bool [N]: the rows of the batches a guarded duo's alarm flags, the rows taken
    in `order` (default: as given) in batches of about its batch size
    (`guarded_duo.batch_verdicts`); all false without an alarm."""
    arrays = stack_list(member_logits)
    if self.alarm is None:
      return np.zeros(len(arrays[0]), bool)
    return guarded_duo.batch_verdicts(self.alarm, arrays, order=order)

  def probabilities(self, member_logits, features=None, shifted=None) -> np.ndarray:
    logits = self.logits(member_logits, features, shifted)
    return np.asarray(jax.nn.softmax(logits, axis=-1))

  def predict(self, member_logits, features=None, shifted=None) -> np.ndarray:
    return self.logits(member_logits, features, shifted).argmax(-1)

  def confidence(
    self, member_logits, score: str = "max_prob", features=None, shifted=None
  ) -> np.ndarray:
    """The duo's max probability ("max_prob"), or its probability of the large
    model's prediction ("large_prediction"), float32 [N]."""
    if score not in SCORES:
      raise ConfigError(f"score={score!r}; valid: {', '.join(SCORES)}")
    p = self.probabilities(member_logits, features, shifted)
    if score == "max_prob":
      return p.max(-1)
    large = stack_list(member_logits)[0].argmax(-1)
    return np.take_along_axis(p, large[:, None], axis=-1)[:, 0]

  def uncertainty(
    self, member_logits, score: str = "max_prob", features=None, shifted=None
  ) -> np.ndarray:
    return 1.0 - self.confidence(member_logits, score, features, shifted)

  @property
  def num_members(self) -> int:
    """m, the members the duo combines."""
    first = {"dynamic": "bias", "entropy": "weights", "guarded": "duo_weights"}[self.method]
    return int(np.asarray(getattr(self.params, first)).shape[0])

  @property
  def needs_features(self) -> bool:
    return self.method == "dynamic" and self.params.source == dynamic_duo.FEATURES

  def save(self, path) -> None:
    """Writes the duo as JSON ("duojax.duo" version 2), whole or not at all."""
    record = {"format": FORMAT, "version": VERSION, "names": list(self.names), **self.record()}
    files.write_atomically(os.fspath(path), json.dumps(record))

  def record(self) -> dict:
    """The fitted arrays by name (JSON-ready), with the method."""
    params = {}
    for field in dataclasses.fields(self.params):
      value = getattr(self.params, field.name)
      params[field.name] = value if isinstance(value, str) else np.asarray(value).tolist()
    record = {"method": self.method, "params": params}
    if self.alarm is not None:
      record["shift_alarm"] = self.alarm.record()
    return record


def combine(duo, stack, features=None, shifted=False) -> jax.Array:
  """The duo's logits from traced arrays, inside a jitted or exported program:
  `stack` [m, N, C] the members' logits, `features` their pre-logit features (read
  by a dynamic duo fit on them), `shifted` a guarded duo's alarm verdicts (the
  caller's: the alarm needs a whole batch). `duo` is a `PerInputDuo` or a weighted
  duo (an object with `.weights`): Σ_i w_i z_i."""
  if not isinstance(duo, PerInputDuo):
    return jnp.einsum("m,mnc->nc", jnp.asarray(duo.weights, jnp.float32), stack)
  if duo.method == "dynamic":
    return dynamic_duo.combine(duo.params, stack, features)
  if duo.method == "entropy":
    return entropy_duo.combine(duo.params, list(stack))
  return guarded_duo.combine(duo.params, list(stack), shifted)


def from_record(record: dict, names: Sequence[str] = (), where: str = "") -> PerInputDuo:
  """The duo of a `record()`; KeyError/TypeError/ValueError if it is malformed (a
  malformed shift alarm: a FileError naming `where`)."""
  method = record["method"]
  cls = _PARAMS[method]
  values = {}
  for field in dataclasses.fields(cls):
    value = record["params"][field.name]
    if field.type in ("str", str):
      if not isinstance(value, str):
        raise TypeError(f"{field.name} must be a string")
      values[field.name] = value
    else:
      array = np.asarray(value, np.float32)
      if not np.all(np.isfinite(array)):
        raise InputError(f"{field.name} holds non-finite values")
      values[field.name] = array
  alarm = record.get("shift_alarm")
  if alarm is not None:
    if method != "guarded":
      raise FileError(f'{where!r}: its "{method}" duo holds a shift alarm (only "guarded" does)')
    alarm = shift_alarm.alarm_from_record(alarm, where)
  return PerInputDuo(method, cls(**values), tuple(names), alarm)


def fit(
  method: str,
  member_logits,
  labels,
  *,
  features=None,
  names=(),
  solver: str = "jaxopt",
  alarm_options=None,
) -> PerInputDuo:
  """Fits per-input duo `method` on validation logits, labels and (dynamic) features;
  a guarded duo's shift alarm too, with `alarm_options` (`fit_shift_alarm`'s alpha,
  batch_size, resamples, seed; False: no alarm, the per-input guards alone)."""
  if method not in METHODS:
    raise ConfigError(f"method={method!r}; valid: weighted, {', '.join(METHODS)}")
  if features is not None and method != "dynamic":
    raise InputError(f'method="{method}" takes no features (only "dynamic" does)')
  if alarm_options not in (None, False) and method != "guarded":
    raise InputError(f'method="{method}" has no shift alarm (only "guarded" does)')
  arrays = stack_list(member_logits)
  if method == "dynamic":
    params = dynamic_duo.fit(arrays, labels, features)
  elif method == "entropy":
    params = entropy_duo.fit(arrays, labels, solver=solver)
  else:
    params = guarded_duo.fit(arrays, labels, solver=solver, agreement_guard=alarm_options is False)
    if alarm_options is not False:
      alarm = guarded_duo.fit_alarm(params, arrays, **(alarm_options or {}))
      return PerInputDuo(method, params, tuple(names), alarm)
  return PerInputDuo(method, params, tuple(names))


def stack_list(member_logits) -> list[np.ndarray]:
  """m arrays [N, C] from a list or an [m, N, C] stack."""
  if isinstance(member_logits, (list, tuple)):
    return [np.asarray(z) for z in member_logits]
  stack = np.asarray(member_logits)
  if stack.ndim != 3:
    raise InputError(f"member logits must be m arrays [N, C] or one [m, N, C], got {stack.shape}")
  return list(stack)


__all__ = ["METHODS", "PerInputDuo", "fit", "from_record", "stack_list"]
