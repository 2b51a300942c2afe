"""Evaluation splits beyond the data set's own: OOD sets and corrupted test sets."""

from __future__ import annotations

import numpy as np

from duojax import data
from duojax.data import shifts


def array_split(images: np.ndarray, labels: np.ndarray) -> data.Split:
  """A `data.Split` over in-memory uint8 images (OOD sets, shifted test sets)."""
  return data.Split(data.ArraySource(images, labels.astype(np.int32)),
                    np.arange(len(labels), dtype=np.int64))


def shifted_splits(test: data.Split, *, kinds=shifts.SHIFTS, severities=shifts.SEVERITIES,
                   max_images: int | None = None, seed: int = 0) -> dict[str, data.Split]:
  """Corrupted copies of (a seeded subset of) the test split, named 'kind/severity'."""
  positions = np.arange(len(test))
  if max_images is not None and max_images < len(test):
    positions = np.sort(np.random.default_rng(seed).permutation(len(test))[:max_images])
  images, labels = data.read_examples(test, positions)
  return {f"{kind}/{severity}": array_split(shifts.corrupt(images, kind, severity, seed=seed),
                                            labels)
          for kind in kinds for severity in severities}


def ood_split(name: str, dataset: data.Dataset) -> data.Split:
  """The out-of-distribution set `name` ("mnist", the embedded one) at the models' shape."""
  if name != "mnist":
    raise ValueError(f"config.ood={name!r}; the embedded OOD set is 'mnist' ('' for none)")
  images, labels = data.load_mnist_ood("test")
  if tuple(images.shape[1:]) != tuple(dataset.image_shape):
    raise ValueError(f"OOD set {name!r} has images {images.shape[1:]}, the models take "
                     f"{tuple(dataset.image_shape)}")
  return array_split(images, labels)
