"""RegNetX and RegNetY (Radosavovic et al., 2020), as torchvision builds them.

A RegNet is a 3x3 stride-2 stem of 32 channels, four stages of residual
bottleneck blocks (1x1, grouped 3x3, [squeeze-excitation in RegNetY], 1x1),
a global average pool and a linear head. The stage widths and depths are not
listed but generated from four numbers (depth d, initial width w_0, slope
w_a, log-step w_m): block j gets width w_0 + j * w_a, snapped to the nearest
w_0 * w_m**k and quantised to a multiple of 8; consecutive blocks of equal
width form a stage. `block_params` reproduces torchvision's arithmetic
(float32, round half to even) so that every size has torchvision's exact
widths and parameter counts.

timm's RegNets snap each stage width to a multiple of its group width by
plain rounding where torchvision keeps it within 10% above (`make_divisible`):
three sizes come out otherwise in timm (`regnetx_004`, `regnety_008`,
`regnety_080`; timm's `*_tv` models are torchvision's). `rounding="timm"`
builds those.
"""

from collections.abc import Sequence

import numpy as np
from flax import nnx

from duojax.errors import ConfigError
from duojax.models import convbn
from duojax.models.convbn import ConvBN

# name -> (depth, w_0, w_a, w_m, group width, SE ratio): torchvision's table.
CONFIGS = {
  "regnet_x_400mf": (22, 24, 24.48, 2.54, 16, None),
  "regnet_x_800mf": (16, 56, 35.73, 2.28, 16, None),
  "regnet_x_1_6gf": (18, 80, 34.01, 2.25, 24, None),
  "regnet_x_3_2gf": (25, 88, 26.31, 2.25, 48, None),
  "regnet_x_8gf": (23, 80, 49.56, 2.88, 120, None),
  "regnet_x_16gf": (22, 216, 55.59, 2.1, 128, None),
  "regnet_x_32gf": (23, 320, 69.86, 2.0, 168, None),
  "regnet_y_400mf": (16, 48, 27.89, 2.09, 8, 0.25),
  "regnet_y_800mf": (14, 56, 38.84, 2.4, 16, 0.25),
  "regnet_y_1_6gf": (27, 48, 20.71, 2.65, 24, 0.25),
  "regnet_y_3_2gf": (21, 80, 42.63, 2.66, 24, 0.25),
  "regnet_y_8gf": (17, 192, 76.82, 2.19, 56, 0.25),
  "regnet_y_16gf": (18, 200, 106.23, 2.48, 112, 0.25),
  "regnet_y_32gf": (20, 232, 115.89, 2.53, 232, 0.25),
}

OVERRIDES = ("in_channels", "image_size", "dtype", "dropout", "stem_width", "rounding")
ROUNDINGS = ("torchvision", "timm")


