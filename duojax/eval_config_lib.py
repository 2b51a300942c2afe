"""The evaluation config schema under its first name: `duojax.eval.schema`.

Evaluation config files written against `eval_config_lib.base_eval_config()`
keep working; the schema (core keys plus each report section's own) lives in
`duojax.eval.schema`, which new config files import.
"""

from duojax.eval.schema import (  # noqa: F401  (the names config files use)
  EVAL_DATA_KEYS,
  base_eval_config,
  complete_eval_config,
  eval_data_config,
  validate_eval,
)
