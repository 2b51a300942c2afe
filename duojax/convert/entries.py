"""The pieces every layout is built from: `Entry` and the tensor conversions.

An `Entry` says which tensors of a PyTorch-layout file hold which duojax
arrays and how to convert them both ways (convs are OIHW in PyTorch and HWIO
here, dense kernels are transposed, timm fuses q/k/v into one matrix, duojax
keeps heads as an axis). `layouts` (ResNet, ViT) and the family modules
(`layouts_convnext`, `layouts_efficientnet`, `layouts_mobile`,
`layouts_regnet`) build their entries from these, and `layouts.detect` asks
each family module, so the pieces live apart from both.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np

from duojax.errors import WeightsMismatchError

Arrays = Sequence[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Entry:
  """`file_keys` in the file hold duojax arrays `paths` (flat dotted names)."""

  file_keys: tuple[str, ...]
  paths: tuple[str, ...]
  to_duojax: Callable[[Arrays, Sequence[tuple]], list[np.ndarray]]
  to_file: Callable[[Arrays], list[np.ndarray]]
  kind: str = "param"  # "head" and "posemb" get special treatment on load


# ----------------------------------------------------------------------------
# Conversions (duojax shapes come in so that reshapes need no model knowledge).


def _same(kind: str = "param"):
  if kind == "posemb":  # another token grid is resampled by the loader, not reshaped
    return dict(
      to_duojax=lambda a, s: [np.asarray(a[0])], to_file=lambda a: [np.asarray(a[0])], kind=kind
    )
  return dict(
    to_duojax=lambda a, s: [np.asarray(a[0]).reshape(s[0])],
    to_file=lambda a: [np.asarray(a[0])],
    kind=kind,
  )


def _conv():
  # PyTorch [out, in, kh, kw] <-> duojax [kh, kw, in, out].
  return dict(
    to_duojax=lambda a, s: [np.asarray(a[0]).transpose(2, 3, 1, 0)],
    to_file=lambda a: [np.asarray(a[0]).transpose(3, 2, 0, 1)],
  )


def _dense(n_in: int = 1, kind: str = "param"):
  """PyTorch [out, in] <-> duojax kernel [*in_axes, *out_axes] (n_in input axes)."""

  def to_file(a):
    k = np.asarray(a[0])
    return [k.reshape(math.prod(k.shape[:n_in]), -1).T]

  return dict(to_duojax=lambda a, s: [np.asarray(a[0]).T.reshape(s[0])], to_file=to_file, kind=kind)


def _bias(kind: str = "param"):
  return dict(
    to_duojax=lambda a, s: [np.asarray(a[0]).reshape(s[0])],
    to_file=lambda a: [np.asarray(a[0]).reshape(-1)],
    kind=kind,
  )


def _fused_qkv():
  """timm's qkv.weight [3D, D] and qkv.bias [3D] <-> q/k/v kernels and biases."""

  def to_duojax(a, shapes):
    w, b = np.asarray(a[0]), np.asarray(a[1])
    ws, bs = np.split(w, 3, axis=0), np.split(b, 3)
    return [wi.T.reshape(shapes[i]) for i, wi in enumerate(ws)] + [
      bi.reshape(shapes[3 + i]) for i, bi in enumerate(bs)
    ]

  def to_file(a):
    kernels, biases = a[:3], a[3:]
    w = np.concatenate([np.asarray(k).reshape(k.shape[0], -1).T for k in kernels], axis=0)
    b = np.concatenate([np.asarray(x).reshape(-1) for x in biases])
    return [w, b]

  return dict(to_duojax=to_duojax, to_file=to_file)


def _norm(prefix_duojax: str, prefix_file: str, *, batch: bool, kind: str = "param"):
  names = {"scale": "weight", "bias": "bias"}
  if batch:
    names.update(mean="running_mean", var="running_var")
  return [
    Entry((f"{prefix_file}.{f}",), (f"{prefix_duojax}.{d}",), **_same(kind))
    for d, f in names.items()
  ]


def _linear(prefix_duojax, prefix_file, n_in=1, kind="param"):
  return [
    Entry((f"{prefix_file}.weight",), (f"{prefix_duojax}.kernel",), **_dense(n_in, kind)),
    Entry((f"{prefix_file}.bias",), (f"{prefix_duojax}.bias",), **_bias(kind)),
  ]


Rename = Callable[[str], "tuple[str, str] | None"]


def _conv_linear():
  """A 1x1 conv [out, in, 1, 1] in the file <-> a dense kernel [in, out] here."""
  return dict(
    to_duojax=lambda a, s: [np.asarray(a[0]).reshape(s[0][::-1]).T],
    to_file=lambda a: [np.asarray(a[0]).T[:, :, None, None]],
  )


def module_entries(names: Sequence[str], rename: Rename) -> list[Entry]:
  """The entries of every module in `names`; `rename(module)` gives (file prefix, kind)."""
  modules = list(dict.fromkeys(n.rsplit(".", 1)[0] for n in names))
  entries = []
  for module in modules:
    target = rename(module)
    if target is None:
      raise WeightsMismatchError(f"the layout has no tensors for {module}")
    prefix, kind = target
    if kind == "bn":
      entries += _norm(module, prefix, batch=True)
      continue
    if kind in ("linear", "head"):
      entries += _linear(module, prefix, kind="head" if kind == "head" else "param")
      continue
    convert = _conv() if kind == "conv" else _conv_linear()
    entries.append(Entry((f"{prefix}.weight",), (f"{module}.kernel",), **convert))
    if f"{module}.bias" in names:
      entries.append(
        Entry((f"{prefix}.bias",), (f"{module}.bias",), **(_same() if kind == "conv" else _bias()))
      )
  return entries
