"""Vision Transformer (Dosovitskiy et al., 2021), big_vision/timm layout.

Pre-LN encoder with learned position embeddings, pooled by the class token
("tok"), the mean of the patch tokens ("gap", LayerNorm after the mean with
`fc_norm`), both ("tok+gap") or attention pooling ("map", `vit_heads`).
Parameter shapes and counts match timm's `vit_*_patch*_224` models; the
options of the CLIP, DINOv2, DeiT and SigLIP towers (`vit_variants`) are
those of the same class: a LayerNorm before the blocks (`pre_norm`), layer
scale, register tokens, a distillation token with its own head, the MLP's
activation and the LayerNorms' epsilon. Attention keeps a per-head structure:
query/key/value kernels are [D, heads, head_dim] and the output kernel is
[heads, head_dim, D], so single heads can be sliced out or pruned.

A `head_mask` [depth, heads] passed at call time scales each head's attention
output before the output projection: 0 silences a head, and the gradient of
the loss w.r.t. the mask at 1 is the first-order (Taylor) importance of the
head (Michel et al., 2019) used by `duojax.hydra` to prune heads. A pruned
model keeps the original `head_dim` with fewer heads, so `head_dim` can be set
explicitly and then need not equal width // num_heads.

Token order: [class, distillation, registers…, patches…]; the position
embedding covers the class and distillation tokens and the patches (with
`embed_class=False`, timm's `no_embed_class`, the patches only), never the
registers (DINOv2's), which join after it is added.

`remat=True` runs every block under `nnx.remat`: its activations are
recomputed in the backward pass, not stored (same values and gradients).

Dropout and stochastic depth hold no RNG state: the caller passes `rngs` at
call time, so the random masks are a pure function of that key.
"""

import math
import re

import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.errors import ConfigError, InputError
from duojax.models import attention as attention_lib
from duojax.models import common, vit_blocks, vit_heads

# variant -> (width, depth, mlp_dim, num_heads)
VARIANTS = {
  "mu": (32, 2, 64, 2),  # unit tests
  "mi": (128, 4, 256, 4),  # CPU-sized experiments
  "Ti": (192, 12, 768, 3),
  "S": (384, 12, 1536, 6),
  "M": (512, 12, 2048, 8),
  "B": (768, 12, 3072, 12),
  "L": (1024, 24, 4096, 16),
  "H": (1280, 32, 5120, 16),
}

# "vit_b16" -> variant "b", patch 16; the variant is matched case-insensitively.
NAME_RE = re.compile(r"^vit_([a-z]+)(\d+)$")

OVERRIDES = (
  "image_size",
  "in_channels",
  "pool",
  "dropout",
  "drop_path",
  "dtype",
  "width",
  "depth",
  "mlp_dim",
  "num_heads",
  "pre_norm",
  "patch_bias",
  "head_dim",
  "attention",
  "remat",
  "act",
  "norm_eps",
  "layer_scale",
  "num_registers",
  "distilled",
  "fc_norm",
  "class_token",
  "posemb_resize",
  "map_heads",
  "embed_class",
)

POOLS = vit_heads.POOLS
# The blocks live in vit_blocks; these names stay importable from here.
SelfAttention, MlpBlock, EncoderBlock = (
  vit_blocks.SelfAttention,
  vit_blocks.MlpBlock,
  vit_blocks.EncoderBlock,
)
_gelu_erf = vit_blocks.gelu_erf
# How the converter resamples a file's position embeddings to another grid.
POSEMB_RESIZES = ("bilinear", "bicubic")


# LeCun normal patch embedding, N(0, 1 / (patch*patch*channels)).
_patch_init = common.normal_init(lambda s: math.prod(s[:-1]) ** -0.5)
# big_vision's learned position embedding, N(0, 1 / width).
_posemb_init = common.normal_init(lambda s: s[-1] ** -0.5)
# timm's head init, N(0, 0.02^2): small logits at init, but not all zero,
# so differently seeded ensemble members disagree from the start.
_head_init = common.normal_init(lambda s: 0.02)


def parse_name(name: str) -> tuple[str, int] | None:
  """Returns (canonical variant, patch size) for names like 'vit_ti16'."""
  m = NAME_RE.match(name)
  if m is None:
    return None
  lower = {v.lower(): v for v in VARIANTS}
  variant = lower.get(m.group(1))
  return None if variant is None else (variant, int(m.group(2)))


