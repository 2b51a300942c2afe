"""Sizes chosen from the data: validation, batches, steps and warm-up for recipes of any size.

A recipe meant for a folder of a few hundred images as much as for ImageNet
(configs/imagenet_duo.py) leaves the sizes that depend on the data at
`config_lib.AUTO`; `sizes_for_run` chooses them once the training split's size n
(from the prepared set's metadata) and the device count d are known, prints
one line saying what it chose, and returns the config with the chosen values,
which the run saves: a resume makes the same choice again (the rules are pure
functions of n, d and the config) and an evaluation reads the saved numbers.
`config.auto_max` holds the recipe's bounds (the sizes it would use on
ImageNet).

The rules, for n images in the training split before val is carved (with a
val split of its own, `config.val_split`, val is that split and n − val
below reads n):

* val = min(max(⌊n/10⌋, min(500, ⌊n/5⌋)), auto_max.val_size), and in [1, n − 1].
  Val fits the temperatures and the duo's weights (two or three scalars) and
  reports accuracy per epoch; an accuracy p measured on m images has standard
  error √(p(1−p)/m) ≤ 1/(2√m): 2.2 points at m = 500, 0.5 at m = 10,000. A
  tenth of the images is the usual hold-out; at least 500 while that takes at
  most a fifth of them; at most 10,000, since doubling it would narrow the
  error only from 0.5 to 0.35 points while the images would serve training.
* batch = min(auto_max.batch_size, the largest power of two ≤ (n − val)/16),
  rounded down to a multiple of d (at least d; of d times the micro-batches
  with gradient accumulation). At least 16 steps an epoch keep the per-epoch
  validation and the cosine schedule fine-grained and a 10-epoch fine-tune at
  160 updates or more; the recipe's batch bounds it on large sets. For d a
  power of two no larger than it, the rounding leaves it as it is: a run
  moved from 1 to 8 devices trains the same batches, each device's share a
  power of two.
* steps = ⌈epochs · ⌊(n − val)/batch⌋⌉ (the epochs' full batches, as
  `optim.total_steps`), at most auto_max.total_steps when that is > 0: a
  fine-tune runs a few epochs on a small set, and the recipe's ImageNet
  length on a large one instead of ten ImageNet epochs.
* warmup = min(auto_max.warmup_steps, ⌊steps/10⌋). The recipe's warm-up is
  2.5% of its ImageNet length; a fixed 500 steps would be the whole of a
  short run (no decay at all), a tenth keeps the cosine decay for 90% of it.
* eval batch = min(auto_max.eval_batch_size, the smallest power of two ≥ val),
  rounded up to a multiple of d. Evaluation keeps no activations for a
  backward pass, so it takes larger batches than training; one batch covering
  val needs one compiled shape and pads at most half a batch.

Sizes given in the config are kept, and checked: val must leave training
images, the batch must fit the training split and split evenly over the
devices, all before anything is written.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys

from duojax.config_lib import AUTO
from duojax.errors import ConfigError, DataError

# The rules' constants, derived in the module's docstring.
VAL_FRACTION = 10  # val is a tenth of the images ...
VAL_LEAST = 500  # ... at least this many ...
VAL_MOST_FRACTION = 5  # ... while that is at most a fifth of them
STEPS_PER_EPOCH = 16  # the batch leaves at least this many steps an epoch
WARMUP_FRACTION = 10  # warm-up is at most a tenth of the steps


def pow2_floor(x: int) -> int:
  """The largest power of two ≤ x (1 for x < 2)."""
  return 1 << (max(1, int(x)).bit_length() - 1)


def pow2_ceil(x: int) -> int:
  """The smallest power of two ≥ x (1 for x < 2)."""
  return 1 << max(0, int(x) - 1).bit_length()


def val_size_rule(images: int, most: int) -> int:
  """Images carved from `images` for val (at least 1, leaving at least 1)."""
  share = max(images // VAL_FRACTION, min(VAL_LEAST, images // VAL_MOST_FRACTION))
  return max(1, min(share, most, images - 1))


def batch_rule(train: int, most: int, unit: int) -> int:
  """The training batch for `train` images, a multiple of `unit` (the devices)."""
  batch = min(most, pow2_floor(train // STEPS_PER_EPOCH))
  return max(unit, batch // unit * unit)


def steps_rule(epochs: float, steps_per_epoch: int, most: int) -> int:
  """`epochs` of full batches (at least one step), at most `most` when it is > 0."""
  steps = max(1, math.ceil(epochs * steps_per_epoch))
  return min(steps, most) if most > 0 else steps


def warmup_rule(steps: int, most: int) -> int:
  return min(most, steps // WARMUP_FRACTION)


def eval_batch_rule(val: int, most: int, devices: int) -> int:
  batch = min(most, pow2_ceil(val))
  return -(-batch // devices) * devices


@dataclasses.dataclass(frozen=True)
class Sizes:
  """What a run's sizes came to, and which of them were chosen here."""

  images: int  # in the training split, val included when carved from it
  devices: int
  val_size: int
  val_split: str  # "": carved from the training split
  batch_size: int
  eval_batch_size: int
  total_steps: int
  warmup_steps: int
  steps_per_epoch: int
  epochs: float  # asked for (config.epochs)
  chosen: frozenset[str]  # the config keys chosen from the data
  steps_bound: int  # auto_max.total_steps where it cut the run short, else 0

  def line(self) -> str:
    """The one line a run prints: what was chosen, from what."""
    given = lambda key: "" if key in self.chosen else " (given)"
    s = "s" if self.devices > 1 else ""
    if self.val_split:
      val = f"val {self.val_size:,} (split {self.val_split!r})"
    else:
      val = f"val {self.val_size:,}{given('val_size')}"
    done = self.total_steps / self.steps_per_epoch
    if "total_steps" not in self.chosen:
      steps = f"{self.total_steps:,} steps (given) = {_epochs(done)}"
    elif self.steps_bound:
      steps = (
        f"{_epochs(done)} = {self.total_steps:,} steps "
        f"({self.epochs:g} asked, capped by auto_max.total_steps={self.steps_bound:,})"
      )
    else:
      steps = f"{_epochs(self.epochs)} = {self.total_steps:,} steps"
    return (
      f"sizes from the data ({self.images:,} images, {self.devices} device{s}): {val}, "
      f"batch {self.batch_size:,}{given('batch_size')}, {steps}, "
      f"warmup {self.warmup_steps:,}{given('warmup_steps')}, "
      f"eval batch {self.eval_batch_size:,}{given('eval_batch_size')}"
    )


