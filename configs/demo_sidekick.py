"""The demo's sidekick: a small CNN (8/16 conv + 32 hidden, no BatchNorm).

1.6% of the large model's FLOPs per image (0.6 vs 37.1 MFLOPs, XLA counts).
The larger `cnn_s` (16/32 + 64 hidden, 5.7%) trains to about the large
model's accuracy on Fashion-MNIST within the demo's budget, so it would not
be a sidekick: the demo uses the smaller one.
"""

from duojax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, epochs=3.0, model="cnn_xs")
  config = config_lib.base_config()
  config.dataset = "fashion_mnist"
  config.model_name = arg.model
  config.epochs = arg.epochs
  config.batch_size = 128
  config.lr = 2e-3
  config.warmup_steps = 100
  config.augment = ""
  return config
