"""Swin Transformer V2 (Liu et al., 2022): torchvision's `swin_v2_t/s/b`, and timm's
window-16 models as `swin_v2_{t,s,b}_w16`.

A 4×4 stride-4 patch embedding with LayerNorm, then stages of Swin-V2 blocks
(`swin_blocks`: shifted-window scaled cosine attention, the log-spaced continuous
relative position bias, residual post-norm) at widths C, 2C, 4C, 8C, each stage after
the first entered by V2's patch merging (linear 4C → 2C, then LayerNorm). Then a final
LayerNorm, the mean over positions (the pre-logits) and a linear head.

One module takes the weights of torchvision, timm and Hugging Face
(`Swinv2ForImageClassification`; `duojax.convert.layouts_swin`). Their parameters
differ in one tensor: torchvision's qkv bias has a key third, which its forward sets
to zero; timm and Hugging Face have a query and a value bias only. `key_bias=True`
holds that unused third (torchvision's count: swin_v2_t 28,351,570), `key_bias=False`
does not (timm's and Hugging Face's: 28,347,154); either loads any of the three files
(the third is dropped, or held at zero, as it changes nothing).

Any input whose feature maps the windows fit (`window_rule`, `swin_blocks.WINDOW_RULES`):
by default a side at most the window shrinks the window to it and stops the shift
(timm, Hugging Face), and a longer side must be a multiple of the window. The
position-bias table comes from its MLP at call time, so another `window_size` than
the file's works; `pretrained_window_size` (per stage, 0: the window itself) scales
the coordinates as the window the weights were trained with, as timm's and Hugging
Face's option of that name does.

`remat=True` runs every block under `nnx.remat` (same values and gradients, less
memory); `attention` picks `models.attention`'s form ("auto": explicit on the CPU,
cuDNN's fused kernel on a GPU in bfloat16, XLA's otherwise). Stochastic depth rises linearly over the blocks from 0 to `drop_path`
(torchvision's defaults: 0.2 tiny, 0.3 small, 0.5 base) and, like dropout, draws
from the `rngs` passed at call time.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError, InputError
from duojax.models import attention as attention_lib
from duojax.models import common, swin_blocks
from duojax.models.swin_blocks import WINDOW_RULES

# name -> (embed_dim, depths, heads, window, torchvision's stochastic depth, key_bias)
CONFIGS = {
  "swin_v2_t": (96, (2, 2, 6, 2), (3, 6, 12, 24), 8, 0.2, True),
  "swin_v2_s": (96, (2, 2, 18, 2), (3, 6, 12, 24), 8, 0.3, True),
  "swin_v2_b": (128, (2, 2, 18, 2), (4, 8, 16, 32), 8, 0.5, True),
  # timm's swinv2_{tiny,small,base}_window16_256: no key bias (timm's count).
  "swin_v2_t_w16": (96, (2, 2, 6, 2), (3, 6, 12, 24), 16, 0.2, False),
  "swin_v2_s_w16": (96, (2, 2, 18, 2), (3, 6, 12, 24), 16, 0.3, False),
  "swin_v2_b_w16": (128, (2, 2, 18, 2), (4, 8, 16, 32), 16, 0.5, False),
}

OVERRIDES = (
  "embed_dim",
  "depths",
  "num_heads",
  "window_size",
  "pretrained_window_size",
  "window_rule",
  "key_bias",
  "mlp_ratio",
  "in_channels",
  "image_size",
  "dtype",
  "dropout",
  "drop_path",
  "remat",
  "attention",
)

PATCH = 4


def stage_sides(sides, stages: int) -> list[tuple[int, int]]:
  """Each stage's feature-map (H, W) for an image of `sides`: the patch embedding
  floors to H/4, each patch merging rounds up (odd sides are padded)."""
  out = [tuple(s // PATCH for s in sides)]
  for _ in range(stages - 1):
    out.append(tuple(-(-s // 2) for s in out[-1]))
  return out


def _per_stage(name, key, value, stages) -> tuple[int, ...]:
  values = (value,) * stages if isinstance(value, int) else tuple(value)
  if len(values) != stages or not all(isinstance(v, int) and v >= 0 for v in values):
    raise ConfigError(
      f"{name}: {key} must be an int ≥ 0 or one per stage ({stages}), got {value!r}"
    )
  return values


class Stage(nnx.Module):
  """The patch merging that enters the stage (None for the first), then its blocks."""

  def __init__(self, merge, blocks):
    self.merge = merge
    self.blocks = nnx.List(blocks)


class SwinV2(nnx.Module):
  """Patch embedding, Swin-V2 stages, final LayerNorm, mean pooling, linear head."""

  def __init__(
    self,
    num_classes: int = 1000,
    *,
    embed_dim: int = 96,
    depths=(2, 2, 6, 2),
    num_heads=(3, 6, 12, 24),
    window_size: int = 8,
    pretrained_window_size=0,
    window_rule: str = "fit",
    key_bias: bool = True,
    mlp_ratio: float = 4.0,
    in_channels: int = 3,
    image_size: int | tuple[int, int] = 256,
    dtype="float32",
    dropout: float = 0.0,
    drop_path: float = 0.2,
    remat: bool = False,
    attention: str = "auto",
    name: str = "swin_v2",
    rngs: nnx.Rngs,
  ):
    depths, num_heads = tuple(int(d) for d in depths), tuple(int(h) for h in num_heads)
    stages = len(depths)
    if not depths or len(num_heads) != stages or min(*depths, *num_heads, embed_dim) < 1:
      raise ConfigError(
        f"{name}: depths and num_heads must be positive and as many, got {depths} and {num_heads}"
      )
    dims = [embed_dim * 2**i for i in range(stages)]
    for dim, heads in zip(dims, num_heads):
      if dim % heads:
        raise ConfigError(f"{name}: {heads} heads do not divide the stage width {dim}")
    if not isinstance(window_size, int) or window_size < 1:
      raise ConfigError(f"{name}: window_size must be a positive int, got {window_size!r}")
    if window_rule not in WINDOW_RULES:
      raise ConfigError(
        f"{name}: unknown window_rule {window_rule!r}; valid: {', '.join(WINDOW_RULES)}"
      )
    if attention not in attention_lib.IMPLEMENTATIONS:
      raise ConfigError(
        f"{name}: unknown attention {attention!r}; valid: {', '.join(attention_lib.IMPLEMENTATIONS)}"
      )
    if not 0.0 <= drop_path < 1.0:
      raise ConfigError(f"{name}: drop_path must be in [0, 1), got {drop_path}")
    if in_channels < 1 or mlp_ratio <= 0:
      raise ConfigError(f"{name}: in_channels and mlp_ratio must be positive")
    pretrained = _per_stage(name, "pretrained_window_size", pretrained_window_size, stages)
    dtype = jnp.dtype(dtype)
    self.name = name
    self.dtype = dtype
    self.dropout_rate = common.check_dropout(name, dropout)
    self.drop_path_rate = float(drop_path)
    self.window_size, self.window_rule = window_size, window_rule
    self.pretrained_window_size = pretrained
    self.key_bias = bool(key_bias)
    self.remat = bool(remat)
    self.attention = attention
    self.depths = depths
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    self.image_size = (int(h), int(w))  # nominal: any size the windows fit runs
    self.input_shape = (None, None, in_channels)
    self.head_dropout = nnx.Dropout(self.dropout_rate, rngs=None)
    rngs = common.ParamKeys(rngs)  # fast shape-only builds (see there)

    self.patch_embed = nnx.Conv(
      in_channels,
      embed_dim,
      (PATCH, PATCH),
      strides=PATCH,
      padding="VALID",
      kernel_init=swin_blocks._init,
      dtype=dtype,
      param_dtype=jnp.float32,
      rngs=rngs,
    )
    self.patch_embed_norm = swin_blocks.layer_norm(embed_dim, dtype=dtype, rngs=rngs)
    # torchvision: block k of n gets drop_path · k / (n − 1).
    total = sum(depths)
    rates = [drop_path * k / max(total - 1, 1) for k in range(total)]
    stage_list, start = [], 0
    for i, (dim, depth, heads) in enumerate(zip(dims, depths, num_heads)):
      merge = None if i == 0 else swin_blocks.PatchMerging(dims[i - 1], dtype=dtype, rngs=rngs)
      blocks = [
        swin_blocks.Block(
          dim,
          heads,
          window=window_size,
          shifted=j % 2 == 1,
          rule=window_rule,
          key_bias=self.key_bias,
          pretrained_window=(pretrained[i], pretrained[i]),
          mlp_ratio=mlp_ratio,
          drop_path=rates[start + j],
          attention=attention,
          dtype=dtype,
          rngs=rngs,
        )
        for j in range(depth)
      ]
      stage_list.append(Stage(merge, blocks))
      start += depth
    self.stages = nnx.List(stage_list)
    self.num_features = dims[-1]
    # The final norm, pooling and head in float32, also under bfloat16 compute.
    self.norm = swin_blocks.layer_norm(dims[-1], dtype=jnp.float32, rngs=rngs)
    self.head = swin_blocks.dense(dims[-1], num_classes, dtype=jnp.float32, rngs=rngs)

  def check_windows(self, sides) -> None:
    """One line for an image whose feature maps the windows do not fit."""
    if min(sides) < PATCH:
      raise InputError(
        f"{self.name} needs images of at least {PATCH}×{PATCH} pixels, got {tuple(sides)}"
      )
    for i, (h, w) in enumerate(stage_sides(sides, len(self.stages))):
      if swin_blocks.window_plan((h, w), self.window_size, True, self.window_rule) is None:
        raise InputError(
          f"{self.name}: window {self.window_size} does not fit the {h}×{w} feature map of "
          f"stage {i + 1} of a {sides[0]}×{sides[1]} image (a side must be a multiple of the "
          "window or at most it); use another window_size or image size, or window_rule "
          "'hf', 'torchvision' or 'timm' to pad as that library does"
        )

  def __call__(self, x, train: bool = False, rngs=None):
    """Returns (float32 logits [B, classes], {"pre_logits": [B, D]}).

    With `train=True` and nonzero dropout or drop_path, `rngs` must be an
    nnx.Rngs (its "dropout" stream is used) or a PRNG key.
    """
    common.check_any_size_input(self.name, self.input_shape[-1], x)
    self.check_windows(tuple(x.shape[1:3]))
    rngs = common.train_rngs(
      self.name, train, rngs, dropout=self.dropout_rate, drop_path=self.drop_path_rate
    )
    deterministic = not train
    run = swin_blocks.run_block_remat if self.remat else swin_blocks.run_block
    # Hugging Face chooses each stage's windows from the patch grid halved with
    # flooring (its config's image size); the others from the feature map itself.
    grid = [s // PATCH for s in x.shape[1:3]]
    x = self.patch_embed_norm(self.patch_embed(x.astype(self.dtype)))
    for i, stage in enumerate(self.stages):
      if stage.merge is not None:
        x = stage.merge(x)
      decide = tuple(g // 2**i for g in grid) if self.window_rule == "hf" else None
      for block in stage.blocks:
        x = run(block, x, rngs, deterministic, decide)
    pre_logits = jnp.mean(self.norm(x.astype(jnp.float32)), axis=(1, 2))
    dropped = self.head_dropout(pre_logits, deterministic=deterministic, rngs=rngs)
    return self.head(dropped), {"pre_logits": pre_logits}


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> SwinV2:
  """Builds a Swin-V2 from its name in CONFIGS plus validated overrides."""
  embed_dim, depths, heads, window, drop_path, key_bias = CONFIGS[name]
  kwargs = dict(
    embed_dim=embed_dim,
    depths=depths,
    num_heads=heads,
    window_size=window,
    drop_path=drop_path,
    key_bias=key_bias,
  )
  kwargs.update(overrides)
  return SwinV2(num_classes, name=name, rngs=rngs, **kwargs)
