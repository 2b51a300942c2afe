"""Split conformal prediction sets: `duojax.conformal.calibrate(probs, labels, alpha=0.1)`.

The public names of `duojax.core.conformal`, where the code and the maths are
(its docstring), under the package's top level:

    predictor = duojax.conformal.calibrate(val_probs, val_labels, alpha=0.1, method="raps")
    sets = predictor.sets(test_probs)  # bool [N, C]
    duojax.conformal.coverage(sets, test_labels), duojax.conformal.set_sizes(sets).mean()
"""

from duojax.core.conformal import (
  METHODS,
  RAPS_K_REG,
  RAPS_LAM,
  ROW_SUM_TOLERANCE,
  ConformalPredictor,
  calibrate,
  coverage,
  quantile_index,
  scores,
  set_sizes,
)

__all__ = [
  "METHODS",
  "RAPS_K_REG",
  "RAPS_LAM",
  "ROW_SUM_TOLERANCE",
  "ConformalPredictor",
  "calibrate",
  "coverage",
  "quantile_index",
  "scores",
  "set_sizes",
]
