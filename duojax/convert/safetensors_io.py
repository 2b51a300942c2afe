"""Reading and writing safetensors files with numpy only.

The format (8-byte little-endian header length, a JSON header mapping names to
{dtype, shape, data_offsets}, then raw little-endian bytes) is small enough to
parse here, which lets every malformed file fail with one clear line and lets
bfloat16 tensors load (numpy itself has no bfloat16; `ml_dtypes`, a JAX
dependency, provides it).

Pickle-based checkpoints (`.pth`, `.pt`, `.bin`, `.ckpt`, `.pkl`) are never
opened: unpickling a file runs code from it.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile

import ml_dtypes
import numpy as np

from duojax.errors import WeightsFileError

_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype("<i8"), "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"), "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle")
# A header larger than this is not a weights file (the reference library's cap).
_MAX_HEADER = 100 * 1024 * 1024

_CONVERT_HINT = ("convert it once, in PyTorch, with: import torch, safetensors.torch; "
                 "safetensors.torch.save_file({k: v.contiguous() for k, v in "
                 "torch.load(PATH, map_location='cpu', weights_only=True).items()}, 'model.safetensors')")




def _looks_like_pickle(path: str, head: bytes) -> bool:
  if path.lower().endswith(PICKLE_SUFFIXES):
    return True
  # A safetensors header (JSON) starts right after the 8-byte length. Without
  # one: torch.save writes a zip archive (PK\x03\x04); older files and plain
  # pickles start with the PROTO opcode 0x80.
  if head[8:9] == b"{":
    return False
  return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def read(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors by name, the header's string metadata) of a safetensors file."""
  if not os.path.isfile(path):
    raise WeightsFileError(f"weights file {path!r} does not exist")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(9)
    if _looks_like_pickle(path, head):
      raise WeightsFileError(
          f"{path!r} is a pickle (PyTorch .pth/.bin) file, which duojax never opens "
          f"because unpickling runs code; {_CONVERT_HINT.replace('PATH', repr(path))}")
    if len(head) < 9:
      raise WeightsFileError(f"{path!r} is not a safetensors file: {size} bytes is too short")
    (header_len,) = struct.unpack("<Q", head[:8])
    f.seek(8)
    if header_len > min(_MAX_HEADER, size - 8):
      raise WeightsFileError(
          f"{path!r} is not a safetensors file or is truncated: header of {header_len} bytes "
          f"in a {size}-byte file")
    try:
      header = json.loads(f.read(header_len).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise WeightsFileError(f"{path!r}: unreadable safetensors header ({e})") from None
    data_start = 8 + header_len
  if not isinstance(header, dict):
    raise WeightsFileError(f"{path!r}: the safetensors header is not a JSON object")
  metadata = header.pop("__metadata__", None) or {}
  buffer = np.memmap(path, dtype=np.uint8, mode="r")
  tensors = {}
  for name, info in header.items():
    try:
      dtype = _DTYPES[info["dtype"]]
      shape = tuple(int(d) for d in info["shape"])
      begin, end = (int(o) for o in info["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise WeightsFileError(
          f"{path!r}: tensor {name!r} has an unsupported or malformed entry {info!r} "
          f"(dtypes: {', '.join(_DTYPES)})") from None
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != expected or begin < 0:
      raise WeightsFileError(
          f"{path!r}: tensor {name!r} of shape {shape} needs {expected} bytes, "
          f"its offsets span {end - begin}")
    if data_start + end > size:
      raise WeightsFileError(
          f"{path!r} is truncated: tensor {name!r} ends at byte {data_start + end}, "
          f"the file has {size}")
    raw = buffer[data_start + begin:data_start + end]
    # Copy out of the memory map so the file can be replaced while in use.
    tensors[name] = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(shape)
  return tensors, {str(k): str(v) for k, v in metadata.items()}


def write(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
  """Writes `tensors` as a safetensors file, atomically (no partial file on error)."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    array = np.asarray(tensors[name])  # (ascontiguousarray would make 0-d arrays 1-d)
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
      array = array.copy(order="C")
    if array.dtype not in _NAMES:
      raise WeightsFileError(f"tensor {name!r} has dtype {array.dtype}, not storable in safetensors")
    data = array.tobytes()
    header[name] = {"dtype": _NAMES[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
  encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".safetensors")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(struct.pack("<Q", len(encoded)))
      f.write(encoded)
      for data in chunks:
        f.write(data)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
