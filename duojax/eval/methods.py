"""The duo and its baselines as post-hoc methods on a `LogitsBank`.

A method names the bank members it uses and how it turns their logits into
one prediction (logits [N, C], argmax = prediction) and one confidence [N]
(1 − confidence = uncertainty). Whatever it fits (temperatures, duo weights)
is fit on the "val" split only, then applied unchanged to every other split.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from duojax.core import duo, per_input_duo, temperature
from duojax.errors import ConfigError
from duojax.eval.bank import LogitsBank
from duojax.parallel import sharding

FIT_SPLIT = "val"
KINDS = ("single", "ts", "duo", "ensemble", "ensemble_ts", "per_input")
# The per-input duos (`duojax.core.per_input_duo`), as `config.per_input_duos` names them.
PER_INPUT = per_input_duo.METHODS
PER_INPUT_LABELS = {
  "dynamic": "per-input temperatures from both members' features",
  "entropy": "per-input weights from each member's entropy",
  "guarded": "mixture with large+TS per input, never much worse than it",
}


@dataclasses.dataclass(frozen=True)
class Method:
  """A post-hoc method, described by data: what it runs and how it combines.

  Its cost is the sum of its members' FLOPs (`method_flops`); `headline`
  methods are the ones compared with the reference (large+TS) by paired
  bootstrap intervals and drawn in the curve plots.
  """

  name: str
  kind: str  # one of KINDS
  members: tuple[str, ...]  # bank member names; for duos, the large model first
  mode: str = ""  # duo mode (duo.MODES) for kind "duo"; PER_INPUT's for "per_input"
  label: str = ""  # longer description for tables
  headline: bool = False


def log_mean_softmax(logits_stack) -> jax.Array:
  """log of the members' mean probability: an ensemble's logits."""
  log_probs = jax.nn.log_softmax(jnp.asarray(logits_stack, jnp.float32), axis=-1)
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(log_probs.shape[0])


def fit(
  method: Method, bank: LogitsBank, *, solver: str = "jaxopt", mesh=None, alarm_options=None
) -> dict[str, np.ndarray]:
  """What `method` learns from the validation split (possibly nothing).

  With a mesh, the validation logits are split by rows over its devices
  (across hosts too) and each fit's NLL is a mean over all of them.
  """
  labels = bank.labels[FIT_SPLIT]

  def fit_weights(members):
    if mesh is None:
      return np.asarray(temperature.fit_temperatures(list(members), labels, solver=solver))
    rows = [sharding.shard_rows(np.asarray(z, np.float32), mesh)[0] for z in members]
    row_labels, mask = sharding.shard_rows(labels, mesh)
    return np.asarray(temperature.fit_temperatures(rows, row_labels, mask=mask, solver=solver))

  if method.kind == "ts":
    return {"weights": fit_weights([bank.member(FIT_SPLIT, method.members[0])])}
  if method.kind == "ensemble_ts":
    return {"weights": fit_weights([log_mean_softmax(bank.stack(FIT_SPLIT, method.members))])}
  if method.kind == "duo":
    stack = bank.stack(FIT_SPLIT, method.members)
    single = [fit_weights([z])[0] for z in stack]
    return {"weights": fit_weights(stack), "single_weights": np.asarray(single)}
  if method.kind == "per_input":
    stack = bank.stack(FIT_SPLIT, method.members)
    features = member_features(bank, FIT_SPLIT, method) if method.mode == "dynamic" else None
    fitted = per_input_duo.fit(
      method.mode,
      list(stack),
      labels,
      features=features,
      solver=solver,
      alarm_options=alarm_options if method.mode == "guarded" else None,
    )
    return {"duo": fitted, **_summary(fitted)}
  if method.kind in ("single", "ensemble"):
    return {}
  raise ConfigError(f"unknown method kind {method.kind!r}; valid: {', '.join(KINDS)}")


def apply(method: Method, fitted: dict, bank: LogitsBank, split: str):
  """(logits [N, C], confidence [N]) of `method` on `split`."""
  if method.kind in ("single", "ts"):
    logits = jnp.asarray(bank.member(split, method.members[0]), jnp.float32)
    if method.kind == "ts":
      logits = logits * fitted["weights"][0]
    return logits, duo.msp_confidence(logits)
  if method.kind in ("ensemble", "ensemble_ts"):
    logits = log_mean_softmax(bank.stack(split, method.members))
    if method.kind == "ensemble_ts":
      logits = logits * fitted["weights"][0]
    return logits, duo.msp_confidence(logits)
  if method.kind == "per_input":
    features = member_features(bank, split, method) if method.mode == "dynamic" else None
    stack = list(bank.stack(split, method.members))
    shifted = None
    if method.mode == "guarded":
      # The split's rows as deployment batches: a seeded random order, since a
      # split listed class by class would make batches of one class that the
      # alarm rightly flags.
      order = np.random.default_rng(0).permutation(len(stack[0]))
      shifted = fitted["duo"].shifted_rows(stack, order=order)
    logits = jnp.asarray(fitted["duo"].logits(stack, features, shifted))
    return logits, duo.msp_confidence(logits)
  if method.kind == "duo":
    return duo.combine_mode(
      bank.stack(split, method.members),
      method.mode,
      joint_weights=fitted["weights"],
      single_weights=fitted["single_weights"],
    )
  raise ConfigError(f"unknown method kind {method.kind!r}; valid: {', '.join(KINDS)}")


def member_features(bank: LogitsBank, split: str, method: Method) -> list | None:
  """The method's members' pre-logit features on `split`, or None where the bank has
  not every one of them (the dynamic duo then reads the logits' summaries)."""
  collected = bank.member_features.get(split)
  if collected is None:
    return None
  features = [collected[bank.member_names.index(name)] for name in method.members]
  return None if any(f is None for f in features) else features


def _summary(fitted) -> dict[str, np.ndarray]:
  """The few numbers of a per-input duo worth a line in results.json."""
  params = fitted.params
  if fitted.method == "guarded":
    return {"weights": params.duo_weights, "gate": params.theta}
  if fitted.method == "entropy":
    return {"weights": params.weights, "single_weights": params.single_weights}
  return {"bias": params.bias}


def standard_methods(
  *,
  large: str,
  sidekick: str | None,
  ensemble: tuple[str, ...] = (),
  extra_singles: tuple[str, ...] = (),
  per_input: tuple[str, ...] = (),
) -> list[Method]:
  """The duo and every baseline the members in the bank allow.

  `ensemble` lists the independently trained large models (the first being
  `large` itself); deep ensembles of m = 2..len(ensemble) use the first m.
  `extra_singles` are further bank members shown as single models with and
  without temperature scaling (soups, MC dropout averages). Headline
  methods: the sidekick, the duos, the 2-member ensembles and the extras.
  """
  methods = [
    Method("large", "single", (large,), label="large model alone"),
    Method("large+TS", "ts", (large,), label="large model, temperature-scaled"),
  ]
  if sidekick is not None:
    methods += [
      Method("sidekick+TS", "ts", (sidekick,), label="sidekick, temperature-scaled", headline=True),
      Method(
        "duo (unweighted)",
        "duo",
        (large, sidekick),
        "unweighted",
        label="each member TS'd alone, logits averaged",
        headline=True,
      ),
      Method(
        "duo (weighted)",
        "duo",
        (large, sidekick),
        "weighted",
        label="weights fit jointly on val (the method)",
        headline=True,
      ),
      Method(
        "duo (UQ only)",
        "duo",
        (large, sidekick),
        "uq_only",
        label="large model's prediction, duo's confidence in it",
        headline=True,
      ),
    ]
    methods += [
      Method(
        f"duo ({mode})",
        "per_input",
        (large, sidekick),
        mode,
        label=PER_INPUT_LABELS[mode],
        headline=True,
      )
      for mode in per_input
    ]
  for m in range(2, len(ensemble) + 1):
    methods += [
      Method(
        f"ensemble m={m}",
        "ensemble",
        tuple(ensemble[:m]),
        label=f"deep ensemble of {m} large models",
        headline=m == 2,
      ),
      Method(
        f"ensemble m={m}+TS",
        "ensemble_ts",
        tuple(ensemble[:m]),
        label=f"deep ensemble of {m}, temperature-scaled",
        headline=m == 2,
      ),
    ]
  for name in extra_singles:
    methods += [
      Method(name, "single", (name,), headline=True),
      Method(f"{name}+TS", "ts", (name,), headline=True),
    ]
  return methods


def method_flops(method: Method, member_flops: dict[str, float]) -> float:
  """Forward FLOPs per image: the sum over the members the method runs."""
  return float(sum(member_flops[m] for m in method.members))
