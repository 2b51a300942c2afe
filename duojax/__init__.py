"""duojax: cheap, strong uncertainty for large image classifiers in JAX/Flax.

The package is layered: a module imports only from its own package and from
the layers below it. The layers are listed, bottom up, in `duojax.layers`
(README's "Code map" shows the same table; `python -m duojax.layers` prints it).

The Python API for a duo of models you already have (`duojax.api`):
`fit_duo`, `load_duo`, `Duo`, `score`, `score_ood`, `fused_forward`,
`fit_mahalanobis`, `mahalanobis_score`, `guaranteed_threshold` (a confidence
threshold with a guaranteed selective risk) and its `Selection`, `fit_shift_alarm`,
`load_shift_alarm` and `ShiftAlarm` (an alarm for a batch of shifted inputs), resolved on first use
so that `import duojax` stays light. Conformal prediction sets are
`duojax.conformal` (`calibrate`, `ConformalPredictor`, `coverage`, `set_sizes`),
also imported on first use. `load_bundle` reads a fitted duo written as a
folder (`duojax.bundle`).

`from duojax import duo, temperature, metrics` keeps working: those modules
moved into `duojax.core` and are resolved here on first use.
"""

import importlib

__version__ = "0.1.0"

# Modules that lived at the top of the package before the layers existed.
_MOVED = {
  "duo": "duojax.core.duo",
  "temperature": "duojax.core.temperature",
  "metrics": "duojax.core.metrics",
  "solvers": "duojax.core.solvers",
  "soups": "duojax.core.soups",
  "sharding": "duojax.parallel.sharding",
  "distributed": "duojax.parallel.distributed",
  "shifts": "duojax.data.shifts",
  "checkpoint": "duojax.train.checkpoint",
}


_API = (
  "Duo",
  "fit_duo",
  "load_duo",
  "score",
  "score_ood",
  "fused_forward",
  "fit_mahalanobis",
  "mahalanobis_score",
  "guaranteed_threshold",
  "Selection",
  "fit_shift_alarm",
  "load_shift_alarm",
  "ShiftAlarm",
)


# Submodules imported on first use, so that `import duojax; duojax.conformal`
# works without `import duojax.conformal`.
_SUBMODULES = ("conformal",)

# Bundles (`duojax.bundle`): a fitted duo as a folder that runs on new images.
_BUNDLE = ("load_bundle",)


def __getattr__(name):
  if name in _SUBMODULES:
    return importlib.import_module(f"duojax.{name}")
  if name in _API:
    return getattr(importlib.import_module("duojax.api"), name)
  if name in _BUNDLE:
    return getattr(importlib.import_module("duojax.bundle"), name)
  if name in _MOVED:
    return importlib.import_module(_MOVED[name])
  raise AttributeError(f"module 'duojax' has no attribute {name!r}")
