"""A bundle read back into duojax: its members rebuilt, the fused duo on new images.

`Bundle.predict` jits the function the bundle's programs were exported from
(`exported.fused_program`: both members and the duo's combination, weighted
or per input), so it needs duojax; `duojax.bundle.serve` runs the exported
program itself, with jax and numpy alone. The two agree to float32 rounding
(a test checks it, and that the weighted duo's is the fused forward's).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import numpy as np
from flax import nnx

from duojax import api
from duojax.bundle import exported
from duojax.bundle import format as bundle_format
from duojax.bundle.exported import member_arrays
from duojax.core.shift_alarm import ShiftAlarm
from duojax.data.preprocess import InputSpec
from duojax.errors import FileError, InputError
from duojax.models.spec import ModelSpec


@dataclasses.dataclass
class Bundle:
  """A loaded bundle. `threshold` may be changed (e.g. from `validation`)."""

  path: str
  manifest: dict
  models: list
  inputs: list
  duo: api.Duo | api.PerInputDuo
  threshold: float
  validation: tuple[np.ndarray, np.ndarray]
  # Calibrated on the validation rows: is a batch of new images unlike them?
  # None for a bundle written without one.
  shift_alarm: ShiftAlarm | None = None

  @property
  def class_names(self) -> list[str]:
    return list(self.manifest["class_names"])

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(S, S, C): the batch's side and channels (the widest member's crop, resized)."""
    geometry = self.manifest["input"]
    return int(geometry["image_size"]), int(geometry["image_size"]), int(geometry["channels"])

  @functools.cached_property
  def _program(self):
    """The exported program's function, jitted here: (f, the weights as its arguments)."""
    crop = float(self.manifest["input"]["crop_fraction"])
    temperatures = self.member_temperatures()
    f, _ = exported.fused_program(
      self.models, self.inputs, self.duo, crop, temperatures, shifted_too=self.guards_shifts
    )
    arrays = [a for m in self.models for a in exported.member_arrays(m)[1]]
    return jax.jit(f), arrays

  @property
  def guards_shifts(self) -> bool:
    """Whether the duo is a guarded one that mixes equally with large+TS on a batch
    its shift alarm flags (`duojax.core.guarded_duo`)."""
    return getattr(self.duo, "method", None) == "guarded" and self.shift_alarm is not None

  def member_temperatures(self) -> list[float] | None:
    """The alarm's (T_L, T_S), then 1 for any further member; None without an alarm."""
    if self.shift_alarm is None:
      return None
    return [*self.shift_alarm.temperatures, *[1.0] * (len(self.models) - 2)]

  def _run(self, images):
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != self.image_shape:
      raise InputError(
        f"images must be uint8 [B, {', '.join(map(str, self.image_shape))}], got "
        f"{images.dtype} {list(images.shape)}"
      )
    f, arrays = self._program
    return [np.asarray(x) for x in f(arrays, images)]

  def shift_check(self, images) -> tuple[bool, float]:
    """(alarm, p-value) of the bundle's shift alarm for the batch `images` (uint8
    [B, S, S, C]): True when it is unlike the validation rows the duo was fit on,
    at the alarm's false-alarm rate. Needs a bundle written with an alarm."""
    if self.shift_alarm is None:
      raise InputError(f"bundle {self.path!r} holds no shift alarm")
    return self._verdict(self._run(images))

  def _verdict(self, outputs) -> tuple[bool, float]:
    rows = shift_rows(outputs[3], outputs[4])
    p = float(self.shift_alarm.p_values(rows, np.arange(len(rows))[None])[0])
    return p <= self.shift_alarm.alpha, p

  def predict(self, images, shifted: bool | None = None) -> dict[str, np.ndarray]:
    """The duo on uint8 images [B, S, S, C] (`image_shape`): class_index [B],
    probabilities [B, C], confidence [B], abstain [B] (confidence < threshold),
    disagree [B] (the large model's class is not its first sidekick's).

    A guarded duo treats the B images as one batch for its shift alarm and, where
    it flags them, mixes equally with large+TS (`guards_shifts`); `shifted` gives
    the verdict instead (a stream cut into batches elsewhere)."""
    outputs = self._run(images)
    logits, probabilities, confidence, classes = outputs[:4]
    if shifted is not None and not self.guards_shifts:
      raise InputError("shifted= is for a bundle of a guarded duo with a shift alarm")
    if self.guards_shifts:
      if shifted is None:
        shifted, _ = self._verdict(outputs)
      if shifted:
        probabilities = np.asarray(jax.nn.softmax(outputs[5], axis=-1))
        confidence = probabilities.max(-1)
    return {
      "class_index": probabilities.argmax(-1),
      "probabilities": probabilities,
      "confidence": confidence,
      "abstain": confidence < np.float32(self.threshold),
      "disagree": classes[0] != classes[min(1, len(classes) - 1)],
    }


