"""Data: tfds sources and splits, the input pipeline, the embedded sets, shifts.

    dataset = data.load_dataset("fashion_mnist", "data", val_size=5000)
    batches = data.train_batches(dataset.train, global_batch_size=128, seed=0)
    # uint8 images; a jitted step normalises them:
    x = data.normalize_on_device(batch["image"], dataset.mean, dataset.std)

`sources` (data sets and splits), `dataset_spec` (a data set named by
training's data keys, as a typed value), `images` (decoding and crops of one
image), `batches` (one batch from its index), `pipeline` (grain: batches in
order, in worker processes, onto the devices), `folder` (an image folder
imported as a data set), `embedded` (Fashion-MNIST and MNIST, prepared
without TensorFlow), `ood_sources` (OOD sets from other tfds sets and image
folders), `shifts` (image corruptions), `preprocess` (a model's input
size and statistics, and the device-side resize and normalisation). This
package imports nothing of training or evaluation.
"""

from duojax.data.dataset_spec import DatasetSpec, load_dataset_of
from duojax.data.embedded import fetch_fashion_mnist, load_mnist_ood, prepare_fashion_mnist
from duojax.data.ood_sources import folder_split, load_split
from duojax.data.pipeline import eval_batches, steps_per_epoch, train_batches
from duojax.data.preprocess import (
  InputSpec,
  normalize,
  normalize_on_device,
  prepare,
  pretrained_stats,
)
from duojax.data.sources import (
  ArraySource,
  Dataset,
  Split,
  channel_stats,
  load_dataset,
  materialize,
  read_examples,
)
from duojax.errors import DataError

__all__ = [
  "ArraySource",
  "DataError",
  "Dataset",
  "DatasetSpec",
  "InputSpec",
  "Split",
  "channel_stats",
  "eval_batches",
  "fetch_fashion_mnist",
  "folder_split",
  "load_dataset",
  "load_dataset_of",
  "load_split",
  "load_mnist_ood",
  "materialize",
  "normalize",
  "normalize_on_device",
  "prepare",
  "pretrained_stats",
  "prepare_fashion_mnist",
  "read_examples",
  "steps_per_epoch",
  "train_batches",
]
