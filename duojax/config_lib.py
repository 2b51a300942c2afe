"""Config schemas: training (`base_config`) and evaluation (`base_eval_config`).

Experiment configs live in `configs/*.py` (one file per experiment, big_vision
style). They start from a base and change what differs, so every config has
the same keys, a typo on the command line is an error, and `validate` /
`validate_eval` reject values that cannot work before anything runs. Also
the `configs/x.py:key=value` argument parser the config files share.

This module imports nothing of duojax but its errors (config files import it
before anything heavy); where it checks names that live elsewhere (solvers,
shifts, layouts, sections) it mirrors them, and a test keeps the mirrors equal.
"""

from __future__ import annotations

import ml_collections

from duojax.errors import ConfigError  # noqa: F401  (raised here; re-exported)


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `configs/x.py:key=value,key2=value2` arguments (big_vision style).

  Values are cast to the type of the default; a bare word (no `=`) sets the
  first default whose value is a string, so `file.py:vit_mi4` works as a
  shorthand when the first default is the model name.
  """
  parsed = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return parsed
  for token in arg.split(","):
    token = token.strip()
    if not token:
      continue
    if "=" in token:
      key, value = token.split("=", 1)
    else:
      key = next((k for k, v in defaults.items() if isinstance(v, str)), None)
      value = token
      if key is None:
        raise ConfigError(f"config argument {token!r} needs the form key=value")
    if key not in defaults:
      raise ConfigError(
          f"unknown config argument {key!r}; valid: {', '.join(sorted(defaults))}")
    default = defaults[key]
    try:
      if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
          raise ValueError(value)
        parsed[key] = value.lower() in ("true", "1")
      else:
        parsed[key] = type(default)(value)
    except ValueError:
      raise ConfigError(
          f"config argument {key}={value!r} is not a valid {type(default).__name__}"
      ) from None
  return parsed


# Typed so that command-line overrides parse; unset ones stay None.
MODEL_OVERRIDE_TYPES = {"dtype": str, "width": int, "stem": str, "pool": str, "dropout": float,
                        "drop_path": float, "image_size": int, "in_channels": int,
                        "zero_init_residual": bool, "pre_norm": bool,
                        "patch_bias": bool}


def model_overrides(config: ml_collections.ConfigDict) -> dict:
  """The overrides a config sets for `get_model` (None values dropped)."""
  return {k: v for k, v in config.model.to_dict().items() if v is not None}


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every training config."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "fashion_mnist"   # embedded default, or any prepared tfds name
  c.data_dir = "data"           # tfds data_dir (relative paths: to the cwd)
  c.train_split = "train"       # tfds split names
  c.val_split = ""              # "": carve val_size rows from train_split by split_seed
  c.test_split = "test"         # e.g. "validation" for imagenet2012
  c.val_size = 5000
  c.split_seed = 0
  c.image_key = "image"         # tfds feature keys
  c.label_key = "label"
  # The images' side comes from config.model.image_size (model and pipeline
  # alike; needed for data sets of varying image size).
  # Training augmentation, a comma list: "crop" (pad by crop_padding and crop
  # back, for small fixed-size images), "rrc" (Inception-style random-resized
  # crop: area fraction in rrc_scale, aspect ratio in rrc_ratio), "flip"
  # (horizontal); "" for none. Evaluation takes the centre square of
  # crop_fraction of the shorter side, resized.
  c.augment = "crop,flip"
  c.crop_padding = 2
  c.rrc_scale = (0.08, 1.0)
  c.rrc_ratio = (3 / 4, 4 / 3)
  c.crop_fraction = 0.875
  # Host processes that decode and augment images (grain workers); -1: none
  # for data held in memory, else the host's cores divided among the
  # processes that share it.
  c.data_workers = -1
  # Model: a name from duojax.models plus overrides for get_model.
  c.model_name = "resnet14"
  # get_model overrides; None means "the model's default" (and keeps the key
  # declared, so `--config.model.dtype=bfloat16` works on a locked config).
  c.model = ml_collections.ConfigDict(
      {k: ml_collections.config_dict.placeholder(t) for k, t in MODEL_OVERRIDE_TYPES.items()})
  # Fine-tuning: a training workdir whose latest weights (not optimizer
  # state) start this run, e.g. soup ingredients fine-tuned from one model.
  c.init_from = ""
  # Or a PyTorch-layout safetensors checkpoint (timm / torchvision / Hugging
  # Face, see duojax/convert): its layout ("auto": from the tensor names),
  # whether the classifier head is loaded or kept fresh (another class count),
  # and how many first steps train the head alone (linear probe) before the
  # whole network fine-tunes.
  c.init_weights = ""
  c.init_layout = "auto"
  c.init_head = "load"
  c.linear_probe_steps = 0
  # The model's input normalisation, per channel of x/255 (stored in its
  # checkpoints, so evaluation feeds it the same). Empty: the pretrained
  # file's (timm/HF ViTs 0.5/0.5, ResNets ImageNet's, a Hugging Face
  # preprocessor_config.json beside the file), the init_from / prune_from
  # model's, else the data set's statistics.
  c.input_mean = ()
  c.input_std = ()
  # Optimisation.
  c.optimizer = "adamw"         # adamw | sgd
  c.lr = 1e-3
  c.momentum = 0.9              # sgd only
  c.weight_decay = 5e-4         # decoupled; applied to kernels only
  c.warmup_steps = 100
  c.grad_clip_norm = 1.0        # <= 0 disables clipping
  c.label_smoothing = 0.0
  # Training loss: "ce" (cross-entropy), or "gatekeeper" to confidence-tune a
  # trained sidekick for cascades (arXiv 2502.19335; start it with init_from):
  # alpha weighs the cross-entropy on the rows it gets right against pushing
  # its wrong rows towards the uniform distribution.
  c.loss = "ce"
  c.gatekeeper_alpha = 0.5
  # Hydra ensemble member (arXiv 2510.18358, duojax.hydra): start from the
  # ViT trained in `prune_from`, keep the `prune_keep` fraction of attention
  # heads per layer that matter most (Taylor importance on `prune_images`
  # training images drawn with `prune_seed`), then fine-tune. Members differ
  # by prune_seed; the architecture comes from prune_from's checkpoint.
  c.prune_from = ""
  c.prune_keep = 0.5
  c.prune_images = 2048
  c.prune_seed = 0
  c.batch_size = 128            # global, split over the "data" mesh axis
  c.epochs = 2.0
  c.total_steps = -1            # > 0 overrides epochs
  c.seed = 0
  # Bookkeeping.
  c.log_every = 50
  c.checkpoint_every = 200
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  # Scale-out (duojax.parallel.sharding): the mesh spans every device of every process.
  c.num_devices = -1            # -1: all devices (a multi-process run needs -1)
  c.fsdp = 1                    # > 1: split params and optimizer state over
                                # groups of this many devices (FSDP-style)
  return c


_OPTIMIZERS = ("adamw", "sgd")
_LOSSES = ("ce", "gatekeeper")
_AUGMENTATIONS = ("crop", "rrc", "flip")
# Mirrors duojax.convert (not imported here: this module stays light).
_INIT_LAYOUTS = ("auto", "timm", "torchvision", "hf")
_INIT_HEADS = ("load", "fresh")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) for values that cannot work."""
  def need(condition, message):
    if not condition:
      raise ConfigError(message)

  need(config.optimizer in _OPTIMIZERS,
       f"config.optimizer={config.optimizer!r}; valid: {', '.join(_OPTIMIZERS)}")
  need(config.lr > 0, f"config.lr must be > 0, got {config.lr}")
  need(config.batch_size > 0, f"config.batch_size must be > 0, got {config.batch_size}")
  need(config.eval_batch_size > 0,
       f"config.eval_batch_size must be > 0, got {config.eval_batch_size}")
  need(config.epochs > 0 or config.total_steps > 0,
       "config.epochs or config.total_steps must be > 0")
  need(config.val_size > 0, f"config.val_size must be > 0, got {config.val_size}")
  for key in ("train_split", "test_split", "image_key", "label_key"):
    need(bool(config[key]), f"config.{key} must name a tfds split or feature, got ''")
  need(config.val_split not in (config.train_split, config.test_split),
       f"config.val_split={config.val_split!r} must differ from train_split and test_split "
       "(\"\" carves val from train)")
  need(config.data_workers >= -1,
       f"config.data_workers must be -1 (automatic), 0 (in this process) or more, "
       f"got {config.data_workers}")
  for key in ("rrc_scale", "rrc_ratio"):
    value = tuple(config[key])
    need(len(value) == 2 and 0 < value[0] <= value[1],
         f"config.{key} must be (low, high) with 0 < low <= high, got {value}")
  need(tuple(config.rrc_scale)[1] <= 1.0,
       f"config.rrc_scale's high end must be <= 1 (a fraction of the area), "
       f"got {tuple(config.rrc_scale)}")
  need(len(tuple(config.input_mean)) == len(tuple(config.input_std)),
       f"config.input_mean {tuple(config.input_mean)} and config.input_std "
       f"{tuple(config.input_std)} must be given together, one value per channel")
  need(all(v > 0 for v in tuple(config.input_std)),
       f"config.input_std must be positive, got {tuple(config.input_std)}")
  need(0.0 < config.crop_fraction <= 1.0,
       f"config.crop_fraction must be in (0, 1], got {config.crop_fraction}")
  need(0.0 <= config.label_smoothing < 1.0,
       f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}")
  need(config.checkpoint_every > 0,
       f"config.checkpoint_every must be > 0, got {config.checkpoint_every}")
  need(config.keep_checkpoints > 0,
       f"config.keep_checkpoints must be > 0, got {config.keep_checkpoints}")
  need(config.log_every > 0, f"config.log_every must be > 0, got {config.log_every}")
  need(config.fsdp >= 1, f"config.fsdp must be >= 1, got {config.fsdp}")
  need(config.loss in _LOSSES, f"config.loss={config.loss!r}; valid: {', '.join(_LOSSES)}")
  need(0.0 <= config.gatekeeper_alpha <= 1.0,
       f"config.gatekeeper_alpha must be in [0, 1], got {config.gatekeeper_alpha}")
  need(not (config.init_from and config.init_weights),
       "config.init_from and config.init_weights are exclusive: start from one of them")
  need(not (config.prune_from and (config.init_from or config.init_weights)),
       "config.prune_from starts from its own checkpoint: leave init_from and "
       "init_weights empty")
  need(0.0 < config.prune_keep <= 1.0,
       f"config.prune_keep must be a fraction of heads in (0, 1], got {config.prune_keep}")
  need(config.prune_images > 0, f"config.prune_images must be > 0, got {config.prune_images}")
  need(config.init_layout in _INIT_LAYOUTS,
       f"config.init_layout={config.init_layout!r}; valid: {', '.join(_INIT_LAYOUTS)}")
  need(config.init_head in _INIT_HEADS,
       f"config.init_head={config.init_head!r}; valid: {', '.join(_INIT_HEADS)}")
  need(config.linear_probe_steps >= 0,
       f"config.linear_probe_steps must be >= 0, got {config.linear_probe_steps}")
  for name in augmentations(config):
    need(name in _AUGMENTATIONS,
         f"config.augment has unknown {name!r}; valid: {', '.join(_AUGMENTATIONS)}")
  need(not {"crop", "rrc"} <= set(augmentations(config)),
       "config.augment: 'crop' and 'rrc' are two ways of cropping, choose one")


