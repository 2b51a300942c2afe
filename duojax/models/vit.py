"""Vision Transformer (Dosovitskiy et al., 2021), big_vision/timm layout.

Pre-LN encoder with learned position embeddings and either a class token
("tok") or global average pooling ("gap"). Parameter shapes and counts match
timm's `vit_*_patch*_224` models. Attention keeps a per-head structure:
query/key/value kernels are [D, heads, head_dim] and the output kernel is
[heads, head_dim, D], so single heads can be sliced out or pruned.

A `head_mask` [depth, heads] passed at call time scales each head's attention
output before the output projection: 0 silences a head, and the gradient of
the loss w.r.t. the mask at 1 is the first-order (Taylor) importance of the
head (Michel et al., 2019) used by `duojax.hydra` to prune heads. A pruned
model keeps the original `head_dim` with fewer heads, so `head_dim` can be set
explicitly and then need not equal width // num_heads.

Dropout and stochastic depth hold no RNG state: the caller passes `rngs` at
call time, so the random masks are a pure function of that key.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from duojax.errors import ConfigError, InputError
from duojax.models import common

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
)

POOLS = ("tok", "gap")


# Glorot-variance dense kernels as in big_vision (nnx.LinearGeneral hands the
# initializer its kernel flattened to [fan_in, fan_out]).
_dense_init = common.normal_init(lambda s: math.sqrt(2.0 / (s[0] + s[-1])))
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


class SelfAttention(nnx.Module):
  """Multi-head self-attention with separate per-head q/k/v/out kernels."""

  def __init__(self, width: int, num_heads: int, *, dtype, rngs, head_dim: int | None = None):
    head_dim = width // num_heads if head_dim is None else head_dim
    self.num_heads = num_heads
    self.head_dim = head_dim

    def proj(in_features, out_features, axis=-1):
      return nnx.LinearGeneral(
        in_features,
        out_features,
        axis=axis,
        kernel_init=_dense_init,
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
      )

    self.query = proj(width, (num_heads, head_dim))
    self.key = proj(width, (num_heads, head_dim))
    self.value = proj(width, (num_heads, head_dim))
    self.out = proj((num_heads, head_dim), width, axis=(-2, -1))

  def __call__(self, x, head_mask=None):
    """`head_mask` [heads] scales each head's output (None: no multiply)."""
    # Scaling q instead of the [T, T] logits is cheaper; a Python float
    # keeps q in the compute dtype.
    q = self.query(x) * self.head_dim**-0.5
    k, v = self.key(x), self.value(x)  # [B, T, heads, head_dim]
    # Head-major [B, heads, T, head_dim] before the two batched dots: with
    # the batch axes leading, XLA's CPU dot runs the attention core 2-4x
    # faster than on [B, T, heads, head_dim] (bench/bench_torch.py).
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
    # Softmax in float32: bfloat16 exp/sum loses too much over long rows.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    y = jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v)
    if head_mask is not None:
      y = y * head_mask.astype(y.dtype)[None, :, None, None]
    return self.out(y.transpose(0, 2, 1, 3))


def _gelu_erf(x):
  """Exact GELU, x * Phi(x), written with erf.

  jax.nn.gelu(approximate=False) goes through erfc, which XLA's CPU backend
  evaluates several times slower than erf (it was ~8% of a ViT-S/16 forward);
  the two agree to float32 rounding (the erf form loses only relative
  precision where GELU is ~0 anyway).
  """
  return 0.5 * x * (1.0 + jax.lax.erf(x * np.sqrt(0.5).astype(x.dtype)))


class MlpBlock(nnx.Module):
  """Linear -> GELU -> dropout -> Linear -> dropout."""

  def __init__(self, width: int, mlp_dim: int, dropout: float, *, dtype, rngs):
    self.fc1 = nnx.Linear(
      width, mlp_dim, kernel_init=_dense_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )
    self.fc2 = nnx.Linear(
      mlp_dim, width, kernel_init=_dense_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )
    self.drop = nnx.Dropout(dropout, rngs=None)

  def __call__(self, x, deterministic: bool, rngs):
    # Exact (erf) GELU as in timm, so that its checkpoints port unchanged.
    x = _gelu_erf(self.fc1(x))
    x = self.drop(x, deterministic=deterministic, rngs=rngs)
    x = self.fc2(x)
    return self.drop(x, deterministic=deterministic, rngs=rngs)


