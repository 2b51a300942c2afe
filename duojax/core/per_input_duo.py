"""A duo whose combination is computed per input: dynamic, entropy-weighted or guarded.

`PerInputDuo` has the weighted `Duo`'s interface (`logits`, `probabilities`,
`predict`, `confidence`, `uncertainty`, `save`), each taking the members'
logits and, for the dynamic duo, their pre-logit features:

  "dynamic"   per-input temperatures from both members' features (`dynamic_duo`);
  "entropy"   per-input weights from each member's predictive entropy (`entropy_duo`);
  "guarded"   a per-input mixture of the duo and the large model alone, never
              much worse than the latter (`guarded_duo`).

Its record (what `save` writes inside the "duojax.duo" file format, version 2)
holds the method and the fitted arrays by name.
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
from duojax.core import dynamic_duo, entropy_duo, guarded_duo
from duojax.errors import ConfigError, InputError

FORMAT, VERSION = "duojax.duo", 2  # the file format of `duojax.api.load_duo`, version 2
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

  def logits(self, member_logits, features=None) -> np.ndarray:
    """Logits [N, C] whose softmax is the duo's predictive (for "guarded", log p)."""
    arrays = stack_list(member_logits)
    if self.method == "dynamic":
      return np.asarray(dynamic_duo.logits(self.params, arrays, features))
    if self.method == "entropy":
      return np.asarray(entropy_duo.logits(self.params, arrays))
    return np.asarray(guarded_duo.log_probabilities(self.params, arrays))

  def probabilities(self, member_logits, features=None) -> np.ndarray:
    return np.asarray(jax.nn.softmax(self.logits(member_logits, features), axis=-1))

  def predict(self, member_logits, features=None) -> np.ndarray:
    return self.logits(member_logits, features).argmax(-1)

  def confidence(self, member_logits, score: str = "max_prob", features=None) -> np.ndarray:
    """The duo's max probability ("max_prob"), or its probability of the large
    model's prediction ("large_prediction"), float32 [N]."""
    if score not in SCORES:
      raise ConfigError(f"score={score!r}; valid: {', '.join(SCORES)}")
    p = self.probabilities(member_logits, features)
    if score == "max_prob":
      return p.max(-1)
    large = stack_list(member_logits)[0].argmax(-1)
    return np.take_along_axis(p, large[:, None], axis=-1)[:, 0]

  def uncertainty(self, member_logits, score: str = "max_prob", features=None) -> np.ndarray:
    return 1.0 - self.confidence(member_logits, score, features)

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
    return {"method": self.method, "params": params}


def combine(duo, stack, features=None) -> jax.Array:
  """The duo's logits from traced arrays, inside a jitted or exported program:
  `stack` [m, N, C] the members' logits, `features` their pre-logit features (read
  by a dynamic duo fit on them). `duo` is a `PerInputDuo` or a weighted duo (an
  object with `.weights`): Σ_i w_i z_i."""
  if not isinstance(duo, PerInputDuo):
    return jnp.einsum("m,mnc->nc", jnp.asarray(duo.weights, jnp.float32), stack)
  if duo.method == "dynamic":
    return dynamic_duo.combine(duo.params, stack, features)
  if duo.method == "entropy":
    return entropy_duo.combine(duo.params, list(stack))
  return guarded_duo.combine(duo.params, list(stack))


def from_record(record: dict, names: Sequence[str] = ()) -> PerInputDuo:
  """The duo of a `record()`; KeyError/TypeError/ValueError if it is malformed."""
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
  return PerInputDuo(method, cls(**values), tuple(names))


def fit(
  method: str, member_logits, labels, *, features=None, names=(), solver: str = "jaxopt"
) -> PerInputDuo:
  """Fits per-input duo `method` on validation logits, labels and (dynamic) features."""
  if method not in METHODS:
    raise ConfigError(f"method={method!r}; valid: weighted, {', '.join(METHODS)}")
  if features is not None and method != "dynamic":
    raise InputError(f'method="{method}" takes no features (only "dynamic" does)')
  arrays = stack_list(member_logits)
  if method == "dynamic":
    params = dynamic_duo.fit(arrays, labels, features)
  elif method == "entropy":
    params = entropy_duo.fit(arrays, labels, solver=solver)
  else:
    params = guarded_duo.fit(arrays, labels, solver=solver)
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
