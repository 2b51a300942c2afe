"""The duo's members on ImageNet or an imported image folder, for accelerators:
a pretrained ViT-B/16 (large) and ResNet-18 (sidekick) fine-tuned, or trained
from scratch. Sizes fit the data set (docs/recipes.md).

Any duojax model name works as `model=`; the Asymmetric Duo paper's convolutional
pairs (large + sidekick; file names of each library in docs/model_names.md):

  ConvNeXt-B + EfficientNet-B0     model=convnext_base    model=efficientnet_b0
  EfficientNetV2-L + ResNet-18     model=efficientnet_v2_l  model=resnet18
  RegNet-X-32GF + MNASNet          model=regnet_x_32gf    model=mnasnet1_0

  python train.py --config configs/imagenet_duo.py:model=convnext_base,\\
weights=convnext_base.fb_in22k_ft_in1k/model.safetensors --workdir runs/convnext_base

Each member is normalised, cropped and resized as its library did (the files beside
the weights: a timm config.json, a Hugging Face preprocessor_config.json; else
torchvision's eval transform of that model, else the family's library default), and
takes what the file's weights need beyond their names: TensorFlow's "same" padding
and BatchNorm eps 1e-3 for Hugging Face EfficientNets and MobileNetV2s and timm's
`tf_*` EfficientNets (told by the timm config.json beside the file), timm's RegNet
widths. `padding=same,bn_eps=0.001` set them by hand. The image side is the
model's nominal one unless `size=` is given: 224, EfficientNet B1-B7 240 ... 600,
V2-S 384, V2-M and V2-L 480.

  # Fine-tune from PyTorch-layout safetensors files (timm, torchvision, Hugging Face):
  python train.py --config configs/imagenet_duo.py:model=vit_b16,weights=vit_b16.safetensors \\
      --workdir runs/vit_b16
  python train.py --config configs/imagenet_duo.py:model=resnet18,weights=resnet18.safetensors \\
      --workdir runs/resnet18
  # On an imported image folder (python -m duojax.import_folder SRC --test_folder TEST
  # --dataset my_set; both default to the data directory `data`):
  python train.py --config configs/imagenet_duo.py:model=vit_b16,weights=...,dataset=my_set,\\
test_split=test --workdir runs/my_vit
  # From scratch (no weights=): the ViT and ResNet ImageNet recipes, 300 / 90 epochs.

Sizes: val_size, batch_size, eval_batch_size, warmup and steps are "auto"
unless given (e.g. `batch_size=128`, `steps=2000`, `epochs=5`): the training
loop chooses them from the data set's size and the device count
(`duojax.train.sizing`), prints one line saying what it chose, and saves them
with the run. On ImageNet that is this recipe's ImageNet sizes (val 10,000,
batch 512, 20,000 fine-tune steps of 10 epochs' ~24,800, warmup 500, eval
batch 1,024); a folder of 5,000 images gets val 500, batch 256, 10 epochs =
170 steps, warmup 17, eval batch 512, not 20,000 steps of batch 512.

Data: `imagenet2012` prepared by tfds in array_record format in `data_dir`
(`data`, as for every config and the folder import; tfds's own default is
`data_dir=~/tensorflow_datasets`), or an imported folder. tfds's labelled
held-out split is "validation": it is the test split here, and val (for
temperatures and the duo's weights) is carved from train. Images are cut at
the size the checkpoint was trained at (224 for both; `size=` to change it,
the ViT's position embeddings are resampled), Inception-style random-resized
crops and flips for training, the centre 87.5% for evaluation; each model is
normalised with its pretrained file's statistics (timm ViT 0.5/0.5, ResNets
ImageNet's), kept in its checkpoints.

The fine-tune is a transfer recipe in the spirit of big_vision's transfer
configs and the Asymmetric Duo paper's fine-tunes: SGD with momentum 0.9, no
weight decay, a short warmup, cosine decay, gradient clipping at 1, batch (at
most) 512, 10 epochs (at most 20,000 steps), bfloat16 compute; `probe=N`
first trains the classifier head alone for N steps (a linear probe; with
`head=fresh`, the default, for data sets whose classes are not ImageNet's --
`head=load` keeps an ImageNet head for imagenet2012).
"""

from duojax import config_lib, models
from duojax.convert import file_options
from duojax.models import efficientnet

