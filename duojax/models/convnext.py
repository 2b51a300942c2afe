"""ConvNeXt (Liu et al., 2022), torchvision's `convnext_tiny` ... `convnext_large`.

A 4×4 stride-4 "patchify" stem, then four stages of blocks at widths
(C, 2C, 4C, 8C), each stage after the first entered by LayerNorm and a 2×2
stride-2 conv. A block is

    x + drop_path(γ ⊙ fc2(GELU(fc1(LayerNorm(dwconv7×7(x))))))

with the two 1×1 convs written as dense layers on the channels-last tensor
(what torchvision and timm do; NHWC makes that the natural layout here) and a
per-channel layer scale γ initialised to 1e-6. Every LayerNorm has eps 1e-6.
The head pools globally, normalises the pooled features (the pre-logits) and
applies a linear classifier. Parameter counts equal torchvision's (tiny
28,589,128).

Stochastic depth drops a whole residual branch per image in training, with a
probability rising linearly over the blocks from 0 to `drop_path`
(torchvision's defaults: 0.1 tiny, 0.4 small, 0.5 base and large); like
dropout, it draws from the `rngs` passed at call time (its "dropout" stream).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError, InputError
from duojax.models import common, depthwise

# name -> (stage widths, blocks per stage, torchvision's stochastic depth)
CONFIGS = {
  "convnext_tiny": ((96, 192, 384, 768), (3, 3, 9, 3), 0.1),
  "convnext_small": ((96, 192, 384, 768), (3, 3, 27, 3), 0.4),
  "convnext_base": ((128, 256, 512, 1024), (3, 3, 27, 3), 0.5),
  "convnext_large": ((192, 384, 768, 1536), (3, 3, 27, 3), 0.5),
}

OVERRIDES = (
  "widths",
  "depths",
  "in_channels",
  "image_size",
  "dtype",
  "dropout",
  "drop_path",
  "layer_scale",
)

EPS = 1e-6
# torchvision: trunc_normal_(std=0.02) for every conv and linear weight (its
# ±2 cut-off is absolute, 100 standard deviations: a plain normal).
_init = common.normal_init(lambda s: 0.02)


def _dense(d_in, d_out, *, dtype, rngs):
  return nnx.Linear(d_in, d_out, kernel_init=_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _norm(ch, *, dtype, rngs):
  return nnx.LayerNorm(ch, epsilon=EPS, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _conv(d_in, d_out, kernel, stride, *, groups=1, padding=0, dtype, rngs):
  return depthwise.Conv(
    d_in,
    d_out,
    (kernel, kernel),
    strides=stride,
    padding=((padding, padding), (padding, padding)),
    feature_group_count=groups,
    kernel_init=_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


class Block(nnx.Module):
  """Depthwise 7×7, LayerNorm, 4× inverted MLP, layer scale, residual."""

  def __init__(self, dim, drop_path, layer_scale, *, dtype, rngs):
    self.dwconv = _conv(dim, dim, 7, 1, groups=dim, padding=3, dtype=dtype, rngs=rngs)
    self.norm = _norm(dim, dtype=dtype, rngs=rngs)
    self.fc1 = _dense(dim, 4 * dim, dtype=dtype, rngs=rngs)
    self.fc2 = _dense(4 * dim, dim, dtype=dtype, rngs=rngs)
    self.gamma = nnx.Param(jnp.full((dim,), layer_scale, jnp.float32))
    # One draw per image (broadcast over H, W, C): torchvision's "row" mode.
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2, 3), rngs=None)

  def __call__(self, x, deterministic: bool, rngs):
    y = self.norm(self.dwconv(x))
    y = self.fc2(jax.nn.gelu(self.fc1(y), approximate=False))
    y = y * self.gamma[...].astype(y.dtype)
    return x + self.drop_path(y, deterministic=deterministic, rngs=rngs)


class Stage(nnx.Module):
  """LayerNorm + 2×2 stride-2 conv (all stages but the first), then blocks."""

  def __init__(self, d_in, dim, depth, rates, layer_scale, *, dtype, rngs):
    if d_in is None:
      self.downsample_norm, self.downsample_conv = None, None
    else:
      self.downsample_norm = _norm(d_in, dtype=dtype, rngs=rngs)
      self.downsample_conv = _conv(d_in, dim, 2, 2, dtype=dtype, rngs=rngs)
    self.blocks = nnx.List(
      [Block(dim, rates[j], layer_scale, dtype=dtype, rngs=rngs) for j in range(depth)]
    )

  def __call__(self, x, deterministic: bool, rngs):
    if self.downsample_conv is not None:
      x = self.downsample_conv(self.downsample_norm(x))
    for block in self.blocks:
      x = block(x, deterministic, rngs)
    return x


class ConvNeXt(nnx.Module):
  """Patchify stem, four stages, pooled LayerNorm pre-logits, linear head. Any H, W."""

  def __init__(
    self,
    num_classes: int = 1000,
    *,
    widths=(96, 192, 384, 768),
    depths=(3, 3, 9, 3),
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 224,
    dtype="float32",
    dropout: float = 0.0,
    drop_path: float = 0.1,
    layer_scale: float = 1e-6,
    name: str = "convnext",
    rngs: nnx.Rngs,
  ):
    widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
    if len(widths) != len(depths) or not widths or min(*widths, *depths, in_channels) < 1:
      raise ConfigError(
        f"{name}: widths and depths must be positive and as many, got {widths} and {depths}"
      )
    if not 0.0 <= drop_path < 1.0:
      raise ConfigError(f"{name}: drop_path must be in [0, 1), got {drop_path}")
    dtype = jnp.dtype(dtype)
    self.name = name
    self.dtype = dtype
    self.dropout_rate = common.check_dropout(name, dropout)
    self.drop_path_rate = float(drop_path)
    self.head_dropout = nnx.Dropout(self.dropout_rate, rngs=None)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    # Nominal resolution only: global pooling makes the network size-agnostic.
    self.image_size = (int(h), int(w))
    self.input_shape = (None, None, in_channels)
    rngs = common.ParamKeys(rngs)  # fast shape-only builds (see there)

    self.stem_conv = _conv(in_channels, widths[0], 4, 4, dtype=dtype, rngs=rngs)
    self.stem_norm = _norm(widths[0], dtype=dtype, rngs=rngs)
    # torchvision: block k of n gets drop_path · k / (n − 1).
    total = sum(depths)
    rates = [drop_path * k / max(total - 1, 1) for k in range(total)]
    stages, start = [], 0
    for i, (dim, depth) in enumerate(zip(widths, depths)):
      d_in = None if i == 0 else widths[i - 1]
      stage_rates = rates[start : start + depth]
      stages.append(Stage(d_in, dim, depth, stage_rates, layer_scale, dtype=dtype, rngs=rngs))
      start += depth
    self.stages = nnx.List(stages)
    self.num_features = widths[-1]
    # The pooled features' norm and the head run in float32 even under
    # bfloat16 compute: they are tiny, and the logits' precision matters.
    self.head_norm = _norm(widths[-1], dtype=jnp.float32, rngs=rngs)
    self.head = _dense(widths[-1], num_classes, dtype=jnp.float32, rngs=rngs)

  def __call__(self, x, train: bool = False, rngs=None):
    """Returns (float32 logits [B, classes], {"pre_logits": [B, D]}).

    With `train=True` and nonzero dropout or drop_path, `rngs` must be an
    nnx.Rngs (its "dropout" stream is used) or a PRNG key.
    """
    common.check_any_size_input(self.name, self.input_shape[-1], x)
    # The stem divides the side by 4 and each later stage by 2, flooring: smaller
    # images leave no pixels to pool (NaN features, not an error, in PyTorch).
    smallest = 4 * 2 ** (len(self.stages) - 1)
    if min(x.shape[1:3]) < smallest:
      raise InputError(
        f"{self.name} needs images of at least {smallest}×{smallest} pixels, got "
        f"{tuple(x.shape[1:3])}"
      )
    rngs = common.train_rngs(
      self.name, train, rngs, dropout=self.dropout_rate, drop_path=self.drop_path_rate
    )
    deterministic = not train
    x = self.stem_norm(self.stem_conv(x.astype(self.dtype)))
    for stage in self.stages:
      x = stage(x, deterministic, rngs)
    pre_logits = self.head_norm(jnp.mean(x.astype(jnp.float32), axis=(1, 2)))
    dropped = self.head_dropout(pre_logits, deterministic=deterministic, rngs=rngs)
    return self.head(dropped), {"pre_logits": pre_logits}


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> ConvNeXt:
  """Builds a ConvNeXt from its name in CONFIGS plus validated overrides."""
  widths, depths, drop_path = CONFIGS[name]
  kwargs = dict(widths=widths, depths=depths, drop_path=drop_path)
  kwargs.update(overrides)
  return ConvNeXt(num_classes, name=name, rngs=rngs, **kwargs)
