"""A plain small CNN: the cheap sidekick model (no normalisation layers).

[conv3x3 + ReLU + maxpool2] per width, flatten, Dense + ReLU (pre_logits),
Dense head. The flatten fixes the input resolution, so H and W are checked.
"""

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError
from duojax.models import common

# name -> (conv widths, hidden units)
CONFIGS = {
  "cnn_s": ((16, 32), 64),
  "cnn_xs": ((8, 16), 32),
}

OVERRIDES = ("image_size", "in_channels", "dtype", "widths", "hidden", "dropout")


# LeCun normal, N(0, 1 / fan_in), for convs ([kh, kw, in, out]) and dense
# layers ([in, out]) alike.
_kernel_init = common.normal_init(lambda s: math.prod(s[:-1]) ** -0.5)


class CNN(nnx.Module):
  """Conv stack with 'SAME' convs and 2x2 'VALID' max pools (floor)."""

  def __init__(
    self,
    num_classes: int = 1000,
    *,
    widths: Sequence[int] = (16, 32),
    hidden: int = 64,
    image_size: int | tuple[int, int] = 224,
    in_channels: int = 3,
    dtype="float32",
    dropout: float = 0.0,
    name: str = "cnn",
    rngs: nnx.Rngs,
  ):
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    widths = tuple(int(c) for c in widths)
    if not widths or min(widths) < 1 or hidden < 1:
      raise ConfigError(
        f"{name}: widths and hidden must be positive, got widths={widths}, hidden={hidden}"
      )
    dtype = jnp.dtype(dtype)
    self.name = name
    self.dtype = dtype
    self.dropout_rate = common.check_dropout(name, dropout)
    # Dropout on the pre-logit features only (stateless: keys come at call time).
    self.head_dropout = nnx.Dropout(self.dropout_rate, rngs=None)
    self.image_size = (int(h), int(w))
    self.input_shape = (int(h), int(w), in_channels)

    convs, in_ch = [], in_channels
    for ch in widths:
      convs.append(
        nnx.Conv(
          in_ch,
          ch,
          (3, 3),
          padding="SAME",
          kernel_init=_kernel_init,
          dtype=dtype,
          param_dtype=jnp.float32,
          rngs=rngs,
        )
      )
      in_ch = ch
    self.convs = nnx.List(convs)
    fh, fw = h // 2 ** len(widths), w // 2 ** len(widths)
    if fh < 1 or fw < 1:
      raise ConfigError(f"{name}: image size {(h, w)} is too small for {len(widths)} 2x2 poolings")
    self.fc = nnx.Linear(
      fh * fw * in_ch,
      hidden,
      kernel_init=_kernel_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      rngs=rngs,
    )
    self.num_features = hidden
    # float32 head, as for the other families.
    self.head = nnx.Linear(
      hidden,
      num_classes,
      kernel_init=_kernel_init,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs=rngs,
    )

  def _check_input(self, x):
    common.check_fixed_input(self.name, self.input_shape, x)

  def __call__(self, x, train: bool = False, rngs=None):
    """Returns (float32 logits, {"pre_logits": [B, hidden]}).

    The model has no batch statistics; `train=True` applies dropout (if any)
    to the pre-logits, with keys from `rngs`.
    """
    self._check_input(x)
    common.check_rngs(self.name, self.dropout_rate, train, rngs)
    x = x.astype(self.dtype)
    for conv in self.convs:
      x = common.max_pool_2x2(jax.nn.relu(conv(x)))
    x = x.reshape(x.shape[0], -1)
    pre_logits = jax.nn.relu(self.fc(x)).astype(jnp.float32)
    dropped = self.head_dropout(pre_logits, deterministic=not train, rngs=rngs)
    logits = self.head(dropped)
    return logits, {"pre_logits": pre_logits}


def create(name: str, num_classes: int = 1000, *, rngs: nnx.Rngs, **overrides) -> CNN:
  """Builds a CNN from its name in CONFIGS plus validated overrides."""
  widths, hidden = CONFIGS[name]
  kwargs = dict(widths=widths, hidden=hidden)
  kwargs.update(overrides)
  return CNN(num_classes, name=name, rngs=rngs, **kwargs)
