"""PyTorch models with timm's and torchvision's module names and arithmetic.

timm needs torchvision at import time, and PyPI's torchvision does not load
beside the CPU build of PyTorch used here, so neither library can run in the
tests. These two small models reproduce what their checkpoints contain: the
state_dict names and shapes of timm's `VisionTransformer` and of
torchvision's (and timm's) `ResNet`, and the same forward computation, so a
file they save is a file those libraries would save.
"""

import torch
import torch.nn.functional as F
from torch import nn


class TimmAttention(nn.Module):
  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, dim * 3)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    return self.proj(y.transpose(1, 2).reshape(b, n, c))


class TimmMlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(F.gelu(self.fc1(x)))


class TimmBlock(nn.Module):
  def __init__(self, dim, num_heads, hidden):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = TimmAttention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = TimmMlp(dim, hidden)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
  def __init__(self, patch, in_chans, dim, bias):
    super().__init__()
    self.proj = nn.Conv2d(in_chans, dim, patch, stride=patch, bias=bias)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class TimmViT(nn.Module):
  """timm `VisionTransformer(global_pool="token", class_token=True)`; `pre_norm` as in CLIP."""

  def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, mlp_ratio, num_classes,
               pre_norm=False):
    super().__init__()
    self.patch_embed = PatchEmbed(patch_size, 3, embed_dim, bias=not pre_norm)
    tokens = (img_size // patch_size) ** 2 + 1
    self.cls_token = nn.Parameter(0.5 * torch.randn(1, 1, embed_dim))
    self.pos_embed = nn.Parameter(0.02 * torch.randn(1, tokens, embed_dim))
    self.norm_pre = nn.LayerNorm(embed_dim, eps=1e-6) if pre_norm else nn.Identity()
    self.blocks = nn.Sequential(*[TimmBlock(embed_dim, num_heads, int(embed_dim * mlp_ratio))
                                  for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
    self.head = nn.Linear(embed_dim, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
    x = self.norm(self.blocks(self.norm_pre(x)))
    return self.head(x[:, 0])


def _conv(cin, cout, k, stride=1):
  return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, ch, stride, downsample):
    super().__init__()
    self.conv1, self.bn1 = _conv(cin, ch, 3, stride), nn.BatchNorm2d(ch)
    self.conv2, self.bn2 = _conv(ch, ch, 3), nn.BatchNorm2d(ch)
    self.downsample = downsample

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, ch, stride, downsample):
    super().__init__()
    self.conv1, self.bn1 = _conv(cin, ch, 1), nn.BatchNorm2d(ch)
    self.conv2, self.bn2 = _conv(ch, ch, 3, stride), nn.BatchNorm2d(ch)  # v1.5
    self.conv3, self.bn3 = _conv(ch, ch * 4, 1), nn.BatchNorm2d(ch * 4)
    self.downsample = downsample

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class TorchvisionResNet(nn.Module):
  """torchvision's `ResNet` (also timm's default `resnet*`): same names, same math."""

  def __init__(self, block, layers, num_classes, width=64):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    cin = width
    for i, n in enumerate(layers):
      ch, blocks = width * 2**i, []
      for j in range(n):
        stride = 2 if i > 0 and j == 0 else 1
        down = None
        if stride != 1 or cin != ch * block.expansion:
          down = nn.Sequential(_conv(cin, ch * block.expansion, 1, stride),
                               nn.BatchNorm2d(ch * block.expansion))
        blocks.append(block(cin, ch, stride, down))
        cin = ch * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.num_stages = len(layers)
    self.fc = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return self.fc(x.mean(dim=(2, 3)))
