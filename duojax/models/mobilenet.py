"""MobileNetV2 (Sandler et al., 2018) and MobileNetV3 (Howard et al., 2019), as torchvision builds them.

Both are a strided 3x3 stem, a stack of inverted residuals (1x1 expansion,
depthwise kxk, [squeeze-excitation], linear 1x1 projection, a skip when the
shape allows), a 1x1 conv to a wide feature map, global pooling and the
classifier. MobileNetV2 uses ReLU6 everywhere; MobileNetV3 mixes ReLU and
hard-swish, gates its SE blocks with a hard sigmoid, and puts one more dense
layer (with hard-swish and the dropout) between the pool and the head.
MNASNet (duojax/models/mnasnet.py) is built from the same `MobileNet`.

Options beyond torchvision's: `bn_eps` (timm's MobileNetV3 weights use
PyTorch's default 1e-5, torchvision's 1e-3) and `padding="same"`
(TensorFlow's, with which Hugging Face's MobileNetV2 checkpoints were made;
`bn_eps=1e-3` with it).
"""

from collections.abc import Sequence
from typing import NamedTuple

import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError
from duojax.models import convbn
from duojax.models.convbn import ConvBN
from duojax.models.regnet import make_divisible


class BlockSpec(NamedTuple):
  """One inverted residual: widths in, expanded and out, kernel, stride, activation, SE width (0: none)."""

  in_ch: int
  mid_ch: int
  out_ch: int
  kernel: int
  stride: int
  act: str
  se_ch: int = 0


# MobileNetV2's (expansion t, width c, repeats n, first stride s).
V2_SETTING = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
# MobileNetV3's (in, kernel, expanded, out, SE, activation, stride), torchvision's tables.
V3_SETTINGS = {
  "large": (
    (16, 3, 16, 16, False, "relu", 1),
    (16, 3, 64, 24, False, "relu", 2),
    (24, 3, 72, 24, False, "relu", 1),
    (24, 5, 72, 40, True, "relu", 2),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 5, 120, 40, True, "relu", 1),
    (40, 3, 240, 80, False, "hard_swish", 2),
    (80, 3, 200, 80, False, "hard_swish", 1),
    (80, 3, 184, 80, False, "hard_swish", 1),
    (80, 3, 184, 80, False, "hard_swish", 1),
    (80, 3, 480, 112, True, "hard_swish", 1),
    (112, 3, 672, 112, True, "hard_swish", 1),
    (112, 5, 672, 160, True, "hard_swish", 2),
    (160, 5, 960, 160, True, "hard_swish", 1),
    (160, 5, 960, 160, True, "hard_swish", 1),
  ),
  "small": (
    (16, 3, 16, 16, True, "relu", 2),
    (16, 3, 72, 24, False, "relu", 2),
    (24, 3, 88, 24, False, "relu", 1),
    (24, 5, 96, 40, True, "hard_swish", 2),
    (40, 5, 240, 40, True, "hard_swish", 1),
    (40, 5, 240, 40, True, "hard_swish", 1),
    (40, 5, 120, 48, True, "hard_swish", 1),
    (48, 5, 144, 48, True, "hard_swish", 1),
    (48, 5, 288, 96, True, "hard_swish", 2),
    (96, 5, 576, 96, True, "hard_swish", 1),
    (96, 5, 576, 96, True, "hard_swish", 1),
  ),
}
V3_HIDDEN = {"large": 1280, "small": 1024}

CONFIGS = {"mobilenet_v2": "v2", "mobilenet_v3_large": "large", "mobilenet_v3_small": "small"}

OVERRIDES = ("in_channels", "image_size", "dtype", "dropout", "width", "bn_eps", "padding")


class InvertedResidual(nnx.Module):
  """[1x1 expand], depthwise kxk, [SE], 1x1 linear projection; + x when shapes allow."""

  def __init__(self, spec: BlockSpec, *, se_gate, padding, eps, momentum, dtype, rngs):
    kw = dict(padding=padding, eps=eps, momentum=momentum, dtype=dtype, rngs=rngs)
    self.expand = (
      ConvBN(spec.in_ch, spec.mid_ch, 1, act=spec.act, **kw) if spec.mid_ch != spec.in_ch else None
    )
    self.dw = ConvBN(
      spec.mid_ch, spec.mid_ch, spec.kernel, spec.stride, groups=spec.mid_ch, act=spec.act, **kw
    )
    self.se = (
      convbn.SqueezeExcite(spec.mid_ch, spec.se_ch, gate=se_gate, dtype=dtype, rngs=rngs)
      if spec.se_ch
      else None
    )
    self.project = ConvBN(spec.mid_ch, spec.out_ch, 1, **kw)
    self.residual = spec.stride == 1 and spec.in_ch == spec.out_ch

  def __call__(self, x, train: bool):
    y = x if self.expand is None else self.expand(x, train)
    y = self.dw(y, train)
    if self.se is not None:
      y = self.se(y)
    y = self.project(y, train)
    return x + y if self.residual else y


