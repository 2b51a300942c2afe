"""duojax: cheap, strong uncertainty for large image classifiers in JAX/Flax.

The package is layered; each layer imports only from the ones below it
(README, "Code map"):

  errors, files, config_lib   leaves: error classes, atomic writes, config schemas
  parallel                    device mesh and shardings, jax.distributed
  core, models, data          array maths (duo, temperatures, metrics, losses),
                              NNX models, datasets and the input pipeline
  convert, cascade, hydra     pretrained-file layouts, cascades, Hydra ensembles
  train                       optimizer, jitted steps, the loop, checkpoints
  eval                        logits bank, methods, report sections, outputs
  cli, __main__ modules       what train.py, evaluate.py and `python -m` run

The Python API for a duo of models you already have (`duojax.api`):
`fit_duo`, `load_duo`, `Duo`, `score`, `score_ood`, `fused_forward`,
`fit_mahalanobis`, `mahalanobis_score`, resolved on first use
so that `import duojax` stays light.

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
)


def __getattr__(name):
  if name in _API:
    return getattr(importlib.import_module("duojax.api"), name)
  if name in _MOVED:
    return importlib.import_module(_MOVED[name])
  raise AttributeError(f"module 'duojax' has no attribute {name!r}")
