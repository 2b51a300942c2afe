"""EfficientNet B0–B7 (Tan & Le, 2019) and EfficientNetV2 S/M/L (Tan & Le, 2021).

torchvision's models, layer for layer: a 3×3 stride-2 stem, stages of
mobile inverted bottlenecks, a 1×1 head conv, global average pooling, dropout
and a linear classifier; SiLU throughout, BatchNorm after every conv.

  * MBConv: 1×1 expansion (skipped at ratio 1), k×k depthwise conv (the
    stage's stride), squeeze-excitation (global pool, 1×1 conv to a quarter
    of the block's *input* channels, SiLU, 1×1 conv back, sigmoid gate),
    1×1 projection without activation;
  * Fused-MBConv (V2's early stages): the expansion and depthwise convs fused
    into one k×k conv, then a 1×1 projection (none at ratio 1), no SE.

A block whose stride is 1 and whose channels do not change adds its input,
after stochastic depth: the k-th of n blocks drops its branch per image with
probability `drop_path` · k / n (torchvision's 0.2).

B0's stage table (expansion, kernel, stride, output channels, blocks) scales
to B1–B7 by a width multiplier (channels × w, rounded to a multiple of 8, never
down by more than 10%) and a depth multiplier (blocks × d, rounded up); the
head conv has four times the last stage's channels. V2's tables are their own,
with 1280 head channels. BatchNorm is torchvision's: eps 1e-5 and momentum 0.1
for B0–B4, eps 1e-3 for V2, and eps 1e-3 with momentum 0.01 for B5–B7.

TensorFlow's original weights (Hugging Face's EfficientNet, timm's `tf_`
models) pad "same" (the odd pixel after, `common.same_padding`) and use
BatchNorm eps 1e-3: build with `padding="same", bn_eps=1e-3` to load them.
Parameter counts equal torchvision's (B0 5,288,548; V2-S 21,458,488).
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError
from duojax.models import common, depthwise

# (block, expansion, kernel, stride, output channels, blocks); "mb" MBConv, "fused" Fused-MBConv.
B0_STAGES = (
  ("mb", 1, 3, 1, 16, 1),
  ("mb", 6, 3, 2, 24, 2),
  ("mb", 6, 5, 2, 40, 2),
  ("mb", 6, 3, 2, 80, 3),
  ("mb", 6, 5, 1, 112, 3),
  ("mb", 6, 5, 2, 192, 4),
  ("mb", 6, 3, 1, 320, 1),
)
V2_STAGES = {
  "s": (
    ("fused", 1, 3, 1, 24, 2),
    ("fused", 4, 3, 2, 48, 4),
    ("fused", 4, 3, 2, 64, 4),
    ("mb", 4, 3, 2, 128, 6),
    ("mb", 6, 3, 1, 160, 9),
    ("mb", 6, 3, 2, 256, 15),
  ),
  "m": (
    ("fused", 1, 3, 1, 24, 3),
    ("fused", 4, 3, 2, 48, 5),
    ("fused", 4, 3, 2, 80, 5),
    ("mb", 4, 3, 2, 160, 7),
    ("mb", 6, 3, 1, 176, 14),
    ("mb", 6, 3, 2, 304, 18),
    ("mb", 6, 3, 1, 512, 5),
  ),
  "l": (
    ("fused", 1, 3, 1, 32, 4),
    ("fused", 4, 3, 2, 64, 7),
    ("fused", 4, 3, 2, 96, 7),
    ("mb", 4, 3, 2, 192, 10),
    ("mb", 6, 3, 1, 224, 19),
    ("mb", 6, 3, 2, 384, 25),
    ("mb", 6, 3, 1, 640, 7),
  ),
}


def _v1(width_mult, depth_mult, image_size, dropout, bn_eps=1e-5, bn_momentum=0.1):
  return dict(
    image_size=image_size,
    stages=B0_STAGES,
    stem=32,
    width_mult=width_mult,
    depth_mult=depth_mult,
    head_width=None,
    dropout=dropout,
    bn_eps=bn_eps,
    bn_momentum=bn_momentum,
  )


def _v2(size, image_size, dropout):
  stages = V2_STAGES[size]
  return dict(
    image_size=image_size,
    stages=stages,
    stem=stages[0][4],
    width_mult=1.0,
    depth_mult=1.0,
    head_width=1280,
    dropout=dropout,
    bn_eps=1e-3,
    bn_momentum=0.1,
  )


# name -> the EfficientNet keyword arguments (torchvision's); every key is also an
# override. The image size is nominal (any size runs): that of torchvision's weights,
# the side their published accuracy and FLOPs are measured at.
CONFIGS = {
  "efficientnet_b0": _v1(1.0, 1.0, 224, 0.2),
  "efficientnet_b1": _v1(1.0, 1.1, 240, 0.2),
  "efficientnet_b2": _v1(1.1, 1.2, 288, 0.3),
  "efficientnet_b3": _v1(1.2, 1.4, 300, 0.3),
  "efficientnet_b4": _v1(1.4, 1.8, 380, 0.4),
  "efficientnet_b5": _v1(1.6, 2.2, 456, 0.4, 1e-3, 0.01),
  "efficientnet_b6": _v1(1.8, 2.6, 528, 0.5, 1e-3, 0.01),
  "efficientnet_b7": _v1(2.0, 3.1, 600, 0.5, 1e-3, 0.01),
  "efficientnet_v2_s": _v2("s", 384, 0.2),
  "efficientnet_v2_m": _v2("m", 480, 0.3),
  "efficientnet_v2_l": _v2("l", 480, 0.4),
}

OVERRIDES = (*CONFIGS["efficientnet_b0"], "padding", "drop_path", "in_channels", "dtype")
PADDINGS = ("torch", "same")


def make_divisible(value: float, divisor: int = 8) -> int:
  """`value` rounded to a multiple of `divisor`, never down by more than 10% (torchvision)."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


