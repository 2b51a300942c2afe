"""Swin Transformer V2 tensor names in torchvision, timm and Hugging Face files.

duojax's names (`duojax.models.swin`) against each library's, for stage i, block j:

    duojax                    torchvision             timm                      Hugging Face (swinv2.…)
    patch_embed               features.0.0            patch_embed.proj          embeddings.patch_embeddings.projection
    patch_embed_norm          features.0.2            patch_embed.norm          embeddings.norm
    stages.i.merge (i ≥ 1)    features.{2i}           layers.i.downsample       encoder.layers.{i-1}.downsample
      .reduction / .norm        .reduction / .norm      .reduction / .norm        .reduction / .norm
    stages.i.blocks.j         features.{2i+1}.j       layers.i.blocks.j         encoder.layers.i.blocks.j
      .attn.qkv (kernel)        .attn.qkv.weight        .attn.qkv.weight          .attention.self.{query,key,value}.weight
      .attn.q_bias / v_bias     .attn.qkv.bias (3 ⅓s)   .attn.q_bias / v_bias     .attention.self.query / value.bias
      .attn.k_bias (key_bias)   .attn.qkv.bias (2nd ⅓)  – (zero)                  – (zero)
      .attn.logit_scale [h]     .attn.logit_scale       .attn.logit_scale         .attention.self.logit_scale  [h, 1, 1]
      .attn.cpb_fc1 / cpb_fc2   .attn.cpb_mlp.0 / .2    .attn.cpb_mlp.0 / .2      .attention.self.continuous_position_bias_mlp.0 / .2
      .attn.proj                .attn.proj              .attn.proj                .attention.output.dense
      .norm1 / .norm2           .norm1 / .norm2         .norm1 / .norm2           .layernorm_before / .layernorm_after
      .fc1 / .fc2               .mlp.0 / .mlp.3         .mlp.fc1 / .mlp.fc2       .intermediate.dense / .output.dense
    norm / head               norm / head             norm / head.fc            swinv2.layernorm / classifier

Hugging Face's patch merging closes the stage before (its `layers.{i-1}.downsample`),
the others' opens stage i. The key bias: torchvision's qkv bias holds a key third its
forward sets to zero, which timm and Hugging Face do not hold; a model with
`key_bias=True` takes zeros from their files, one without drops torchvision's third
(both change nothing), and writes zeros there for torchvision.

torchvision's files also hold each block's `relative_coords_table` and
`relative_position_index` (persistent buffers, which its forward reads): loading
skips them (the model computes its own for the window it runs), writing puts the
model's, so torchvision computes what the model does (a `pretrained_window_size`
included, which torchvision has no option for).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from duojax.convert.entries import Entry, _bias, _conv, _dense, _linear, _norm
from duojax.models import swin_blocks

_BLOCK_RE = re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\.")

_ENDS = {
  "torchvision": ("features.0.0", "features.0.2", "norm", "head"),
  "timm": ("patch_embed.proj", "patch_embed.norm", "norm", "head.fc"),
  "hf": (
    "swinv2.embeddings.patch_embeddings.projection",
    "swinv2.embeddings.norm",
    "swinv2.layernorm",
    "classifier",
  ),
}


def _merge_prefix(layout: str, i: int) -> str:
  return {
    "torchvision": f"features.{2 * i}",
    "timm": f"layers.{i}.downsample",
    "hf": f"swinv2.encoder.layers.{i - 1}.downsample",
  }[layout]


def _block_names(layout: str, i: int, j: int) -> dict[str, str]:
  """The library's tensor prefixes for block j of stage i."""
  if layout == "torchvision":
    b = f"features.{2 * i + 1}.{j}"
    return dict(
      attn=f"{b}.attn", cpb=f"{b}.attn.cpb_mlp", proj=f"{b}.attn.proj", norm1=f"{b}.norm1",
      norm2=f"{b}.norm2", fc1=f"{b}.mlp.0", fc2=f"{b}.mlp.3",
    )  # fmt: skip
  if layout == "timm":
    b = f"layers.{i}.blocks.{j}"
    return dict(
      attn=f"{b}.attn", cpb=f"{b}.attn.cpb_mlp", proj=f"{b}.attn.proj", norm1=f"{b}.norm1",
      norm2=f"{b}.norm2", fc1=f"{b}.mlp.fc1", fc2=f"{b}.mlp.fc2",
    )  # fmt: skip
  b = f"swinv2.encoder.layers.{i}.blocks.{j}"
  return dict(
    attn=f"{b}.attention.self", cpb=f"{b}.attention.self.continuous_position_bias_mlp",
    proj=f"{b}.attention.output.dense", norm1=f"{b}.layernorm_before",
    norm2=f"{b}.layernorm_after", fc1=f"{b}.intermediate.dense", fc2=f"{b}.output.dense",
  )  # fmt: skip


def _logit_scale(ours: str, theirs: str, buffers=None) -> Entry:
  """[heads, 1, 1] in the files; torchvision's block buffers ride along (`buffers`:
  (window, pretrained window)): skipped in, the model's out."""
  keys = (f"{theirs}.logit_scale",)
  if buffers is not None:
    keys += (f"{theirs}.relative_coords_table", f"{theirs}.relative_position_index")

  def to_file(a):
    out = [np.asarray(a[0]).reshape(-1, 1, 1)]
    if buffers is not None:
      (window, pretrained), rel = buffers, swin_blocks.relative_position_index
      table = swin_blocks.relative_coords_table(window, window, pretrained)[None]
      out += [table, rel(window, window).reshape(-1)]
    return out

  return Entry(
    keys, (ours,), to_duojax=lambda a, s: [np.asarray(a[0]).reshape(s[0])], to_file=to_file
  )


