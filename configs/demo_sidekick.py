"""The demo's sidekick: a small CNN (16/32 conv + 64 hidden, no BatchNorm).

About 6% of the large model's FLOPs per image (see the demo's printed figures).
"""

from duojax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, epochs=2.0)
  config = config_lib.base_config()
  config.dataset = "fashion_mnist"
  config.model_name = "cnn_s"
  config.epochs = arg.epochs
  config.batch_size = 128
  config.lr = 2e-3
  config.warmup_steps = 100
  config.augment = ""
  return config