# Each recipe's warmup_steps is the most an "auto" warm-up takes.
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
  # ConvNeXt's own: AdamW, weight decay 0.05, 300 epochs, 20 of them warm-up (at
  # ImageNet's batch 512, ~50,000 steps; the most an "auto" warm-up takes is 10,000),
  # lr 4e-3 at batch 4,096 scaled linearly to 512.
  "convnext": dict(
    optimizer="adamw",
    lr=5e-4,
    weight_decay=0.05,
    warmup_steps=10_000,
    epochs=300.0,
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
    epochs=10.0,
    grad_clip_norm=1.0,
    label_smoothing=0.0,
  ),
  "resnet": dict(
    optimizer="sgd",
    lr=0.01,
    momentum=0.9,
    weight_decay=0.0,
    warmup_steps=500,
    epochs=10.0,
    grad_clip_norm=1.0,
    label_smoothing=0.0,
  ),
}
# The sizes on ImageNet: the most an "auto" size takes (config.auto_max).
_MOST = dict(val_size=10_000, batch_size=512, eval_batch_size=1024)
_MOST_FINE_TUNE_STEPS = 20_000


def _size(key: str, value: str) -> int:
  """A size argument: "auto" (config_lib.AUTO, chosen from the data) or a positive int."""
  if value == "auto":
    return config_lib.AUTO
  try:
    number = int(value)
  except ValueError:
    number = 0
  if number <= 0:
    raise config_lib.ConfigError(
      f"config argument {key}={value!r} must be 'auto' or a positive integer"
    )
  return number


def _recipe_family(model: str) -> str:
  """The recipe a model takes: ViTs and ConvNeXts their own, every other the ResNets'."""
  family = models.family_name(model)
  if family is None:
    raise config_lib.ConfigError(
      f"config argument model={model!r} is not a duojax model; known: "
      f"{', '.join(models.list_models())}"
    )
  return family if family in ("vit", "convnext") else "resnet"


def _nominal_size(model: str) -> int:
  """The side the model's pretrained weights take: EfficientNet's own, else 224."""
  return int(efficientnet.CONFIGS[model]["image_size"]) if model in efficientnet.CONFIGS else 224


def get_config(arg=None):
  config = config_lib.base_config()
  arg = config_lib.parse_arg(
    arg,
    model="vit_b16",
    weights="",
    layout="auto",
    head="fresh",
    probe=0,
    epochs=0.0,  # 0: the recipe's (10 for a fine-tune, 300 / 90 from scratch)
    steps="auto",
    batch_size="auto",
    eval_batch_size="auto",
    val_size="auto",
    warmup="auto",
    lr=-1.0,
    size=0,  # 0: the model's nominal side
    padding="",  # "" (from the file), "torch" or "same"
    bn_eps=0.0,  # 0: from the file
    dtype="bfloat16",
    dataset="imagenet2012",
    data_dir=config.data_dir,
    test_split="validation",
  )
  family = _recipe_family(arg.model)
  config.dataset = arg.dataset
  config.data_dir = arg.data_dir
  config.train_split = "train"
  config.test_split = arg.test_split
  # Variable-size JPEGs: Inception-style crops for training, the centre
  # 87.5% of the shorter side for evaluation.
  config.augment = "rrc,flip"
  config.crop_fraction = 0.875
  config.model_name = arg.model
  config.model.dtype = arg.dtype
  config.model.image_size = arg.size if arg.size > 0 else _nominal_size(arg.model)
  overrides = file_options.file_overrides(arg.model, arg.weights, arg.layout)
  if arg.padding:
    overrides["padding"] = arg.padding
  if arg.bn_eps > 0:
    overrides["bn_eps"] = arg.bn_eps
  for key, value in overrides.items():
    config.model[key] = value  # keys beyond config_lib's: get_model checks them
  config.log_every = 100
  config.checkpoint_every = 2_000
  if arg.weights:
    config.init_weights = arg.weights
    config.init_layout = arg.layout
    config.init_head = arg.head
    config.linear_probe_steps = arg.probe
    # Every convolutional family fine-tunes with the ResNets' transfer recipe.
    recipe = dict(_TRANSFER["vit" if family == "vit" else "resnet"])
    # A fine-tune runs its epochs on a small set, and no longer than this on ImageNet.
    config.auto_max.total_steps = _MOST_FINE_TUNE_STEPS
  else:
    recipe = dict(_SCRATCH[family])
    if family == "vit":
      config.model.drop_path = 0.1
  config.auto_max.warmup_steps = recipe.pop("warmup_steps")
  for key, value in recipe.items():
    config[key] = value
  for key, most in _MOST.items():
    config.auto_max[key] = most
  config.val_size = _size("val_size", arg.val_size)
  config.batch_size = _size("batch_size", arg.batch_size)
  config.eval_batch_size = _size("eval_batch_size", arg.eval_batch_size)
  config.warmup_steps = _size("warmup", arg.warmup)
  # "auto": the recipe's epochs, within auto_max.total_steps.
  config.total_steps = -1 if arg.steps == "auto" else _size("steps", arg.steps)
  if arg.epochs > 0:
    config.epochs = arg.epochs
  if arg.lr > 0:
    config.lr = arg.lr
  return config
