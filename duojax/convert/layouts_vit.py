"""ViT layouts: timm's `VisionTransformer` (and `VisionTransformerDistilled`) and
Hugging Face's ViT, CLIP, DINOv2, DeiT and SigLIP vision towers.

timm names one module tree for every variant (`patch_embed.proj`, `cls_token`,
`dist_token`, `reg_token`, `pos_embed`, `norm_pre`, `blocks.N.{norm1, attn.qkv,
attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}`, `norm` or
`fc_norm`, `attn_pool`, `head`, `head_dist`). Hugging Face has one class per
family, told apart here by the model's options:

  * distilled: `DeiTForImageClassificationWithTeacher` (`deit.`, ViT's names,
    `cls_classifier` + `distillation_classifier`);
  * layer scale: `Dinov2ForImageClassification` (`dinov2.`) or, with
    registers, `Dinov2WithRegistersForImageClassification`
    (`dinov2_with_registers.`); `mlp.weights_in/out` for SwiGLU;
  * attention pooling: `SiglipVisionModel`; pre-norm: `CLIPVisionModel`
    (both `embeddings.*`, `encoder.layers.N.*`, `post_layernorm`, optionally
    under `vision_model.`), with a linear head named `classifier`;
  * else `ViTForImageClassification`.

Two representations differ from duojax's: Hugging Face's DINOv2 with
registers embeds the class token's position, timm's (`no_embed_class`, as
duojax's `embed_class=False`) leaves it out (here: added to the class token on
load, 0 on export; the function is the same); and Hugging Face CLIP/SigLIP
keep 1-D/2-D `class_embedding` and `position_embedding.weight`.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from duojax.convert.entries import Entry, _conv, _linear, _norm, _same
from duojax.errors import ConfigError, WeightsMismatchError
from duojax.models import vit_posemb

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.")
# Tensors of the Hugging Face files that classification does not use: DINOv2's
# mask token (masked-image pretraining), old CLIP files' position ids buffer, and the
# text tower and joint-space projections of a whole CLIPModel or SiglipModel file.
IGNORED = re.compile(
  r"(^|\.)embeddings\.(mask_token|position_ids)$"
  r"|^(text_model\.|text_projection\.|visual_projection\.|logit_scale$|logit_bias$)"
)


# ----------------------------------------------------------------------------
# Conversions beyond `entries`'.


def _fused(n: int):
  """One [n·D, D] weight and [n·D] bias (timm's qkv, kv; torch's in_proj) <-> n projections."""

  def to_duojax(a, shapes):
    ws, bs = np.split(np.asarray(a[0]), n, axis=0), np.split(np.asarray(a[1]), n)
    return [w.T.reshape(shapes[i]) for i, w in enumerate(ws)] + [
      b.reshape(shapes[n + i]) for i, b in enumerate(bs)
    ]

  def to_file(a):
    w = np.concatenate([np.asarray(k).reshape(k.shape[0], -1).T for k in a[:n]], axis=0)
    return [w, np.concatenate([np.asarray(b).reshape(-1) for b in a[n:]])]

  return dict(to_duojax=to_duojax, to_file=to_file)


def _fused_entry(ours: str, theirs_w: str, theirs_b: str, projections) -> Entry:
  paths = tuple(f"{ours}.{p}.{leaf}" for leaf in ("kernel", "bias") for p in projections)
  return Entry((theirs_w, theirs_b), paths, **_fused(len(projections)))


def _flat(drop: int, kind: str = "param"):
  """A file tensor without duojax's `drop` leading [1] axes (CLIP's class_embedding [D],
  position_embedding.weight [N, D]) <-> [1, ..., D]."""
  return dict(
    to_duojax=lambda a, s: [np.asarray(a[0]).reshape((1,) * drop + np.shape(a[0]))],
    to_file=lambda a: [np.asarray(a[0]).reshape(np.shape(a[0])[drop:])],
    kind=kind,
  )


def _embedded_class():
  """Hugging Face's (cls_token, position_embeddings [1, 1 + N, D]) <-> a model without the
  class token's position embedding (timm's no_embed_class: cls_token, pos_embedding
  [1, N, D]): the class token's embedding folded into the token, 0 on export."""

  def to_duojax(a, s):
    cls, pos = np.asarray(a[0]), np.asarray(a[1])
    return [(cls + pos[:, :1]).reshape(s[0]), pos[:, 1:]]

  def to_file(a):
    cls, pos = np.asarray(a[0]), np.asarray(a[1])
    return [cls, np.concatenate([np.zeros_like(cls), pos], axis=1)]

  return dict(to_duojax=to_duojax, to_file=to_file, kind="posemb")


