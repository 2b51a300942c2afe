"""Run a bundle's exported program with jax and numpy alone (no duojax needed).

Copy this file next to your server and:

    import serve
    predict = serve.load("path/to/bundle")      # the program for this machine's platform
    out = predict(images)                       # uint8 [B, S, S, C], any B
    predict.image_shape, predict.class_names    # (S, S, C) and the classes
    out["class_index"], out["probabilities"], out["confidence"], out["abstain"]

It reads the manifest, the members' safetensors (with the small reader below)
and `exported/<platform>.bin`, and calls the program with the weights as
arguments. This module imports only jax, numpy and the standard library.
"""

from __future__ import annotations

import json
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np

_DTYPES = {
  "F64": np.float64,
  "F32": np.float32,
  "F16": np.float16,
  "BF16": jnp.bfloat16,
  "I64": np.int64,
  "I32": np.int32,
  "I16": np.int16,
  "I8": np.int8,
  "U8": np.uint8,
  "BOOL": np.bool_,
}
# jax.default_backend()'s names -> jax.export's platform names.
_PLATFORMS = {"gpu": "cuda", "cuda": "cuda", "cpu": "cpu", "tpu": "tpu"}


def read_safetensors(path: str) -> dict:
  """{name: array} of a safetensors file (8-byte header length, JSON header, data)."""
  with open(path, "rb") as f:
    raw = f.read()
  (size,) = struct.unpack("<Q", raw[:8])
  header = json.loads(raw[8 : 8 + size])
  header.pop("__metadata__", None)
  data = memoryview(raw)[8 + size :]
  out = {}
  for name, info in header.items():
    begin, end = info["data_offsets"]
    dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
    out[name] = np.frombuffer(data[begin:end], dtype).reshape(info["shape"])
  return out


def load(folder: str, platform: str | None = None):
  """`predict(images) -> dict of numpy arrays` for the bundle in `folder`."""
  with open(os.path.join(folder, "manifest.json")) as f:
    manifest = json.load(f)
  platform = platform or _PLATFORMS[jax.default_backend()]
  with open(os.path.join(folder, manifest["exported"]["programs"][platform]), "rb") as f:
    program = jax.export.deserialize(bytearray(f.read()))
  members = [read_safetensors(os.path.join(folder, m["file"])) for m in manifest["members"]]
  arrays = [jnp.asarray(members[i][name]) for i, name in manifest["exported"]["arguments"]]
  threshold = np.float32(manifest["threshold"])

  def predict(images) -> dict:
    logits, probabilities, confidence, classes = program.call(arrays, jnp.asarray(images))
    confidence, classes = np.asarray(confidence), np.asarray(classes)
    return {
      "class_index": np.asarray(logits).argmax(-1),
      "logits": np.asarray(logits),
      "probabilities": np.asarray(probabilities),
      "confidence": confidence,
      "abstain": confidence < threshold,
      "disagree": classes[0] != classes[min(1, len(classes) - 1)],
    }

  geometry = manifest["input"]
  predict.image_shape = (geometry["image_size"], geometry["image_size"], geometry["channels"])
  predict.class_names = list(manifest["class_names"])
  return predict
