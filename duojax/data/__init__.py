"""Data: tfds sources and splits, the input pipeline, the embedded sets, shifts.

    dataset = data.load_dataset("fashion_mnist", "data", val_size=5000)
    batches = data.train_batches(dataset.train, global_batch_size=128, seed=0)
    # uint8 images; a jitted step normalises them:
    x = data.normalize_on_device(batch["image"], dataset.mean, dataset.std)

`sources` (data sets and splits), `dataset_spec` (a data set named by
training's data keys, as a typed value), `images` (decoding and crops of one
image), `randaugment` (RandAugment of one image), `batches` (one batch from
its index), `pipeline` (grain: batches in order, in worker processes, onto
the devices), `folder` (an image folder imported as a data set), `embedded`
(Fashion-MNIST and MNIST, prepared without TensorFlow), `ood_sources` (OOD
sets from other tfds sets and image folders), `shifts` (image corruptions),
`preprocess` (a model's input size, statistics, crop and filter, and the
device-side cut, resize and normalisation). This package imports nothing of
training or evaluation.
"""

import importlib

from duojax.errors import DataError  # noqa: F401  (re-exported)

# Each public name and the submodule that holds it, imported on first use: the
# device-side pieces (`preprocess`) then load without grain or
# tensorflow-datasets, as an accelerator host or a serving process needs.
_HOME = {
  "DatasetSpec": "dataset_spec",
  "load_dataset_of": "dataset_spec",
  "read_as": "dataset_spec",
  "fetch_fashion_mnist": "embedded",
  "load_mnist_ood": "embedded",
  "prepare_fashion_mnist": "embedded",
  "folder_split": "ood_sources",
  "load_split": "ood_sources",
  "eval_batches": "pipeline",
  "steps_per_epoch": "pipeline",
  "train_batches": "pipeline",
  "InputSpec": "preprocess",
  "normalize": "preprocess",
  "normalize_on_device": "preprocess",
  "prepare": "preprocess",
  "pretrained_stats": "preprocess",
  "pretrained_view": "preprocess",
  "ArraySource": "sources",
  "Dataset": "sources",
  "Split": "sources",
  "channel_stats": "sources",
  "load_dataset": "sources",
  "materialize": "sources",
  "read_examples": "sources",
}

__all__ = sorted([*_HOME, "DataError"])


def __getattr__(name):
  if name in _HOME:
    return getattr(importlib.import_module(f"duojax.data.{_HOME[name]}"), name)
  raise AttributeError(f"module 'duojax.data' has no attribute {name!r}")


def __dir__():
  return __all__
