"""Reading and writing safetensors files with numpy only.

The format (8-byte little-endian header length, a JSON header mapping names to
{dtype, shape, data_offsets}, then raw little-endian bytes) is small enough to
parse here, which lets every malformed file fail with one clear line and lets
bfloat16 tensors load (numpy itself has no bfloat16; `ml_dtypes`, a JAX
dependency, provides it).

Weight files come from anywhere, so the reader is as strict as the reference
(Rust) reader of the format, and checks the whole header before it allocates
anything for the data:

* the header length is at most 100,000,000 bytes and fits in the file;
* the header is UTF-8 JSON (no NaN/Infinity, no lone surrogates, no duplicate
  keys) and an object;
* each tensor is an object with exactly `dtype`, `shape` and `data_offsets`;
  `dtype` is a name of the format that numpy can hold; `shape` is a list of
  integers in [0, 2**64) (not booleans, floats, strings or `-0`);
  `data_offsets` is two such integers, begin <= end, spanning exactly
  elements x item size bytes (an empty shape is a scalar, one element), where
  the element count, taken dimension by dimension, never passes 2**64;
* the tensors' byte ranges, sorted, tile the data buffer: they start at 0, leave
  no gap, overlap nowhere and end exactly at the end of the file;
* `__metadata__`, if present, maps strings to strings (`null` reads as none).

Where this reader is stricter than the reference it is on purpose: it refuses
tensor entries with extra keys and duplicate tensor names or metadata keys (the
reference ignores the former and keeps the last of the latter, so such a file
means different things to different readers), and shapes numpy cannot hold
(more than 64 dimensions, or a byte count past the address space even when
another dimension is 0). The format's float8, sub-byte float and complex dtypes
are refused with a message naming them.

Any failure is a one-line `WeightsFileError` naming the file and the problem;
anything else escaping `read` is a bug.

Pickle-based checkpoints (`.pth`, `.pt`, `.bin`, `.ckpt`, `.pkl`) are never
opened: unpickling a file runs code from it. A renamed one is recognised by its
first bytes, once it has turned out to have no JSON header, so that those bytes
never make a valid file refused or a broken one misnamed.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile

import ml_dtypes
import numpy as np

from duojax.errors import FileError, WeightsFileError

_DTYPES = {
  "F64": np.dtype("<f8"),
  "F32": np.dtype("<f4"),
  "F16": np.dtype("<f2"),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype("<i8"),
  "I32": np.dtype("<i4"),
  "I16": np.dtype("<i2"),
  "I8": np.dtype("i1"),
  "U64": np.dtype("<u8"),
  "U32": np.dtype("<u4"),
  "U16": np.dtype("<u2"),
  "U8": np.dtype("u1"),
  "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
# Dtypes the format defines that this reader does not turn into numpy arrays; named
# apart from unknown names so that the message says the file is fine, duojax is not.
_OTHER_DTYPES = (
  "F8_E5M2",
  "F8_E4M3",
  "F8_E8M0",
  "F8_E4M3FNUZ",
  "F8_E5M2FNUZ",
  "F4",
  "F6_E2M3",
  "F6_E3M2",
  "C64",
)
_KEYS = ("dtype", "shape", "data_offsets")
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl", ".pickle")
# A header larger than this is not a weights file (the reference reader's cap).
_MAX_HEADER = 100_000_000
# Offsets, dimensions and sizes are u64 in the reference reader.
_U64 = 2**64
_MAX_NDIM = 64  # numpy's limit
_MAX_BYTES = np.iinfo(np.intp).max

_CONVERT_HINT = (
  "convert it once, in PyTorch, with: import torch, safetensors.torch; "
  "safetensors.torch.save_file({k: v.contiguous() for k, v in "
  "torch.load(PATH, map_location='cpu', weights_only=True).items()}, 'model.safetensors')"
)


def _looks_like_pickle(path: str, head: bytes) -> bool:
  if path.lower().endswith(PICKLE_SUFFIXES):
    return True
  # A safetensors header (JSON) starts right after the 8-byte length. Without
  # one: torch.save writes a zip archive (PK\x03\x04); older files and plain
  # pickles start with the PROTO opcode 0x80.
  if head[8:9] == b"{":
    return False
  return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def _pickle_error(path: str) -> WeightsFileError:
  return WeightsFileError(
    f"{path!r} is a pickle (PyTorch .pth/.bin) file, which duojax never opens "
    f"because unpickling runs code; {_CONVERT_HINT.replace('PATH', repr(path))}"
  )


class _Negative(int):
  """A JSON integer written with a minus sign, "-0" included (the reference refuses it too)."""

  def __repr__(self) -> str:
    return "-" + int.__repr__(abs(self))


class _JSONRefused(ValueError):
  """JSON that Python's parser takes but the format does not (NaN, duplicate keys)."""


