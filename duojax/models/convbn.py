"""Pieces of the torchvision-style convolutional families: conv + BatchNorm, SE, the head.

RegNet, MobileNetV2/V3, MNASNet and ShuffleNetV2 are all stacks of
"convolution, BatchNorm, activation" with a global average pool and a linear
head. The layers here reproduce PyTorch's arithmetic exactly (symmetric
padding of (k - 1) // 2, grouped and depthwise convolutions, BatchNorm with
the library's epsilon) so that the libraries' weights give the libraries'
logits; `padding="same"` gives TensorFlow's asymmetric "same" padding
instead, which models ported from TensorFlow (Hugging Face's MobileNetV2)
were trained with.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from duojax.errors import ConfigError
from duojax.models import common, depthwise

PADDINGS = ("torch", "same")

# torchvision: kaiming_normal_(mode="fan_out"): N(0, 2 / (kh*kw*out)), with
# PyTorch's fan-out, which does not divide by the groups.
_conv_init = common.normal_init(lambda s: math.sqrt(2.0 / (math.prod(s[:-2]) * s[-1])))
# LeCun normal for dense layers, N(0, 1 / in_features), as duojax's ResNet head.
dense_init = common.normal_init(lambda s: s[0] ** -0.5)

ACTIVATIONS = {
  "relu": jax.nn.relu,
  "relu6": jax.nn.relu6,
  # PyTorch's Hardswish / Hardsigmoid: x * relu6(x + 3) / 6 and relu6(x + 3) / 6.
  "hard_swish": jax.nn.hard_swish,
  "hard_sigmoid": jax.nn.hard_sigmoid,
  "sigmoid": jax.nn.sigmoid,
  None: lambda x: x,
}


def check_padding(name: str, padding: str) -> str:
  if padding not in PADDINGS:
    raise ConfigError(f"{name}: unknown padding {padding!r}; valid: {', '.join(PADDINGS)}")
  return padding


def conv(in_ch, out_ch, kernel, stride=1, *, groups=1, bias=False, padding="torch", dtype, rngs):
  """A conv with PyTorch's symmetric padding, or TensorFlow's "same" (XLA's SAME rule)."""
  pad = kernel // 2
  return depthwise.Conv(
    in_ch,
    out_ch,
    (kernel, kernel),
    strides=stride,
    padding="SAME" if padding == "same" else ((pad, pad), (pad, pad)),
    feature_group_count=groups,
    use_bias=bias,
    kernel_init=_conv_init,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


def batch_norm(ch, *, eps=1e-5, momentum=0.1, dtype, rngs):
  """BatchNorm with PyTorch's `eps` and `momentum` (Flax's momentum is 1 - torch's).

  Statistics are computed and stored in float32 whatever `dtype` is.
  """
  return nnx.BatchNorm(
    ch,
    momentum=1.0 - momentum,
    epsilon=eps,
    dtype=dtype,
    param_dtype=jnp.float32,
    rngs=rngs,
  )


class ConvBN(nnx.Module):
  """conv, BatchNorm, then `act` (torchvision's Conv2dNormActivation)."""

  def __init__(
    self,
    in_ch,
    out_ch,
    kernel,
    stride=1,
    *,
    groups=1,
    act=None,
    padding="torch",
    eps=1e-5,
    momentum=0.1,
    dtype,
    rngs,
  ):
    self.conv = conv(
      in_ch, out_ch, kernel, stride, groups=groups, padding=padding, dtype=dtype, rngs=rngs
    )
    self.bn = batch_norm(out_ch, eps=eps, momentum=momentum, dtype=dtype, rngs=rngs)
    self.act = act

  def __call__(self, x, train: bool):
    return ACTIVATIONS[self.act](self.bn(self.conv(x), use_running_average=not train))


class SqueezeExcite(nnx.Module):
  """Channel gates from the pooled features: x * gate(fc2(act(fc1(mean(x))))).

  The libraries write fc1/fc2 as 1x1 convolutions with biases on a 1x1 map;
  they are dense layers on the pooled vector here (the converter reshapes).
  """

  def __init__(self, ch, squeeze_ch, *, act="relu", gate="sigmoid", dtype, rngs):
    kw = dict(kernel_init=dense_init, dtype=dtype, param_dtype=jnp.float32, rngs=rngs)
    self.fc1 = nnx.Linear(ch, squeeze_ch, **kw)
    self.fc2 = nnx.Linear(squeeze_ch, ch, **kw)
    self.act, self.gate = act, gate

  def __call__(self, x):
    # Pool in float32: a bfloat16 sum over a large map loses the small channels.
    s = jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
    s = ACTIVATIONS[self.gate](self.fc2(ACTIVATIONS[self.act](self.fc1(s))))
    return x * s[:, None, None, :]


class Classifier(nnx.Module):
  """What the families share: input checks, the float32 pooled head, dropout.

  Subclasses call `_setup(...)` in `__init__`, define `features(x, train)`
  (images in the compute dtype to the last feature map) and may define
  `pre_head` (a module applied to the pooled vector, MobileNetV3's).
  """

  def _setup(self, name, num_classes, in_channels, image_size, dtype, dropout):
    if in_channels < 1 or num_classes < 1:
      raise ConfigError(
        f"{name}: in_channels and num_classes must be positive, got {in_channels}, {num_classes}"
      )
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    self.name = name
    self.dtype = jnp.dtype(dtype)
    # Nominal resolution only: global pooling makes the network size-agnostic.
    self.image_size = (int(h), int(w))
    self.input_shape = (None, None, in_channels)
    self.dropout_rate = common.check_dropout(name, dropout)
    # Dropout on the pre-logit features only (stateless: keys come at call time).
    self.head_dropout = nnx.Dropout(self.dropout_rate, rngs=None)

  def _make_head(self, features, num_classes, rngs):
    # The head runs in float32 even under bfloat16 compute: it is tiny, and
    # calibrated probabilities are the point of this library.
    self.num_features = features
    self.head = nnx.Linear(
      features,
      num_classes,
      kernel_init=dense_init,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      rngs=rngs,
    )

  def pooled(self, x, train: bool):
    """The pre-logit features [B, D] (float32) of images [B, H, W, C]."""
    x = self.features(x.astype(self.dtype), train)
    # Average in float32 so bfloat16 compute does not lose the features.
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))

  def __call__(self, x, train: bool = False, rngs=None):
    """Returns (float32 logits [B, classes], {"pre_logits": [B, D]}).

    `train=True` normalises with batch statistics, updates the running
    averages in place, and applies dropout (if any) before the last linear
    layer, with keys from `rngs` (an nnx.Rngs with a "dropout" stream, or a key).
    """
    common.check_any_size_input(self.name, self.input_shape[-1], x)
    common.check_rngs(self.name, self.dropout_rate, train, rngs)
    pre_logits = self.pooled(x, train)
    dropped = self.head_dropout(pre_logits, deterministic=not train, rngs=rngs)
    return self.head(dropped), {"pre_logits": pre_logits}
