"""Model zoo: build any image classifier by name.

    model = get_model("resnet18", 10, rngs=nnx.Rngs(0), dtype="bfloat16")
    logits, out = model(images, train=False, rngs=None)  # out["pre_logits"]

Families: ResNets ("resnet18" ... "resnet152", CIFAR-style "resnet8" ...
"resnet32"), Vision Transformers ("vit_{variant}{patch}", e.g. "vit_b16",
"vit_mu4") and the CLIP, DINOv2, DeiT-distilled and SigLIP towers ("vit_b16_clip",
"vit_s14_dinov2", "vit_s14_dinov2_reg", "deit_b16_distilled", "vit_b16_siglip", ...:
`vit_variants`), small plain CNNs ("cnn_s", "cnn_xs"), and torchvision's
RegNets ("regnet_x_400mf" ... "regnet_y_32gf"), MobileNets ("mobilenet_v2",
"mobilenet_v3_small/large"), MNASNets ("mnasnet0_5" ... "mnasnet1_3"),
ShuffleNetV2s ("shufflenet_v2_x0_5" ... "_x2_0"), ResNeXts and Wide ResNets
("resnext50_32x4d", "wide_resnet50_2", ...), Swin Transformer V2s ("swin_v2_t",
"swin_v2_b_w16", ...). Every model has
float32 parameters, returns float32 logits, and exposes `name`,
`input_shape` ((H, W, C), None where free) and `image_size`.
"""

import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError
from duojax.models import (
  cnn,
  convnext,
  efficientnet,
  mnasnet,
  mobilenet,
  regnet,
  resnet,
  resnext,
  shufflenet,
  swin,
  vit,
  vit_variants,
)

# Representative ViT names; any vit_{mu,mi,ti,s,m,b,l,h}{patch} is accepted.
_VIT_EXAMPLES = (
  "vit_mu4",
  "vit_mi4",
  "vit_ti16",
  "vit_s16",
  "vit_s32",
  "vit_m16",
  "vit_b16",
  "vit_b32",
  "vit_l16",
  "vit_h14",
)
_VIT_PATTERN = "vit_{" + ",".join(v.lower() for v in vit.VARIANTS) + "}{patch}"
# torchvision's RegNets, MobileNets, MNASNets, ShuffleNets, ResNeXts and Wide ResNets.
_TORCHVISION_FAMILIES = (regnet, mobilenet, mnasnet, shufflenet, resnext)


def list_models() -> list[str]:
  """Example model names (ViT patch sizes are free; see _VIT_PATTERN)."""
  torchvision_names = [name for family in _TORCHVISION_FAMILIES for name in family.CONFIGS]
  return [
    *resnet.CONFIGS,
    *_VIT_EXAMPLES,
    *cnn.CONFIGS,
    *convnext.CONFIGS,
    *efficientnet.CONFIGS,
    *swin.CONFIGS,
    *vit_variants.CONFIGS,
  ] + torchvision_names


def _family(name: str):
  """The module that builds `name`, or None."""
  if name in resnet.CONFIGS:
    return resnet
  if name in cnn.CONFIGS:
    return cnn
  if name in convnext.CONFIGS:
    return convnext
  if name in efficientnet.CONFIGS:
    return efficientnet
  if name in swin.CONFIGS:
    return swin
  if name in vit_variants.CONFIGS:  # CLIP, DINOv2, DeiT, SigLIP
    return vit_variants
  if vit.parse_name(name) is not None:
    return vit
  return next((f for f in _TORCHVISION_FAMILIES if name in f.CONFIGS), None)


def family_name(name: str) -> str | None:
  """The family of model `name` ("resnet", "vit", "regnet", "mobilenet", ...), None if unknown:
  the key of each library's preprocessing for it (`data.PRETRAINED_STATS`)."""
  family = _family(name.lower()) if isinstance(name, str) else None
  if family is vit_variants:
    return vit_variants.family(name.lower())
  return None if family is None else family.__name__.rsplit(".", 1)[-1]


def _compute_dtype(value, name: str):
  try:
    dtype = None if value is None else jnp.dtype(value)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    raise ConfigError(
      f"{name}: dtype must be a float dtype such as 'float32' or 'bfloat16', got {value!r}"
    )
  return dtype


def _image_size(value, name: str) -> tuple[int, int]:
  size = (value, value) if isinstance(value, int) else tuple(value)
  if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
    raise ConfigError(f"{name}: image_size must be a positive int or an (H, W) pair, got {value!r}")
  return size


def get_model(
  name: str, num_classes: int = 1000, *, rngs: nnx.Rngs | int | None = None, **overrides
) -> nnx.Module:
  """Builds model `name` with `num_classes` outputs.

  Args:
    name: a name from `list_models()` or any "vit_{variant}{patch}".
    num_classes: size of the classification head.
    rngs: parameter initialisation randomness (an nnx.Rngs or an int seed);
      None means nnx.Rngs(0). Pass distinct seeds for ensemble members.
    **overrides: family-specific options (e.g. width, dtype, image_size);
      unknown keys raise ConfigError listing the valid ones.

  Returns:
    An nnx.Module called as `logits, out = model(x, train=False, rngs=None)`.
  """
  key = name.lower() if isinstance(name, str) else None
  family = _family(key) if key is not None else None
  if family is None:
    raise ConfigError(
      f"unknown model {name!r}; known models: {', '.join(list_models())} (and any {_VIT_PATTERN})"
    )
  for k in overrides:
    if k not in family.OVERRIDES:
      raise ConfigError(
        f"unknown override {k!r} for {key}; valid: {', '.join(sorted(family.OVERRIDES))}"
      )
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ConfigError(f"{key}: num_classes must be a positive int, got {num_classes!r}")
  if "dtype" in overrides:
    overrides["dtype"] = _compute_dtype(overrides["dtype"], key)
  if "image_size" in overrides:
    overrides["image_size"] = _image_size(overrides["image_size"], key)
  if rngs is None:
    rngs = nnx.Rngs(0)
  elif isinstance(rngs, int):
    rngs = nnx.Rngs(rngs)
  return family.create(key, num_classes, rngs=rngs, **overrides)


__all__ = ["get_model", "list_models"]