# ----------------------------------------------------------------------------
# Which file a model reads.


def hf_family(model) -> str:
  """The Hugging Face class family of a duojax ViT's options."""
  if model.distilled:
    return "deit"
  if model.blocks[0].ls1 is not None:
    return "dinov2"
  if model.attn_pool is not None:
    return "siglip"
  if model.norm_pre is not None:
    return "clip"
  return "vit"


def detect(keys) -> str | None:
  """ "hf" for the Hugging Face towers' names, else None (timm's: `layouts.detect`)."""
  prefixes = ("deit.embeddings.", "dinov2.embeddings.", "dinov2_with_registers.embeddings.")
  towers = (
    "embeddings.patch_embedding.weight",  # CLIP, SigLIP
    "vision_model.embeddings.patch_embedding.weight",
    "embeddings.patch_embeddings.projection.weight",  # a bare backbone (Dinov2Model)
  )
  if any(k.startswith(prefixes) for k in keys) or any(k in towers for k in keys):
    return "hf"
  return None


def _depth(names) -> int:
  return 1 + max(int(m.group(1)) for m in map(_BLOCK_RE.match, names) if m)


# ----------------------------------------------------------------------------
# timm.


def timm_entries(model, names: Sequence[str]) -> list[Entry]:
  entries = [Entry(("patch_embed.proj.weight",), ("patch_embed.kernel",), **_conv())]
  if "patch_embed.bias" in names:  # CLIP-style encoders have none
    entries.append(Entry(("patch_embed.proj.bias",), ("patch_embed.bias",), **_same()))
  if model.cls_token is not None:
    entries.append(Entry(("cls_token",), ("cls_token",), **_same()))
  entries.append(Entry(("pos_embed",), ("pos_embedding",), **_same("posemb")))
  for token in ("dist_token", "reg_token"):
    if token in names:
      entries.append(Entry((token,), (token,), **_same()))
  if "norm_pre.scale" in names:
    entries += _norm("norm_pre", "norm_pre", batch=False)
  for i in range(_depth(names)):
    b = f"blocks.{i}"
    entries += _norm(f"{b}.norm1", f"{b}.norm1", batch=False)
    entries.append(
      _fused_entry(f"{b}.attn", f"{b}.attn.qkv.weight", f"{b}.attn.qkv.bias", ("query", "key", "value"))
    )  # fmt: skip
    entries += _linear(f"{b}.attn.out", f"{b}.attn.proj", n_in=2)
    entries += _norm(f"{b}.norm2", f"{b}.norm2", batch=False)
    entries += _linear(f"{b}.mlp.fc1", f"{b}.mlp.fc1")
    entries += _linear(f"{b}.mlp.fc2", f"{b}.mlp.fc2")
    for ls in ("ls1", "ls2"):
      if f"{b}.{ls}.gamma" in names:
        entries.append(Entry((f"{b}.{ls}.gamma",), (f"{b}.{ls}.gamma",), **_same()))
  for norm in ("norm", "fc_norm"):
    if f"{norm}.scale" in names:
      entries += _norm(norm, norm, batch=False)
  if model.attn_pool is not None:
    entries.append(Entry(("attn_pool.latent",), ("attn_pool.probe",), **_same()))
    entries += _linear("attn_pool.query", "attn_pool.q")
    kv = ("attn_pool.kv.weight", "attn_pool.kv.bias")
    entries.append(_fused_entry("attn_pool", *kv, ("key", "value")))
    entries += _linear("attn_pool.out", "attn_pool.proj", n_in=2)
    entries += _norm("attn_pool.norm", "attn_pool.norm", batch=False)
    entries += _linear("attn_pool.mlp.fc1", "attn_pool.mlp.fc1")
    entries += _linear("attn_pool.mlp.fc2", "attn_pool.mlp.fc2")
  entries += _linear("head", "head", kind="head")
  if model.distilled:
    entries += _linear("head_dist", "head_dist", kind="head")
  return entries


