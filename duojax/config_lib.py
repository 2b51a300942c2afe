"""The training config schema (`base_config`), and the `configs/x.py:key=value` parser.

Experiment configs live in `configs/*.py` (one file per experiment, big_vision
style). They start from a base and change what differs, so every config has
the same keys, a typo on the command line is an error, and `validate` /
`duojax.eval_config_lib.validate_eval` reject values that cannot work before
anything runs. The evaluation's schema is `duojax.eval_config_lib`.

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
      raise ConfigError(f"unknown config argument {key!r}; valid: {', '.join(sorted(defaults))}")
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
MODEL_OVERRIDE_TYPES = {
  "dtype": str,
  "width": int,
  "stem": str,
  "pool": str,
  "dropout": float,
  "drop_path": float,
  "image_size": int,
  "in_channels": int,
  "zero_init_residual": bool,
  "pre_norm": bool,
  "patch_bias": bool,
  # Recompute each transformer block's activations in the backward pass
  # instead of keeping them (nnx.remat per block): the large ViTs and Swin-B
  # then fine-tune at large batches; gradients are unchanged.
  "remat": bool,
  # The transformers' attention form: "auto" (explicit on CPU, cuDNN's fused
  # kernel on GPU where it applies, XLA's otherwise), "explicit", "xla", "cudnn".
  "attention": str,
  # A ViT's MLP activation ("gelu", "gelu_tanh", "quick_gelu", "swiglu"): for a
  # file whose config.json is not beside it (docs/vit_variants.md).
  "act": str,
  # Convolutions as TensorFlow pads them ("same") or PyTorch ("torch"), BatchNorm's
  # eps, RegNet's width rounding ("torchvision", "timm"): read from a weights file
  # (duojax/convert/file_options.py); set here for a file that does not say.
  "padding": str,
  "bn_eps": float,
  "rounding": str,
  # Swin-V2: the attention window (a file's pretrained_window_size keeps its
  # position bias valid at another), and how a side that is not a multiple of
  # the window is handled ("fit", "torchvision", "hf", "timm": docs/swin.md).
  "window_size": int,
  "pretrained_window_size": int,
  "window_rule": str,
}


# A size left to the data: see base_config's auto_max and duojax.train.sizing.
AUTO = -1


def model_overrides(config: ml_collections.ConfigDict) -> dict:
  """The overrides a config sets for `get_model` (None values dropped)."""
  return {k: v for k, v in config.model.to_dict().items() if v is not None}


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every training config."""
  c = ml_collections.ConfigDict()
  # Data.
  c.dataset = "fashion_mnist"  # embedded default, or any prepared tfds name
  c.data_dir = "data"  # tfds data_dir (relative paths: to the cwd)
  c.train_split = "train"  # tfds split names
  c.val_split = ""  # "": carve val_size rows from train_split by split_seed
  c.test_split = "test"  # e.g. "validation" for imagenet2012
  c.val_size = 5000
  c.split_seed = 0
  c.image_key = "image"  # tfds feature keys
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
  # RandAugment ("randaugment" in augment; docs/augmentation.md): (ops per
  # image, magnitude on timm's 0..10 scale), after the crop, before the flip.
  # The filter every resize uses, host crops and device resizes alike:
  # "bilinear" or "bicubic". A pretrained file's own crop_pct and
  # interpolation (a config.json or preprocessor_config.json beside it) win
  # over crop_fraction and interpolation; the model's checkpoint keeps them.
  c.randaugment = (2, 9.0)
  c.interpolation = "bilinear"
  # Host processes that decode and augment images (grain workers); -1: none
  # for data held in memory, else the host's cores divided among the
  # processes that share it.
  c.data_workers = -1
  # Model: a name from duojax.models plus overrides for get_model.
  c.model_name = "resnet14"
  # get_model overrides; None means "the model's default" (and keeps the key
  # declared, so `--config.model.dtype=bfloat16` works on a locked config).
  c.model = ml_collections.ConfigDict(
    {k: ml_collections.config_dict.placeholder(t) for k, t in MODEL_OVERRIDE_TYPES.items()}
  )
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
  c.optimizer = "adamw"  # adamw | sgd
  c.lr = 1e-3
  c.momentum = 0.9  # sgd only
  c.weight_decay = 5e-4  # decoupled; applied to kernels only
  c.warmup_steps = 100
  c.grad_clip_norm = 1.0  # <= 0 disables clipping
  # Layer-wise learning-rate decay (BEiT, the DINOv2 and CLIP fine-tunes):
  # block i of L learns at lr * layer_decay**(L + 1 - i), the embeddings at
  # layer_decay**(L + 1), the head at lr. 1.0: one rate for every layer.
  c.layer_decay = 1.0
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
  c.batch_size = 128  # global, split over the "data" mesh axis
  c.epochs = 2.0
  c.total_steps = -1  # > 0 overrides epochs
  c.seed = 0
  # Device-side fine-tune recipe (duojax.train.recipe, docs/training_options.md);
  # every key's default leaves the train step as it is without them.
  # Mixup / CutMix as timm's batch mode: each row mixed with the batch reversed,
  # lambda ~ Beta(alpha, alpha), 0 turns one off; mix_prob is the share of
  # batches mixed, mix_switch_prob CutMix's share of them when both are on.
  c.mixup_alpha = 0.0
  c.cutmix_alpha = 0.0
  c.mix_prob = 1.0
  c.mix_switch_prob = 0.5
  # Weight EMA (0: off; e.g. 0.9998), of the parameters and BatchNorm
  # statistics; when on, evaluation and the saved model's weights are the
  # EMA's. ema_warmup: timm's warm-up, decay min(ema_decay, 1 - t^(-2/3)).
  c.ema_decay = 0.0
  c.ema_warmup = False
  # Gradient accumulation: the global batch_size in this many micro-batches
  # (batch_size divisible by it times the devices), one update per step.
  c.grad_accum_steps = 1
  # Bookkeeping.
  c.log_every = 50
  c.checkpoint_every = 200
  c.keep_checkpoints = 3
  c.eval_batch_size = 500
  # Score the final weights on test_split too (the summary's test_accuracy and
  # test_nll); False leaves the test split to evaluate.py, which scores every
  # member on it anyway (the demo does, saving a test pass per run).
  c.final_test = True
  # Scale-out (duojax.parallel.sharding): the mesh spans every device of every process.
  c.num_devices = -1  # -1: all devices (a multi-process run needs -1)
  c.fsdp = 1  # > 1: split params and optimizer state over
  # groups of this many devices (FSDP-style)
  # Sizes chosen from the data (duojax.train.sizing), for recipes meant for
  # data sets of any size: AUTO (-1) in val_size, batch_size, eval_batch_size
  # or warmup_steps is resolved once the training split's size and the device
  # count are known, to at most its bound here; total_steps -1 (from epochs)
  # then stops at auto_max.total_steps (0: no bound). The run saves the
  # resolved values, so a resume and an evaluation read the same numbers.
  c.auto_max = ml_collections.ConfigDict(
    dict(val_size=10_000, batch_size=512, eval_batch_size=1024, warmup_steps=500, total_steps=0)
  )
  return c


