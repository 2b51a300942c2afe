"""The safetensors reader against malformed files: each rule on its own, then seeded fuzzing.

The fuzz tests judge every mutated file with `expected`, a second, plainly
written statement of the format's rules (it parses integers as their text, so it
shares no number handling with the reader): the reader must return exactly what
`expected` says, or, where `expected` refuses the file, raise one
`WeightsFileError` with a one-line message. Where the reference library is
installed, the same oracle, relaxed to the reference's own rules, is checked
against it, so that the rules here are the format's and not only ours.
"""

import itertools
import json
import math
import operator
import re
import struct

import ml_dtypes
import numpy as np
import pytest

from duojax.convert import safetensors_io
from duojax.errors import WeightsFileError

# Name -> (numpy dtype, bits) for what duojax reads; the rest of the format's names with bits.
READ = {
  "BOOL": ("?", 8),
  "U8": ("u1", 8),
  "I8": ("i1", 8),
  "U16": ("<u2", 16),
  "I16": ("<i2", 16),
  "U32": ("<u4", 32),
  "I32": ("<i4", 32),
  "U64": ("<u8", 64),
  "I64": ("<i8", 64),
  "F16": ("<f2", 16),
  "BF16": (ml_dtypes.bfloat16, 16),
  "F32": ("<f4", 32),
  "F64": ("<f8", 64),
}
OTHER_BITS = {
  "F4": 4,
  "F6_E2M3": 6,
  "F6_E3M2": 6,
  "F8_E5M2": 8,
  "F8_E4M3": 8,
  "F8_E8M0": 8,
  "F8_E4M3FNUZ": 8,
  "F8_E5M2FNUZ": 8,
  "C64": 64,
}


def pack(header, data=b"", *, raw=None, length=None):
  """A file's bytes: `header` as JSON (or `raw` header bytes as they are), then `data`."""
  text = raw if raw is not None else json.dumps(header).encode()
  return struct.pack("<Q", len(text) if length is None else length) + text + data


def w(**kw):
  """One tensor entry, by default a float32 [2, 3] at the start of the data."""
  return {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24], **kw}


def refused(path, match):
  """Reads `path`, which must fail with one WeightsFileError: one line, naming the file."""
  with pytest.raises(WeightsFileError) as info:
    safetensors_io.read(str(path))
  error = info.value
  message = str(error)
  assert "\n" not in message and "\r" not in message, message
  assert repr(str(path)) in message, message
  assert re.search(match, message), message
  assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
  return message


# ---------------------------------------------------------------------------- one rule per case

