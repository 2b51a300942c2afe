"""Members given as logits files (`logits:PATH`), for models duojax did not train.

A logits file is an `.npz` (read with `allow_pickle=False`) holding

    val_logits   float [N_val, C]     the member's logits on the validation split
    val_labels   int   [N_val]
    test_logits  float [N_test, C]
    test_labels  int   [N_test]
    ood_logits   float [N_ood, C]     optional: an out-of-distribution set
    flops_per_image  scalar           optional: the forward FLOPs of one image
    val_ids, test_ids, ood_ids        optional: row identifiers (ints or strings)

for example written by a PyTorch evaluation (see the README). Members of one
evaluation must hold the same rows: equal ids where every member has them,
else equal label arrays. Everything is checked on load, one line per problem.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from duojax.errors import DataError

PREFIX = "logits:"
SPLITS = ("val", "test", "ood")


def is_logits(spec: str) -> bool:
  return spec.startswith(PREFIX)


def path_of(spec: str) -> str:
  return os.path.expanduser(spec[len(PREFIX) :])


@dataclasses.dataclass(frozen=True, eq=False)
class LogitsFile:
  """One member's logits, labels and ids per split, and its cost (NaN: unknown)."""

  path: str
  logits: dict[str, np.ndarray]
  labels: dict[str, np.ndarray]
  ids: dict[str, np.ndarray]
  flops: float

  @property
  def num_classes(self) -> int:
    return int(self.logits["val"].shape[1])


def load(spec: str) -> LogitsFile:
  """Reads and checks a `logits:PATH` member; raises DataError (one line)."""
  path = path_of(spec)
  if not os.path.isfile(path):
    raise DataError(f"logits file {path!r} does not exist")
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {key: archive[key] for key in archive.files}
  except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
    raise DataError(
      f"cannot read logits file {path!r} as an .npz without pickles "
      f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
    ) from None
  need = ("val_logits", "val_labels", "test_logits", "test_labels")
  missing = [k for k in need if k not in arrays]
  if missing:
    raise DataError(
      f"logits file {path!r} lacks {', '.join(missing)} (it has "
      f"{', '.join(sorted(arrays)) or 'nothing'})"
    )
  logits, labels, ids = {}, {}, {}
  for split in SPLITS:
    if f"{split}_logits" not in arrays:
      continue
    z = arrays[f"{split}_logits"]
    if z.ndim != 2 or not np.issubdtype(z.dtype, np.number) or z.shape[0] == 0:
      raise DataError(
        f"{path!r}: {split}_logits must be a non-empty number array [N, C], got {z.dtype} {z.shape}"
      )
    if not np.all(np.isfinite(z)):
      raise DataError(f"{path!r}: {split}_logits holds NaN or inf")
    logits[split] = z.astype(np.float32)
    if split != "ood":
      y = arrays[f"{split}_labels"]
      if y.shape != (z.shape[0],) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
          f"{path!r}: {split}_labels must be int [{z.shape[0]}], got {y.dtype} {y.shape}"
        )
      if y.min() < 0 or y.max() >= z.shape[1]:
        raise DataError(
          f"{path!r}: {split}_labels must lie in [0, {z.shape[1]}), got [{y.min()}, {y.max()}]"
        )
      labels[split] = y.astype(np.int32)
    if f"{split}_ids" in arrays:
      row_ids = arrays[f"{split}_ids"]
      if row_ids.shape != (z.shape[0],):
        raise DataError(
          f"{path!r}: {split}_ids must have one id per row ({z.shape[0]}), got {row_ids.shape}"
        )
      ids[split] = row_ids
  classes = {s: z.shape[1] for s, z in logits.items()}
  if len(set(classes.values())) > 1:
    raise DataError(f"{path!r}: the splits' logits disagree on the class count {classes}")
  flops = float("nan")
  if "flops_per_image" in arrays:
    value = arrays["flops_per_image"]
    if value.shape != () or not np.issubdtype(value.dtype, np.number) or not value > 0:
      raise DataError(f"{path!r}: flops_per_image must be one positive number")
    flops = float(value)
  return LogitsFile(path, logits, labels, ids, flops)


def check_rows_agree(
  files: dict[str, LogitsFile],
  labels: dict[str, np.ndarray] | None = None,
) -> None:
  """Members must hold the same images: equal ids where all have them, else labels.

  `labels`: the data set's labels per split when model members are evaluated too.
  """
  names = list(files)
  for split in ("val", "test"):
    with_ids = [n for n in names if split in files[n].ids]
    if len(with_ids) == len(names) and len(names) > 1:
      first = files[names[0]].ids[split]
      for name in names[1:]:
        if not np.array_equal(files[name].ids[split], first):
          raise DataError(
            f"members {names[0]!r} and {name!r} hold different {split} rows "
            f"(their {split}_ids differ)"
          )
    reference = (labels or {}).get(split)
    ref_name = "the data set" if reference is not None else names[0]
    if reference is None:
      reference = files[names[0]].labels[split]
    for name in names:
      mine = files[name].labels[split]
      if mine.shape != reference.shape or not np.array_equal(mine, reference):
        raise DataError(
          f"member {name!r}'s {split} labels differ from {ref_name}'s "
          f"({mine.shape[0]} vs {reference.shape[0]} rows): the members must "
          "hold the same images in the same order"
        )
  classes = {n: f.num_classes for n, f in files.items()}
  if len(set(classes.values())) > 1:
    raise DataError(f"members disagree on the class count: {classes}")
  oods = {n: len(f.logits["ood"]) for n, f in files.items() if "ood" in f.logits}
  if len(set(oods.values())) > 1:
    raise DataError(f"members' ood_logits have different row counts: {oods}")
