"""A data set and how it is split, as a small typed value: `DatasetSpec`.

Training names its data set with the config's data keys; an evaluation with
the data keys of its first workdir member's training config, or with its own
when no member was trained here. Both read them into a `DatasetSpec`, whose
`load` gives the `Dataset` at the side a model needs.
"""

from __future__ import annotations

import dataclasses
import os

from duojax.data.sources import Dataset, load_dataset


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A tfds (or embedded) data set, the folder it is prepared in, and its splits.

  `val_split` "" carves `val_size` seeded rows from the training split.
  """

  name: str
  data_dir: str
  train_split: str
  val_split: str
  test_split: str
  val_size: int
  split_seed: int
  image_key: str
  label_key: str
  crop_fraction: float
  interpolation: str = "bilinear"

  @classmethod
  def from_config(cls, config, data_dir: str | os.PathLike | None = None) -> DatasetSpec:
    """From a config holding training's data keys (`config_lib.base_config`);
    `data_dir` overrides its own (a checkpoint read on another machine)."""
    return cls(
      config.dataset,
      os.path.expanduser(data_dir or config.data_dir),
      config.train_split,
      config.val_split,
      config.test_split,
      config.val_size,
      config.split_seed,
      config.image_key,
      config.label_key,
      config.crop_fraction,
      config.interpolation,
    )

  def load(self, image_size: int | None = None) -> Dataset:
    """Its splits, the images read at `image_size` (None: as stored)."""
    return load_dataset(
      self.name,
      self.data_dir,
      val_size=self.val_size,
      split_seed=self.split_seed,
      train_split=self.train_split,
      test_split=self.test_split,
      val_split=self.val_split or None,
      image_key=self.image_key,
      label_key=self.label_key,
      image_size=image_size,
      crop_fraction=self.crop_fraction,
      interpolation=self.interpolation,
    )


def read_as(dataset: Dataset, crop_fraction: float, interpolation: str) -> Dataset:
  """`dataset`, its splits cutting images of another size at `crop_fraction`
  and resizing with `interpolation` (a model's own, `preprocess.InputSpec`)."""
  view = dict(crop_fraction=crop_fraction, interpolation=interpolation)
  return dataclasses.replace(
    dataset,
    train=dataclasses.replace(dataset.train, **view),
    val=dataclasses.replace(dataset.val, **view),
    test=dataclasses.replace(dataset.test, **view),
  )


def load_dataset_of(config, data_dir: str | os.PathLike | None = None) -> Dataset:
  """The data set a complete training config names (its data keys, and
  `config.model.image_size` for the images' side); `data_dir` overrides the
  config's (a checkpoint read on another machine)."""
  return DatasetSpec.from_config(config, data_dir).load(config.model.image_size)