# ----------------------------------------------------------------------------
# Hugging Face.


def _hf_vit_blocks(depth: int, theirs: str, *, v5: bool = False) -> list[Entry]:
  """ViT's and DeiT's encoder (hub names, or transformers 5's module names)."""
  entries = []
  for i in range(depth):
    ours, t = f"blocks.{i}", f"{theirs}.layers.{i}" if v5 else f"{theirs}.encoder.layer.{i}"
    entries += _norm(f"{ours}.norm1", f"{t}.layernorm_before", batch=False)
    for proj in ("query", "key", "value"):
      name = f"attention.{proj[0]}_proj" if v5 else f"attention.attention.{proj}"
      entries += _linear(f"{ours}.attn.{proj}", f"{t}.{name}")
    out = "attention.o_proj" if v5 else "attention.output.dense"
    entries += _linear(f"{ours}.attn.out", f"{t}.{out}", n_in=2)
    entries += _norm(f"{ours}.norm2", f"{t}.layernorm_after", batch=False)
    entries += _linear(f"{ours}.mlp.fc1", f"{t}.mlp.fc1" if v5 else f"{t}.intermediate.dense")
    entries += _linear(f"{ours}.mlp.fc2", f"{t}.mlp.fc2" if v5 else f"{t}.output.dense")
  return entries


def _hf_embeddings(model, names, theirs: str) -> list[Entry]:
  """ViT/DeiT/DINOv2 embeddings under `theirs`embeddings ("dinov2." or "")."""
  e = f"{theirs}embeddings"
  entries = [
    Entry((f"{e}.patch_embeddings.projection.weight",), ("patch_embed.kernel",), **_conv())
  ]
  entries.append(
    Entry((f"{e}.patch_embeddings.projection.bias",), ("patch_embed.bias",), **_same())
  )
  if model.embed_class:
    entries.append(Entry((f"{e}.cls_token",), ("cls_token",), **_same()))
    posemb = Entry((f"{e}.position_embeddings",), ("pos_embedding",), **_same("posemb"))
  else:
    keys = (f"{e}.cls_token", f"{e}.position_embeddings")
    posemb = Entry(keys, ("cls_token", "pos_embedding"), **_embedded_class())
  if model.distilled:
    entries.append(Entry((f"{e}.distillation_token",), ("dist_token",), **_same()))
  if model.num_registers:
    entries.append(Entry((f"{e}.register_tokens",), ("reg_token",), **_same()))
  return entries + [posemb]


def _hf_dinov2(model, names, theirs: str) -> list[Entry]:
  entries = _hf_embeddings(model, names, theirs)
  swiglu = model.act == "swiglu"
  for i in range(_depth(names)):
    ours, t = f"blocks.{i}", f"{theirs}encoder.layer.{i}"
    entries += _norm(f"{ours}.norm1", f"{t}.norm1", batch=False)
    for proj in ("query", "key", "value"):
      entries += _linear(f"{ours}.attn.{proj}", f"{t}.attention.attention.{proj}")
    entries += _linear(f"{ours}.attn.out", f"{t}.attention.output.dense", n_in=2)
    entries.append(Entry((f"{t}.layer_scale1.lambda1",), (f"{ours}.ls1.gamma",), **_same()))
    entries += _norm(f"{ours}.norm2", f"{t}.norm2", batch=False)
    entries += _linear(f"{ours}.mlp.fc1", f"{t}.mlp.weights_in" if swiglu else f"{t}.mlp.fc1")
    entries += _linear(f"{ours}.mlp.fc2", f"{t}.mlp.weights_out" if swiglu else f"{t}.mlp.fc2")
    entries.append(Entry((f"{t}.layer_scale2.lambda1",), (f"{ours}.ls2.gamma",), **_same()))
  return entries + _norm("norm", f"{theirs}layernorm", batch=False)