def shift_rows(member_classes, member_confidence) -> np.ndarray:
  """The alarm's per-row statistics [B, 2], (d, g), from the program's member outputs:
  d = 1 where the large model and the sidekick predict different classes, g the
  large model's temperature-scaled confidence minus the sidekick's."""
  classes, confidence = np.asarray(member_classes), np.asarray(member_confidence, np.float64)
  disagree = (classes[0] != classes[1]).astype(np.float64)
  return np.stack([disagree, confidence[0] - confidence[1]], axis=1)


def load_bundle(path) -> Bundle:
  """The bundle folder `path`; a damaged or foreign one is a one-line FileError."""
  path = os.fspath(path)
  manifest = bundle_format.read_manifest(path)
  duo = _read_duo(path, manifest)
  if bundle_format.num_members(duo) != len(manifest["members"]):
    raise FileError(
      f"bundle {path!r}: a duo of {bundle_format.num_members(duo)} for "
      f"{len(manifest['members'])} members"
    )
  models, inputs = [], []
  for i, entry in enumerate(manifest["members"]):
    spec = ModelSpec.from_meta(entry["model"])
    if spec.num_classes != len(manifest["class_names"]):
      raise FileError(f"bundle {path!r}: member {i} does not predict the bundle's classes")
    try:
      model = spec.build()
    except Exception as e:  # a model this duojax does not have, options it refuses
      raise FileError(f"bundle {path!r}: member {i} cannot be built ({e})") from None
    _set_weights(path, i, model, bundle_format.read_member(path, manifest, i))
    models.append(model)
    inputs.append(InputSpec.from_meta(entry["input"]))
  validation = bundle_format.read_validation(path, manifest)
  alarm = bundle_format.read_shift_alarm(path, manifest)
  return Bundle(
    path, manifest, models, inputs, duo, float(manifest["threshold"]), validation, alarm
  )


def _read_duo(path: str, manifest: dict) -> api.Duo:
  try:
    return api.load_duo(os.path.join(path, manifest["duo"]))
  except FileError as e:
    raise FileError(f"bundle {path!r}: {e}") from None


def _set_weights(path: str, i: int, model: nnx.Module, arrays: dict) -> None:
  """Puts the file's arrays into `model`, every name and shape checked first."""
  names, current = member_arrays(model)
  if sorted(names) != sorted(arrays):
    missing = sorted(set(names) - set(arrays))[:3]
    extra = sorted(set(arrays) - set(names))[:3]
    raise FileError(
      f"bundle {path!r}: member {i}'s arrays do not fit (missing {missing}, extra {extra})"
    )
  for name, have in zip(names, current):
    if arrays[name].shape != have.shape:
      raise FileError(
        f"bundle {path!r}: member {i}'s {name} has shape {list(arrays[name].shape)}, "
        f"the model's {list(have.shape)}"
      )
  _, state, _ = nnx.split(model, (nnx.Param, nnx.BatchStat), ...)
  leaves, treedef = jax.tree.flatten(state)
  new = [jax.numpy.asarray(arrays[n], dtype=leaf.dtype) for n, leaf in zip(names, leaves)]
  nnx.update(model, jax.tree.unflatten(treedef, new))