_OPTIMIZERS = ("adamw", "sgd")
_LOSSES = ("ce", "gatekeeper")
_AUGMENTATIONS = ("crop", "rrc", "flip", "randaugment")
# Mirrors duojax.data.images.INTERPOLATIONS.
_INTERPOLATIONS = ("bilinear", "bicubic")
# Mirrors duojax.convert (not imported here: this module stays light).
_INIT_LAYOUTS = ("auto", "timm", "torchvision", "hf")
_INIT_HEADS = ("load", "fresh")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line) for values that cannot work."""
  _check_optimisation(config)
  _check_data(config)
  _check_training(config)
  _check_init(config)
  _check_augment(config)
  _check_recipe(config)
  _check_sizes(config)


def _need(condition, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def _check_optimisation(config: ml_collections.ConfigDict) -> None:
  """The optimizer, learning rate, batch sizes and length of training."""
  _need(
    config.optimizer in _OPTIMIZERS,
    f"config.optimizer={config.optimizer!r}; valid: {', '.join(_OPTIMIZERS)}",
  )
  _need(config.lr > 0, f"config.lr must be > 0, got {config.lr}")
  _need(
    0 < config.layer_decay <= 1,
    f"config.layer_decay must be in (0, 1] (1: no decay), got {config.layer_decay}",
  )
  _need(
    config.epochs > 0 or config.total_steps > 0, "config.epochs or config.total_steps must be > 0"
  )


def _check_data(config: ml_collections.ConfigDict) -> None:
  """The data set's splits and features, the host pipeline and the input statistics."""
  for key in ("train_split", "test_split", "image_key", "label_key"):
    _need(bool(config[key]), f"config.{key} must name a tfds split or feature, got ''")
  _need(
    config.val_split not in (config.train_split, config.test_split),
    f"config.val_split={config.val_split!r} must differ from train_split and test_split "
    '("" carves val from train)',
  )
  _need(
    config.data_workers >= -1,
    f"config.data_workers must be -1 (automatic), 0 (in this process) or more, "
    f"got {config.data_workers}",
  )
  for key in ("rrc_scale", "rrc_ratio"):
    value = tuple(config[key])
    _need(
      len(value) == 2 and 0 < value[0] <= value[1],
      f"config.{key} must be (low, high) with 0 < low <= high, got {value}",
    )
  _need(
    tuple(config.rrc_scale)[1] <= 1.0,
    f"config.rrc_scale's high end must be <= 1 (a fraction of the area), "
    f"got {tuple(config.rrc_scale)}",
  )
  _need(
    len(tuple(config.input_mean)) == len(tuple(config.input_std)),
    f"config.input_mean {tuple(config.input_mean)} and config.input_std "
    f"{tuple(config.input_std)} must be given together, one value per channel",
  )
  _need(
    all(v > 0 for v in tuple(config.input_std)),
    f"config.input_std must be positive, got {tuple(config.input_std)}",
  )
  _need(
    0.0 < config.crop_fraction <= 1.0,
    f"config.crop_fraction must be in (0, 1], got {config.crop_fraction}",
  )