def _zero(ours: str) -> Entry:
  """A duojax array the file does not hold: zeros in, nothing out."""
  return Entry(
    (), (ours,), to_duojax=lambda a, s: [np.zeros(s[0], np.float32)], to_file=lambda a: []
  )


def _qkv_bias(ours: str, theirs: str, key_bias: bool) -> Entry:
  """torchvision's qkv.bias [3C] <-> q_bias, (k_bias,) v_bias."""
  paths = (f"{ours}.q_bias",) + ((f"{ours}.k_bias",) if key_bias else ()) + (f"{ours}.v_bias",)

  def to_duojax(a, shapes):
    q, k, v = np.split(np.asarray(a[0]), 3)
    return [q, k, v] if key_bias else [q, v]

  def to_file(a):
    q, v = np.asarray(a[0]), np.asarray(a[-1])
    k = np.asarray(a[1]) if key_bias else np.zeros_like(q)
    return [np.concatenate([q, k, v])]

  return Entry((theirs,), paths, to_duojax=to_duojax, to_file=to_file)


def _hf_qkv(ours: str, theirs: str) -> Entry:
  """Hugging Face's query, key and value weights [C, C] <-> the qkv kernel [C, 3C]."""
  return Entry(
    tuple(f"{theirs}.{p}.weight" for p in ("query", "key", "value")),
    (ours,),
    to_duojax=lambda a, s: [np.concatenate([np.asarray(w) for w in a], axis=0).T.reshape(s[0])],
    to_file=lambda a: list(np.split(np.asarray(a[0]).T, 3, axis=0)),
  )


def _attention(layout, ours, theirs, key_bias, window, pretrained) -> list[Entry]:
  out = []
  attn = theirs["attn"]
  if layout == "hf":
    out.append(_hf_qkv(f"{ours}.qkv.kernel", attn))
    out.append(Entry((f"{attn}.query.bias",), (f"{ours}.q_bias",), **_bias()))
    out.append(Entry((f"{attn}.value.bias",), (f"{ours}.v_bias",), **_bias()))
  else:
    out.append(Entry((f"{attn}.qkv.weight",), (f"{ours}.qkv.kernel",), **_dense()))
    if layout == "torchvision":
      out.append(_qkv_bias(ours, f"{attn}.qkv.bias", key_bias))
    else:
      out.append(Entry((f"{attn}.q_bias",), (f"{ours}.q_bias",), **_bias()))
      out.append(Entry((f"{attn}.v_bias",), (f"{ours}.v_bias",), **_bias()))
  if key_bias and layout != "torchvision":
    out.append(_zero(f"{ours}.k_bias"))
  buffers = (window, pretrained) if layout == "torchvision" else None
  out.append(_logit_scale(f"{ours}.logit_scale", attn, buffers))
  out += _linear(f"{ours}.cpb_fc1", f"{theirs['cpb']}.0")
  out.append(Entry((f"{theirs['cpb']}.2.weight",), (f"{ours}.cpb_fc2.kernel",), **_dense()))
  out += _linear(f"{ours}.proj", theirs["proj"])
  return out


def entries(model, names: Sequence[str], layout: str) -> list[Entry]:
  """The entries of a duojax Swin-V2 whose flat state names are `names`."""
  blocks = sorted({tuple(map(int, m.groups())) for m in map(_BLOCK_RE.match, names) if m})
  embed, embed_norm, final_norm, head = _ENDS[layout]
  out = [
    Entry((f"{embed}.weight",), ("patch_embed.kernel",), **_conv()),
    Entry((f"{embed}.bias",), ("patch_embed.bias",), **_bias()),
  ]
  out += _norm("patch_embed_norm", embed_norm, batch=False)
  for i in sorted({i for i, _ in blocks}):
    if f"stages.{i}.merge.reduction.kernel" in names:
      prefix = _merge_prefix(layout, i)
      out.append(
        Entry((f"{prefix}.reduction.weight",), (f"stages.{i}.merge.reduction.kernel",), **_dense())
      )
      out += _norm(f"stages.{i}.merge.norm", f"{prefix}.norm", batch=False)
    pretrained = (model.pretrained_window_size[i],) * 2
    for j in sorted(j for s, j in blocks if s == i):
      ours, theirs = f"stages.{i}.blocks.{j}", _block_names(layout, i, j)
      key_bias = f"{ours}.attn.k_bias" in names
      out += _attention(layout, f"{ours}.attn", theirs, key_bias, model.window_size, pretrained)
      out += _norm(f"{ours}.norm1", theirs["norm1"], batch=False)
      out += _linear(f"{ours}.fc1", theirs["fc1"]) + _linear(f"{ours}.fc2", theirs["fc2"])
      out += _norm(f"{ours}.norm2", theirs["norm2"], batch=False)
  out += _norm("norm", final_norm, batch=False)
  return out + _linear("head", head, kind="head")


def detect(keys) -> str | None:
  """The layout of a Swin-V2 file, from its tensor names; None if it holds none."""
  if any(k.startswith("swinv2.") for k in keys):
    return "hf"
  if "patch_embed.proj.weight" in keys and any(k.endswith(".attn.cpb_mlp.0.weight") for k in keys):
    return "timm"
  if "features.0.0.weight" in keys and any(k.endswith(".attn.cpb_mlp.0.weight") for k in keys):
    return "torchvision"
  return None
