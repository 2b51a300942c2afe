"""The demo's Vision Transformer, the source of its Hydra ensemble.

  python train.py --config configs/demo_vit.py --workdir runs/demo/vit
  python train.py --config configs/demo_vit.py:seed=1 --workdir runs/demo/vit_seed1

A ViT-mi/7 (width 128, depth 4, 4 heads of 32, 16 patch tokens of 7×7) on
Fashion-MNIST: small enough to train in a minute or two on a CPU. It is a
weaker model than the demo's ResNet (a from-scratch ViT needs more data or
epochs), so the Hydra section compares it with its own peers: the same ViT
alone, a deep ensemble of full ViTs (other seeds) and the ViT + sidekick duo.
"""

from duojax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, epochs=3.0, seed=0)
  config = config_lib.base_config()
  config.dataset = "fashion_mnist"
  config.model_name = "vit_mi7"
  config.epochs = arg.epochs
  config.seed = arg.seed  # deep-ensemble members differ in init and data order
  config.batch_size = 128
  config.lr = 1e-3
  config.weight_decay = 1e-4
  config.warmup_steps = 200
  config.augment = ""
  return config