def _check_training(config: ml_collections.ConfigDict) -> None:
  """The loss, the logging and checkpointing cadence, and the FSDP groups."""
  _need(
    0.0 <= config.label_smoothing < 1.0,
    f"config.label_smoothing must be in [0, 1), got {config.label_smoothing}",
  )
  _need(
    config.checkpoint_every > 0,
    f"config.checkpoint_every must be > 0, got {config.checkpoint_every}",
  )
  _need(
    config.keep_checkpoints > 0,
    f"config.keep_checkpoints must be > 0, got {config.keep_checkpoints}",
  )
  _need(config.log_every > 0, f"config.log_every must be > 0, got {config.log_every}")
  _need(config.fsdp >= 1, f"config.fsdp must be >= 1, got {config.fsdp}")
  _need(config.loss in _LOSSES, f"config.loss={config.loss!r}; valid: {', '.join(_LOSSES)}")
  _need(
    0.0 <= config.gatekeeper_alpha <= 1.0,
    f"config.gatekeeper_alpha must be in [0, 1], got {config.gatekeeper_alpha}",
  )


def _check_init(config: ml_collections.ConfigDict) -> None:
  """Where the weights start: at most one source, and its settings."""
  _need(
    not (config.init_from and config.init_weights),
    "config.init_from and config.init_weights are exclusive: start from one of them",
  )
  _need(
    not (config.prune_from and (config.init_from or config.init_weights)),
    "config.prune_from starts from its own checkpoint: leave init_from and init_weights empty",
  )
  _need(
    0.0 < config.prune_keep <= 1.0,
    f"config.prune_keep must be a fraction of heads in (0, 1], got {config.prune_keep}",
  )
  _need(config.prune_images > 0, f"config.prune_images must be > 0, got {config.prune_images}")
  _need(
    config.init_layout in _INIT_LAYOUTS,
    f"config.init_layout={config.init_layout!r}; valid: {', '.join(_INIT_LAYOUTS)}",
  )
  _need(
    config.init_head in _INIT_HEADS,
    f"config.init_head={config.init_head!r}; valid: {', '.join(_INIT_HEADS)}",
  )
  _need(
    config.linear_probe_steps >= 0,
    f"config.linear_probe_steps must be >= 0, got {config.linear_probe_steps}",
  )


