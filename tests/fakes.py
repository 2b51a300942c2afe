"""Small synthetic stand-ins for the embedded data, built by the real builder."""

import errno
import gzip
import os
import struct

import numpy as np

from duojax import datasets


def write_idx(path, array):
  header = struct.pack(f">{1 + array.ndim}I", 0x0800 + array.ndim, *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def learnable_split(n, seed):
  """28x28 images whose class k lights a 6x6 block at a class-specific place, plus noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n).astype(np.uint8)
  images = rng.integers(0, 96, (n, 28, 28)).astype(np.uint8)
  for i, k in enumerate(labels):
    row, col = divmod(int(k), 5)
    images[i, 2 + 12 * row: 8 + 12 * row, 1 + 5 * col: 6 + 5 * col] = 255
  return images, labels


def prepare_learnable_fashion_mnist(idx_dir, data_dir, n_train=600, n_test=200):
  """Writes idx files of `learnable_split` and builds them as 'fashion_mnist' in data_dir."""
  arrays = {"train": learnable_split(n_train, 0), "test": learnable_split(n_test, 1)}
  for split, (images_file, labels_file) in datasets.IDX_FILES.items():
    write_idx(idx_dir / images_file, arrays[split][0])
    write_idx(idx_dir / labels_file, arrays[split][1])
  datasets.prepare_fashion_mnist(data_dir, idx_dir=idx_dir)
  return data_dir


def prepare_five_class_blocks(data_dir, n_train=300, n_test=100):
  """A prepared tfds dataset 'five_class_blocks': `learnable_split` images with labels
  mod 5, so a model trained on it has 5 classes where Fashion-MNIST's have 10."""
  import tensorflow_datasets as tfds

  class FiveClassBlocks(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          # Raw bytes, as the embedded builder stores them: no TensorFlow to encode.
          "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8, encoding="bytes"),
          "label": tfds.features.ClassLabel(num_classes=5)}), disable_shuffling=True)

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(n_train, 0),
              "test": self._generate_examples(n_test, 1)}

    def _generate_examples(self, n, seed):
      images, labels = learnable_split(n, seed)
      for i, (image, label) in enumerate(zip(images, labels)):
        yield i, {"image": image[..., None], "label": int(label) % 5}

  FiveClassBlocks(data_dir=data_dir, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return data_dir


class FullDisk:
  """A file whose writes fail with ENOSPC after a few bytes, as on a full disk."""

  def __init__(self, f):
    self.f = f

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.f.close()

  def write(self, text):
    self.f.write(text[:8])
    self.f.flush()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