class VisionTransformer(nnx.Module):
  """Patch embedding, encoder, final LayerNorm, pooling, linear head."""

  def __init__(
    self,
    num_classes: int = 1000,
    *,
    patch_size: int = 16,
    width: int = 768,
    depth: int = 12,
    mlp_dim: int = 3072,
    num_heads: int = 12,
    head_dim: int | None = None,
    image_size: int | tuple[int, int] = 224,
    in_channels: int = 3,
    pool: str = "tok",
    dropout: float = 0.0,
    drop_path: float = 0.0,
    pre_norm: bool = False,
    patch_bias: bool = True,
    attention: str = "auto",
    remat: bool = False,
    act: str = "gelu",
    norm_eps: float = 1e-6,
    layer_scale: bool = False,
    num_registers: int = 0,
    distilled: bool = False,
    fc_norm: bool = False,
    class_token: bool | None = None,
    posemb_resize: str = "bilinear",
    map_heads: int | None = None,
    embed_class: bool = True,
    dtype="float32",
    name: str = "vit",
    rngs: nnx.Rngs,
  ):
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    # The class token by default where the pool reads it.
    class_token = pool in ("tok", "tok+gap") if class_token is None else bool(class_token)
    _check_options(
      name, pool, patch_size, (h, w), num_heads, width, head_dim, dropout, drop_path, act,
      attention, posemb_resize, num_registers, distilled, class_token,
    )  # fmt: skip
    dtype = jnp.dtype(dtype)
    self.name = name
    self.dtype = dtype
    self.pool = pool
    self.patch_size = patch_size
    self.depth = depth
    self.num_heads = num_heads
    self.head_dim = width // num_heads if head_dim is None else head_dim
    self.dropout_rate = float(dropout)
    self.drop_path_rate = float(drop_path)
    self.image_size = (int(h), int(w))
    # The position embedding fixes the token grid, hence the full shape.
    self.input_shape = (int(h), int(w), in_channels)
    self.attention = attention
    self.remat = bool(remat)
    self.act = act
    self.norm_eps = float(norm_eps)
    self.posemb_resize = posemb_resize
    self.num_registers = int(num_registers)
    self.distilled = bool(distilled)
    # Tokens before the patches, and those of them the position embedding covers.
    self.embed_class = bool(embed_class)
    self.num_embedded_prefix = (int(class_token) + int(distilled)) * self.embed_class
    self.num_prefix = int(class_token) + int(distilled) + self.num_registers
    norm = lambda: vit_blocks.layer_norm(width, norm_eps, dtype, rngs)

    self.patch_embed = nnx.Conv(
      in_channels,
      width,
      (patch_size, patch_size),
      strides=patch_size,
      padding="VALID",
      kernel_init=_patch_init,
      use_bias=patch_bias,
      dtype=dtype,
      param_dtype=jnp.float32,
      rngs=rngs,
    )
    num_tokens = (h // patch_size) * (w // patch_size) + self.num_embedded_prefix
    token = lambda n: nnx.Param(jnp.zeros((1, n, width), jnp.float32))
    self.cls_token = token(1) if class_token else None
    self.dist_token = token(1) if distilled else None
    self.reg_token = token(num_registers) if num_registers else None
    self.pos_embedding = nnx.Param(_posemb_init(rngs.params(), (1, num_tokens, width), jnp.float32))
    self.pos_drop = nnx.Dropout(dropout, rngs=None)
    # CLIP-style encoders normalise the embedded tokens before the first block.
    self.norm_pre = norm() if pre_norm else None
    # Stochastic depth grows linearly from 0 at the first block (timm).
    rates = np.linspace(0.0, drop_path, depth)
    block = dict(
      dtype=dtype, rngs=rngs, head_dim=head_dim, act=act, norm_eps=norm_eps,
      layer_scale=layer_scale, attention=attention,
    )  # fmt: skip
    self.blocks = nnx.List(
      [
        vit_blocks.EncoderBlock(width, mlp_dim, num_heads, dropout, float(r), **block)
        for r in rates
      ]
    )
    # fc_norm: the LayerNorm after the pool instead of before it.
    self.norm = None if fc_norm else norm()
    self.fc_norm = norm() if fc_norm else None
    # The pool's heads are the unpruned encoder's (width // head_dim): a Hydra member,
    # rebuilt with fewer heads of the same head_dim, keeps them.
    self.attn_pool = (
      vit_heads.MapHead(
        width,
        width // self.head_dim if map_heads is None else map_heads,
        mlp_dim,
        dtype=dtype,
        rngs=rngs,
        act=act,
        norm_eps=norm_eps,
        attention=attention,
      )  # fmt: skip
      if pool == "map"
      else None
    )
    self.num_features = 2 * width if pool == "tok+gap" else width
    # float32 head: cheap, and keeps the logits' precision for calibration.
    head = lambda: nnx.Linear(
      self.num_features,
      num_classes,
      kernel_init=_head_init,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs=rngs,
    )
    self.head = head()
    self.head_dist = head() if distilled else None

  def _check_input(self, x):
    common.check_fixed_input(self.name, self.input_shape, x)

  def _tokens(self, x):
    """Images -> [B, T, D] tokens with position embeddings, in the module's order."""
    x = self.patch_embed(x.astype(self.dtype))
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    pos = self.pos_embedding[...].astype(self.dtype)
    prefix = [t[...] for t in (self.cls_token, self.dist_token) if t is not None]
    expand = lambda t: jnp.broadcast_to(t.astype(self.dtype), (b, *t.shape[1:]))
    if self.num_embedded_prefix:  # the embedding covers the class (and distillation) token
      x = jnp.concatenate([expand(t) for t in prefix] + [x], axis=1) + pos
    else:  # patches only (timm's no_embed_class), the tokens joining after
      x = jnp.concatenate([expand(t) for t in prefix] + [x + pos], axis=1)
    if self.reg_token is not None:  # after the position embedding: registers have none
      n = len(prefix)
      x = jnp.concatenate([x[:, :n], expand(self.reg_token[...]), x[:, n:]], axis=1)
    return x

  def __call__(self, x, train: bool = False, rngs=None, head_mask=None):
    """Returns (float32 logits [B, classes], {"pre_logits": [B, num_features]}).

    With `train=True` and nonzero dropout/drop_path, `rngs` must be an
    nnx.Rngs (its "dropout" stream is used) or a PRNG key. `head_mask`, a
    float array [depth, num_heads], scales each head's attention output in
    each layer; None leaves the computation unchanged.
    """
    self._check_input(x)
    if head_mask is not None:
      shape = (self.depth, self.num_heads)
      if tuple(jnp.shape(head_mask)) != shape:
        raise InputError(
          f"{self.name}: head_mask must have shape {shape} "
          f"(depth, num_heads), got {jnp.shape(head_mask)}"
        )
      head_mask = jnp.asarray(head_mask, jnp.float32)
    rngs = common.train_rngs(
      self.name, train, rngs, dropout=self.dropout_rate, drop_path=self.drop_path_rate
    )
    deterministic = not train

    x = self.pos_drop(self._tokens(x), deterministic=deterministic, rngs=rngs)
    if self.norm_pre is not None:
      x = self.norm_pre(x)
    run = vit_blocks.run_block_remat if self.remat else vit_blocks.run_block
    for i, block in enumerate(self.blocks):
      x = run(block, x, None if head_mask is None else head_mask[i], rngs, deterministic)
    if self.norm is not None:
      x = self.norm(x)
    if self.attn_pool is not None:
      pre_logits = self.attn_pool(x[:, self.num_prefix :]).astype(jnp.float32)
    elif self.distilled:  # the class and distillation tokens, each with its head
      cls, dist = x[:, 0].astype(jnp.float32), x[:, 1].astype(jnp.float32)
      logits = (self.head(cls) + self.head_dist(dist)) / 2
      return logits, {"pre_logits": (cls + dist) / 2}
    else:
      pre_logits = vit_heads.pool_tokens(x, self.pool, self.num_prefix).astype(jnp.float32)
    if self.fc_norm is not None:
      pre_logits = self.fc_norm(pre_logits.astype(self.dtype)).astype(jnp.float32)
    logits = self.head(pre_logits)
    return logits, {"pre_logits": pre_logits}


def _check_options(
  name, pool, patch_size, hw, num_heads, width, head_dim, dropout, drop_path, act, attention,
  posemb_resize, num_registers, distilled, class_token,
) -> None:  # fmt: skip
  """One-line ConfigErrors for options that cannot build a model."""
  h, w = hw
  for what, value, valid in (
    ("pool", pool, POOLS),
    ("act", act, vit_blocks.ACTIVATIONS),
    ("attention", attention, attention_lib.IMPLEMENTATIONS),
    ("posemb_resize", posemb_resize, POSEMB_RESIZES),
  ):
    if value not in valid:
      raise ConfigError(f"{name}: unknown {what} {value!r}; valid: {', '.join(valid)}")
  if patch_size < 1 or h % patch_size or w % patch_size:
    raise ConfigError(f"{name}: patch size {patch_size} does not divide image size {(h, w)}")
  if num_heads < 1:
    raise ConfigError(f"{name}: num_heads must be >= 1, got {num_heads}")
  # An explicit head_dim (pruned models) frees width from heads * head_dim.
  if head_dim is None and width % num_heads:
    raise ConfigError(f"{name}: num_heads {num_heads} does not divide width {width}")
  if head_dim is not None and head_dim < 1:
    raise ConfigError(f"{name}: head_dim must be >= 1, got {head_dim}")
  for what, rate in (("dropout", dropout), ("drop_path", drop_path)):
    if not 0.0 <= rate < 1.0:
      raise ConfigError(f"{name}: {what} must be in [0, 1), got {rate}")
  if not isinstance(num_registers, int) or num_registers < 0:
    raise ConfigError(f"{name}: num_registers must be an int >= 0, got {num_registers!r}")
  if pool in ("tok", "tok+gap") and not class_token:
    raise ConfigError(f"{name}: pool {pool!r} reads the class token; set class_token=True")
  if distilled and (pool != "tok" or not class_token):
    raise ConfigError(f"{name}: distilled=True pools the class and distillation tokens: pool='tok'")


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> VisionTransformer:
  """Builds a ViT from a name like 'vit_b16' plus validated overrides."""
  parsed = parse_name(name)
  if parsed is None:
    raise ConfigError(f"not a ViT name: {name!r}")
  variant, patch = parsed
  width, depth, mlp_dim, num_heads = VARIANTS[variant]
  kwargs = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads)
  kwargs.update(overrides)
  return VisionTransformer(num_classes, patch_size=patch, name=name, rngs=rngs, **kwargs)