DATA = bytes(range(24))
MALFORMED = {
  # file and header length
  "empty file": (b"", "too short"),
  "7-byte file": (b"\x02\x00\x00\x00\x00\x00\x00", "too short"),
  "length only": (struct.pack("<Q", 0), "too short"),
  "header length beyond the file": (pack({"w": w()}, DATA)[:30], "truncated: header of"),
  "header length absurd": (pack(None, raw=b"{}", length=2**63), "over the format's limit"),
  "header length just over the cap": (pack(None, raw=b"{}", length=100_000_001), "limit"),
  # header text
  "header not JSON": (pack(None, raw=b"{'w': 1}"), "not valid JSON"),
  "header only spaces": (pack(None, raw=b"  "), "not valid JSON"),
  "header with trailing text": (pack(None, raw=b"{}x"), "not valid JSON"),
  "header with a BOM": (pack(None, raw=b"\xef\xbb\xbf{}"), "not valid JSON"),
  "header not an object": (pack([1, 2]), "is a list, not a JSON object"),
  "header a string": (pack("{}"), "is a string, not a JSON object"),
  "header not UTF-8": (pack(None, raw=b'{"w\xff": 1}'), "not UTF-8 \\(byte 3\\)"),
  "NaN in the header": (pack(None, raw=b'{"__metadata__": {"a": NaN}}'), "NaN is not a JSON"),
  "lone surrogate in a name": (
    pack(None, raw=b'{"\\ud800": {"dtype": "U8", "shape": [], "data_offsets": [0, 1]}}', data=b"x"),
    "not valid Unicode",
  ),
  "deeply nested": (
    pack(None, raw=b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
    "nests too deeply",
  ),
  "integer of 5000 digits": (
    pack(
      None,
      raw=b'{"w": {"dtype": "U8", "shape": [' + b"7" * 5000 + b'], "data_offsets": [0, 1]}}',
      data=b"x",
    ),
    "not valid JSON",
  ),
  "duplicate tensor name": (
    pack(
      None,
      raw=b'{"w": {"dtype": "U8", "shape": [], "data_offsets": [0, 1]}, '
      b'"w": {"dtype": "U8", "shape": [], "data_offsets": [0, 1]}}',
      data=b"x",
    ),
    "key 'w' appears twice",
  ),
  "duplicate metadata key": (
    pack(None, raw=b'{"__metadata__": {"a": "1", "a": "2"}}'),
    "key 'a' appears twice",
  ),
  # entries
  "entry not an object": (pack({"w": [0, 24]}, DATA), "'w' is described by a list"),
  "missing dtype": (
    pack({"w": {"shape": [2, 3], "data_offsets": [0, 24]}}, DATA),
    "'w' has no 'dtype'",
  ),
  "missing shape": (pack({"w": {"dtype": "F32", "data_offsets": [0, 24]}}, DATA), "no 'shape'"),
  "missing data_offsets": (
    pack({"w": {"dtype": "F32", "shape": [2, 3]}}, DATA),
    "no 'data_offsets'",
  ),
  "extra key": (pack({"w": w(strides=[3, 1])}, DATA), "unexpected key 'strides'"),
  "unknown dtype": (pack({"w": w(dtype="F33")}, DATA), "unknown dtype 'F33'.*BF16"),
  "lower-case dtype": (pack({"w": w(dtype="f32")}, DATA), "unknown dtype 'f32'"),
  "dtype not a string": (pack({"w": w(dtype=4)}, DATA), "unknown dtype 4"),
  "dtype the format has, duojax not": (
    pack({"w": w(dtype="F8_E4M3", shape=[24])}, DATA),
    "dtype F8_E4M3, which duojax does not read",
  ),
  # shapes
  "negative dimension": (pack({"w": w(shape=[-2, -3])}, DATA), "dimension -2 is negative"),
  "minus zero dimension": (
    pack(
      None, raw=b'{"w": {"dtype": "F32", "shape": [-0, 2, 3], "data_offsets": [0, 24]}}', data=DATA
    ),
    "dimension -0 is negative",
  ),
  "float dimension": (pack({"w": w(shape=[2.0, 3])}, DATA), "dimension 2.0 is a float"),
  "integral float written with an exponent": (
    pack(
      None, raw=b'{"w": {"dtype": "F32", "shape": [2e0, 3], "data_offsets": [0, 24]}}', data=DATA
    ),
    "is a float",
  ),
  "boolean dimension": (pack({"w": w(shape=[True, 6])}, DATA), "dimension True is a boolean"),
  "shape a string": (pack({"w": w(shape="6")}, DATA), "shape '6', a string, not a list"),
  "shape null": (pack({"w": w(shape=None)}, DATA), "shape None, null, not a list"),
  "null in shape": (pack({"w": w(shape=[None, 6])}, DATA), "dimension None is null"),
  "string in shape": (pack({"w": w(shape=["6"])}, DATA), "dimension '6' is a string"),
  "dimension of 2**64": (
    pack({"w": w(shape=[0, 2**64], data_offsets=[0, 0])}),
    "larger than 2\\*\\*64 - 1",
  ),
  "element count overflowing before a 0": (
    pack({"w": w(dtype="U8", shape=[2**32, 2**32, 0], data_offsets=[0, 0])}),
    "too many elements",
  ),
  "byte count overflowing": (
    pack({"w": w(dtype="F64", shape=[2**58], data_offsets=[0, 0])}),
    "too many bytes",
  ),
  "more dimensions than numpy holds": (
    pack({"w": w(dtype="U8", shape=[1] * 65, data_offsets=[0, 1])}, b"x"),
    "numpy cannot hold",
  ),
  "empty array numpy cannot hold": (
    pack({"w": w(shape=[0, 2**62], data_offsets=[0, 0])}),
    "numpy cannot hold",
  ),
  "wrong byte length for the shape": (
    pack({"w": w(shape=[2, 2])}, DATA),
    "needs 16 bytes, its data_offsets span 24",
  ),
  "scalar given a vector's bytes": (pack({"w": w(shape=[])}, DATA), "needs 4 bytes"),
  # offsets
  "offsets reversed": (pack({"w": w(data_offsets=[24, 0])}, DATA), "end before they begin"),
  "one offset": (pack({"w": w(data_offsets=[24])}, DATA), "not a list of two integers"),
  "three offsets": (pack({"w": w(data_offsets=[0, 24, 24])}, DATA), "not a list of two"),
  "offsets an object": (
    pack({"w": w(data_offsets={"begin": 0, "end": 24})}, DATA),
    "not a list of two",
  ),
  "negative offset": (pack({"w": w(data_offsets=[-24, 0])}, DATA), "-24 is negative"),
  "float offset": (pack({"w": w(data_offsets=[0, 24.0])}, DATA), "24.0 is a float"),
  "boolean offset": (
    pack({"w": w(dtype="U8", shape=[1], data_offsets=[False, True])}, b"x"),
    "False is a boolean",
  ),
  "offsets not covering the buffer": (
    pack({"w": w(shape=[4], data_offsets=[0, 16])}, DATA),
    "last 8 bytes of the file belong to no tensor",
  ),
  "trailing bytes": (pack({"w": w()}, DATA + b"\0"), "last 1 bytes of the file belong to no"),
  "bytes but no tensors": (pack({}, b"\0" * 4), "last 4 bytes"),
  "gap at the start": (
    pack({"w": w(shape=[4], data_offsets=[8, 24])}, DATA),
    "data bytes 0..8 at the start belong to no tensor",
  ),
  "gap between tensors": (
    pack({"a": w(shape=[2], data_offsets=[0, 8]), "b": w(shape=[2], data_offsets=[16, 24])}, DATA),
    "data bytes 8..16 after tensor 'a' belong to no tensor",
  ),
  "overlapping ranges": (
    pack({"a": w(shape=[4], data_offsets=[0, 16]), "b": w(shape=[4], data_offsets=[8, 24])}, DATA),
    "tensors 'a' and 'b' share data bytes 8..16",
  ),
  "shared bytes": (
    pack({"a": w(), "b": w(shape=[6])}, DATA),
    "tensors '[ab]' and '[ab]' share data bytes 0..24",
  ),
  "an empty tensor inside another": (
    pack({"a": w(), "b": w(shape=[0], data_offsets=[8, 8])}, DATA),
    "share data bytes 8..8",
  ),
  "data cut short": (pack({"w": w()}, DATA[:20]), "truncated: its tensors need 24 data bytes"),
  # metadata
  "metadata a string": (pack({"__metadata__": "format=pt"}), "__metadata__ is a string, not"),
  "metadata a list": (pack({"__metadata__": [["format", "pt"]]}), "__metadata__ is a list"),
  "metadata with a number": (
    pack({"__metadata__": {"epoch": 3}}),
    "value of 'epoch' is an integer, not a string",
  ),
  "metadata with a null": (pack({"__metadata__": {"epoch": None}}), "'epoch' is null"),
  "metadata with an object": (pack({"__metadata__": {"cfg": {}}}), "'cfg' is an object"),
}


@pytest.mark.parametrize("content,match", MALFORMED.values(), ids=MALFORMED.keys())
def test_each_malformed_file_gives_one_line_naming_the_problem(tmp_path, content, match):
  path = tmp_path / "m.safetensors"
  path.write_bytes(content)
  refused(path, match)


def test_the_same_tensor_is_valid_once_the_defects_are_gone(tmp_path):
  # The cases above fail for their own defect only: the base they vary is read.
  path = tmp_path / "ok.safetensors"
  path.write_bytes(pack({"w": w(), "__metadata__": {"format": "pt"}}, DATA))
  tensors, meta = safetensors_io.read(str(path))
  assert meta == {"format": "pt"}
  np.testing.assert_array_equal(tensors["w"], np.frombuffer(DATA, "<f4").reshape(2, 3))


def test_files_at_the_edges_of_the_rules_are_read(tmp_path):
  path = tmp_path / "edge.safetensors"
  cases = [
    # No tensors at all, and a null __metadata__ (the reference reads it as none).
    (pack({}), {}, {}),
    (pack({"__metadata__": None}), {}, {}),
    # Empty tensors may share an offset, at the start, between others and at the end.
    (
      pack(
        {
          "e0": w(shape=[0, 5], data_offsets=[0, 0]),
          "a": w(dtype="U8", shape=[], data_offsets=[0, 1]),
          "e1": w(dtype="F64", shape=[3, 0], data_offsets=[1, 1]),
          "e2": w(dtype="BOOL", shape=[0], data_offsets=[1, 1]),
        },
        b"\x07",
      ),
      {
        "e0": ("<f4", (0, 5), b""),
        "a": ("u1", (), b"\x07"),
        "e1": ("<f8", (3, 0), b""),
        "e2": ("?", (0,), b""),
      },
      {},
    ),
    # Tensors listed out of file order, and the largest dimension numpy holds next to a 0.
    (
      pack(
        {
          "b": w(dtype="I16", shape=[1], data_offsets=[2, 4]),
          "a": w(dtype="I16", shape=[1], data_offsets=[0, 2]),
          "z": w(dtype="U8", shape=[0, 2**63 - 1], data_offsets=[4, 4]),
        },
        b"\x01\x00\x02\x00",
      ),
      {
        "b": ("<i2", (1,), b"\x02\x00"),
        "a": ("<i2", (1,), b"\x01\x00"),
        "z": ("u1", (0, 2**63 - 1), b""),
      },
      {},
    ),
    # Whitespace around the object, and 64 dimensions.
    (
      pack(
        None,
        raw=b'\n {"m": {"dtype": "U8", "shape": ['
        + b",".join([b"1"] * 64)
        + b'], "data_offsets": [0, 1]}} \t',
        data=b"\x05",
      ),
      {"m": ("u1", (1,) * 64, b"\x05")},
      {},
    ),
  ]
  for content, want, want_meta in cases:
    path.write_bytes(content)
    tensors, meta = safetensors_io.read(str(path))
    assert meta == want_meta
    assert list(tensors) == list(want)  # in the header's order
    for name, (dtype, shape, data) in want.items():
      assert (tensors[name].dtype, tensors[name].shape) == (np.dtype(dtype), shape)
      assert tensors[name].tobytes() == data


def test_a_valid_file_is_not_taken_for_a_pickle_by_its_first_bytes(tmp_path):
  # A header of 128 bytes that starts with a space: the file starts with 0x80, the
  # pickle PROTO opcode, and has no "{" at byte 8; it is still a safetensors file.
  body = b' {"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
  path = tmp_path / "w.safetensors"
  path.write_bytes(struct.pack("<Q", 128) + body.ljust(128) + b"\x2a")
  assert path.read_bytes()[:1] == b"\x80"
  assert safetensors_io.read(str(path))[0]["w"].tolist() == [42]
  # Broken after its header, it is refused for what is wrong; without a JSON header,
  # for what its first bytes look like.
  path.write_bytes(struct.pack("<Q", 128) + body.ljust(128))
  refused(path, "truncated")
  path.write_bytes(struct.pack("<Q", 128) + body[:-1].ljust(128) + b"\x2a")
  refused(path, "pickle.*never opens")


def test_paths_that_are_not_readable_files(tmp_path):
  refused(tmp_path, "is not a regular file")
  refused(tmp_path / "absent.safetensors", "does not exist")


def test_arrays_are_independent_of_the_file(tmp_path):
  path = tmp_path / "w.safetensors"
  safetensors_io.write(str(path), {"w": np.arange(4, dtype=np.int32)})
  tensors, _ = safetensors_io.read(str(path))
  path.write_bytes(b"")  # the arrays were copied out, not mapped
  tensors["w"] += 1
  assert tensors["w"].tolist() == [1, 2, 3, 4]


# ---------------------------------------------------------------------------- round trip


def test_every_supported_dtype_round_trips_with_metadata(tmp_path):
  assert set(READ) == set(safetensors_io._DTYPES)
  rng = np.random.default_rng(0)
  tensors = {}
  for name, (dtype, _) in READ.items():
    dtype = np.dtype(dtype)
    for shape in [(), (0,), (3, 0, 2), (2, 3, 4)]:
      if dtype.kind == "b":
        value = rng.integers(0, 2, shape).astype(bool)
      elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        value = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
      else:
        value = (rng.normal(size=shape) * 100).astype(dtype)
      tensors[f"{name}.{'x'.join(map(str, shape)) or 'scalar'}"] = value
  tensors["big-endian"] = np.arange(5, dtype=">f4")
  tensors["strided"] = np.arange(12, dtype=np.int16).reshape(3, 4)[:, ::2]
  path = str(tmp_path / "all.safetensors")
  meta = {"format": "pt", "note": "ünïcode ✓", "empty": ""}
  safetensors_io.write(path, tensors, meta)
  read, read_meta = safetensors_io.read(path)
  assert read_meta == meta and set(read) == set(tensors)
  with open(path, "rb") as f:
    header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
  for name, value in tensors.items():
    assert read[name].dtype == (np.dtype("<f4") if name == "big-endian" else value.dtype), name
    assert read[name].shape == value.shape, name
    np.testing.assert_array_equal(read[name], value, err_msg=name)
    if "." in name:
      assert header[name]["dtype"] == name.split(".")[0], name


def test_a_tensor_named_like_the_metadata_is_not_written(tmp_path):
  with pytest.raises(WeightsFileError, match="cannot be named '__metadata__'"):
    safetensors_io.write(str(tmp_path / "x.safetensors"), {"__metadata__": np.zeros(1)})


# ---------------------------------------------------------------------------- the oracle

U64 = 2**64


class Refused(Exception):
  pass


def _refuse(*_):
  raise Refused


def _pairs(strict):
  """A JSON object hook refusing duplicate keys: all of them, or only where the reference does.

  The reference keeps the last of duplicate tensor names or metadata keys (maps) and
  refuses duplicate fields of an entry and a second `__metadata__` (struct fields);
  telling those apart by key alone is close enough for the files generated here.
  """

  def hook(pairs):
    keys = [k for k, _ in pairs]
    duplicates = {k for k in keys if keys.count(k) > 1}
    if duplicates and (strict or duplicates & {"dtype", "shape", "data_offsets", "__metadata__"}):
      raise Refused
    return dict(pairs)

  return hook


def _size(token):
  """The value of a JSON number given as ("int", text) when it is a u64, else refusal."""
  if type(token) is not tuple or not re.fullmatch(r"0|[1-9][0-9]{0,19}", token[1]):
    raise Refused
  value = int(token[1])
  if value >= U64:
    raise Refused
  return value


def _unicode(text):
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    raise Refused from None


def expected(blob, strict=True):
  """({name: (dtype name, shape, bytes)}, metadata) that `blob` holds by the rules, or None.

  `strict=False` gives the reference reader's rules instead: extra keys in an entry
  ignored, the last of duplicate tensor names or metadata keys kept, every dtype of
  the format, no numpy limits.
  """
  try:
    return _expected(blob, strict)
  except Refused:
    return None


def _expected(blob, strict):
  if len(blob) < 8:
    raise Refused
  n = int.from_bytes(blob[:8], "little")
  if n > 100_000_000 or 8 + n > len(blob):
    raise Refused
  try:
    header = json.loads(
      blob[8 : 8 + n].decode("utf-8"),
      parse_int=lambda s: ("int", s),
      parse_constant=_refuse,
      object_pairs_hook=_pairs(strict),
    )
  except (ValueError, RecursionError):
    raise Refused from None
  if type(header) is not dict:
    raise Refused
  meta = header.pop("__metadata__", None)
  meta = {} if meta is None else meta
  if type(meta) is not dict or any(type(v) is not str for v in meta.values()):
    raise Refused
  for text in itertools.chain(meta, meta.values(), header):
    _unicode(text)
  bits_of = {name: bits for name, (_, bits) in READ.items()}
  if not strict:
    bits_of.update(OTHER_BITS)
  spans = []
  for name, info in header.items():
    if type(info) is not dict or not {"dtype", "shape", "data_offsets"} <= set(info):
      raise Refused
    if strict and len(info) != 3:
      raise Refused
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if type(dtype) is not str or dtype not in bits_of:
      raise Refused
    if type(shape) is not list or type(offsets) is not list or len(offsets) != 2:
      raise Refused
    dims = [_size(d) for d in shape]
    begin, end = _size(offsets[0]), _size(offsets[1])
    if any(p >= U64 for p in itertools.accumulate(dims, operator.mul)):
      raise Refused
    bits = math.prod(dims) * bits_of[dtype]
    if bits >= U64 or bits % 8 or begin > end or end - begin != bits // 8:
      raise Refused
    nonzero = math.prod(d or 1 for d in dims)
    if strict and (len(dims) > 64 or nonzero * bits_of[dtype] // 8 >= 2**63):
      raise Refused
    spans.append((begin, end, name, dtype, tuple(dims)))
  position, data = 0, blob[8 + n :]
  for begin, end, *_ in sorted(spans, key=lambda s: s[:2]):
    if begin != position:
      raise Refused
    position = end
  if position != len(data):
    raise Refused
  by_name = {name: (dtype, shape, data[b:e]) for b, e, name, dtype, shape in spans}
  return {name: by_name[name] for name in header}, meta


# ---------------------------------------------------------------------------- the fuzzer


def base_files():
  rng = np.random.default_rng(1)
  files = []
  tensors = {
    "w": rng.normal(size=(3, 2)).astype(np.float32),
    "b": rng.normal(size=(4,)).astype(ml_dtypes.bfloat16),
    "h": rng.normal(size=(2, 2)).astype(np.float16),
    "i": rng.integers(-9, 9, (5,)).astype(np.int64),
    "u": rng.integers(0, 9, (3,)).astype(np.uint16),
    "s": np.array(7, np.int32),
    "e": np.zeros((0, 3), np.float64),
    "m": np.array([True, False, True]),
    "c": np.arange(4, dtype=np.int8),
  }
  header, data = {}, b""
  for name, value in tensors.items():
    raw = value.tobytes()
    header[name] = {
      "dtype": safetensors_io._NAMES[value.dtype],
      "shape": list(value.shape),
      "data_offsets": [len(data), len(data) + len(raw)],
    }
    data += raw
  files.append(pack({**header, "__metadata__": {"format": "pt", "epoch": "3"}}, data))
  files.append(
    pack({"s": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]}}, np.float64(2.5).tobytes())
  )
  files.append(
    pack(
      {
        "a": {"dtype": "I16", "shape": [2], "data_offsets": [4, 8]},
        "z": {"dtype": "U8", "shape": [0], "data_offsets": [8, 8]},
        "b": {"dtype": "I16", "shape": [2], "data_offsets": [0, 4]},
      },
      bytes(range(8)),
    )
  )
  files.append(pack({"__metadata__": {"only": "metadata"}}))
  return files


