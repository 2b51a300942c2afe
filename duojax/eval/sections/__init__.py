"""Sections of an evaluation report, picked by name from `config.sections`.

Each module here is one section. It defines

  build(inputs, results) -> dict         its results (top-level keys of
                                         results.json; "_" keys stay in memory)
  markdown(results) -> [str]             its tables ([] when its keys are absent)

and, where it needs them, the hooks below (`is_enabled`, `added_members`,
`added_methods` and `section_plots` here call them, or stand in for the ones
a section leaves out):

  enabled(config) -> bool                whether the config gives its inputs
  members(config, mesh) -> [Member]      models it adds to the logits bank
  methods(config, added) -> [Method]     methods it adds to the methods table
                                         (`added`: the names of its members)
  write_plots(results, out_dir) -> dict  its plots, name -> path

A new section is one new module here plus its name in the config.
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


def is_enabled(section: ModuleType, config) -> bool:
  hook = getattr(section, "enabled", None)
  return True if hook is None else hook(config)


def added_members(section: ModuleType, config, mesh) -> list:
  hook = getattr(section, "members", None)
  return [] if hook is None else hook(config, mesh)


def added_methods(section: ModuleType, config, added: list[str]) -> list:
  hook = getattr(section, "methods", None)
  return [] if hook is None else hook(config, added)


def section_plots(section: ModuleType, results: dict, out_dir: str) -> dict[str, str]:
  hook = getattr(section, "write_plots", None)
  return {} if hook is None else hook(results, out_dir)