# torchvision: kaiming_normal_(mode="fan_out") convs, N(0, 2 / (kh*kw*out)); the
# head uniform in ±1/sqrt(classes).
_conv_init = common.normal_init(lambda s: math.sqrt(2.0 / (math.prod(s[:-2]) * s[-1])))


def _head_init(key, shape, dtype=jnp.float32):
  bound = 1.0 / math.sqrt(shape[-1])
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class Layers:
  """Builds the convs and norms of one model: its padding, BN eps/momentum and dtype."""

  def __init__(self, padding, bn_eps, bn_momentum, dtype, rngs):
    self.padding, self.eps, self.momentum = padding, bn_eps, bn_momentum
    self.dtype, self.rngs = dtype, rngs

  def conv(self, d_in, d_out, kernel=1, stride=1, groups=1, bias=False):
    # XLA's "SAME" is TensorFlow's (common.same_padding); torch pads k // 2 each side.
    pad = "SAME" if self.padding == "same" else [(kernel // 2, kernel // 2)] * 2
    return depthwise.Conv(
      d_in,
      d_out,
      (kernel, kernel),
      strides=stride,
      padding=pad,
      feature_group_count=groups,
      use_bias=bias,
      kernel_init=_conv_init,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      rngs=self.rngs,
    )

  def bn(self, ch):
    # Flax momentum is the decay of the running average: torch's 0.1 is 0.9.
    return nnx.BatchNorm(
      ch,
      momentum=1.0 - self.momentum,
      epsilon=self.eps,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      rngs=self.rngs,
    )


class SqueezeExcitation(nnx.Module):
  """Global pool, 1×1 conv down, SiLU, 1×1 conv up, sigmoid gate on the input."""

  def __init__(self, ch, squeeze, layers: Layers):
    self.reduce = layers.conv(ch, squeeze, bias=True)
    self.expand = layers.conv(squeeze, ch, bias=True)

  def __call__(self, x):
    # The pool sums many values: average in float32 under bfloat16 compute.
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2), keepdims=True).astype(x.dtype)
    return x * jax.nn.sigmoid(self.expand(jax.nn.silu(self.reduce(s))))