def _hf_tower(model, names, prefix: str) -> list[Entry]:
  """CLIP's and SigLIP's vision towers."""
  e = f"{prefix}embeddings"
  entries = [Entry((f"{e}.patch_embedding.weight",), ("patch_embed.kernel",), **_conv())]
  if "patch_embed.bias" in names:
    entries.append(Entry((f"{e}.patch_embedding.bias",), ("patch_embed.bias",), **_same()))
  if model.cls_token is not None:
    entries.append(Entry((f"{e}.class_embedding",), ("cls_token",), **_flat(2)))
  posemb = f"{e}.position_embedding.weight"
  entries.append(Entry((posemb,), ("pos_embedding",), **_flat(1, "posemb")))
  if model.norm_pre is not None:
    entries += _norm("norm_pre", f"{prefix}pre_layrnorm", batch=False)
  for i in range(_depth(names)):
    ours, t = f"blocks.{i}", f"{prefix}encoder.layers.{i}"
    entries += _norm(f"{ours}.norm1", f"{t}.layer_norm1", batch=False)
    for proj in ("query", "key", "value"):
      entries += _linear(f"{ours}.attn.{proj}", f"{t}.self_attn.{proj[0]}_proj")
    entries += _linear(f"{ours}.attn.out", f"{t}.self_attn.out_proj", n_in=2)
    entries += _norm(f"{ours}.norm2", f"{t}.layer_norm2", batch=False)
    entries += _linear(f"{ours}.mlp.fc1", f"{t}.mlp.fc1")
    entries += _linear(f"{ours}.mlp.fc2", f"{t}.mlp.fc2")
  entries += _norm("norm", f"{prefix}post_layernorm", batch=False)
  if model.attn_pool is not None:
    h = f"{prefix}head"
    entries.append(Entry((f"{h}.probe",), ("attn_pool.probe",), **_same()))
    w, b = f"{h}.attention.in_proj_weight", f"{h}.attention.in_proj_bias"
    entries.append(_fused_entry("attn_pool", w, b, ("query", "key", "value")))
    entries += _linear("attn_pool.out", f"{h}.attention.out_proj", n_in=2)
    entries += _norm("attn_pool.norm", f"{h}.layernorm", batch=False)
    entries += _linear("attn_pool.mlp.fc1", f"{h}.mlp.fc1")
    entries += _linear("attn_pool.mlp.fc2", f"{h}.mlp.fc2")
  return entries


def hf_entries(model, names: Sequence[str], file_keys=()) -> list[Entry]:
  family = hf_family(model)
  if model.fc_norm is not None:
    raise ConfigError("Hugging Face ViTs have no fc_norm: build the model with fc_norm=False")
  if family in ("clip", "siglip"):
    prefix = "vision_model." if any(k.startswith("vision_model.") for k in file_keys) else ""
    return _hf_tower(model, names, prefix) + _linear("head", "classifier", kind="head")
  if family == "dinov2":
    theirs = "dinov2_with_registers." if model.num_registers else "dinov2."
    # The hub's backbones (`Dinov2Model`, no classifier) name the modules without it.
    if file_keys and not any(k.startswith(theirs) for k in file_keys):
      theirs = ""
    return _hf_dinov2(model, names, theirs) + _linear("head", "classifier", kind="head")
  if family == "deit":
    entries = _hf_embeddings(model, names, "deit.") + _hf_vit_blocks(_depth(names), "deit")
    entries += _norm("norm", "deit.layernorm", batch=False)
    return (
      entries
      + _linear("head", "cls_classifier", kind="head")
      + _linear("head_dist", "distillation_classifier", kind="head")
    )
  return _hf_vit(names, file_keys)


