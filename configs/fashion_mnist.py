"""Any duojax model on the embedded Fashion-MNIST.

python train.py --config configs/fashion_mnist.py:model=vit_mi4,epochs=1 --workdir runs/vit
"""

from duojax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="resnet14", epochs=2.0, batch_size=128, lr=1e-3)
  config = config_lib.base_config()
  config.dataset = "fashion_mnist"
  config.model_name = arg.model
  config.epochs = arg.epochs
  config.batch_size = arg.batch_size
  config.lr = arg.lr
  # Short schedules train best without augmentation on this data set.
  config.augment = ""
  return config
