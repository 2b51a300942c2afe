"""A bundle: a fitted duo as one folder, written whole or not at all.

    manifest.json          format "duojax.bundle", version, class names, provenance,
                           per member its model spec and input spec, the batch's
                           input geometry, the abstention threshold and its rule
    members/<i>.safetensors  member i's parameters and BatchNorm statistics under
                           duojax's dotted names (any safetensors reader opens them)
    duo.json               the duo (`Duo.save`: its weights; or a per-input duo's
                           `PerInputDuo.save`: its method and fitted arrays)
    validation.npz         validation confidence [N] and correctness [N], for
                           choosing another abstention threshold later
    shift_alarm.json       the shift alarm calibrated on the same validation rows
                           (`ShiftAlarm.save`), when the writer gave one: it tells
                           a batch of new images unlike them (`duojax.predict`)
    exported/<p>.bin       the fused duo for platform p (cpu, cuda, tpu),
                           `jax.export` serialised, the weights its arguments

The batch a bundle takes is uint8 [B, S, S, C], the centre `crop_fraction`
of each picture's shorter side resized to S: S and the crop are the widest
member's, and each member cuts and resizes its own view from it on the device
(`duojax.data.prepare`). Reading checks everything here, so a damaged or
foreign folder is one `FileError` line before any model is built.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import NamedTuple, Sequence

import numpy as np
from flax import nnx

import duojax
from duojax import api
from duojax.bundle import exported, threshold
from duojax.convert import safetensors_io
from duojax.core.shift_alarm import ShiftAlarm, load_shift_alarm
from duojax.data.preprocess import InputSpec
from duojax.errors import FileError, InputError, WeightsFileError
from duojax.models.spec import ModelSpec

FORMAT = "duojax.bundle"
VERSION = 1
MANIFEST = "manifest.json"
DUO = "duo.json"
VALIDATION = "validation.npz"
SHIFT_ALARM = "shift_alarm.json"


class BundleMember(NamedTuple):
  """A member to bundle: the model, what rebuilds it, and the input it takes."""

  model: nnx.Module
  spec: ModelSpec
  inputs: InputSpec


def member_file(i: int) -> str:
  return f"members/{i}.safetensors"


def program_file(platform: str) -> str:
  return f"exported/{platform}.bin"


def write_bundle(
  path,
  members: Sequence[BundleMember],
  duo: api.Duo | api.PerInputDuo,
  class_names: Sequence[str],
  *,
  validation,
  provenance: dict | None = None,
  metrics: dict | None = None,
  shift_alarm: ShiftAlarm | None = None,
  platforms: Sequence[str] = exported.PLATFORMS,
) -> str:
  """Writes the bundle folder `path` (replacing a bundle there); returns its path.

  `members`: `BundleMember`s (or (model, spec, inputs) triples), the large model
  first; `validation`: (confidence [N], correct [N]) of the duo on the split its
  weights were fit on; `provenance`: e.g. {"dataset", "split", "rows"}; `metrics`:
  the duo's validation metrics, kept as given; `shift_alarm`: the members'
  alarm (`duojax.fit_shift_alarm`) calibrated on the same rows, or None (a guarded
  duo's own alarm replaces it).
  """
  path = os.path.abspath(os.fspath(path))
  members = [BundleMember(*m) for m in members]
  confidence, correct = _validation(validation)
  _check(members, duo, class_names)
  if getattr(duo, "alarm", None) is not None:
    shift_alarm = duo.alarm  # a guarded duo's rows follow its own alarm's verdicts
  if shift_alarm is not None and shift_alarm.num_classes != len(class_names):
    raise InputError(
      f"the shift alarm was fit on {shift_alarm.num_classes} classes, the bundle has "
      f"{len(class_names)}"
    )
  rule_value, rule = threshold.default_threshold(confidence, correct)
  size = max(m.inputs.image_size for m in members)
  crop = max(m.inputs.crop_fraction for m in members)
  channels = int(members[0].spec.image_shape[2])
  f, names = exported.fused_program(
    [m.model for m in members], [m.inputs for m in members], duo, crop
  )
  manifest = {
    "format": FORMAT,
    "version": VERSION,
    "duojax_version": duojax.__version__,
    "class_names": [str(c) for c in class_names],
    "provenance": dict(provenance or {}),
    "validation_metrics": dict(metrics or {}),
    "input": {"image_size": size, "channels": channels, "crop_fraction": crop},
    "members": [
      {"file": member_file(i), "model": m.spec.as_meta(), "input": m.inputs.as_meta()}
      for i, m in enumerate(members)
    ],
    "duo": DUO,
    "duo_method": duo.method,
    "validation": VALIDATION,
    "threshold": float(rule_value),
    "threshold_rule": rule,
    **({"shift_alarm": SHIFT_ALARM} if shift_alarm is not None else {}),
    "exported": {
      "programs": {p: program_file(p) for p in platforms},
      "arguments": [[i, n] for i, n in names],
    },
  }
  try:
    text = json.dumps(manifest, indent=2)
  except TypeError as e:
    raise InputError(f"the bundle's manifest is not JSON: {e}") from None
  arrays = [a for m in members for a in exported.member_arrays(m.model)[1]]
  parent = os.path.dirname(path)
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    raise FileError(e.errno, f"cannot write bundle {path}: {e.strerror}") from None
  if os.path.exists(path) and not os.path.isfile(os.path.join(path, MANIFEST)):
    raise FileError(f"cannot write bundle {path}: it exists and is not a bundle")
  tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-bundle-")
  try:
    os.makedirs(os.path.join(tmp, "members"))
    os.makedirs(os.path.join(tmp, "exported"))
    for i, m in enumerate(members):
      names_i, arrays_i = exported.member_arrays(m.model)
      safetensors_io.write(os.path.join(tmp, member_file(i)), dict(zip(names_i, arrays_i)))
    duo.save(os.path.join(tmp, DUO))
    np.savez(os.path.join(tmp, VALIDATION), confidence=confidence, correct=correct)
    if shift_alarm is not None:
      shift_alarm.save(os.path.join(tmp, SHIFT_ALARM))
    image_shape = (size, size, channels)
    for p, blob in exported.serialized(f, arrays, image_shape, platforms).items():
      with open(os.path.join(tmp, program_file(p)), "wb") as out:
        out.write(blob)
    with open(os.path.join(tmp, MANIFEST), "w") as out:
      out.write(text)
    _move_into_place(tmp, path)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(e, OSError) and not isinstance(e, FileError) and e.errno is not None:
      raise FileError(e.errno, f"cannot write bundle {path}: {e.strerror}") from e
    raise
  return path


def _move_into_place(tmp: str, path: str) -> None:
  """Renames the finished folder to `path`; an old bundle there is set aside first
  and removed after, so `path` holds one whole bundle or the other."""
  old = None
  if os.path.exists(path):
    old = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".old-bundle-")
    os.rename(path, os.path.join(old, "bundle"))
  os.rename(tmp, path)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def _validation(validation) -> tuple[np.ndarray, np.ndarray]:
  try:
    confidence, correct = validation
  except (TypeError, ValueError):
    raise InputError("validation must be the pair (confidence [N], correct [N])") from None
  confidence = np.asarray(confidence, np.float32)
  correct = np.asarray(correct).astype(bool)
  if confidence.ndim != 1 or correct.shape != confidence.shape or not confidence.size:
    raise InputError(
      f"validation confidence {confidence.shape} and correctness {correct.shape} "
      "must be two non-empty [N] arrays"
    )
  return confidence, correct


def _check(members: list[BundleMember], duo: api.Duo, class_names) -> None:
  if len(members) != num_members(duo):
    raise InputError(f"{len(members)} members but the duo combines {num_members(duo)}")
  for i, m in enumerate(members):
    if m.spec.num_classes != len(class_names):
      raise InputError(
        f"member {i} predicts {m.spec.num_classes} classes but {len(class_names)} "
        "class names were given"
      )
    if m.spec.image_shape[2] != members[0].spec.image_shape[2]:
      raise InputError(f"member {i} takes {m.spec.image_shape[2]}-channel images, member 0 not")


def num_members(duo) -> int:
  """How many members a weighted or per-input duo combines."""
  return int(getattr(duo, "num_members", None) or len(duo.weights))


def read_manifest(path) -> dict:
  """The checked manifest of bundle folder `path`; FileError if damaged or foreign."""
  path = os.fspath(path)
  where = os.path.join(path, MANIFEST)
  try:
    with open(where) as f:
      manifest = json.load(f)
  except (OSError, ValueError) as e:
    raise FileError(f"{path!r} is not a readable bundle: {str(e).splitlines()[0]}") from None
  if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
    raise FileError(f'{path!r} is not a bundle (its manifest has no "format": "{FORMAT}")')
  if manifest.get("version") != VERSION:
    raise FileError(
      f"{path!r} is bundle version {manifest.get('version')!r}; this duojax reads {VERSION}"
    )
  try:
    members = manifest["members"]
    names = manifest["class_names"]
    assert isinstance(members, list) and members and isinstance(names, list) and names
    for m in members:
      ModelSpec.from_meta(m["model"])
      InputSpec.from_meta(m["input"]).check_view()
      assert isinstance(m["file"], str)
    float(manifest["threshold"])
    for key in ("image_size", "channels", "crop_fraction"):
      float(manifest["input"][key])
    assert isinstance(manifest["exported"]["arguments"], list)
  except Exception as e:  # any missing key or wrong type: the manifest is damaged
    raise FileError(f"{path!r}: damaged bundle manifest ({type(e).__name__} {e})") from None
  return manifest


def read_member(path, manifest: dict, i: int) -> dict[str, np.ndarray]:
  """Member i's arrays by name; a missing or malformed file is a FileError."""
  where = os.path.join(os.fspath(path), manifest["members"][i]["file"])
  try:
    return safetensors_io.read(where)[0]
  except (WeightsFileError, OSError) as e:
    raise FileError(f"bundle {path!r}: member {i}: {str(e).splitlines()[0]}") from None


def read_validation(path, manifest: dict) -> tuple[np.ndarray, np.ndarray]:
  """(confidence [N], correct [N]) the bundle's threshold was chosen on."""
  where = os.path.join(os.fspath(path), manifest["validation"])
  try:
    with np.load(where, allow_pickle=False) as f:
      confidence, correct = np.asarray(f["confidence"]), np.asarray(f["correct"])
  except Exception as e:  # a missing file or key, a damaged archive
    raise FileError(f"bundle {path!r}: unreadable {VALIDATION} ({type(e).__name__})") from None
  if confidence.ndim != 1 or correct.shape != confidence.shape:
    raise FileError(f"bundle {path!r}: {VALIDATION} arrays have the wrong shapes")
  return confidence, correct


def read_shift_alarm(path, manifest: dict) -> ShiftAlarm | None:
  """The bundle's shift alarm; None for a bundle written without one."""
  if "shift_alarm" not in manifest:
    return None
  try:
    alarm = load_shift_alarm(os.path.join(os.fspath(path), str(manifest["shift_alarm"])))
  except (FileError, InputError, OSError) as e:
    raise FileError(f"bundle {path!r}: {str(e).splitlines()[0]}") from None
  if alarm.num_classes != len(manifest["class_names"]):
    raise FileError(f"bundle {path!r}: its shift alarm is for another number of classes")
  return alarm
