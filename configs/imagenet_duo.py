"""ViT-B/16 (large) or ResNet-18 (sidekick) on ImageNet-1k, for accelerators.

Expects `imagenet2012` prepared by tfds in array_record format in `data_dir`
(or an ImageNet-style folder imported with `python -m duojax.import_folder`:
set `dataset=` to its name and `test_split=test`). tfds's labelled held-out
split is "validation": it is the test split here, and val is carved from train.
  python train.py --config configs/imagenet_duo.py:vit_b16 --workdir runs/vit_b16
  python train.py --config configs/imagenet_duo.py:resnet18 --workdir runs/resnet18
"""

from duojax import config_lib

_RECIPES = {
    # AdamW recipe in the spirit of "How to train your ViT" (from scratch).
    "vit": dict(optimizer="adamw", lr=1e-3, weight_decay=1e-4, warmup_steps=10_000,
                epochs=300.0, label_smoothing=0.1, grad_clip_norm=1.0),
    # Classic SGD + momentum recipe for ResNets.
    "resnet": dict(optimizer="sgd", lr=0.1, weight_decay=1e-4, warmup_steps=2_500,
                   epochs=90.0, label_smoothing=0.1, grad_clip_norm=0.0),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, model="vit_b16", batch_size=1024, dtype="bfloat16")
  config = config_lib.base_config()
  config.dataset = "imagenet2012"
  config.data_dir = "~/tensorflow_datasets"
  config.train_split = "train"
  config.test_split = "validation"
  config.val_size = 10_000
  # Variable-size JPEGs: Inception-style crops at 224 for training, the
  # centre 87.5% of the shorter side for evaluation.
  config.augment = "rrc,flip"
  config.crop_fraction = 0.875
  config.model_name = arg.model
  config.model.dtype = arg.dtype
  config.model.image_size = 224
  if arg.model.startswith("vit"):
    config.model.drop_path = 0.1
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1024
  config.log_every = 100
  config.checkpoint_every = 5_000
  for key, value in _RECIPES["vit" if arg.model.startswith("vit") else "resnet"].items():
    config[key] = value
  return config