def _check_augment(config: ml_collections.ConfigDict) -> None:
  """The training augmentations: known names, at most one way of cropping."""
  for name in augmentations(config):
    _need(
      name in _AUGMENTATIONS,
      f"config.augment has unknown {name!r}; valid: {', '.join(_AUGMENTATIONS)}",
    )
  _need(
    not {"crop", "rrc"} <= set(augmentations(config)),
    "config.augment: 'crop' and 'rrc' are two ways of cropping, choose one",
  )
  _check_randaugment(config)


def _check_randaugment(config: ml_collections.ConfigDict) -> None:
  """RandAugment's (ops per image, magnitude) and the resize filter."""
  value = tuple(config.randaugment)
  _need(
    len(value) == 2 and float(value[0]).is_integer() and value[0] >= 0 and 0 <= value[1] <= 10,
    "config.randaugment must be (ops per image >= 0, magnitude in [0, 10] on timm's scale), "
    f"got {value}",
  )
  _need(
    config.interpolation in _INTERPOLATIONS,
    f"config.interpolation={config.interpolation!r}; valid: {', '.join(_INTERPOLATIONS)}",
  )


def _check_recipe(config: ml_collections.ConfigDict) -> None:
  """Mixup/CutMix, the weight EMA and gradient accumulation (duojax.train.recipe)."""
  for key in ("mixup_alpha", "cutmix_alpha"):
    _need(
      0.0 <= config[key] < float("inf"), f"config.{key} must be >= 0 (0: off), got {config[key]}"
    )
  for key in ("mix_prob", "mix_switch_prob"):
    _need(0.0 <= config[key] <= 1.0, f"config.{key} must be in [0, 1], got {config[key]}")
  mixing = config.mixup_alpha > 0 or config.cutmix_alpha > 0
  # The Gatekeeper loss splits rows by whether the prediction is right, which a
  # mixed row with two labels has no answer to.
  _need(
    not mixing or config.loss == "ce",
    f"config.mixup_alpha / cutmix_alpha need config.loss='ce', got {config.loss!r}",
  )
  _need(
    0.0 <= config.ema_decay < 1.0,
    f"config.ema_decay must be in [0, 1) (0: off), got {config.ema_decay}",
  )
  _need(
    not config.ema_warmup or config.ema_decay > 0,
    "config.ema_warmup needs config.ema_decay > 0 (the decay it warms up to)",
  )
  _need(
    config.grad_accum_steps >= 1,
    f"config.grad_accum_steps must be >= 1 (1: off), got {config.grad_accum_steps}",
  )
  _need(
    config.batch_size == AUTO or config.batch_size % config.grad_accum_steps == 0,
    f"config.batch_size={config.batch_size} is not divisible by "
    f"config.grad_accum_steps={config.grad_accum_steps}",
  )


def _check_sizes(config: ml_collections.ConfigDict) -> None:
  """The sizes, each given or AUTO (duojax.train.sizing), and the bounds of the AUTO ones."""
  for key in ("val_size", "batch_size", "eval_batch_size"):
    _need(
      config[key] > 0 or config[key] == AUTO,
      f"config.{key} must be > 0, got {config[key]} (-1: chosen from the data)",
    )
  _need(
    config.warmup_steps >= 0 or config.warmup_steps == AUTO,
    f"config.warmup_steps must be >= 0, got {config.warmup_steps} (-1: chosen from the data)",
  )
  for key, bound in config.auto_max.items():
    _need(
      bound > 0 or (key == "total_steps" and bound == 0),
      f"config.auto_max.{key} must be > 0, got {bound}",
    )


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