def make_divisible(value: float, divisor: int, min_value: int | None = None) -> int:
  """The multiple of `divisor` nearest `value`, at least `min_value` and at
  least 90% of `value` (torchvision's and TensorFlow's `_make_divisible`)."""
  min_value = divisor if min_value is None else min_value
  new = max(min_value, int(value + divisor / 2) // divisor * divisor)
  return int(new + divisor if new < 0.9 * value else new)


def block_params(
  depth: int, w_0: int, w_a: float, w_m: float, group_width: int, rounding: str = "torchvision"
):
  """(stage widths, stage depths, group widths) of a RegNet's generator numbers.

  torchvision's `BlockParams.from_init_params` with a bottleneck ratio of 1,
  in float32 as torch computes it (a float64 version rounds a few blocks
  differently); `rounding="timm"` snaps widths to the group width as timm does.
  """
  f32 = np.float32
  widths_cont = np.arange(depth, dtype=f32) * f32(w_a) + f32(w_0)
  capacity = np.round(np.log(widths_cont / f32(w_0)) / f32(np.log(w_m)))
  block_widths = (np.round(f32(w_0) * np.power(f32(w_m), capacity) / f32(8)) * 8).astype(int)
  widths, depths = [], []
  for w in block_widths.tolist():
    if widths and widths[-1] == w:
      depths[-1] += 1
    else:
      widths.append(w)
      depths.append(1)
  # Each stage's grouped conv needs a width divisible by its group width.
  groups = [min(group_width, w) for w in widths]
  if rounding == "timm":
    widths = [int(round(w / g) * g) for w, g in zip(widths, groups)]
  else:
    widths = [make_divisible(w, g) for w, g in zip(widths, groups)]
  return widths, depths, groups


class Block(nnx.Module):
  """x + c(se(b(a(x)))) then ReLU; a 1x1 projection on x when the shape changes."""

  def __init__(self, in_ch, out_ch, stride, group_width, se_ratio, *, dtype, rngs):
    kw = dict(dtype=dtype, rngs=rngs)
    self.proj = ConvBN(in_ch, out_ch, 1, stride, **kw) if in_ch != out_ch or stride != 1 else None
    self.a = ConvBN(in_ch, out_ch, 1, act="relu", **kw)
    self.b = ConvBN(out_ch, out_ch, 3, stride, groups=out_ch // group_width, act="relu", **kw)
    # The SE width is a fraction of the block's input width, not of its own.
    self.se = convbn.SqueezeExcite(out_ch, int(round(se_ratio * in_ch)), **kw) if se_ratio else None
    self.c = ConvBN(out_ch, out_ch, 1, **kw)

  def __call__(self, x, train: bool):
    y = self.b(self.a(x, train), train)
    if self.se is not None:
      y = self.se(y)
    y = self.c(y, train)
    skip = x if self.proj is None else self.proj(x, train)
    return convbn.ACTIVATIONS["relu"](y + skip)


class RegNet(convbn.Classifier):
  """Stem, stages of `Block`s (the first of each strided 2), pool, linear head.

  Args:
    widths, depths, group_widths: per stage (`block_params` makes them from
      a name's generator numbers; Hugging Face configs list them).
    se_ratio: squeeze-excitation width as a fraction of each block's input
      width (0.25 in RegNetY), or None (RegNetX).
  """

  def __init__(
    self,
    widths: Sequence[int],
    depths: Sequence[int],
    group_widths: Sequence[int],
    se_ratio: float | None = None,
    num_classes: int = 1000,
    *,
    stem_width: int = 32,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 224,
    dtype="float32",
    dropout: float = 0.0,
    name: str = "regnet",
    rngs: nnx.Rngs,
  ):
    if not len(widths) == len(depths) == len(group_widths) or min(depths, default=0) < 1:
      raise ConfigError(
        f"{name}: widths {list(widths)}, depths {list(depths)} and group widths "
        f"{list(group_widths)} must be one positive entry per stage"
      )
    for w, g in zip(widths, group_widths):
      if w % g:
        raise ConfigError(f"{name}: stage width {w} is not a multiple of its group width {g}")
    self._setup(name, num_classes, in_channels, image_size, dtype, dropout)
    kw = dict(dtype=self.dtype, rngs=rngs)
    self.stem_conv = convbn.conv(in_channels, stem_width, 3, 2, **kw)
    self.stem_bn = convbn.batch_norm(stem_width, **kw)
    in_ch, stages = stem_width, []
    for width, depth, group_width in zip(widths, depths, group_widths):
      blocks = []
      for j in range(depth):
        blocks.append(Block(in_ch, width, 2 if j == 0 else 1, group_width, se_ratio, **kw))
        in_ch = width
      stages.append(nnx.List(blocks))
    self.stages = nnx.List(stages)
    self._make_head(in_ch, num_classes, rngs)

  def features(self, x, train: bool):
    x = self.stem_bn(self.stem_conv(x), use_running_average=not train)
    x = convbn.ACTIVATIONS["relu"](x)
    for stage in self.stages:
      for block in stage:
        x = block(x, train)
    return x


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> RegNet:
  """Builds a RegNet from its name in CONFIGS plus validated overrides."""
  depth, w_0, w_a, w_m, group_width, se_ratio = CONFIGS[name]
  rounding = overrides.pop("rounding", "torchvision")
  if rounding not in ROUNDINGS:
    raise ConfigError(f"{name}: unknown rounding {rounding!r}; valid: {', '.join(ROUNDINGS)}")
  widths, depths, groups = block_params(depth, w_0, w_a, w_m, group_width, rounding)
  return RegNet(widths, depths, groups, se_ratio, num_classes, name=name, rngs=rngs, **overrides)
