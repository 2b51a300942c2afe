"""ResNets: torchvision-equivalent ImageNet ResNets and CIFAR-style small ones.

The ImageNet variants (resnet18 ... resnet152) match torchvision's layer
shapes, padding and parameter counts exactly (ResNet v1.5: the stride of a
Bottleneck sits on its 3x3 conv). `groups` and `width_per_group` make the
Bottleneck's 3x3 conv grouped and its inner width `ch * width_per_group / 64
* groups`, torchvision's ResNeXt and Wide ResNet (duojax/models/resnext.py
names them). The CIFAR variants (resnet8 ... resnet32)
follow He et al. (2016), section 4.2: three stages of widths (w, 2w, 4w) on a
3x3 stem, except that shortcuts use a projection (1x1 conv + BN) rather than
zero padding when the shape changes.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError, InputError
from duojax.models import common

# name -> (block kind, blocks per stage, base width, stem)
CONFIGS = {
  "resnet18": ("basic", (2, 2, 2, 2), 64, "imagenet"),
  "resnet34": ("basic", (3, 4, 6, 3), 64, "imagenet"),
  "resnet50": ("bottleneck", (3, 4, 6, 3), 64, "imagenet"),
  "resnet101": ("bottleneck", (3, 4, 23, 3), 64, "imagenet"),
  "resnet152": ("bottleneck", (3, 8, 36, 3), 64, "imagenet"),
  "resnet8": ("basic", (1, 1, 1), 16, "small"),
  "resnet14": ("basic", (2, 2, 2), 16, "small"),
  "resnet20": ("basic", (3, 3, 3), 16, "small"),
  "resnet32": ("basic", (5, 5, 5), 16, "small"),
}

OVERRIDES = (
  "width",
  "stem",
  "in_channels",
  "image_size",
  "dtype",
  "dropout",
  "zero_init_residual",
  "groups",
  "width_per_group",
)

STEMS = ("imagenet", "small")


# torchvision: kaiming_normal_(mode="fan_out") convs, N(0, 2 / (kh*kw*out)).
_conv_init = common.normal_init(lambda s: math.sqrt(2.0 / (math.prod(s[:-2]) * s[-1])))
# LeCun normal head, N(0, 1 / in_features).
_head_init = common.normal_init(lambda s: s[0] ** -0.5)


def _conv(in_ch, out_ch, kernel, stride, *, groups=1, dtype, rngs):
  """Bias-free conv with torch-style symmetric padding.

  'SAME' would pad (0, 1) for a stride-2 conv on an even input, torch pads
  (1, 1); explicit padding keeps feature maps identical to torchvision.
  """
  pad = kernel // 2
  return nnx.Conv(
    in_ch,
    out_ch,
    (kernel, kernel),
    strides=stride,
    padding=((pad, pad), (pad, pad)),
    feature_group_count=groups,
    use_bias=False,
    kernel_init=_conv_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


def _bn(ch, *, zero_scale=False, dtype, rngs):
  # Flax momentum is the decay of the running average: torch's 0.1 is 0.9.
  # Statistics are computed and stored in float32 whatever `dtype` is.
  scale_init = nnx.initializers.zeros if zero_scale else nnx.initializers.ones
  return nnx.BatchNorm(
    ch,
    momentum=0.9,
    epsilon=1e-5,
    scale_init=scale_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


class Projection(nnx.Module):
  """1x1 conv + BN shortcut, used when a block changes the shape."""

  def __init__(self, in_ch, out_ch, stride, *, dtype, rngs):
    self.conv = _conv(in_ch, out_ch, 1, stride, dtype=dtype, rngs=rngs)
    self.bn = _bn(out_ch, dtype=dtype, rngs=rngs)

  def __call__(self, x, train: bool):
    return self.bn(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
  """Two 3x3 convs (resnet18/34 and the CIFAR ResNets)."""

  expansion = 1

  def __init__(self, in_ch, ch, stride, *, zero_init_residual=False, dtype, rngs):
    out_ch = ch * self.expansion
    self.conv1 = _conv(in_ch, ch, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(ch, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(ch, out_ch, 3, 1, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(out_ch, zero_scale=zero_init_residual, dtype=dtype, rngs=rngs)
    self.shortcut = (
      Projection(in_ch, out_ch, stride, dtype=dtype, rngs=rngs)
      if stride != 1 or in_ch != out_ch
      else None
    )

  def __call__(self, x, train: bool):
    ura = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.bn2(self.conv2(y), use_running_average=ura)
    skip = x if self.shortcut is None else self.shortcut(x, train)
    return jax.nn.relu(y + skip)


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (strided, v1.5; grouped in ResNeXt), 1x1 expand by 4 (resnet50 and up)."""

  expansion = 4

  def __init__(
    self, in_ch, ch, stride, *, zero_init_residual=False, groups=1, width_per_group=64, dtype, rngs
  ):
    out_ch = ch * self.expansion
    # torchvision's inner width: ch for ResNets, wider or grouped for ResNeXt / Wide ResNet.
    inner = int(ch * (width_per_group / 64.0)) * groups
    self.conv1 = _conv(in_ch, inner, 1, 1, dtype=dtype, rngs=rngs)
    self.bn1 = _bn(inner, dtype=dtype, rngs=rngs)
    self.conv2 = _conv(inner, inner, 3, stride, groups=groups, dtype=dtype, rngs=rngs)
    self.bn2 = _bn(inner, dtype=dtype, rngs=rngs)
    self.conv3 = _conv(inner, out_ch, 1, 1, dtype=dtype, rngs=rngs)
    self.bn3 = _bn(out_ch, zero_scale=zero_init_residual, dtype=dtype, rngs=rngs)
    self.shortcut = (
      Projection(in_ch, out_ch, stride, dtype=dtype, rngs=rngs)
      if stride != 1 or in_ch != out_ch
      else None
    )

  def __call__(self, x, train: bool):
    ura = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.bn3(self.conv3(y), use_running_average=ura)
    skip = x if self.shortcut is None else self.shortcut(x, train)
    return jax.nn.relu(y + skip)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nnx.Module):
  """Stem, stages of residual blocks, global average pool, linear head.

  Stage i has `width * 2**i` channels (times the block expansion) and halves
  the resolution, except the first stage. Any H, W is accepted.
  """

  def __init__(
    self,
    stage_sizes: Sequence[int],
    block: str = "basic",
    num_classes: int = 1000,
    *,
    width: int = 64,
    stem: str = "imagenet",
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 224,
    dtype="float32",
    zero_init_residual: bool = False,
    dropout: float = 0.0,
    groups: int = 1,
    width_per_group: int = 64,
    name: str = "resnet",
    rngs: nnx.Rngs,
  ):
    if block not in BLOCKS:
      raise ConfigError(f"{name}: unknown block {block!r}; valid: {', '.join(BLOCKS)}")
    if stem not in STEMS:
      raise ConfigError(f"{name}: unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    if width < 1 or in_channels < 1 or num_classes < 1:
      raise ConfigError(
        f"{name}: width, in_channels and num_classes must be "
        f"positive, got {width}, {in_channels}, {num_classes}"
      )
    if (groups, width_per_group) != (1, 64) and block != "bottleneck":
      raise ConfigError(f"{name}: groups and width_per_group need bottleneck blocks")
    if groups < 1 or width_per_group < 1:
      raise ConfigError(
        f"{name}: groups and width_per_group must be positive, got {groups}, {width_per_group}"
      )
    wide = {"groups": groups, "width_per_group": width_per_group} if block == "bottleneck" else {}
    dtype = jnp.dtype(dtype)
    self.name = name
    self.dtype = dtype
    self.dropout_rate = common.check_dropout(name, dropout)
    # Dropout on the pre-logit features only (stateless: keys come at call time).
    self.head_dropout = nnx.Dropout(self.dropout_rate, rngs=None)
    self.stem = stem
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    # Nominal resolution only: global pooling makes the network size-agnostic.
    self.image_size = (int(h), int(w))
    self.input_shape = (None, None, in_channels)

    if stem == "imagenet":
      self.stem_conv = _conv(in_channels, width, 7, 2, dtype=dtype, rngs=rngs)
    else:
      self.stem_conv = _conv(in_channels, width, 3, 1, dtype=dtype, rngs=rngs)
    self.stem_bn = _bn(width, dtype=dtype, rngs=rngs)

    block_cls = BLOCKS[block]
    in_ch, stages = width, []
    for i, num_blocks in enumerate(stage_sizes):
      ch = width * 2**i
      blocks = []
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(
          block_cls(
            in_ch, ch, stride, zero_init_residual=zero_init_residual, dtype=dtype, rngs=rngs, **wide
          )
        )
        in_ch = ch * block_cls.expansion
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self.num_features = in_ch
    # The head runs in float32 even under bfloat16 compute: it is tiny, and
    # calibrated probabilities are the point of this library.
    self.head = nnx.Linear(
      in_ch,
      num_classes,
      kernel_init=_head_init,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs=rngs,
    )

  def _check_input(self, x):
    c = self.input_shape[-1]
    if x.ndim != 4:
      raise InputError(
        f"{self.name} expects images of shape (H, W, {c}) "
        f"batched as [B, H, W, C], got an array of shape "
        f"{tuple(x.shape)}"
      )
    if x.shape[-1] != c:
      raise InputError(f"{self.name} expects images of shape (H, W, {c}), got {tuple(x.shape[1:])}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise InputError(f"{self.name} expects float images, got {x.dtype}")

  def __call__(self, x, train: bool = False, rngs=None):
    """Returns (float32 logits [B, classes], {"pre_logits": [B, D]}).

    `train=True` normalises with batch statistics, updates the running
    averages in place, and applies dropout (if any) to the pre-logits, with
    keys from `rngs` (an nnx.Rngs with a "dropout" stream, or a key).
    """
    self._check_input(x)
    common.check_rngs(self.name, self.dropout_rate, train, rngs)
    ura = not train
    x = x.astype(self.dtype)
    x = jax.nn.relu(self.stem_bn(self.stem_conv(x), use_running_average=ura))
    if self.stem == "imagenet":
      # torch MaxPool2d(3, 2, padding=1); max_pool pads with -inf.
      x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage in self.stages:
      for block in stage:
        x = block(x, train)
    # Average in float32 so bfloat16 compute does not lose the features.
    pre_logits = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    dropped = self.head_dropout(pre_logits, deterministic=not train, rngs=rngs)
    logits = self.head(dropped)
    return logits, {"pre_logits": pre_logits}


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> ResNet:
  """Builds a ResNet from its name in CONFIGS plus validated overrides."""
  block, stage_sizes, width, stem = CONFIGS[name]
  kwargs = dict(width=width, stem=stem)
  kwargs.update(overrides)
  return ResNet(stage_sizes, block, num_classes, name=name, rngs=rngs, **kwargs)
