"""The evaluation config schema (`evaluate.py --config`): `base_eval_config`.

An evaluation config is flat: the keys below, which every evaluation reads
(members, data, splits, devices), plus the keys each report section declares
for itself (`duojax.eval.sections`, each module's `defaults()`), gathered
here so that `--config.KEY=VALUE` reaches every one of them. Config files
(`configs/*eval*.py`) start from `base_eval_config` and change what differs;
`validate_eval` rejects values that cannot work, with each section checking
its own keys, before anything runs.
"""

from __future__ import annotations

import ml_collections

from duojax.config_lib import base_config, split_list, validate
from duojax.core import per_input_duo, temperature
from duojax.data import shifts
from duojax.errors import ConfigError
from duojax.eval import sections as sections_lib

OOD_SETS = ("mnist",)

# The training config's data keys an evaluation config repeats, naming the data
# set when no member is a training workdir (`dataset_spec.DataSpec`).
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
  "interpolation",
)


def _core_keys() -> ml_collections.ConfigDict:
  """The keys every evaluation reads, whichever sections it lists."""
  c = ml_collections.ConfigDict()
  # Members: training workdirs. The large model and the sidekick form the duo;
  # `ensemble` lists more independently trained large models (deep ensembles
  # m = 2..1+k), `soup_ingredients` short fine-tunes of the large model
  # (uniform and greedy soups). Comma-separated lists; "" for none. The large
  # model, the sidekick and the ensemble also take pretrained or logits files
  # (`duojax.eval.member_specs`).
  c.large = ""
  c.sidekick = ""
  c.ensemble = ""
  c.soup_ingredients = ""
  # The report's sections, in order (duojax/eval/sections/): every method's
  # scores, the paired bootstrap against large+TS, cascades, Hydra ensembles,
  # the choice of sidekick, conformal sets, abstention with a guaranteed risk,
  # the shift alarm's false alarms and detections.
  # A listed section runs when the keys give it its inputs; each section's own
  # keys follow below.
  c.sections = (
    "methods,paired,shift_paired,cascade,hydra,sidekicks,conformal,abstention,shift_alarm"
  )
  # The duos whose combination changes with the input, beside the weighted duo
  # (comma list of "dynamic", "entropy", "guarded"; "" for none): methods
  # "duo (dynamic)", ... of every table (`duojax.core.per_input_duo`). The
  # dynamic duo reads both members' pre-logit features (logit summaries for a
  # logits file).
  c.per_input_duos = "dynamic,entropy,guarded"
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
  c.shift_severities = "1,2,3,4,5"  # of each corruption (comma list)
  c.data_dir = ""  # "" = the workdir member's training data_dir, else "data"
  # The data set when no member is a training workdir (pretrained-file members
  # read its images; a workdir member brings its own and these stay unset):
  # the training config's data keys (`base_config`), "" for none.
  train = base_config()
  c.update({key: train[key] for key in EVAL_DATA_KEYS}, dataset="")
  c.output_dir = "results"
  # evaluate.py also writes the fitted duo (large model + sidekick) as a bundle in
  # output_dir/bundle (`duojax.bundle`: `duojax.load_bundle(path).predict(images)`).
  c.bundle = True
  # Which duo the bundle holds: "weighted" (the paper's), or one of
  # config.per_input_duos ("guarded": never much worse than the large model
  # under a shift).
  c.bundle_method = "weighted"
  c.batch_size = 500  # global, split over the devices
  c.solver = "jaxopt"  # L-BFGS for temperatures and duo weights; or "optax"
  c.num_devices = -1
  c.seed = 0
  return c


def base_eval_config() -> ml_collections.ConfigDict:
  """Every key of an evaluation config, with its default: the core keys and
  every section's (a key two places declare is a bug, caught here)."""
  c = _core_keys()
  for section in sections_lib.load(sections_lib.available()):
    for key, value in sections_lib.defaults(section).items():
      if key in c:
        raise RuntimeError(f"section {sections_lib.name(section)!r} redeclares config.{key}")
      c[key] = value
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