class MBConv(nnx.Module):
  """[1×1 expand] → k×k depthwise (strided) → SE → 1×1 project, residual when shapes allow."""

  def __init__(self, d_in, d_out, expansion, kernel, stride, drop_path, layers: Layers):
    mid = make_divisible(d_in * expansion)
    if mid != d_in:
      self.expand_conv, self.expand_bn = layers.conv(d_in, mid), layers.bn(mid)
    else:
      self.expand_conv, self.expand_bn = None, None
    self.dw_conv = layers.conv(mid, mid, kernel, stride, groups=mid)
    self.dw_bn = layers.bn(mid)
    self.se = SqueezeExcitation(mid, max(1, d_in // 4), layers)
    self.project_conv, self.project_bn = layers.conv(mid, d_out), layers.bn(d_out)
    self.residual = stride == 1 and d_in == d_out
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=None)

  def __call__(self, x, train: bool, rngs):
    ura = not train
    y = x
    if self.expand_conv is not None:
      y = jax.nn.silu(self.expand_bn(self.expand_conv(y), use_running_average=ura))
    y = jax.nn.silu(self.dw_bn(self.dw_conv(y), use_running_average=ura))
    y = self.project_bn(self.project_conv(self.se(y)), use_running_average=ura)
    if not self.residual:
      return y
    return x + self.drop_path(y, deterministic=not train, rngs=rngs)


class FusedMBConv(nnx.Module):
  """k×k conv (strided, expanding) → [1×1 project], residual when shapes allow."""

  def __init__(self, d_in, d_out, expansion, kernel, stride, drop_path, layers: Layers):
    mid = make_divisible(d_in * expansion)
    # At ratio 1 the one k×k conv maps straight to the output (with SiLU).
    fused_out = mid if mid != d_in else d_out
    self.fused_conv = layers.conv(d_in, fused_out, kernel, stride)
    self.fused_bn = layers.bn(fused_out)
    if mid != d_in:
      self.project_conv, self.project_bn = layers.conv(mid, d_out), layers.bn(d_out)
    else:
      self.project_conv, self.project_bn = None, None
    self.residual = stride == 1 and d_in == d_out
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=None)

  def __call__(self, x, train: bool, rngs):
    ura = not train
    y = jax.nn.silu(self.fused_bn(self.fused_conv(x), use_running_average=ura))
    if self.project_conv is not None:
      y = self.project_bn(self.project_conv(y), use_running_average=ura)
    if not self.residual:
      return y
    return x + self.drop_path(y, deterministic=not train, rngs=rngs)


BLOCKS = {"mb": MBConv, "fused": FusedMBConv}


def scaled_stages(stages, width_mult: float, depth_mult: float) -> list[tuple]:
  """The stage table with channels and block counts scaled (torchvision's rounding)."""
  return [
    (block, e, k, s, make_divisible(c * width_mult), math.ceil(n * depth_mult))
    for block, e, k, s, c, n in stages
  ]