NUMBER = re.compile(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?")
TOKENS = [
  b"-0",
  b"1.0",
  b"1e2",
  b"-1",
  b"-8",
  b"18446744073709551615",
  b"18446744073709551616",
  b"9223372036854775807",
  b"true",
  b"null",
  b'"3"',
  b"NaN",
  b"[]",
  b"{}",
  b"00",
  b"0",
  b"1",
  b"4",
  b"8",
  b"16",
  b"24",
  b"2" * 30,
]
VALUES = [
  lambda v: -1,
  lambda v: 0,
  lambda v: 1,
  lambda v: 2**64,
  lambda v: 2**63,
  lambda v: 2**32,
  lambda v: True,
  lambda v: None,
  lambda v: "4",
  lambda v: 4.0,
  lambda v: [],
  lambda v: {},
  lambda v: [v],
  lambda v: "F32",
  lambda v: "BF16",
  lambda v: "F8_E4M3",
  lambda v: "I16",
  lambda v: "U8",
  lambda v: "f32",
  lambda v: float("nan"),
  lambda v: v * 2 if type(v) is int else v,
  lambda v: v + 1 if type(v) is int else v,
  lambda v: v - 1 if type(v) is int else v,
]
SAME_SIZE = [
  ("F32", "I32", "U32"),
  ("BF16", "F16", "I16", "U16"),
  ("U8", "I8", "BOOL"),
  ("F64", "I64", "U64"),
]


def split(blob):
  n = int.from_bytes(blob[:8].ljust(8, b"\0"), "little")
  return blob[8 : 8 + n], blob[8 + n :]


def _slots(node, path=()):
  """Every (container path, key) in a parsed header, for replacing one value."""
  items = node.items() if isinstance(node, dict) else enumerate(node)
  for key, value in items:
    yield path, key
    if isinstance(value, (dict, list)):
      yield from _slots(value, path + (key,))


def _at(node, path):
  for key in path:
    node = node[key]
  return node


def mutate_header(rng, header):
  """One structural change to a parsed header, often one that keeps the file valid."""
  names = [k for k in header if k != "__metadata__" and isinstance(header[k], dict)]
  choice = rng.integers(10)
  if choice < 4 or not names:
    slots = list(_slots(header))
    if slots:
      path, key = slots[rng.integers(len(slots))]
      parent = _at(header, path)
      parent[key] = VALUES[rng.integers(len(VALUES))](parent[key])
  elif choice == 4:  # drop or add a key somewhere
    dicts = [header] + [v for v in header.values() if isinstance(v, dict)]
    target = dicts[rng.integers(len(dicts))]
    if target and rng.integers(2):
      del target[list(target)[rng.integers(len(target))]]
    else:
      target[["extra", "dtype", "shape", "__metadata__", "x"][rng.integers(5)]] = 1
  elif choice == 5:  # a dtype of the same item size: still valid, other values
    entry = header[names[rng.integers(len(names))]]
    group = [g for g in SAME_SIZE if entry.get("dtype") in g]
    if group:
      entry["dtype"] = group[0][rng.integers(len(group[0]))]
  elif choice == 6:  # swap two tensors' offsets: valid where the sizes agree
    a, b = header[names[rng.integers(len(names))]], header[names[rng.integers(len(names))]]
    a["data_offsets"], b["data_offsets"] = b.get("data_offsets"), a.get("data_offsets")
  elif choice == 7:  # a second name for the same bytes, or a tensor less
    name = names[rng.integers(len(names))]
    if rng.integers(2):
      header[name + "2"] = json.loads(json.dumps(header[name]))
    else:
      del header[name]
  elif choice == 8:  # reshape: a dimension of 1 more or less keeps the size
    shape = header[names[rng.integers(len(names))]].get("shape")
    if isinstance(shape, list):
      if 1 in shape and rng.integers(2):
        shape.remove(1)
      else:
        shape.insert(int(rng.integers(len(shape) + 1)), 1)
  else:  # metadata of another kind
    header["__metadata__"] = [None, "x", {"k": 1}, {"k": "v"}, {}, [["k", "v"]]][rng.integers(6)]
  return header


def mutate(rng, blob):
  """`blob` changed once, at random: bytes, lengths, or the header's structure or text."""
  choice = rng.integers(16)
  size = len(blob)
  if choice >= 14:  # a data byte changed, or the header's keys reordered: still valid
    text, data = split(blob)
    if choice == 14 and data:
      i = size - len(data) + int(rng.integers(len(data)))
      return blob[:i] + bytes([int(rng.integers(256))]) + blob[i + 1 :]
    try:
      header = json.loads(text)
    except (ValueError, RecursionError):
      return blob
    if not isinstance(header, dict):
      return blob
    keys = list(header)
    return pack({keys[j]: header[keys[j]] for j in rng.permutation(len(keys))}, data)
  if choice == 0 and size:  # flip a bit, in the length, the header or anywhere
    header_end = min(size, 8 + len(split(blob)[0]))
    lo, hi = [(0, min(8, size)), (min(8, size), header_end), (0, size)][rng.integers(3)]
    if hi <= lo:
      lo, hi = 0, size
    i = int(rng.integers(lo, hi))
    return blob[:i] + bytes([blob[i] ^ (1 << int(rng.integers(8)))]) + blob[i + 1 :]
  if choice == 1 and size:  # a byte set to anything
    i = int(rng.integers(size))
    return blob[:i] + bytes([int(rng.integers(256))]) + blob[i + 1 :]
  if choice == 2:  # bytes inserted
    i = int(rng.integers(size + 1))
    return blob[:i] + rng.bytes(int(rng.integers(1, 9))) + blob[i:]
  if choice == 3 and size:  # bytes deleted
    i = int(rng.integers(size))
    return blob[:i] + blob[i + int(rng.integers(1, 9)) :]
  if choice == 4:  # truncated
    return blob[: int(rng.integers(size + 1))]
  if choice == 5 and size:  # a segment duplicated
    i = int(rng.integers(size))
    j = int(rng.integers(i, min(size, i + 32) + 1))
    k = int(rng.integers(size + 1))
    return blob[:k] + blob[i:j] + blob[k:]
  if choice == 6:  # the header length changed
    n = int.from_bytes(blob[:8].ljust(8, b"\0"), "little")
    n = [n + 1, n - 1, n + 8, max(n - 8, 0), 0, 2**63, 100_000_001, int(rng.integers(2**62))][
      rng.integers(8)
    ]
    return struct.pack("<Q", n % 2**64) + blob[8:]
  if choice == 7:  # bytes appended
    return blob + rng.bytes(int(rng.integers(1, 9)))
  text, data = split(blob)
  if choice in (8, 9):  # a number token in the header replaced
    numbers = list(NUMBER.finditer(text))
    if numbers:
      m = numbers[rng.integers(len(numbers))]
      text = text[: m.start()] + TOKENS[rng.integers(len(TOKENS))] + text[m.end() :]
      return pack(None, data, raw=text)
    return blob
  try:  # the header parsed, changed and written again (with its length, mostly)
    header = json.loads(text)
  except (ValueError, RecursionError):
    return blob
  if not isinstance(header, dict):
    return blob
  for _ in range(int(rng.integers(1, 3))):
    header = mutate_header(rng, header)
  raw = json.dumps(header).encode()
  if rng.integers(4) == 0:
    raw = b" " * int(rng.integers(4)) + raw + b" " * int(rng.integers(8))
  return pack(None, data, raw=raw, length=None if rng.integers(10) else len(text))


def fuzz_cases(seed, count):
  rng = np.random.default_rng(seed)
  bases = base_files()
  for i in range(count):
    blob = bases[i % len(bases)]
    for _ in range(int(rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15]))):
      blob = mutate(rng, blob)
    yield i, blob


