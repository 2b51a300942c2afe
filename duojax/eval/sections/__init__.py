"""Sections of an evaluation report, picked by name from `config.sections`.

Each module here is one section and defines the same six functions:

  enabled(config) -> bool                whether the config gives its inputs
  members(config, mesh) -> [Member]      models it adds to the logits bank
  methods(config, added) -> [Method]     methods it adds to the methods table
                                         (`added`: the names of its members)
  build(inputs, results) -> dict         its results (top-level keys of
                                         results.json; "_" keys stay in memory)
  markdown(results) -> [str]             its tables
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
