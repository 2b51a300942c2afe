"""PyTorch versions of duojax's model families, for the speed comparison.

Plain `torch.nn` code (no torchvision or timm) that mirrors
`duojax/models/{resnet,vit,cnn}.py` layer for layer, so that both frameworks
run the same arithmetic and hold the same number of parameters. ResNets and
ViTs use torchvision's and timm's module names, so their state dicts are the
files those libraries write (the checkpoint-conversion tests rely on this):

  * ResNets: bias-free convs with symmetric padding k // 2, BatchNorm
    (eps 1e-5), basic or bottleneck (v1.5: stride on the 3x3) blocks, a
    1x1 conv + BN projection shortcut when a block changes the shape, an
    ImageNet (7x7/2 + 3x3/2 max pool) or small (3x3/1) stem, global average
    pooling and a linear head. The config table is duojax's own.
  * ViTs: patch-embedding conv, class token, learned position embedding,
    pre-LN encoder blocks (LayerNorm eps 1e-6, exact GELU, fused qkv Linear,
    `scaled_dot_product_attention`), final LayerNorm, linear head on the
    class token. Variants come from `duojax.models.vit.VARIANTS`.
  * CNNs: [3x3 'same' conv + ReLU + 2x2 max pool] per width, flatten in
    H, W, C order (as the NHWC JAX model does), Dense + ReLU, Dense head.

Inputs are NCHW float tensors; every model returns logits [B, classes].
Weights are torch's default initialisation: they do not change the speed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from duojax.models import cnn as jax_cnn
from duojax.models import resnet as jax_resnet
from duojax.models import vit as jax_vit


def _float32_head(head: nn.Linear, features):
  """The head in float32 even under autocast, like duojax's float32 heads."""
  with torch.autocast(features.device.type, enabled=False):
    return head(features.float())


# ----------------------------------------------------------------------------
# ResNet.


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int) -> nn.Conv2d:
  return nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False)


def _bn(ch: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(ch, eps=1e-5, momentum=0.1)


def _downsample(in_ch: int, out_ch: int, stride: int):
  """torchvision's projection shortcut: `downsample.0` conv, `downsample.1` BN."""
  if stride == 1 and in_ch == out_ch:
    return None
  return nn.Sequential(_conv(in_ch, out_ch, 1, stride), _bn(out_ch))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_ch: int, ch: int, stride: int):
    super().__init__()
    out_ch = ch * self.expansion
    self.conv1, self.bn1 = _conv(in_ch, ch, 3, stride), _bn(ch)
    self.conv2, self.bn2 = _conv(ch, out_ch, 3, 1), _bn(out_ch)
    self.downsample = _downsample(in_ch, out_ch, stride)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    skip = x if self.downsample is None else self.downsample(x)
    return F.relu(y + skip)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, in_ch: int, ch: int, stride: int):
    super().__init__()
    out_ch = ch * self.expansion
    self.conv1, self.bn1 = _conv(in_ch, ch, 1, 1), _bn(ch)
    self.conv2, self.bn2 = _conv(ch, ch, 3, stride), _bn(ch)
    self.conv3, self.bn3 = _conv(ch, out_ch, 1, 1), _bn(out_ch)
    self.downsample = _downsample(in_ch, out_ch, stride)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    skip = x if self.downsample is None else self.downsample(x)
    return F.relu(y + skip)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
  def __init__(
    self, stage_sizes, block: str, num_classes: int, *, width: int, stem: str, in_channels: int = 3
  ):
    super().__init__()
    kernel, stride = (7, 2) if stem == "imagenet" else (3, 1)
    self.conv1 = _conv(in_channels, width, kernel, stride)
    self.bn1 = _bn(width)
    self.maxpool = nn.MaxPool2d(3, 2, padding=1) if stem == "imagenet" else nn.Identity()
    block_cls = BLOCKS[block]
    in_ch, stages = width, []
    for i, num_blocks in enumerate(stage_sizes):
      ch = width * 2**i
      blocks = []
      for j in range(num_blocks):
        blocks.append(block_cls(in_ch, ch, 2 if (i > 0 and j == 0) else 1))
        in_ch = ch * block_cls.expansion
      stages.append(nn.Sequential(*blocks))
    for i, stage in enumerate(stages):  # torchvision's names: layer1, layer2, ...
      setattr(self, f"layer{i + 1}", stage)
    self.num_stages = len(stages)
    self.fc = nn.Linear(in_ch, num_classes)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    # Pool in float32, as duojax does under bfloat16 compute.
    return _float32_head(self.fc, x.float().mean(dim=(2, 3)))


def resnet(name: str, num_classes: int, in_channels: int = 3) -> ResNet:
  block, stage_sizes, width, stem = jax_resnet.CONFIGS[name]
  return ResNet(stage_sizes, block, num_classes, width=width, stem=stem, in_channels=in_channels)


# ----------------------------------------------------------------------------
# Vision Transformer.


