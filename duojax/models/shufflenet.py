"""ShuffleNetV2 (Ma et al., 2018), as torchvision builds it.

A 3x3 stride-2 stem and a 3x3 stride-2 max pool, three stages of units, a
1x1 conv, global pooling and the head. A unit splits its channels in two:
the stride-1 unit passes one half through untouched and the other through
1x1 conv, depthwise 3x3, 1x1 conv; the stride-2 unit sends the whole input
down two branches (depthwise 3x3 then 1x1; 1x1, depthwise 3x3, 1x1), which
doubles the width. Either way the halves are concatenated and the channels
shuffled (interleaved), so information crosses between the halves.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError
from duojax.models import convbn
from duojax.models.convbn import ConvBN

# name -> (units per stage, widths: stem, three stages, last conv).
CONFIGS = {
  "shufflenet_v2_x0_5": ((4, 8, 4), (24, 48, 96, 192, 1024)),
  "shufflenet_v2_x1_0": ((4, 8, 4), (24, 116, 232, 464, 1024)),
  "shufflenet_v2_x1_5": ((4, 8, 4), (24, 176, 352, 704, 1024)),
  "shufflenet_v2_x2_0": ((4, 8, 4), (24, 244, 488, 976, 2048)),
}

OVERRIDES = ("in_channels", "image_size", "dtype", "dropout")


def channel_shuffle(x: jax.Array, groups: int = 2) -> jax.Array:
  """[B, H, W, C] with channel g * (C / groups) + j moved to j * groups + g (torchvision's)."""
  b, h, w, c = x.shape
  return x.reshape(b, h, w, groups, c // groups).swapaxes(3, 4).reshape(b, h, w, c)


class Unit(nnx.Module):
  """A ShuffleNetV2 unit: `branch1` (stride 2 only) and `branch2`, concatenated, shuffled."""

  def __init__(self, in_ch, out_ch, stride, *, dtype, rngs):
    if out_ch % 2 or (stride == 1 and in_ch != out_ch):
      raise ConfigError(f"a stride-{stride} ShuffleNetV2 unit cannot map {in_ch} to {out_ch}")
    half = out_ch // 2
    kw = dict(dtype=dtype, rngs=rngs)
    self.stride = stride
    self.branch1 = (
      nnx.List(
        [
          ConvBN(in_ch, in_ch, 3, stride, groups=in_ch, **kw),
          ConvBN(in_ch, half, 1, act="relu", **kw),
        ]
      )
      if stride > 1
      else None
    )
    self.branch2 = nnx.List(
      [
        ConvBN(in_ch if stride > 1 else half, half, 1, act="relu", **kw),
        ConvBN(half, half, 3, stride, groups=half, **kw),
        ConvBN(half, half, 1, act="relu", **kw),
      ]
    )

  def __call__(self, x, train: bool):
    def run(layers, y):
      for layer in layers:
        y = layer(y, train)
      return y

    if self.branch1 is None:
      keep, x = jnp.split(x, 2, axis=-1)
    else:
      keep = run(self.branch1, x)
    return channel_shuffle(jnp.concatenate([keep, run(self.branch2, x)], axis=-1))


class ShuffleNetV2(convbn.Classifier):
  """Stem conv and max pool, stages of `Unit`s (the first strided), 1x1 conv, pool, head.

  torchvision's ShuffleNetV2 has no dropout; `dropout` adds one before the head.
  """

  def __init__(
    self,
    stage_units,
    widths,
    num_classes: int = 1000,
    *,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 224,
    dtype="float32",
    dropout: float = 0.0,
    name: str = "shufflenet_v2",
    rngs: nnx.Rngs,
  ):
    if len(widths) != len(stage_units) + 2 or min(stage_units) < 1:
      raise ConfigError(
        f"{name}: widths {list(widths)} must be the stem's, one per stage "
        f"({len(stage_units)}) and the last conv's"
      )
    self._setup(name, num_classes, in_channels, image_size, dtype, dropout)
    kw = dict(dtype=self.dtype, rngs=rngs)
    self.stem_conv = convbn.conv(in_channels, widths[0], 3, 2, **kw)
    self.stem_bn = convbn.batch_norm(widths[0], **kw)
    in_ch, stages = widths[0], []
    for units, width in zip(stage_units, widths[1:-1]):
      stages.append(
        nnx.List(
          [Unit(in_ch if i == 0 else width, width, 2 if i == 0 else 1, **kw) for i in range(units)]
        )
      )
      in_ch = width
    self.stages = nnx.List(stages)
    self.last = ConvBN(in_ch, widths[-1], 1, act="relu", **kw)
    self._make_head(widths[-1], num_classes, rngs)

  def features(self, x, train: bool):
    x = jax.nn.relu(self.stem_bn(self.stem_conv(x), use_running_average=not train))
    # torch MaxPool2d(3, 2, padding=1); max_pool pads with -inf.
    x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage in self.stages:
      for unit in stage:
        x = unit(x, train)
    return self.last(x, train)


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> ShuffleNetV2:
  """Builds a ShuffleNetV2 from its name in CONFIGS plus validated overrides."""
  units, widths = CONFIGS[name]
  return ShuffleNetV2(units, widths, num_classes, name=name, rngs=rngs, **overrides)