class EfficientNet(nnx.Module):
  """Stem, stages of (Fused-)MBConv blocks, 1×1 head conv, pooled pre-logits, linear head."""

  def __init__(
    self,
    num_classes: int = 1000,
    *,
    stages=B0_STAGES,
    stem: int = 32,
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
    head_width: int | None = None,
    dropout: float = 0.2,
    drop_path: float = 0.2,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
    padding: str = "torch",
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 224,
    dtype="float32",
    name: str = "efficientnet",
    rngs: nnx.Rngs,
  ):
    if padding not in PADDINGS:
      raise ConfigError(f"{name}: unknown padding {padding!r}; valid: {', '.join(PADDINGS)}")
    if not 0.0 <= drop_path < 1.0:
      raise ConfigError(f"{name}: drop_path must be in [0, 1), got {drop_path}")
    if width_mult <= 0 or depth_mult <= 0 or in_channels < 1 or not stages:
      raise ConfigError(
        f"{name}: width_mult, depth_mult and in_channels must be positive and stages given, "
        f"got {width_mult}, {depth_mult}, {in_channels}, {len(stages)} stages"
      )
    for row in stages:
      if len(row) != 6 or row[0] not in BLOCKS:
        raise ConfigError(
          f"{name}: a stage is (block, expansion, kernel, stride, channels, blocks) with block "
          f"one of {', '.join(BLOCKS)}; got {row!r}"
        )
    dtype = jnp.dtype(dtype)
    self.name = name
    self.dtype = dtype
    self.padding = padding
    self.dropout_rate = common.check_dropout(name, dropout)
    self.drop_path_rate = float(drop_path)
    self.head_dropout = nnx.Dropout(self.dropout_rate, rngs=None)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    # Nominal resolution only: global pooling makes the network size-agnostic.
    self.image_size = (int(h), int(w))
    self.input_shape = (None, None, in_channels)
    layers = Layers(padding, float(bn_eps), float(bn_momentum), dtype, common.ParamKeys(rngs))

    table = scaled_stages(stages, width_mult, depth_mult)
    d_in = make_divisible(stem * width_mult)
    self.stem_conv = layers.conv(in_channels, d_in, 3, 2)
    self.stem_bn = layers.bn(d_in)
    total, k, built = sum(row[-1] for row in table), 0, []
    for block, expansion, kernel, stride, d_out, n in table:
      blocks = []
      for j in range(n):
        rate = drop_path * k / total  # torchvision: k / n, not k / (n − 1)
        blocks.append(
          BLOCKS[block](d_in, d_out, expansion, kernel, stride if j == 0 else 1, rate, layers)
        )
        d_in, k = d_out, k + 1
      built.append(nnx.List(blocks))
    self.stages = nnx.List(built)
    head_width = int(head_width or 4 * d_in)
    self.head_conv, self.head_bn = layers.conv(d_in, head_width), layers.bn(head_width)
    self.num_features = head_width
    # The head runs in float32 even under bfloat16 compute: it is tiny, and
    # the logits' precision matters for calibration.
    self.head = nnx.Linear(
      head_width,
      num_classes,
      kernel_init=_head_init,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs=rngs,
    )

  def __call__(self, x, train: bool = False, rngs=None):
    """Returns (float32 logits [B, classes], {"pre_logits": [B, D]}).

    `train=True` normalises with batch statistics (updating the running
    averages in place) and applies stochastic depth and head dropout, with
    keys from `rngs` (an nnx.Rngs with a "dropout" stream, or a key).
    """
    common.check_any_size_input(self.name, self.input_shape[-1], x)
    rngs = common.train_rngs(
      self.name, train, rngs, dropout=self.dropout_rate, drop_path=self.drop_path_rate
    )
    ura = not train
    x = jax.nn.silu(self.stem_bn(self.stem_conv(x.astype(self.dtype)), use_running_average=ura))
    for stage in self.stages:
      for block in stage:
        x = block(x, train, rngs)
    x = jax.nn.silu(self.head_bn(self.head_conv(x), use_running_average=ura))
    # Average in float32 so bfloat16 compute does not lose the features.
    pre_logits = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    dropped = self.head_dropout(pre_logits, deterministic=not train, rngs=rngs)
    return self.head(dropped), {"pre_logits": pre_logits}


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> EfficientNet:
  """Builds an EfficientNet from its name in CONFIGS plus validated overrides."""
  kwargs = dict(CONFIGS[name])
  kwargs.update(overrides)
  return EfficientNet(num_classes, name=name, rngs=rngs, **kwargs)
