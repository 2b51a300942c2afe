"""The ViT towers users pair today: CLIP, DINOv2, DeiT (distilled), SigLIP.

Each is `vit.VisionTransformer` with the options its library builds it with
(`CONFIGS`); names carry the family:

  * CLIP (`vit_b16_clip`, `vit_l14_clip`; `_quickgelu`: OpenAI's activation
    x·σ(1.702x), which Hugging Face's `CLIPVisionModel` uses by default):
    LayerNorm before the blocks, no patch-embedding bias, LayerNorm ε 1e-5;
  * DINOv2 (`vit_{s,b,l,g}14_dinov2`, `vit_{s,b,l,g}14_dinov2_reg` with 4
    register tokens, whose position embedding leaves the class token out as
    timm's does): layer scale in every block, 518-px inputs (a 37 × 37
    grid), the giant with a SwiGLU MLP (width 1536, depth 40, 24 heads, 4096 hidden);
  * DeiT distilled (`deit_{ti,s,b}16_distilled`): class and distillation
    tokens, two heads whose logits are averaged;
  * SigLIP (`vit_b16_siglip`, `vit_so400m14_siglip`): no class token,
    attention pooling ("map"), GELU's tanh form as big_vision trained it
    (timm's port computes the exact GELU: `act="gelu"` matches it to the bit).

Every family's file for another grid is resampled bicubically, as timm and
Hugging Face do (`vit_posemb`). Every option stays a model override, so e.g. `pool="tok+gap"` builds the
head of Hugging Face's `Dinov2ForImageClassification` and `act="gelu"` the
timm SigLIP.
"""

from __future__ import annotations

from flax import nnx

from duojax.errors import ConfigError
from duojax.models import vit

OVERRIDES = vit.OVERRIDES

# Every family's file resampled bicubically to another grid, as both libraries do.
_CLIP = dict(pre_norm=True, patch_bias=False, norm_eps=1e-5, posemb_resize="bicubic")
_DINOV2 = dict(layer_scale=True, posemb_resize="bicubic", image_size=518)
_REG = dict(num_registers=4, embed_class=False)
_DEIT = dict(distilled=True, posemb_resize="bicubic")
_SIGLIP = dict(pool="map", class_token=False, act="gelu_tanh", posemb_resize="bicubic")


def _size(variant: str, patch: int) -> dict:
  width, depth, mlp_dim, num_heads = vit.VARIANTS[variant]
  return dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, patch_size=patch)


_GIANT = dict(width=1536, depth=40, mlp_dim=4096, num_heads=24, patch_size=14, act="swiglu")
_SO400M = dict(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14)

# name -> (family, VisionTransformer kwargs). The family keys each library's
# preprocessing (`data.PRETRAINED_STATS`).
CONFIGS = {
  "vit_b16_clip": ("vit_clip", {**_size("B", 16), **_CLIP}),
  "vit_l14_clip": ("vit_clip", {**_size("L", 14), **_CLIP}),
  "vit_b16_clip_quickgelu": ("vit_clip", {**_size("B", 16), **_CLIP, "act": "quick_gelu"}),
  "vit_l14_clip_quickgelu": ("vit_clip", {**_size("L", 14), **_CLIP, "act": "quick_gelu"}),
  "vit_s14_dinov2": ("vit_dinov2", {**_size("S", 14), **_DINOV2}),
  "vit_b14_dinov2": ("vit_dinov2", {**_size("B", 14), **_DINOV2}),
  "vit_l14_dinov2": ("vit_dinov2", {**_size("L", 14), **_DINOV2}),
  "vit_g14_dinov2": ("vit_dinov2", {**_GIANT, **_DINOV2}),
  "vit_s14_dinov2_reg": ("vit_dinov2", {**_size("S", 14), **_DINOV2, **_REG}),
  "vit_b14_dinov2_reg": ("vit_dinov2", {**_size("B", 14), **_DINOV2, **_REG}),
  "vit_l14_dinov2_reg": ("vit_dinov2", {**_size("L", 14), **_DINOV2, **_REG}),
  "vit_g14_dinov2_reg": ("vit_dinov2", {**_GIANT, **_DINOV2, **_REG}),
  "deit_ti16_distilled": ("deit", {**_size("Ti", 16), **_DEIT}),
  "deit_s16_distilled": ("deit", {**_size("S", 16), **_DEIT}),
  "deit_b16_distilled": ("deit", {**_size("B", 16), **_DEIT}),
  "vit_b16_siglip": ("vit_siglip", {**_size("B", 16), **_SIGLIP}),
  "vit_so400m14_siglip": ("vit_siglip", {**_SO400M, **_SIGLIP}),
}


def family(name: str) -> str:
  """ "vit_clip", "vit_dinov2", "deit" or "vit_siglip"."""
  return CONFIGS[name][0]


def create(
  name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides
) -> vit.VisionTransformer:
  """Builds a variant by name, its library's options under the overrides."""
  if name not in CONFIGS:
    raise ConfigError(f"not a ViT variant: {name!r}; known: {', '.join(CONFIGS)}")
  kwargs = {**CONFIGS[name][1], **overrides}
  return vit.VisionTransformer(num_classes, name=name, rngs=rngs, **kwargs)
