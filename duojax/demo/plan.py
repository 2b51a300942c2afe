"""What `make demo` trains and evaluates: the runs, and which ones each needs.

A run is one `train.py` (or the final `evaluate.py`) command with its workdir
under `runs`; `after` names the runs whose checkpoints it reads, so a runner
may start it only when those have finished. The order of `demo_runs` is the
order a runner prefers among the runs that are ready: longest first (the
ViTs and ResNet-14s, a few minutes each), then the short runs that wait on
them (the Hydra members on the first ViT, the soups on the first ResNet, the
Gatekeeper fine-tunes on the sidekick), which fill the slots at the end so
that no slot idles while another finishes a long run.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from duojax.errors import ConfigError

# Settings of every demo training, before `train_overrides` (which win):
# evaluate.py scores every member on the test split, so the runs skip their own
# test pass; and on a CPU, validation batches of 128 run 1.1-1.4x faster than
# the default 500, whose activations fall out of cache (BENCHMARKS.md).
DEMO_TRAIN_SETTINGS = ("final_test=false", "eval_batch_size=128")


@dataclasses.dataclass(frozen=True)
class Run:
  name: str  # its workdir under `runs`, and its label in the timings
  argv: tuple[str, ...]  # the command, after the Python interpreter
  after: tuple[str, ...] = ()
  all_cores: bool = False  # runs alone on every core rather than in a slot


def demo_runs(
  runs: str,
  gatekeeper_alphas: Sequence[str],
  hydra_members: int,
  *,
  train_overrides: Sequence[str] = (),
  eval_overrides: Sequence[str] = (),
) -> list[Run]:
  """The demo's runs in preference order; `hydra_members=0` leaves out the ViTs.

  `train_overrides` / `eval_overrides` ("KEY=VALUE") become `--config.KEY=VALUE`
  of every training / of the evaluation (the tests shrink the demo with them).
  """
  train_flags = tuple(f"--config.{kv}" for kv in (*DEMO_TRAIN_SETTINGS, *train_overrides))

  def _train(name: str, config: str, after: Sequence[str] = ()) -> Run:
    return Run(
      name,
      ("train.py", "--config", config, "--workdir", os.path.join(runs, name), *train_flags),
      tuple(after),
    )

  vit = hydra_members > 0
  long = [_train("vit", "configs/demo_vit.py")] if vit else []
  long += [
    _train("large", "configs/demo_large.py"),
    _train("large_seed1", "configs/demo_large.py:seed=1"),
  ]
  long += [_train(f"vit_seed{i}", f"configs/demo_vit.py:seed={i}") for i in range(1, hydra_members)]
  short = [_train("sidekick", "configs/demo_sidekick.py")]
  short += [
    _train(f"hydra_{j}", f"configs/hydra_member.py:member={j},runs={runs}", after=["vit"])
    for j in range(hydra_members)
  ]
  short += [
    _train(
      "soup_1", f"configs/demo_soup.py:lr=1e-4,seed=1,init_from={runs}/large", after=["large"]
    ),
    _train(
      "soup_2", f"configs/demo_soup.py:lr=3e-4,seed=2,init_from={runs}/large", after=["large"]
    ),
  ]
  short += [
    _train(
      f"gatekeeper_{alpha}", f"configs/gatekeeper.py:alpha={alpha},runs={runs}", after=["sidekick"]
    )
    for alpha in gatekeeper_alphas
  ]
  trainings = long + short
  eval_config = (
    f"configs/demo_eval.py:runs={runs},gatekeeper={' '.join(gatekeeper_alphas)},"
    f"hydra={hydra_members}"
  )
  evaluation = Run(
    "evaluate",
    ("evaluate.py", "--config", eval_config, *(f"--config.{kv}" for kv in eval_overrides)),
    tuple(r.name for r in trainings),
    all_cores=True,
  )
  return trainings + [evaluation]


def check_plan(plan: Sequence[Run]) -> None:
  """Names are unique and every `after` names an earlier run (so no cycles)."""
  seen = set()
  for run in plan:
    if run.name in seen:
      raise ConfigError(f"run {run.name!r} is in the plan twice")
    missing = [name for name in run.after if name not in seen]
    if missing:
      raise ConfigError(f"run {run.name!r} needs {missing}, which no earlier run provides")
    seen.add(run.name)