def _parse_int(text: str) -> int:
  return _Negative(text) if text.startswith("-") else int(text)


def _refuse_constant(name: str):
  raise _JSONRefused(f"{name} is not a JSON value")


def _object(pairs: list) -> dict:
  result = dict(pairs)
  if len(result) != len(pairs):
    seen = set()
    duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
    raise _JSONRefused(f"the key {_show(duplicate)} appears twice in one object")
  return result


def _show(value, limit: int = 60) -> str:
  """A one-line, bounded repr, for values from a file that may be huge."""
  text = repr(value)
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value) -> str:
  if isinstance(value, _Negative):
    return "a negative integer"
  return {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    type(None): "null",
    list: "a list",
    dict: "an object",
  }.get(type(value), type(value).__name__)


def _size_problem(value) -> str | None:
  """None for an integer the format allows as a size or offset, else what is wrong with it."""
  if type(value) is int:  # (not bool, a subclass of int; not _Negative)
    return None if value < _U64 else "larger than 2**64 - 1"
  return "negative" if isinstance(value, _Negative) else _kind(value)


def _valid_unicode(text: str) -> bool:
  try:
    text.encode("utf-8")  # Python's JSON parser lets lone surrogates ("\ud800") through
    return True
  except UnicodeEncodeError:
    return False


def _header(path: str, raw: bytes) -> dict:
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as e:
    raise WeightsFileError(
      f"{path!r}: the safetensors header is not UTF-8 (byte {e.start})"
    ) from None
  try:
    header = json.loads(
      text, parse_int=_parse_int, parse_constant=_refuse_constant, object_pairs_hook=_object
    )
  except RecursionError:
    raise WeightsFileError(f"{path!r}: the safetensors header nests too deeply") from None
  except _JSONRefused as e:
    raise WeightsFileError(f"{path!r}: unreadable safetensors header: {e}") from None
  except ValueError as e:  # JSONDecodeError, and too many digits for int()
    reason = " ".join(str(e).split())[:200]
    raise WeightsFileError(
      f"{path!r}: unreadable safetensors header (not valid JSON: {reason})"
    ) from None
  if not isinstance(header, dict):
    raise WeightsFileError(
      f"{path!r}: the safetensors header is {_kind(header)}, not a JSON object"
    )
  return header


def _metadata(path: str, value) -> dict[str, str]:
  if value is None:  # what the reference reader takes as no metadata
    return {}
  if not isinstance(value, dict):
    raise WeightsFileError(
      f"{path!r}: the safetensors __metadata__ is {_kind(value)}, not an object of strings"
    )
  for key, item in value.items():
    if not isinstance(item, str):
      raise WeightsFileError(
        f"{path!r}: the safetensors __metadata__ value of {_show(key)} is {_kind(item)}, "
        "not a string"
      )
    if not (_valid_unicode(key) and _valid_unicode(item)):
      raise WeightsFileError(
        f"{path!r}: the safetensors __metadata__ entry {_show(key)} is not valid Unicode"
      )
  return value


