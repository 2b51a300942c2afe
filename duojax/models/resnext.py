"""ResNeXt (Xie et al., 2017) and Wide ResNet (Zagoruyko & Komodakis, 2016), as torchvision builds them.

Both are ImageNet ResNets with other Bottlenecks (duojax/models/resnet.py):
ResNeXt's 3x3 conv has `groups` groups of `width_per_group` channels (32x4d:
32 groups of 4 at the first stage, twice as many channels per stage after),
Wide ResNet's is an ungrouped conv twice as wide (`width_per_group=128`).
The models are `resnet.ResNet`s, with torchvision's names for their tensors,
so the converter's ResNet layouts read torchvision's and timm's files of them.
"""

from flax import nnx

from duojax.models import resnet

# name -> (blocks per stage, groups, width per group)
CONFIGS = {
  "resnext50_32x4d": ((3, 4, 6, 3), 32, 4),
  "resnext101_32x8d": ((3, 4, 23, 3), 32, 8),
  "resnext101_64x4d": ((3, 4, 23, 3), 64, 4),
  "wide_resnet50_2": ((3, 4, 6, 3), 1, 128),
  "wide_resnet101_2": ((3, 4, 23, 3), 1, 128),
}

OVERRIDES = tuple(k for k in resnet.OVERRIDES if k not in ("groups", "width_per_group"))


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> resnet.ResNet:
  """Builds a ResNeXt or Wide ResNet from its name in CONFIGS plus validated overrides."""
  stage_sizes, groups, width_per_group = CONFIGS[name]
  kwargs = dict(width=64, stem="imagenet", groups=groups, width_per_group=width_per_group)
  kwargs.update(overrides)
  return resnet.ResNet(stage_sizes, "bottleneck", num_classes, name=name, rngs=rngs, **kwargs)
