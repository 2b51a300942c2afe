"""Evaluates a duo of models fine-tuned on real image data (configs/imagenet_duo.py).

  python evaluate.py --config configs/eval_real.py:large=runs/vit_b16,sidekick=runs/resnet18
  python evaluate.py --config configs/eval_real.py:large=runs/vit_b16,sidekick=runs/resnet18,\\
ood=folder:~/ood_images,ensemble=runs/vit_b16_seed1

The data set and its val and test splits are the large model's (from its
checkpoint: the splits, feature keys and crop it was trained with); images are
read at the largest member's size and each member resizes and normalises them
its own way inside the fused forward. `ood`: "tfds:NAME[:SPLIT]" (a tfds set
prepared in the data_dir as array_record, e.g. an ImageNet-O or iNaturalist
subset), "folder:PATH" (every image file below PATH), "mnist" or "" (none).
The shifts are the demo's four corruptions at five severities, scaled to the
images' resolution, on a seeded subset of `shift_images` test images;
`shifts=imagenet_c` runs the 15 ImageNet-C corruptions instead (c_gaussian_noise,
..., c_jpeg_compression, their 224-pixel definitions scaled to the images), and a
space-separated list combines names (`shifts=imagenet_c blur`). The
sections are the demo's: every method, the paired bootstrap against the
temperature-scaled large model, the cascades, the choice of sidekick, the
conformal prediction sets and abstention with a guaranteed risk. Results (results.json, results.md and the plots) go
to `output`, by default the large model's workdir with `_duo_results` added
(runs/vit_b16 -> runs/vit_b16_duo_results).
"""


def get_config(arg=None):
  from duojax import config_lib
  from duojax.eval import schema

  arg = config_lib.parse_arg(
    arg,
    large="",
    sidekick="",
    ensemble="",
    ood="",
    shifts="gaussian_noise,blur,rotation,contrast",
    shift_images=1000,
    mc_dropout=8,
    data_dir="",
    output="",
    batch_size=256,
  )
  c = schema.base_eval_config()
  c.large = arg.large
  c.sidekick = arg.sidekick
  c.ensemble = arg.ensemble.replace(" ", ",")
  c.sections = "methods,paired,shift_paired,cascade,sidekicks,conformal,abstention,shift_alarm"
  c.cascade = bool(arg.sidekick)
  c.mc_dropout_samples = arg.mc_dropout
  c.ood = arg.ood
  c.shifts = arg.shifts.replace(" ", ",")
  c.shift_max_images = arg.shift_images
  c.data_dir = arg.data_dir
  c.batch_size = arg.batch_size
  c.output_dir = arg.output or (f"{arg.large.rstrip('/')}_duo_results" if arg.large else "results")
  return c
