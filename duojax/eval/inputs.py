"""What every evaluation section reads: the bank, the members, the methods.

The pipeline (`duojax.eval.pipeline`) computes these once; each section
(`duojax.eval.sections.*`) takes an `EvalInputs` and returns a plain dict.
A method is fitted on val once and applied to a split once, whichever
sections ask for it (`fitted`, `outputs`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections

from duojax.eval import methods as methods_lib
from duojax.eval.bank import LogitsBank
from duojax.eval.members import Member
from duojax.eval.methods import Method

LARGE, SIDEKICK = "large", "sidekick"
TEST, OOD = "test", "ood"  # and methods.FIT_SPLIT, the one split methods fit on


@dataclasses.dataclass
class EvalInputs:
  """The computed state of one evaluation, shared by its sections.

  Attributes:
    config: the evaluation config (complete and validated).
    bank: every member's logits on every split.
    members: the bank's members by name (models, checkpoint meta, FLOPs).
    member_flops: forward FLOPs per image of every bank member, derived
      ones (MC dropout) included.
    methods: every method the methods section scores, sections' own included.
    added: the bank members each section contributed, by section name.
    mesh: the device mesh the forwards and fits run on.
    feature_scores: OOD scores of the large model's pre-logit features by
      name (`duojax.eval.feature_ood`): {"scores": {split: [N]}, "fit": {...}}.
  """

  config: ml_collections.ConfigDict
  bank: LogitsBank
  members: dict[str, Member]
  member_flops: dict[str, float]
  methods: list[Method]
  added: dict[str, list[str]]
  mesh: Any
  feature_scores: dict = dataclasses.field(default_factory=dict)
  _fits: dict = dataclasses.field(default_factory=dict, repr=False)
  _outputs: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def large(self) -> str:
    return LARGE

  @property
  def sidekick(self) -> str | None:
    return SIDEKICK if SIDEKICK in self.bank.member_names else None

  def method(self, name: str) -> Method:
    for method in self.methods:
      if method.name == name:
        return method
    raise KeyError(f"no method named {name!r}")

  def fitted(self, method: Method) -> dict:
    """What `method` learns from val (temperatures, duo weights), fitted once."""
    if method.name not in self._fits:
      config = self.config
      alarm = {
        "alpha": config.shift_alarm_alpha,
        "batch_size": config.shift_alarm_batch,
        "resamples": config.shift_alarm_resamples,
        "seed": config.seed,
      }
      self._fits[method.name] = methods_lib.fit(
        method, self.bank, solver=config.solver, mesh=self.mesh, alarm_options=alarm
      )
    return self._fits[method.name]

  def outputs(self, method: Method, split: str) -> tuple[jax.Array, jax.Array]:
    """(logits [N, C], confidence [N]) of `method` on `split`.

    Test outputs are kept (several sections score them); the other splits'
    are recomputed on request, so memory stays at one split per method.
    """
    if split != TEST:
      return methods_lib.apply(method, self.fitted(method), self.bank, split)
    if method.name not in self._outputs:
      self._outputs[method.name] = methods_lib.apply(method, self.fitted(method), self.bank, TEST)
    return self._outputs[method.name]