def eval_data_config(config) -> ml_collections.ConfigDict:
  """A training config holding an evaluation config's data keys, checked as
  training checks its own (`config_lib.validate`)."""
  train = base_config()
  train.update({key: config[key] for key in EVAL_DATA_KEYS})
  train.data_dir = config.data_dir or train.data_dir
  return train


def _need(condition, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _severities_ok(text) -> bool:
  names = split_list(str(text))
  return bool(names) and all(n in {"1", "2", "3", "4", "5"} for n in names)


def validate_eval(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) for evaluation settings that cannot work:
  the core keys here, each section's keys by the section itself."""
  _need(
    config.large,
    "config.large must name the large model's training workdir (or "
    "pretrained:MODEL:PATH, logits:PATH)",
  )
  unknown = sorted(set(split_list(config.per_input_duos)) - set(per_input_duo.METHODS))
  _need(
    not unknown,
    f"config.per_input_duos has unknown {unknown}; valid: {', '.join(per_input_duo.METHODS)}",
  )
  _need(
    config.bundle_method == "weighted" or config.bundle_method in split_list(config.per_input_duos),
    f"config.bundle_method={config.bundle_method!r}: 'weighted' or one of "
    f"config.per_input_duos ({config.per_input_duos!r})",
  )
  for key, most in (("large", 1), ("sidekick", 1)):  # the duo's two roles: one member each
    _need(
      len(split_list(config[key])) <= most,
      f"config.{key}={config[key]!r} names {len(split_list(config[key]))} members; it takes one "
      f"(more go in config.{'ensemble' if key == 'large' else 'sidekicks'})",
    )
  if config.dataset:  # checked as a training config's data keys are
    validate(eval_data_config(config))
  _need(
    config.solver in temperature.SOLVERS,
    f"config.solver={config.solver!r}; valid: {', '.join(temperature.SOLVERS)}",
  )
  _need(config.batch_size > 0, f"config.batch_size must be > 0, got {config.batch_size}")
  _need(
    _severities_ok(config.shift_severities),
    f"config.shift_severities must be a comma list of 1..5, got {config.shift_severities!r}",
  )
  _need(
    config.shift_max_images > 0,
    f"config.shift_max_images must be > 0, got {config.shift_max_images}",
  )
  _need(
    config.mc_dropout_samples >= 0,
    f"config.mc_dropout_samples must be >= 0, got {config.mc_dropout_samples}",
  )
  _need(
    0.0 < config.mc_dropout_rate < 1.0,
    f"config.mc_dropout_rate must be in (0, 1), got {config.mc_dropout_rate}",
  )
  _need(
    config.mahalanobis_train_rows >= -1,
    f"config.mahalanobis_train_rows must be a number of rows, -1 (all) or 0 (off), "
    f"got {config.mahalanobis_train_rows}",
  )
  kind, _, rest = config.ood.partition(":")
  _need(
    config.ood in ("", *OOD_SETS) or (kind in ("tfds", "folder") and rest),
    f"config.ood={config.ood!r}; valid: 'mnist' (embedded), 'tfds:NAME[:SPLIT]', "
    "'folder:PATH' ('' for none)",
  )
  unknown = sorted(set(split_list(config.shifts)) - {*shifts.KINDS, shifts.GROUP})
  _need(
    not unknown,
    f"config.shifts has unknown {unknown}; valid: {', '.join(shifts.SHIFTS)}, "
    f"{shifts.GROUP} (all 15 ImageNet-C corruptions) or any of {', '.join(shifts.IMAGENET_C)}",
  )
  names = split_list(config.sections)
  _need(
    len(set(names)) == len(names), f"config.sections lists a section twice: {config.sections!r}"
  )
  sections_lib.check_order(names)  # unknown names, and each after what it reads
  for section in sections_lib.load(sections_lib.available()):
    sections_lib.validate(section, config)