class EncoderBlock(nnx.Module):
  """x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

  def __init__(self, width, mlp_dim, num_heads, dropout, drop_path, *, dtype, rngs, head_dim=None):
    norm = lambda: nnx.LayerNorm(
      width, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, rngs=rngs
    )
    self.norm1 = norm()
    self.attn = SelfAttention(width, num_heads, dtype=dtype, rngs=rngs, head_dim=head_dim)
    self.attn_drop = nnx.Dropout(dropout, rngs=None)
    self.norm2 = norm()
    self.mlp = MlpBlock(width, mlp_dim, dropout, dtype=dtype, rngs=rngs)
    # Stochastic depth = dropout of the whole residual branch per example:
    # one mask value shared over the token and feature axes.
    self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2), rngs=None)

  def __call__(self, x, deterministic: bool, rngs, head_mask=None):
    kw = dict(deterministic=deterministic, rngs=rngs)
    y = self.attn_drop(self.attn(self.norm1(x), head_mask), **kw)
    x = x + self.drop_path(y, **kw)
    y = self.mlp(self.norm2(x), deterministic, rngs)
    return x + self.drop_path(y, **kw)


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
    dtype="float32",
    name: str = "vit",
    rngs: nnx.Rngs,
  ):
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if pool not in POOLS:
      raise ConfigError(f"{name}: unknown pool {pool!r}; valid: {', '.join(POOLS)}")
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
    num_tokens = (h // patch_size) * (w // patch_size)
    if pool == "tok":
      self.cls_token = nnx.Param(jnp.zeros((1, 1, width), jnp.float32))
      num_tokens += 1
    else:
      self.cls_token = None
    self.pos_embedding = nnx.Param(_posemb_init(rngs.params(), (1, num_tokens, width), jnp.float32))
    self.pos_drop = nnx.Dropout(dropout, rngs=None)
    # CLIP-style encoders normalise the embedded tokens before the first block.
    self.norm_pre = (
      nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
      if pre_norm
      else None
    )
    # Stochastic depth grows linearly from 0 at the first block (timm).
    rates = np.linspace(0.0, drop_path, depth)
    self.blocks = nnx.List(
      [
        EncoderBlock(
          width, mlp_dim, num_heads, dropout, float(r), dtype=dtype, rngs=rngs, head_dim=head_dim
        )
        for r in rates
      ]
    )
    self.norm = nnx.LayerNorm(width, epsilon=1e-6, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.num_features = width
    # float32 head: cheap, and keeps the logits' precision for calibration.
    self.head = nnx.Linear(
      width,
      num_classes,
      kernel_init=_head_init,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs=rngs,
    )

  def _check_input(self, x):
    common.check_fixed_input(self.name, self.input_shape, x)

  def __call__(self, x, train: bool = False, rngs=None, head_mask=None):
    """Returns (float32 logits [B, classes], {"pre_logits": [B, width]}).

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
    stochastic = train and (self.dropout_rate > 0 or self.drop_path_rate > 0)
    if stochastic and rngs is None:
      raise ConfigError(
        f"{self.name}: train=True with dropout={self.dropout_rate}, "
        f"drop_path={self.drop_path_rate} needs rngs, e.g. "
        "nnx.Rngs(dropout=key); got rngs=None"
      )
    if isinstance(rngs, jax.Array):
      rngs = nnx.Rngs(dropout=rngs)
    deterministic = not train

    x = self.patch_embed(x.astype(self.dtype))
    b, gh, gw, d = x.shape
    x = x.reshape(b, gh * gw, d)
    if self.cls_token is not None:
      cls = jnp.broadcast_to(self.cls_token[...].astype(self.dtype), (b, 1, d))
      x = jnp.concatenate([cls, x], axis=1)
    x = x + self.pos_embedding[...].astype(self.dtype)
    x = self.pos_drop(x, deterministic=deterministic, rngs=rngs)
    if self.norm_pre is not None:
      x = self.norm_pre(x)
    for i, block in enumerate(self.blocks):
      x = block(x, deterministic, rngs, None if head_mask is None else head_mask[i])
    x = self.norm(x)
    if self.pool == "tok":
      pre_logits = x[:, 0].astype(jnp.float32)
    else:
      pre_logits = jnp.mean(x.astype(jnp.float32), axis=1)
    logits = self.head(pre_logits)
    return logits, {"pre_logits": pre_logits}


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
