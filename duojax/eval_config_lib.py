"""The evaluation config schema (`evaluate.py --config`): `base_eval_config`.

Evaluation configs (`configs/*eval*.py`) start from `base_eval_config` and
change what differs; `validate_eval` rejects values that cannot work before
anything runs. Like `config_lib`, this module imports nothing of duojax but
the training schema and the errors (config files import it before anything
heavy); the names it checks that live elsewhere (solvers, shifts, sections)
are mirrors, kept equal by a test.
"""

from __future__ import annotations

import ml_collections

from duojax.config_lib import base_config, split_list, validate
from duojax.errors import ConfigError

# Mirrors duojax.core.temperature.SOLVERS, duojax.data.shifts.SHIFTS,
# duojax.hydra.MLP_MODES and the modules of duojax.eval.sections.
_SOLVERS = ("jaxopt", "optax")
_SHIFTS = ("gaussian_noise", "blur", "rotation", "contrast")
_HYDRA_MLPS = ("grouped", "average")
_SECTIONS = ("cascade", "conformal", "hydra", "methods", "paired", "sidekicks")
_CONFORMAL_METHODS = ("lac", "aps", "raps")
_OOD_SETS = ("mnist",)


# The training config's data keys an evaluation config repeats (`eval_data_config`).
EVAL_DATA_KEYS = (
  "dataset",
  "train_split",
  "val_split",
  "test_split",
  "val_size",
  "split_seed",
  "image_key",
  "label_key",
  "crop_fraction",
)


def eval_data_config(config) -> ml_collections.ConfigDict:
  """A training config holding an evaluation config's data keys, for `data.load_dataset_of`."""
  train = base_config()
  train.update({key: config[key] for key in EVAL_DATA_KEYS})
  train.data_dir = config.data_dir or train.data_dir
  return train


def base_eval_config() -> ml_collections.ConfigDict:
  """Every key of an evaluation config (`evaluate.py --config`), with its default."""
  c = ml_collections.ConfigDict()
  # Members: training workdirs. The large model and the sidekick form the duo;
  # `ensemble` lists more independently trained large models (deep ensembles
  # m = 2..1+k), `soup_ingredients` short fine-tunes of the large model
  # (uniform and greedy soups). Comma-separated lists; "" for none. Some keys
  # also take pretrained or logits files (`duojax.eval.member_specs`).
  c.large = ""
  c.sidekick = ""
  c.ensemble = ""
  c.soup_ingredients = ""
  # More sidekicks: `sidekicks` (a comma list of workdirs) joins `sidekick` in
  # one weighted duo of the large model and k sidekicks; the sidekicks section
  # ranks every candidate (the sidekick, the Gatekeeper fine-tunes, the Hydra
  # ViT, the workdirs of `sidekick_pool`) by its duo's validation NLL and
  # picks the best within `sidekick_budget` (FLOPs as a fraction of the large
  # model's; 0: no limit).
  c.sidekicks = ""
  c.sidekick_pool = ""
  c.sidekick_budget = 0.0
  # Conformal prediction sets: target miscoverages α (comma list; "" for none)
  # and the scores (lac, aps, raps), calibrated on half of val.
  c.conformal_alphas = "0.1,0.05,0.01"
  c.conformal_methods = "lac,raps"
  # The report's sections, in order (duojax/eval/sections/): every method's
  # scores, the paired bootstrap against large+TS, cascades, Hydra ensembles,
  # the choice of sidekick, conformal sets. A listed section runs when the
  # keys give it its inputs.
  c.sections = "methods,paired,cascade,hydra,sidekicks,conformal"
  # Cascades (needs a sidekick): the untuned sidekick and the Gatekeeper
  # fine-tunes in `gatekeeper` as gates into the large model and the duo.
  c.cascade = False
  c.gatekeeper = ""
  # Hydra ensembles: member workdirs (configs/hydra_member.py), the ViT they
  # were pruned from ("" = their prune_from), extra full ViTs for the deep
  # ensemble they are compared with, and the merge modes ("grouped": exact;
  # "average": one shared MLP per layer, cheaper).
  c.hydra = ""
  c.hydra_vit = ""
  c.hydra_ensemble = ""
  c.hydra_mlp = "grouped"
  # MC dropout on the large model's pre-logits: samples (0 disables) and rate.
  c.mc_dropout_samples = 0
  c.mc_dropout_rate = 0.1
  # The Mahalanobis OOD score on the large model's pre-logit features: class
  # means and shared covariance fit on this many training rows, a seeded
  # subset (-1: all; 0 disables). Needs an OOD set and a large model with weights.
  c.mahalanobis_train_rows = 10000
  # Extra splits: the OOD set ("" for none; "mnist", the embedded one;
  # "tfds:NAME[:SPLIT]", a tfds set prepared in data_dir as array_record;
  # "folder:PATH", every image file below PATH) and corruptions of the test
  # split at severities 1-5, on a seeded subset of at most shift_max_images.
  c.ood = ""
  c.shifts = ""
  c.shift_max_images = 1000
  c.data_dir = ""  # "" = the workdir member's training data_dir, else "data"
  # The data set when no member is a training workdir (pretrained-file members
  # read its images; a workdir member brings its own and these stay unset):
  # the training config's data keys (`base_config`), "" for none.
  train = base_config()
  c.update({key: train[key] for key in EVAL_DATA_KEYS}, dataset="")
  c.output_dir = "results"
  c.batch_size = 500  # global, split over the devices
  c.solver = "jaxopt"  # L-BFGS for temperatures and duo weights; or "optax"
  c.bootstrap = 200  # paired bootstrap rounds (0: no paired section)
  c.num_devices = -1
  c.seed = 0
  return c


