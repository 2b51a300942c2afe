"""One batch from its index: which rows a step reads and how its images are cut.

`TrainBatch(step)` and `EvalBatch(index)` are picklable callables that the
pipeline (`duojax.data.pipeline`) maps over batch indices in grain worker
processes. Each is a pure function of its index and its fields, so a batch
comes out the same in any worker, in any order, after any restart.

Draws, all from numpy Generators seeded [seed, counter, stream]:
- stream 0, counter = epoch: the epoch's permutation of the split's rows;
- stream 1, counter = step: pad-and-crop offsets and flips, drawn for the
  whole global batch and then sliced to this process's rows (so a row's draws
  do not depend on how many processes share the batch);
- stream 3, counter = step, and the row's index in the global batch as a
  fourth word: that row's random-resized crop (each row its own Generator,
  since rows are cut one by one and the tries a crop takes vary);
- stream 4, counter = step, and the row's index as a fourth word: that row's
  RandAugment ops and their signs (`duojax.data.randaugment`).
Stream 2 is the statistics sample of `duojax.data.sources`.

Training images are cut (pad-and-crop, a random-resized crop, or the centre
crop for images of another size), then RandAugmented, then flipped. (timm
flips first; a flip turns each signed op into its mirror, of the same
probability, so the two orders give the same distribution of images.)
"""

from __future__ import annotations

import dataclasses

import numpy as np

from duojax.data import images as images_lib
from duojax.data import randaugment
from duojax.data.sources import Split, fixed_size, read_examples, read_raw, read_record

# numpy ignores trailing zero words: [s, e] = [s, e, 0], so the order is the
# same as that of the pipeline before the streams were named.
SHUFFLE_STREAM, AUGMENT_STREAM, RRC_STREAM, RANDAUGMENT_STREAM = 0, 1, 3, 4
AUGMENTATIONS = ("crop", "rrc", "flip", "randaugment")


@dataclasses.dataclass(frozen=True)
class Transform:
  """How training images are augmented (evaluation crops the centre)."""

  augment: tuple[str, ...] = ()
  crop_padding: int = 2
  rrc_scale: tuple[float, float] = images_lib.RRC_SCALE
  rrc_ratio: tuple[float, float] = images_lib.RRC_RATIO
  draft: bool = True  # JPEG DCT-scaled decoding when the crop allows it
  randaugment: tuple[int, float] = randaugment.DEFAULT  # (ops per image, magnitude 0..10)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The permutation of a split's n positions that epoch `epoch` reads."""
  return np.random.default_rng([seed, epoch, SHUFFLE_STREAM]).permutation(n)


def pad_crop(images: np.ndarray, offsets: np.ndarray, padding: int) -> np.ndarray:
  """Each image zero-padded by `padding` and cut back at `offsets` [n, 2] (y, x)."""
  if padding <= 0:
    return images
  h, w = images.shape[1:3]
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  return np.stack([padded[i, y : y + h, x : x + w] for i, (y, x) in enumerate(offsets)])


def flip(images: np.ndarray, flips: np.ndarray) -> np.ndarray:
  """Rows where `flips` is True mirrored left to right."""
  return np.where(flips[:, None, None, None], images[:, :, ::-1], images)


def rand_augment(
  images: np.ndarray, seed: int, step: int, first: int, num_ops: int, magnitude: float
) -> np.ndarray:
  """RandAugment of each row, row i of the batch from its Generator
  [seed, step, RANDAUGMENT_STREAM, first + i] (`first`: this process's first
  row in the global batch)."""
  out = np.empty_like(images)
  for i, image in enumerate(images):
    rng = np.random.default_rng([seed, step, RANDAUGMENT_STREAM, first + i])
    out[i] = randaugment.rand_augment(image, rng, num_ops, magnitude)
  return out