def _entry(path: str, name: str, info) -> tuple[np.dtype, tuple[int, ...], int, int]:
  """(dtype, shape, begin, end) of one tensor's header entry, checked on its own."""
  where = f"{path!r}: tensor {_show(name)}"
  if not _valid_unicode(name):
    raise WeightsFileError(f"{where} has a name that is not valid Unicode")
  if not isinstance(info, dict):
    raise WeightsFileError(
      f"{where} is described by {_kind(info)}, not an object with dtype, shape and data_offsets"
    )
  for key in _KEYS:
    if key not in info:
      raise WeightsFileError(f"{where} has no {key!r} in its header entry")
  for key in info:
    if key not in _KEYS:
      raise WeightsFileError(
        f"{where} has an unexpected key {_show(key)} (only dtype, shape and data_offsets)"
      )
  dtype_name = info["dtype"]
  if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
    supported = ", ".join(_DTYPES)
    if isinstance(dtype_name, str) and dtype_name in _OTHER_DTYPES:
      raise WeightsFileError(
        f"{where} has dtype {dtype_name}, which duojax does not read (it reads {supported})"
      )
    raise WeightsFileError(
      f"{where} has unknown dtype {_show(dtype_name)} (safetensors dtypes duojax reads: "
      f"{supported})"
    )
  dtype = _DTYPES[dtype_name]
  shape = info["shape"]
  if not isinstance(shape, list):
    raise WeightsFileError(f"{where} has shape {_show(shape)}, {_kind(shape)}, not a list")
  for dim in shape:
    problem = _size_problem(dim)
    if problem:
      raise WeightsFileError(
        f"{where} has shape {_show(shape)}: dimension {_show(dim)} is {problem}, "
        "not a non-negative integer"
      )
  offsets = info["data_offsets"]
  if not isinstance(offsets, list) or len(offsets) != 2:
    raise WeightsFileError(
      f"{where} has data_offsets {_show(offsets)}, not a list of two integers [begin, end]"
    )
  for offset in offsets:
    problem = _size_problem(offset)
    if problem:
      raise WeightsFileError(
        f"{where} has data_offsets {_show(offsets)}: {_show(offset)} is {problem}, "
        "not a non-negative integer"
      )
  begin, end = offsets
  if begin > end:
    raise WeightsFileError(f"{where} has data_offsets {_show(offsets)} that end before they begin")
  # Counted as the reference does, so that the same shapes overflow: dimension by
  # dimension (a 0 after an overflow does not save it), then in bits.
  count = 1
  for dim in shape:
    count *= dim
    if count >= _U64:
      raise WeightsFileError(f"{where} has shape {_show(shape)}, too many elements for any file")
  if count * dtype.itemsize * 8 >= _U64:
    raise WeightsFileError(f"{where} has shape {_show(shape)}, too many bytes for any file")
  if end - begin != count * dtype.itemsize:
    raise WeightsFileError(
      f"{where} of dtype {dtype_name} and shape {_show(tuple(shape))} needs "
      f"{count * dtype.itemsize} bytes, its data_offsets span {end - begin}"
    )
  nonzero = 1
  for dim in shape:
    nonzero *= dim or 1
  if len(shape) > _MAX_NDIM or nonzero * dtype.itemsize > _MAX_BYTES:
    raise WeightsFileError(
      f"{where} has shape {_show(shape)}, which numpy cannot hold (at most {_MAX_NDIM} "
      f"dimensions and {_MAX_BYTES} bytes without its zero dimensions)"
    )
  return dtype, tuple(shape), begin, end


def _check_layout(path: str, spans: list[tuple[int, int, str]], data_size: int) -> None:
  """The tensors' byte ranges tile the data buffer: from 0, no gap, no overlap, to its end."""
  position, previous = 0, None
  for begin, end, name in sorted(spans, key=lambda s: (s[0], s[1])):
    if begin > position:
      after = f"after tensor {_show(previous)}" if previous is not None else "at the start"
      raise WeightsFileError(
        f"{path!r}: data bytes {position}..{begin} {after} belong to no tensor "
        f"(tensor {_show(name)} begins at {begin})"
      )
    if begin < position:
      raise WeightsFileError(
        f"{path!r}: tensors {_show(previous)} and {_show(name)} share data bytes "
        f"{begin}..{min(position, end)}"
      )
    position, previous = end, name
  if position > data_size:
    raise WeightsFileError(
      f"{path!r} is truncated: its tensors need {position} data bytes, the file has {data_size}"
    )
  if position < data_size:
    raise WeightsFileError(
      f"{path!r}: the last {data_size - position} bytes of the file belong to no tensor"
    )


