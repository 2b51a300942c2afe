"""Evaluates members given as logits files: no training workdir, no images.

  python evaluate.py --config configs/eval_logits.py \\
      --config.large=logits:vit_b16.npz --config.sidekick=logits:resnet18.npz

Each file is an .npz with val_logits, val_labels, test_logits, test_labels and
optionally ood_logits, flops_per_image and val_ids / test_ids (README, "Members
from anywhere: logits files", with a PyTorch function that writes one).
Members may mix with training workdirs. Sections that need images or models
(shifts, MC dropout, soups, Hydra) are left out, and the report says so; the
OOD metrics use the files' ood_logits when every member has them.
"""


def get_config(arg=None):
  from duojax import config_lib
  from duojax.eval import schema

  arg = config_lib.parse_arg(arg, large="", sidekick="", output="results_logits")
  c = schema.base_eval_config()
  c.large = arg.large
  c.sidekick = arg.sidekick
  c.sections = "methods,paired,sidekicks,conformal"
  c.mc_dropout_samples = 0
  c.shifts = ""
  c.ood = ""
  c.output_dir = arg.output
  return c