def check_against_oracle(path, i, blob):
  """Whether the reader read `blob`; fails unless it did exactly what `expected` says."""
  path.write_bytes(blob)
  want = expected(blob)
  try:
    tensors, meta = safetensors_io.read(str(path))
  except WeightsFileError as e:
    assert want is None, f"case {i}: a valid file was refused ({e}): {blob[:300]!r}"
    message = str(e)
    assert "\n" not in message and repr(str(path)) in message, (i, message)
    return False
  except Exception as e:
    raise AssertionError(f"case {i}: {e!r} escaped the reader: {blob[:300]!r}") from e
  assert want is not None, f"case {i}: an invalid file was read: {blob[:300]!r}"
  want_tensors, want_meta = want
  assert meta == want_meta, i
  assert list(tensors) == list(want_tensors), i
  for name, (dtype, shape, data) in want_tensors.items():
    got = tensors[name]
    assert got.dtype == np.dtype(READ[dtype][0]) and got.shape == shape, (i, name)
    assert got.tobytes() == data, (i, name)
  return True


def test_fuzzed_files_are_read_exactly_when_valid(tmp_path):
  path = tmp_path / "fuzz.safetensors"
  read = sum(check_against_oracle(path, i, blob) for i, blob in fuzz_cases(seed=0, count=2000))
  # Both ways are exercised: many mutations keep a file valid (data bytes, same-size
  # dtypes and offset swaps, padding), most do not.
  assert 300 < read < 1500, read


def test_the_oracle_agrees_with_the_reference_reader():
  # The rules the fuzz test holds the reader to, checked against the format's own reader.
  safetensors = pytest.importorskip("safetensors")
  agreed = 0
  for i, blob in itertools.chain(
    fuzz_cases(seed=1, count=1500), ((name, content) for name, (content, _) in MALFORMED.items())
  ):
    want = expected(blob, strict=False)
    try:
      got = {
        name: (t["dtype"], tuple(t["shape"]), bytes(t["data"]))
        for name, t in safetensors.deserialize(blob)
      }
    except Exception:  # the reference raises SafetensorError, and some errors of its own
      got = None
    if want is None or got is None:
      assert want is None and got is None, (i, want, got, blob[:300])
    else:
      assert got == want[0], (i, blob[:300])
      agreed += 1
  assert agreed > 200