class Attention(nn.Module):
  def __init__(self, width: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(width, 3 * width)
    self.proj = nn.Linear(width, width)

  def forward(self, x):
    b, t, d = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # [B, heads, T, head_dim]
    y = F.scaled_dot_product_attention(q, k, v)
    return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
  def __init__(self, width: int, mlp_dim: int):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(width, mlp_dim), nn.Linear(mlp_dim, width)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x), approximate="none"))


class PatchEmbed(nn.Module):
  def __init__(self, in_channels: int, width: int, patch_size: int, bias: bool):
    super().__init__()
    self.proj = nn.Conv2d(in_channels, width, patch_size, stride=patch_size, bias=bias)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)  # [B, tokens, width]


class EncoderBlock(nn.Module):
  def __init__(self, width: int, mlp_dim: int, num_heads: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(width, eps=1e-6)
    self.attn = Attention(width, num_heads)
    self.norm2 = nn.LayerNorm(width, eps=1e-6)
    self.mlp = Mlp(width, mlp_dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
  def __init__(
    self,
    num_classes: int,
    *,
    patch_size: int,
    width: int,
    depth: int,
    mlp_dim: int,
    num_heads: int,
    image_size: int,
    in_channels: int = 3,
    pre_norm: bool = False,
  ):
    super().__init__()
    if image_size % patch_size:
      raise ValueError(f"patch size {patch_size} does not divide image size {image_size}")
    # CLIP-style (timm `pre_norm=True`): LayerNorm before the blocks, no patch bias.
    self.patch_embed = PatchEmbed(in_channels, width, patch_size, bias=not pre_norm)
    num_tokens = (image_size // patch_size) ** 2 + 1
    self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(torch.randn(1, num_tokens, width) * width**-0.5)
    self.norm_pre = nn.LayerNorm(width, eps=1e-6) if pre_norm else nn.Identity()
    self.blocks = nn.Sequential(*[EncoderBlock(width, mlp_dim, num_heads) for _ in range(depth)])
    self.norm = nn.LayerNorm(width, eps=1e-6)
    self.head = nn.Linear(width, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    cls = self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([cls, x], dim=1) + self.pos_embed.to(x.dtype)
    x = self.norm(self.blocks(self.norm_pre(x)))
    return _float32_head(self.head, x[:, 0])


def vit(
  name: str, num_classes: int, image_size: int, in_channels: int = 3, pre_norm: bool = False
) -> VisionTransformer:
  parsed = jax_vit.parse_name(name)
  if parsed is None:
    raise ValueError(f"not a ViT name: {name!r}")
  variant, patch = parsed
  width, depth, mlp_dim, num_heads = jax_vit.VARIANTS[variant]
  return VisionTransformer(
    num_classes,
    patch_size=patch,
    width=width,
    depth=depth,
    mlp_dim=mlp_dim,
    num_heads=num_heads,
    image_size=image_size,
    in_channels=in_channels,
    pre_norm=pre_norm,
  )


# ----------------------------------------------------------------------------
# Plain CNN.


class CNN(nn.Module):
  def __init__(
    self, num_classes: int, *, widths, hidden: int, image_size: int, in_channels: int = 3
  ):
    super().__init__()
    convs, in_ch = [], in_channels
    for ch in widths:
      convs.append(nn.Conv2d(in_ch, ch, 3, padding=1))
      in_ch = ch
    self.convs = nn.ModuleList(convs)
    side = image_size // 2 ** len(widths)
    if side < 1:
      raise ValueError(f"image size {image_size} is too small for {len(widths)} poolings")
    self.fc = nn.Linear(side * side * in_ch, hidden)
    self.head = nn.Linear(hidden, num_classes)

  def forward(self, x):
    for conv in self.convs:
      x = F.max_pool2d(F.relu(conv(x)), 2)
    # Flatten as (H, W, C), the order of the NHWC model's Dense kernel.
    x = x.permute(0, 2, 3, 1).flatten(1)
    return _float32_head(self.head, F.relu(self.fc(x)))


def cnn(name: str, num_classes: int, image_size: int, in_channels: int = 3) -> CNN:
  widths, hidden = jax_cnn.CONFIGS[name]
  return CNN(
    num_classes, widths=widths, hidden=hidden, image_size=image_size, in_channels=in_channels
  )


# ----------------------------------------------------------------------------


def is_convnet(name: str) -> bool:
  return name in jax_resnet.CONFIGS or name in jax_cnn.CONFIGS


def build(name: str, num_classes: int, image_size: int, in_channels: int = 3) -> nn.Module:
  """The PyTorch model for duojax model `name` (square `image_size` inputs)."""
  if name in jax_resnet.CONFIGS:
    return resnet(name, num_classes, in_channels)
  if name in jax_cnn.CONFIGS:
    return cnn(name, num_classes, image_size, in_channels)
  if jax_vit.parse_name(name) is not None:
    return vit(name, num_classes, image_size, in_channels)
  raise ValueError(f"no PyTorch version of model {name!r}")


def count_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