def _epochs(count: float) -> str:
  return f"{round(count, 2):g} epoch{'' if count == 1 else 's'}"


def resolve(config, images: int, devices: int, val_split_size: int | None = None):
  """(`config` with its AUTO sizes chosen, `Sizes`) for a training split of
  `images` examples on `devices` devices; `val_split_size`: the examples of
  `config.val_split` when val is a split of its own.

  Pure: the same arguments give the same sizes. A config with nothing AUTO
  and no step bound comes back unchanged (the same object). Raises a one-line
  ConfigError for sizes that cannot work.
  """
  bounds, chosen = config.auto_max, set()
  # Each micro-batch of gradient accumulation is split over every device.
  accum = config.grad_accum_steps
  unit = devices * accum
  where = f"the {config.dataset} split {config.train_split!r}"
  if val_split_size is None:
    val = config.val_size
    if val == AUTO:
      if images < 2:
        raise ConfigError(f"{where} has {images} example(s): carving val needs at least 2")
      val = val_size_rule(images, bounds.val_size)
      chosen.add("val_size")
    elif not val < images:
      raise ConfigError(
        f"val_size={val} must be in [1, {images - 1}] for the {images} training examples "
        f"of {config.dataset} (-1: chosen from the data)"
      )
    train = images - val
  else:
    val, train = val_split_size, images
  batch = config.batch_size
  if batch == AUTO:
    batch = batch_rule(train, bounds.batch_size, unit)
    chosen.add("batch_size")
  if batch > train:
    micro = f" in {accum} micro-batches" if accum > 1 else ""
    least = f" (the least that splits over the {devices} devices{micro})"
    carved = f" (after val's {val:,})" if val_split_size is None else ""
    raise ConfigError(
      f"config.batch_size={batch}{least if 'batch_size' in chosen else ''} is larger than "
      f"the {train:,} training images of {where}{carved}: a smaller batch, or more images"
    )
  if batch % devices:
    raise ConfigError(f"config.batch_size={batch} is not divisible by the {devices} devices")
  steps_per_epoch = train // batch
  bound = 0
  if config.total_steps > 0:
    steps = int(config.total_steps)
  else:
    steps = steps_rule(config.epochs, steps_per_epoch, bounds.total_steps)
    chosen.add("total_steps")
    bound = bounds.total_steps if steps < steps_rule(config.epochs, steps_per_epoch, 0) else 0
  warmup = config.warmup_steps
  if warmup == AUTO:
    warmup = warmup_rule(steps, bounds.warmup_steps)
    chosen.add("warmup_steps")
  eval_batch = config.eval_batch_size
  if eval_batch == AUTO:
    eval_batch = eval_batch_rule(val, bounds.eval_batch_size, devices)
    chosen.add("eval_batch_size")
  if eval_batch % devices:
    raise ConfigError(
      f"config.eval_batch_size={eval_batch} is not divisible by the {devices} devices"
    )
  sizes = Sizes(
    images,
    devices,
    val,
    config.val_split,
    batch,
    eval_batch,
    steps,
    warmup,
    steps_per_epoch,
    float(config.epochs),
    frozenset(chosen),
    bound,
  )
  if not chosen - {"total_steps"} and not ("total_steps" in chosen and bounds.total_steps):
    return config, sizes  # nothing left to the data: the config as it was
  resolved = copy.deepcopy(config)
  resolved.val_size, resolved.batch_size, resolved.eval_batch_size = val, batch, eval_batch
  resolved.total_steps, resolved.warmup_steps = steps, warmup
  return resolved, sizes


def split_sizes(config) -> tuple[int, int | None]:
  """(examples in the training split, in `config.val_split` or None when val is
  carved), from the prepared set's metadata: nothing is read but its info."""
  from duojax import data  # the data package loads tfds: only where a run needs it
  from duojax.data import sources

  spec = data.DatasetSpec.from_config(config)
  builder = sources.open_builder(spec.name, spec.data_dir, prepare=True)
  splits = builder.info.splits
  for split in (spec.train_split, spec.val_split):
    if split and split not in splits:
      raise DataError(
        f"{spec.name} in {spec.data_dir} has no split {split!r} (it has {', '.join(splits)}): "
        "set config.train_split, config.val_split and config.test_split"
      )
  count = lambda split: int(splits[split].num_examples)
  return count(spec.train_split), count(spec.val_split) if spec.val_split else None


def sizes_for_run(config, devices: int, *, verbose: bool = True):
  """(the config a run trains with, `Sizes`): `resolve` on the data set's
  split sizes; prints `Sizes.line` when something was chosen and `verbose`."""
  images, val_split_size = split_sizes(config)
  resolved, sizes = resolve(config, images, devices, val_split_size)
  if verbose and resolved is not config:
    print(sizes.line(), file=sys.stdout, flush=True)
  return resolved, sizes
