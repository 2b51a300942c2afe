"""MNASNet-A1 without squeeze-excitation (Tan et al., 2019), as torchvision builds it.

A 3x3 stride-2 stem, a depthwise-separable block, six stacks of inverted
residuals with ReLU (expansion 3 or 6, 3x3 or 5x5 depthwise), a 1x1 conv to
1280 channels, global pooling, dropout and the head: the same pieces as
MobileNetV2 (duojax/models/mobilenet.py), so it is built as one. The depth
multiplier `alpha` scales every width but the last, rounded to a multiple of
8 by torchvision's rule (version 2 of its MNASNet, which scales the stem too).
"""

from flax import nnx

from duojax.models.mobilenet import BlockSpec, MobileNet

# name -> depth multiplier alpha.
CONFIGS = {"mnasnet0_5": 0.5, "mnasnet0_75": 0.75, "mnasnet1_0": 1.0, "mnasnet1_3": 1.3}

OVERRIDES = ("in_channels", "image_size", "dtype", "dropout")

# (kernel, first stride, expansion, repeats) of the six stacks; widths from _DEPTHS[2:].
_STACKS = ((3, 2, 3, 3), (5, 2, 3, 3), (5, 2, 6, 3), (3, 1, 6, 2), (5, 2, 6, 4), (3, 1, 6, 1))
_DEPTHS = (32, 16, 24, 40, 80, 96, 192, 320)
# torchvision's BatchNorm momentum for MNASNet (TensorFlow's decay 0.9997).
BN_MOMENTUM = 1 - 0.9997


def _round_to_multiple_of(value: float, divisor: int, round_up_bias: float = 0.9) -> int:
  """torchvision's rounding: the nearest multiple, unless that loses over 10%."""
  new = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return new if new >= round_up_bias * value else new + divisor


def blocks(alpha: float) -> tuple[int, list[BlockSpec]]:
  """(stem width, blocks) at depth multiplier `alpha`; the separable block is the first."""
  depths = [_round_to_multiple_of(d * alpha, 8) for d in _DEPTHS]
  # Depthwise 3x3 and linear 1x1 projection, no expansion, no skip (widths differ).
  out = [BlockSpec(depths[0], depths[0], depths[1], 3, 1, "relu")]
  in_ch = depths[1]
  for (kernel, stride, expansion, repeats), width in zip(_STACKS, depths[2:]):
    for i in range(repeats):
      out.append(
        BlockSpec(in_ch, in_ch * expansion, width, kernel, stride if i == 0 else 1, "relu")
      )
      in_ch = width
  return depths[0], out


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> MobileNet:
  """Builds an MNASNet from its name in CONFIGS plus validated overrides."""
  stem, specs = blocks(CONFIGS[name])
  kwargs = dict(act="relu", bn_momentum=BN_MOMENTUM, arch="mnasnet")
  kwargs.update(overrides)
  return MobileNet(specs, stem, 1280, num_classes, name=name, rngs=rngs, **kwargs)