def _hf_vit(names: Sequence[str], file_keys) -> list[Entry]:
  """`ViTForImageClassification`, in the hub's names (`encoder.layer.N.attention.attention.
  query`, which every transformers version loads) or transformers 5's module names
  (`layers.N.attention.q_proj`), as the file has them."""
  if "norm_pre.scale" in names:
    raise ConfigError("Hugging Face ViTs have no pre-norm: build the model with pre_norm=False")
  e = "vit.embeddings"
  entries = [
    Entry((f"{e}.patch_embeddings.projection.weight",), ("patch_embed.kernel",), **_conv())
  ]
  if "patch_embed.bias" in names:
    entries.append(
      Entry((f"{e}.patch_embeddings.projection.bias",), ("patch_embed.bias",), **_same())
    )
  if "cls_token" in names:
    entries.append(Entry((f"{e}.cls_token",), ("cls_token",), **_same()))
  entries.append(Entry((f"{e}.position_embeddings",), ("pos_embedding",), **_same("posemb")))
  v5 = any(k.startswith("vit.layers.") for k in file_keys)
  entries += _hf_vit_blocks(_depth(names), "vit", v5=v5)
  entries += _norm("norm", "vit.layernorm", batch=False)
  return entries + _linear("head", "classifier", kind="head")


def entries(model, names: Sequence[str], layout: str, file_keys=()) -> list[Entry]:
  """The layout's entries for a duojax ViT of any variant."""
  if layout == "torchvision":
    raise ConfigError("layout 'torchvision' holds ResNets only; ViT layouts: timm, hf")
  if layout == "timm":
    return timm_entries(model, names)
  return hf_entries(model, names, file_keys)


# ----------------------------------------------------------------------------
# Loading: another grid, another variant.


def resample_posemb(model, posemb: np.ndarray, layout: str) -> np.ndarray:
  """A file's position embeddings on the model's grid, resampled as the file's library
  does for that model: bilinear for the plain ViTs, PyTorch's bicubic for the variants
  (`posemb_resize="bicubic"`), antialiased as timm and Hugging Face's DINOv2 with
  registers do it, plain as Hugging Face's other towers."""
  method = model.posemb_resize
  if method == "bicubic" and (layout == "timm" or model.num_registers):
    method = "bicubic_aa"
  grid = tuple(s // model.patch_size for s in model.image_size)
  return vit_posemb.resample(posemb, grid, model.num_embedded_prefix, method)


# (what the file holds, how to tell, the option that builds it)
_FEATURES = (
  ("a distillation token", ("dist_token", "distillation_token"), "distilled=True"),
  ("register tokens", ("reg_token", "register_tokens"), "num_registers=N"),
  ("layer scale", (".ls1.gamma", ".layer_scale1.lambda1"), "layer_scale=True"),
  ("attention pooling", ("attn_pool.latent", "head.probe"), "pool='map'"),
  ("fc_norm", ("fc_norm.weight",), "pool='gap', class_token=True, fc_norm=True"),
  ("a pre-norm", ("norm_pre.weight", "pre_layrnorm.weight"), "pre_norm=True"),
)


def _model_has(model, what: str) -> bool:
  return {
    "a distillation token": model.distilled,
    "register tokens": model.num_registers > 0,
    "layer scale": model.blocks[0].ls1 is not None,
    "attention pooling": model.attn_pool is not None,
    "fc_norm": model.fc_norm is not None,
    "a pre-norm": model.norm_pre is not None,
  }[what]


def check_variant(path: str, model, keys) -> None:
  """One line for a ViT variant's file loaded into a ViT of another variant."""
  for what, marks, option in _FEATURES:
    in_file = any(k.endswith(marks) for k in keys)
    if in_file != _model_has(model, what):
      held, lacks = ("holds", "lacks") if in_file else ("lacks", "has")
      raise WeightsMismatchError(
        f"{path!r} {held} {what} but the model {model.name} {lacks} it"
        + (f"; build it with {option}" if in_file else f"; build it without {option}")
      )
  head = next((keys[k] for k in ("classifier.weight", "head.weight") if k in keys), None)
  features = None if head is None else np.shape(head)[-1]
  width = model.pos_embedding.shape[-1]
  if features is not None and features != model.num_features and features in (width, 2 * width):
    pool = "'tok+gap'" if features == 2 * width else "'tok'"
    raise WeightsMismatchError(
      f"{path!r} has a head on {features} features, {model.name} on {model.num_features}"
      f" (Hugging Face's DINOv2 classifier takes concat(class token, mean of patch tokens)):"
      f" build it with pool={pool}"
    )