class MobileNet(convbn.Classifier):
  """Stem conv, inverted residuals, a 1x1 conv to `last_width`, pool, [dense + act], head.

  Args:
    blocks: the inverted residuals, in order.
    stem_width: channels of the stride-2 3x3 stem.
    last_width: channels of the final 1x1 conv.
    act: activation of the stem and the final conv.
    hidden: width of MobileNetV3's dense layer after the pool (None: no such layer).
    se_gate: the SE blocks' gate ("hard_sigmoid" in MobileNetV3).
    bn_eps, bn_momentum: PyTorch's BatchNorm eps and momentum.
    padding: "torch" (symmetric) or "same" (TensorFlow's).
    arch: "v2", "v3" or "mnasnet": which library layout names its tensors.
  """

  def __init__(
    self,
    blocks: Sequence[BlockSpec],
    stem_width: int,
    last_width: int,
    num_classes: int = 1000,
    *,
    act: str = "relu6",
    hidden: int | None = None,
    se_gate: str = "hard_sigmoid",
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
    padding: str = "torch",
    arch: str = "v2",
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 224,
    dtype="float32",
    dropout: float = 0.2,
    name: str = "mobilenet",
    rngs: nnx.Rngs,
  ):
    if not blocks:
      raise ConfigError(f"{name}: no blocks")
    convbn.check_padding(name, padding)
    if not bn_eps > 0:
      raise ConfigError(f"{name}: bn_eps must be positive, got {bn_eps}")
    self._setup(name, num_classes, in_channels, image_size, dtype, dropout)
    kw = dict(eps=bn_eps, momentum=bn_momentum, dtype=self.dtype, rngs=rngs)
    self.act, self.arch, self.padding, self.bn_eps = act, arch, padding, float(bn_eps)
    self.stem_conv = convbn.conv(in_channels, stem_width, 3, 2, padding=padding, **_only(kw))
    self.stem_bn = convbn.batch_norm(stem_width, **kw)
    self.blocks = nnx.List(
      [InvertedResidual(b, se_gate=se_gate, padding=padding, **kw) for b in blocks]
    )
    self.last = ConvBN(blocks[-1].out_ch, last_width, 1, act=act, padding=padding, **kw)
    self.pre_head = (
      None
      if hidden is None
      else nnx.Linear(
        last_width,
        hidden,
        kernel_init=convbn.dense_init,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs=rngs,
      )
    )
    self._make_head(hidden or last_width, num_classes, rngs)

  def features(self, x, train: bool):
    x = self.stem_bn(self.stem_conv(x), use_running_average=not train)
    x = convbn.ACTIVATIONS[self.act](x)
    for block in self.blocks:
      x = block(x, train)
    return self.last(x, train)

  def pooled(self, x, train: bool):
    pooled = super().pooled(x, train)
    if self.pre_head is None:
      return pooled
    return convbn.ACTIVATIONS["hard_swish"](self.pre_head(pooled))


def _only(kw: dict) -> dict:
  return {k: kw[k] for k in ("dtype", "rngs")}


def v2_blocks(width: float = 1.0) -> tuple[int, list[BlockSpec], int]:
  """(stem width, blocks, last width) of MobileNetV2 at width multiplier `width`."""
  stem = make_divisible(32 * width, 8)
  blocks, in_ch = [], stem
  for t, c, n, s in V2_SETTING:
    out = make_divisible(c * width, 8)
    for i in range(n):
      blocks.append(BlockSpec(in_ch, int(round(in_ch * t)), out, 3, s if i == 0 else 1, "relu6"))
      in_ch = out
  return stem, blocks, make_divisible(1280 * max(1.0, width), 8)


def v3_blocks(size: str, width: float = 1.0) -> tuple[int, list[BlockSpec], int, int]:
  """(stem width, blocks, last width, hidden width) of MobileNetV3 `size` ("large" | "small")."""
  adjust = lambda c: make_divisible(c * width, 8)  # noqa: E731
  blocks = []
  for in_ch, kernel, mid, out, se, act, stride in V3_SETTINGS[size]:
    mid = adjust(mid)
    # torchvision: the SE width is a quarter of the expanded width, made divisible by 8.
    se_ch = make_divisible(mid // 4, 8) if se else 0
    blocks.append(BlockSpec(adjust(in_ch), mid, adjust(out), kernel, stride, act, se_ch))
  last = 6 * blocks[-1].out_ch
  return blocks[0].in_ch, blocks, last, adjust(V3_HIDDEN[size])


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> MobileNet:
  """Builds a MobileNetV2 or V3 from its name in CONFIGS plus validated overrides."""
  kind, width = CONFIGS[name], overrides.pop("width", 1.0)
  if not width > 0:
    raise ConfigError(f"{name}: width must be positive, got {width}")
  if kind == "v2":
    stem, blocks, last = v2_blocks(width)
    kwargs = dict(act="relu6", arch="v2")
  else:
    stem, blocks, last, hidden = v3_blocks(kind, width)
    # torchvision's MobileNetV3 BatchNorm: eps 1e-3, momentum 0.01.
    kwargs = dict(act="hard_swish", hidden=hidden, bn_eps=1e-3, bn_momentum=0.01, arch="v3")
  kwargs.update(overrides)
  return MobileNet(blocks, stem, last, num_classes, name=name, rngs=rngs, **kwargs)