def cut_images(
  split: Split, rows: np.ndarray, boxes, flips: np.ndarray | None = None, *, draft: bool = True
) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [n, S, S, C] and labels of source `rows`, one PIL crop each.

  `boxes(i, width, height)` gives row i's box in its image's pixels; rows
  where `flips` is True are mirrored as they are cut (cheaper than a second
  pass over the whole batch). Resized with the split's interpolation.
  """
  size = split.image_size
  out = np.zeros((len(rows), size, size, split.channels), np.uint8)
  labels = np.zeros(len(rows), np.int32)
  for i, (example, row) in enumerate(zip(read_raw(split, rows), rows)):
    image, labels[i] = read_record(split, example, int(row))
    out[i] = images_lib.crop_resize(
      image,
      boxes(i, image.width, image.height),
      size,
      split.channels,
      draft=draft,
      flip=flips is not None and bool(flips[i]),
      interpolation=split.interpolation,
    )
  return out, labels


class TrainBatch:
  """Step -> this process's rows of the global training batch, uint8.

  Step s holds positions [s·B, (s+1)·B) of the epochs' permutations laid end
  to end (each epoch less its last len % B positions), B the global batch.
  """

  def __init__(
    self, split: Split, *, global_batch_size: int, seed: int, rows: slice, transform: Transform
  ):
    self.split, self.global_batch_size, self.seed = split, global_batch_size, seed
    self.rows, self.transform = rows, transform
    self.steps_per_epoch = len(split) // global_batch_size
    if "rrc" in transform.augment and split.image_size is None:
      # The crop is resized to the stored size: fine for any fixed-size set.
      self.split = dataclasses.replace(split, image_size=int(_stored_side(split)))
    self._order = (-1, None)  # (epoch, permutation): one epoch's order kept per worker

  def __getstate__(self):
    return {**self.__dict__, "_order": (-1, None)}

  def positions(self, step: int) -> np.ndarray:
    epoch = step // self.steps_per_epoch
    if self._order[0] != epoch:
      self._order = (epoch, epoch_order(self.seed, epoch, len(self.split)))
    start = (step % self.steps_per_epoch) * self.global_batch_size
    return self._order[1][start : start + self.global_batch_size][self.rows]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    step, t = int(step), self.transform
    positions = self.positions(step)
    B, rows = self.global_batch_size, self.rows
    rng = np.random.default_rng([self.seed, step, AUGMENT_STREAM])
    offsets = rng.integers(0, 2 * t.crop_padding + 1, size=(B, 2))[rows]
    flips = (rng.random(B) < 0.5)[rows]
    first = rows.start or 0
    if fixed_size(self.split) and "rrc" not in t.augment:
      images, labels = read_examples(self.split, positions)
    else:

      def box(i, width, height):
        if "rrc" in t.augment:
          row_rng = np.random.default_rng([self.seed, step, RRC_STREAM, first + i])
          return images_lib.random_resized_crop_box(
            row_rng, width, height, scale=t.rrc_scale, ratio=t.rrc_ratio
          )
        return images_lib.center_crop_box(width, height, self.split.crop_fraction)

      # Flipped as they are cut, unless a pad-and-crop or RandAugment comes between.
      between = {"crop", "randaugment"} & set(t.augment)
      flip_now = flips if "flip" in t.augment and not between else None
      images, labels = cut_images(
        self.split, self.split.indices[positions], box, flip_now, draft=t.draft
      )
      if flip_now is not None:
        return {"image": images, "label": labels}
    if "crop" in t.augment:
      images = pad_crop(images, offsets, t.crop_padding)
    if "randaugment" in t.augment:
      images = rand_augment(images, self.seed, step, first, *t.randaugment)
    if "flip" in t.augment:
      images = flip(images, flips)
    return {"image": images, "label": labels}


def _stored_side(split: Split) -> int:
  image, _ = read_examples(split, np.arange(1))
  return image.shape[1]


@dataclasses.dataclass(frozen=True, eq=False)
class EvalBatch:
  """Batch index -> this process's rows of one in-order evaluation batch.

  The last batch is padded with zero images; `mask` (bool) is False there.
  """

  split: Split
  global_batch_size: int
  rows: slice

  def __call__(self, index: int) -> dict[str, np.ndarray]:
    start = int(index) * self.global_batch_size
    positions = np.arange(start, start + self.global_batch_size)[self.rows]
    mask = positions < len(self.split)
    images, labels = read_examples(self.split, positions[mask])
    pad = len(mask) - len(labels)
    if pad:  # Valid rows come first: positions are ascending.
      # A process whose rows are all padding reads one image for its shape.
      shape = (images if len(labels) else read_examples(self.split, np.arange(1))[0]).shape[1:]
      images = np.concatenate([images.reshape(-1, *shape), np.zeros((pad, *shape), np.uint8)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
    return {"image": images, "label": labels, "mask": mask}
