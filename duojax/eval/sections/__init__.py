"""Sections of an evaluation report, picked by name from `config.sections`.

Each module here is one section, self-contained in the style of big_vision's
evaluators: it owns its configuration, the members it adds and its tables.
It defines

  build(inputs, results) -> dict         its results (top-level keys of
                                         results.json; "_" keys stay in memory)
  markdown(results) -> [str]             its tables ([] when its keys are absent)

and, where it needs them (the functions here stand in for those it leaves out):

  defaults() -> dict                     its config keys and their defaults
                                         (flat keys of the evaluation config)
  validate(config)                       raises ConfigError for its keys' values
  READS = ("methods", ...)               sections whose results it reads: they
                                         must come before it in config.sections
  MEMBER_KEYS = {key: kinds}             its keys that name members, and the
                                         member kinds each takes
                                         (`duojax.eval.member_specs`)
  enabled(config) -> bool                whether the config gives its inputs
  members(config, specs, mesh) -> [Member]
                                         the models it adds to the logits bank,
                                         from `specs` (key -> parsed members)
  methods(config, added) -> [Method]     methods it adds to the methods table
                                         (`added`: the names of its members)
  write_plots(results, out_dir) -> dict  its plots, name -> path

A new section is one new module here plus its name in `config.sections`:
the schema (`duojax.eval.schema`) gathers its keys and checks, the member
parser its member keys.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType
from typing import Sequence

from duojax.errors import ConfigError


def available() -> list[str]:
  """The section names, one per module in this package."""
  return sorted(m.name for m in pkgutil.iter_modules(__path__))


def name(section: ModuleType) -> str:
  """A section module's name, as `config.sections` spells it."""
  return section.__name__.rsplit(".", 1)[-1]


def load(names: Sequence[str]) -> list[ModuleType]:
  """The section modules called `names`, in that order."""
  known = available()
  unknown = [n for n in names if n not in known]
  if unknown:
    raise ConfigError(f"config.sections has unknown {unknown}; valid: {', '.join(known)}")
  return [importlib.import_module(f"{__name__}.{name}") for name in names]


def defaults(section: ModuleType) -> dict:
  hook = getattr(section, "defaults", None)
  return {} if hook is None else hook()


def validate(section: ModuleType, config) -> None:
  hook = getattr(section, "validate", None)
  if hook is not None:
    hook(config)


def reads(section: ModuleType) -> tuple[str, ...]:
  return tuple(getattr(section, "READS", ()))


def member_keys(section: ModuleType) -> dict[str, tuple[str, ...]]:
  return dict(getattr(section, "MEMBER_KEYS", {}))


def check_order(names: Sequence[str]) -> None:
  """Each listed section comes after the sections it reads, which must be listed."""
  for position, section in enumerate(load(names)):
    for needed in reads(section):
      if needed not in names[:position]:
        raise ConfigError(
          f"config.sections: {name(section)!r} reads the scores of {needed!r}, which must "
          "come before it"
        )


def is_enabled(section: ModuleType, config) -> bool:
  hook = getattr(section, "enabled", None)
  return True if hook is None else hook(config)


def added_members(section: ModuleType, config, specs: dict, mesh) -> list:
  hook = getattr(section, "members", None)
  return [] if hook is None else hook(config, specs, mesh)


def added_methods(section: ModuleType, config, added: list[str]) -> list:
  hook = getattr(section, "methods", None)
  return [] if hook is None else hook(config, added)


def section_plots(section: ModuleType, results: dict, out_dir: str) -> dict[str, str]:
  hook = getattr(section, "write_plots", None)
  return {} if hook is None else hook(results, out_dir)