def complete_eval_config(config) -> ml_collections.ConfigDict:
  """`config` with every key of `base_eval_config` its file left out at its default.

  Evaluation config files written before the schema existed keep working;
  a key the schema does not know is a typo and an error.
  """
  base = base_eval_config()
  unknown = sorted(set(config.keys()) - set(base.keys()))
  if unknown:
    raise ConfigError(
      f"unknown evaluation config key {unknown[0]!r}; valid: {', '.join(sorted(base.keys()))}"
    )
  base.update(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  return base


def validate_eval(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) for evaluation settings that cannot work."""

  def need(condition, message):
    if not condition:
      raise ConfigError(message)

  def items(key):
    return split_list(config[key])

  need(
    config.large,
    "config.large must name the large model's training workdir (or "
    "pretrained:MODEL:PATH, logits:PATH)",
  )
  if config.dataset:  # checked as a training config's data keys are
    validate(eval_data_config(config))
  need(config.solver in _SOLVERS, f"config.solver={config.solver!r}; valid: {', '.join(_SOLVERS)}")
  need(config.batch_size > 0, f"config.batch_size must be > 0, got {config.batch_size}")
  need(config.bootstrap >= 0, f"config.bootstrap must be >= 0, got {config.bootstrap}")
  need(
    config.shift_max_images > 0,
    f"config.shift_max_images must be > 0, got {config.shift_max_images}",
  )
  need(
    config.mc_dropout_samples >= 0,
    f"config.mc_dropout_samples must be >= 0, got {config.mc_dropout_samples}",
  )
  need(
    0.0 < config.mc_dropout_rate < 1.0,
    f"config.mc_dropout_rate must be in (0, 1), got {config.mc_dropout_rate}",
  )
  need(
    config.mahalanobis_train_rows >= -1,
    f"config.mahalanobis_train_rows must be a number of rows, -1 (all) or 0 (off), "
    f"got {config.mahalanobis_train_rows}",
  )
  kind, _, rest = config.ood.partition(":")
  need(
    config.ood in ("", *_OOD_SETS) or (kind in ("tfds", "folder") and rest),
    f"config.ood={config.ood!r}; valid: 'mnist' (embedded), 'tfds:NAME[:SPLIT]', "
    "'folder:PATH' ('' for none)",
  )
  unknown = sorted(set(items("shifts")) - set(_SHIFTS))
  need(not unknown, f"config.shifts has unknown {unknown}; valid: {', '.join(_SHIFTS)}")
  mlps = items("hydra_mlp")
  need(
    mlps and not set(mlps) - set(_HYDRA_MLPS),
    f"config.hydra_mlp={config.hydra_mlp!r}; valid: a comma list of {', '.join(_HYDRA_MLPS)}",
  )
  sections = items("sections")
  unknown = [s for s in sections if s not in _SECTIONS]
  need(not unknown, f"config.sections has unknown {unknown}; valid: {', '.join(_SECTIONS)}")
  need(
    len(set(sections)) == len(sections),
    f"config.sections lists a section twice: {config.sections!r}",
  )
  need(
    "hydra" not in sections
    or ("methods" in sections and sections.index("methods") < sections.index("hydra")),
    "config.sections: 'hydra' reads the scores of 'methods', which must come before it",
  )
  try:
    alphas = [float(a) for a in items("conformal_alphas")]
  except ValueError:
    alphas = [-1.0]
  need(
    all(0 < a < 1 for a in alphas),
    f"config.conformal_alphas must be numbers in (0, 1), got {config.conformal_alphas!r}",
  )
  unknown = sorted(set(items("conformal_methods")) - set(_CONFORMAL_METHODS))
  need(
    not unknown and (items("conformal_methods") or not alphas),
    f"config.conformal_methods={config.conformal_methods!r}; valid: a comma list of "
    f"{', '.join(_CONFORMAL_METHODS)}",
  )
  need(
    config.sidekick_budget >= 0,
    f"config.sidekick_budget must be >= 0 (0: no limit), got {config.sidekick_budget}",
  )
  need(
    not ((items("sidekicks") or items("sidekick_pool")) and not config.sidekick),
    "config.sidekicks / config.sidekick_pool need config.sidekick, which is empty",
  )
  need(
    not (items("gatekeeper") and not config.sidekick),
    "config.gatekeeper: Gatekeeper sidekicks are compared with the untuned "
    "config.sidekick, which is empty",
  )
