"""Evaluates members given as pretrained safetensors files (timm, torchvision, Hugging Face).

  python evaluate.py --config configs/eval_pretrained.py \\
      --config.large=pretrained:vit_b16:vit_base_patch16_224.safetensors \\
      --config.sidekick=pretrained:resnet18:torchvision:resnet18.safetensors \\
      --config.dataset=imagenet2012 --config.test_split=validation \\
      --config.data_dir=~/tensorflow_datasets

A member is `pretrained:MODEL[@SIZE][:LAYOUT]:PATH`: a duojax model name, the
side its images take (default: a ViT's file's own, else 224), the layout
(timm, torchvision, hf; default: told from the tensor names) and the file. Each
is evaluated with its library's preprocessing (timm and Hugging Face ViTs
0.5 / 0.5, ResNets ImageNet's statistics, a Hugging Face
preprocessor_config.json beside the file wins), and its head must have the data
set's classes. With no training workdir among the members, the data keys
(`dataset`, `data_dir`, `train_split`, `val_split`, `test_split`, `val_size`,
`split_seed`, `image_key`, `label_key`, `crop_fraction`: the training config's)
name the data; a workdir member brings its own. Members may mix with training
workdirs and logits files. Soups need a large model trained here and are left
out, and the report says so.
"""


def get_config(arg=None):
  from duojax import config_lib
  from duojax.eval import schema

  arg = config_lib.parse_arg(
    arg,
    large="",
    sidekick="",
    dataset="",
    ood="",
    shifts="gaussian_noise,blur,rotation,contrast",
    shift_images=1000,
    mc_dropout=8,
    data_dir="",
    output="results_pretrained",
    batch_size=256,
  )
  c = schema.base_eval_config()
  c.large = arg.large
  c.sidekick = arg.sidekick
  c.dataset = arg.dataset
  c.data_dir = arg.data_dir
  c.sections = "methods,paired,shift_paired,cascade,sidekicks,conformal,abstention,shift_alarm"
  c.cascade = bool(arg.sidekick)
  c.mc_dropout_samples = arg.mc_dropout
  c.ood = arg.ood
  c.shifts = arg.shifts
  c.shift_max_images = arg.shift_images
  c.batch_size = arg.batch_size
  c.output_dir = arg.output
  return c
