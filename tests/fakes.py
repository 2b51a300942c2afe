"""Small synthetic stand-ins for the embedded data, built by the real builder."""

import gzip
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