def complete_config(saved: dict) -> ml_collections.ConfigDict:
  """A training config read back from a checkpoint, complete.

  Keys added to the schema after the checkpoint was written take their
  defaults (which reproduce the behaviour of the code that wrote it: no
  linear probe, cross-entropy, no pruning), so readers never need
  `config.get(key, default)`; keys the schema has since dropped are kept.
  """
  config = base_config()
  config.update(saved)
  return config


def split_list(value: str) -> list[str]:
  """The non-empty items of a comma-separated config string."""
  return [v.strip() for v in value.split(",") if v.strip()]


def augmentations(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  return tuple(split_list(config.augment))


# ----------------------------------------------------------------------------
# Evaluation.

# Mirrors duojax.core.temperature.SOLVERS, duojax.data.shifts.SHIFTS,
# duojax.hydra.MLP_MODES and the modules of duojax.eval.sections.
_SOLVERS = ("jaxopt", "optax")
_SHIFTS = ("gaussian_noise", "blur", "rotation", "contrast")
_HYDRA_MLPS = ("grouped", "average")
_SECTIONS = ("cascade", "conformal", "hydra", "methods", "paired", "sidekicks")
_CONFORMAL_METHODS = ("lac", "aps", "raps")
_OOD_SETS = ("mnist",)


def base_eval_config() -> ml_collections.ConfigDict:
  """Every key of an evaluation config (`evaluate.py --config`), with its default."""
  c = ml_collections.ConfigDict()
  # Members: training workdirs. The large model and the sidekick form the duo;
  # `ensemble` lists more independently trained large models (deep ensembles
  # m = 2..1+k), `soup_ingredients` short fine-tunes of the large model
  # (uniform and greedy soups). Comma-separated lists; "" for none.
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
  # Extra splits: the OOD set ("" for none; "mnist", the embedded one;
  # "tfds:NAME[:SPLIT]", a tfds set prepared in data_dir as array_record;
  # "folder:PATH", every image file below PATH) and corruptions of the test
  # split at severities 1-5, on a seeded subset of at most shift_max_images.
  c.ood = ""
  c.shifts = ""
  c.shift_max_images = 1000
  c.data_dir = ""               # "" = the large model's training data_dir
  c.output_dir = "results"
  c.batch_size = 500            # global, split over the devices
  c.solver = "jaxopt"           # L-BFGS for temperatures and duo weights; or "optax"
  c.bootstrap = 200             # paired bootstrap rounds (0: no paired section)
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
    raise ConfigError(f"unknown evaluation config key {unknown[0]!r}; valid: "
                      f"{', '.join(sorted(base.keys()))}")
  base.update(config.to_dict() if hasattr(config, "to_dict") else dict(config))
  return base


def validate_eval(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) for evaluation settings that cannot work."""
  def need(condition, message):
    if not condition:
      raise ConfigError(message)

  def items(key):
    return split_list(config[key])

  need(config.large, "config.large must name the large model's training workdir")
  need(config.solver in _SOLVERS,
       f"config.solver={config.solver!r}; valid: {', '.join(_SOLVERS)}")
  need(config.batch_size > 0, f"config.batch_size must be > 0, got {config.batch_size}")
  need(config.bootstrap >= 0, f"config.bootstrap must be >= 0, got {config.bootstrap}")
  need(config.shift_max_images > 0,
       f"config.shift_max_images must be > 0, got {config.shift_max_images}")
  need(config.mc_dropout_samples >= 0,
       f"config.mc_dropout_samples must be >= 0, got {config.mc_dropout_samples}")
  need(0.0 < config.mc_dropout_rate < 1.0,
       f"config.mc_dropout_rate must be in (0, 1), got {config.mc_dropout_rate}")
  kind, _, rest = config.ood.partition(":")
  need(config.ood in ("", *_OOD_SETS) or (kind in ("tfds", "folder") and rest),
       f"config.ood={config.ood!r}; valid: 'mnist' (embedded), 'tfds:NAME[:SPLIT]', "
       "'folder:PATH' ('' for none)")
  unknown = sorted(set(items("shifts")) - set(_SHIFTS))
  need(not unknown, f"config.shifts has unknown {unknown}; valid: {', '.join(_SHIFTS)}")
  mlps = items("hydra_mlp")
  need(mlps and not set(mlps) - set(_HYDRA_MLPS),
       f"config.hydra_mlp={config.hydra_mlp!r}; valid: a comma list of "
       f"{', '.join(_HYDRA_MLPS)}")
  sections = items("sections")
  unknown = [s for s in sections if s not in _SECTIONS]
  need(not unknown, f"config.sections has unknown {unknown}; valid: {', '.join(_SECTIONS)}")
  need(len(set(sections)) == len(sections), f"config.sections lists a section twice: "
       f"{config.sections!r}")
  need("hydra" not in sections or ("methods" in sections and
                                   sections.index("methods") < sections.index("hydra")),
       "config.sections: 'hydra' reads the scores of 'methods', which must come before it")
  try:
    alphas = [float(a) for a in items("conformal_alphas")]
  except ValueError:
    alphas = [-1.0]
  need(all(0 < a < 1 for a in alphas),
       f"config.conformal_alphas must be numbers in (0, 1), got {config.conformal_alphas!r}")
  unknown = sorted(set(items("conformal_methods")) - set(_CONFORMAL_METHODS))
  need(not unknown and (items("conformal_methods") or not alphas),
       f"config.conformal_methods={config.conformal_methods!r}; valid: a comma list of "
       f"{', '.join(_CONFORMAL_METHODS)}")
  need(config.sidekick_budget >= 0,
       f"config.sidekick_budget must be >= 0 (0: no limit), got {config.sidekick_budget}")
  need(not ((items("sidekicks") or items("sidekick_pool")) and not config.sidekick),
       "config.sidekicks / config.sidekick_pool need config.sidekick, which is empty")
  need(not (items("gatekeeper") and not config.sidekick),
       "config.gatekeeper: Gatekeeper sidekicks are compared with the untuned "
       "config.sidekick, which is empty")