def read(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """(tensors by name, the header's string metadata) of a safetensors file."""
  return _read(path, _read_tensors)


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
  """Each tensor's shape by name, checked as `read` checks the file but from its
  header alone: what a file holds, without reading gigabytes of weights."""
  return _read(
    path,
    lambda path, f, header, start, size: {
      n: e[1] for n, e in _checked_entries(path, header, size - start)[1].items()
    },
  )


def _read(path, then):
  """`then(path, f, header, data_start, size)` on the open file, its errors one line."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    if os.path.exists(path):
      raise WeightsFileError(f"weights file {path!r} is not a regular file")
    raise WeightsFileError(f"weights file {path!r} does not exist")
  if path.lower().endswith(PICKLE_SUFFIXES):
    raise _pickle_error(path)
  try:
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      head = f.read(9)
      try:
        header, header_len = _read_header(path, f, size, head)
      except WeightsFileError:
        # Only when there is no JSON header: a safetensors file is never refused, nor
        # its problem misnamed, for what its first bytes look like.
        if _looks_like_pickle(path, head):
          raise _pickle_error(path) from None
        raise
      return then(path, f, header, 8 + header_len, size)
  except OSError as e:
    raise WeightsFileError(f"weights file {path!r} cannot be read: {e.strerror or e}") from None


def _read_header(path: str, f, size: int, head: bytes) -> tuple[dict, int]:
  """The JSON object of the header, checked only to be one, and its length."""
  if len(head) < 9:
    raise WeightsFileError(f"{path!r} is not a safetensors file: {size} bytes is too short")
  (header_len,) = struct.unpack("<Q", head[:8])
  if header_len > _MAX_HEADER:
    raise WeightsFileError(
      f"{path!r} is not a safetensors file: its header length {header_len} is over the "
      f"format's limit of {_MAX_HEADER} bytes"
    )
  if header_len > size - 8:
    raise WeightsFileError(
      f"{path!r} is not a safetensors file or is truncated: header of {header_len} bytes "
      f"in a {size}-byte file"
    )
  f.seek(8)
  raw = f.read(header_len)
  if len(raw) != header_len:
    raise WeightsFileError(f"{path!r} is truncated: it ended inside its header")
  return _header(path, raw), header_len


def _checked_entries(path: str, header: dict, data_size: int) -> tuple[dict, dict]:
  """(metadata, name -> (dtype, shape, begin, end)), every entry and the byte layout checked."""
  metadata = _metadata(path, header.pop("__metadata__", None))
  entries = {name: _entry(path, name, info) for name, info in header.items()}
  _check_layout(path, [(b, e, name) for name, (_, _, b, e) in entries.items()], data_size)
  return metadata, entries


def _read_tensors(
  path: str, f, header: dict, data_start: int, size: int
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  metadata, entries = _checked_entries(path, header, size - data_start)
  # Every size is now checked against the file, so what is allocated below is at
  # most the file's own size. Read in file order; the result keeps the header's.
  data = {}
  for name, (dtype, shape, begin, end) in sorted(entries.items(), key=lambda e: e[1][2:]):
    buffer = np.empty(end - begin, np.uint8)
    f.seek(data_start + begin)
    if f.readinto(memoryview(buffer)) != end - begin:
      raise WeightsFileError(f"{path!r} is truncated: it shrank while it was read")
    # _entry has checked numpy's limits already; the guard keeps any slip there one line.
    try:
      data[name] = buffer.view(dtype).reshape(shape)
    except ValueError as e:
      raise WeightsFileError(
        f"{path!r}: tensor {_show(name)} cannot be held by numpy ({' '.join(str(e).split())})"
      ) from None
  return {name: data[name] for name in entries}, dict(metadata)


def write(
  path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None
) -> None:
  """Writes `tensors` as a safetensors file, atomically (no partial file on error)."""
  header, chunks, offset = {}, [], 0
  for name in sorted(tensors):
    if name == "__metadata__":
      raise WeightsFileError("a tensor cannot be named '__metadata__' in a safetensors file")
    array = np.asarray(tensors[name])  # (ascontiguousarray would make 0-d arrays 1-d)
    if array.dtype.byteorder == ">":
      array = array.astype(array.dtype.newbyteorder("<"))
    if not array.flags.c_contiguous:
      array = array.copy(order="C")
    if array.dtype not in _NAMES:
      raise WeightsFileError(
        f"tensor {name!r} has dtype {array.dtype}, not storable in safetensors"
      )
    data = array.tobytes()
    header[name] = {
      "dtype": _NAMES[array.dtype],
      "shape": list(array.shape),
      "data_offsets": [offset, offset + len(data)],
    }
    chunks.append(data)
    offset += len(data)
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
  encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
  directory = os.path.dirname(os.path.abspath(path))
  tmp = None
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".safetensors")
    with os.fdopen(fd, "wb") as f:
      f.write(struct.pack("<Q", len(encoded)))
      f.write(encoded)
      for data in chunks:
        f.write(data)
    os.replace(tmp, path)
  except BaseException as e:
    if tmp is not None and os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.errno is not None:  # a folder under a file, a full disk
      raise FileError(e.errno, f"cannot write {path}: {e.strerror}") from e
    raise
