"""Evaluation splits beyond the data set's own: OOD sets and corrupted test sets."""

from __future__ import annotations

import dataclasses

import numpy as np

from duojax import data
from duojax.data import imagenet_c, shifts
from duojax.errors import ConfigError


def array_split(images: np.ndarray, labels: np.ndarray) -> data.Split:
  """A `data.Split` over in-memory uint8 images (OOD sets, shifted test sets)."""
  return data.Split(
    data.ArraySource(images, labels.astype(np.int32)), np.arange(len(labels), dtype=np.int64)
  )


def shifted_splits(
  test: data.Split,
  *,
  kinds=shifts.SHIFTS,
  severities=shifts.SEVERITIES,
  max_images: int | None = None,
  seed: int = 0,
) -> dict[str, data.Split]:
  """Corrupted copies of (a seeded subset of) the test split, named 'kind/severity'.

  `kinds` may name the group "imagenet_c" for its 15 `c_` corruptions (`shifts.expand`).
  """
  images, labels = data.read_examples(test, test.sample_positions(max_images, seed))
  splits = {}
  for kind in shifts.expand(kinds):
    corrupt = imagenet_c.corrupt if kind in shifts.IMAGENET_C else shifts.corrupt
    for severity in severities:
      corrupted = corrupt(images, kind, severity, seed=seed)
      splits[f"{kind}/{severity}"] = array_split(corrupted, labels)
  return splits


def ood_caption(name: str) -> str:
  """How the report names the OOD set `name` (a config.ood value)."""
  kind, _, rest = name.partition(":")
  if kind == "tfds":
    tfds_name, _, split = rest.partition(":")
    return f"{tfds_name} ({split or 'test'})"
  if kind == "folder":
    return f"the images in {rest}"
  return "MNIST test" if name == "mnist" else name


def ood_split(name: str, dataset: data.Dataset, data_dir: str) -> data.Split:
  """The out-of-distribution set `name`, read at the models' image size.

  "mnist": the embedded MNIST test set (grayscale 28×28; resized and repeated
  over 3 channels for RGB models); "tfds:NAME" or "tfds:NAME:SPLIT" (default
  split "test"): a tfds data set prepared in `data_dir` in array_record format;
  "folder:PATH": every image file below PATH. Images of another size are read
  as evaluation reads them: the centre crop, resized, as the test split's.
  """
  height, width, channels = dataset.image_shape
  crop, interpolation = dataset.test.crop_fraction, dataset.test.interpolation
  kind, _, rest = name.partition(":")
  if kind == "tfds" and rest:
    tfds_name, _, split = rest.partition(":")
    found = data.load_split(
      tfds_name, data_dir, split or "test", image_size=height, channels=channels, crop_fraction=crop
    )
    return dataclasses.replace(found, interpolation=interpolation)
  if kind == "folder" and rest:
    found = data.folder_split(rest, image_size=height, channels=channels, crop_fraction=crop)
    return dataclasses.replace(found, interpolation=interpolation)
  if name != "mnist":
    raise ConfigError(
      f"config.ood={name!r}; valid: 'mnist', 'tfds:NAME[:SPLIT]', 'folder:PATH' ('' for none)"
    )
  images, labels = data.load_mnist_ood("test")
  if tuple(images.shape[1:]) == tuple(dataset.image_shape):
    return array_split(images, labels)
  # Grayscale digits as the models' images: resized (the centre crop of
  # evaluation, as any other OOD set) and repeated over the channels.
  split = array_split(images, labels)
  return dataclasses.replace(
    split, image_size=height, crop_fraction=crop, channels=channels, interpolation=interpolation
  )
