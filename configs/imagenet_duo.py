"""The duo's members on ImageNet-style data, for accelerators: a pretrained
ViT-B/16 (large) and ResNet-18 (sidekick) fine-tuned, or trained from scratch.

  # Fine-tune from PyTorch-layout safetensors files (timm, torchvision, Hugging Face):
  python train.py --config configs/imagenet_duo.py:model=vit_b16,weights=vit_b16.safetensors \\
      --workdir runs/vit_b16
  python train.py --config configs/imagenet_duo.py:model=resnet18,weights=resnet18.safetensors \\
      --workdir runs/resnet18
  # On an imported image folder (python -m duojax.import_folder ... --dataset my_set):
  python train.py --config configs/imagenet_duo.py:model=vit_b16,weights=...,dataset=my_set,\\
test_split=test --workdir runs/my_vit
  # From scratch (no weights=): the ViT and ResNet ImageNet recipes, 300 / 90 epochs.

Data: `imagenet2012` prepared by tfds in array_record format in `data_dir`, or
an imported folder. tfds's labelled held-out split is "validation": it is the
test split here, and val (for temperatures and the duo's weights) is carved
from train. Images are cut at the size the checkpoint was trained at (224
for both; `size=` to change it, the ViT's position embeddings are resampled),
Inception-style random-resized crops and flips for training, the centre 87.5%
for evaluation; each model is normalised with its pretrained file's statistics
(timm ViT 0.5/0.5, ResNets ImageNet's), kept in its checkpoints.

The fine-tune is a transfer recipe in the spirit of big_vision's transfer
configs and the Asymmetric Duo paper's fine-tunes: SGD with momentum 0.9, no
weight decay, a short warmup, cosine decay, gradient clipping at 1, batch 512,
bfloat16 compute; `probe=N` first trains the classifier head alone for N steps
(a linear probe; with `head=fresh`, the default, for data sets whose classes
are not ImageNet's -- `head=load` keeps an ImageNet head for imagenet2012).
"""

from duojax import config_lib

_SCRATCH = {
  "vit": dict(
    optimizer="adamw",
    lr=1e-3,
    weight_decay=1e-4,
    warmup_steps=10_000,
    epochs=300.0,
    label_smoothing=0.1,
    grad_clip_norm=1.0,
  ),
  "resnet": dict(
    optimizer="sgd",
    lr=0.1,
    weight_decay=1e-4,
    warmup_steps=2_500,
    epochs=90.0,
    label_smoothing=0.1,
    grad_clip_norm=0.0,
  ),
}
_TRANSFER = {
  "vit": dict(
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    weight_decay=0.0,
    warmup_steps=500,
    grad_clip_norm=1.0,
    label_smoothing=0.0,
  ),
  "resnet": dict(
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    weight_decay=0.0,
    warmup_steps=500,
    grad_clip_norm=1.0,
    label_smoothing=0.0,
  ),
}


def get_config(arg=None):
  arg = config_lib.parse_arg(
    arg,
    model="vit_b16",
    weights="",
    layout="auto",
    head="fresh",
    probe=0,
    steps=20_000,
    batch_size=512,
    lr=-1.0,
    size=224,
    dtype="bfloat16",
    dataset="imagenet2012",
    data_dir="~/tensorflow_datasets",
    test_split="validation",
  )
  family = "vit" if arg.model.startswith("vit") else "resnet"
  config = config_lib.base_config()
  config.dataset = arg.dataset
  config.data_dir = arg.data_dir
  config.train_split = "train"
  config.test_split = arg.test_split
  config.val_size = 10_000
  # Variable-size JPEGs: Inception-style crops for training, the centre
  # 87.5% of the shorter side for evaluation.
  config.augment = "rrc,flip"
  config.crop_fraction = 0.875
  config.model_name = arg.model
  config.model.dtype = arg.dtype
  config.model.image_size = arg.size
  config.batch_size = arg.batch_size
  config.eval_batch_size = 1024
  config.log_every = 100
  config.checkpoint_every = 2_000
  if arg.weights:
    config.init_weights = arg.weights
    config.init_layout = arg.layout
    config.init_head = arg.head
    config.linear_probe_steps = arg.probe
    config.total_steps = arg.steps
    recipe = _TRANSFER[family]
  else:
    recipe = _SCRATCH[family]
    if family == "vit":
      config.model.drop_path = 0.1
  for key, value in recipe.items():
    config[key] = value
  if arg.lr > 0:
    config.lr = arg.lr
  return config
