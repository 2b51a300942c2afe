"""One member of a Hydra ensemble (arXiv 2510.18358), pruned from the demo's ViT.

  python train.py --config configs/hydra_member.py:member=0,runs=runs/demo \
      --workdir runs/demo/hydra_0

Starts from `{runs}/vit` (configs/demo_vit.py), scores every attention head
by its first-order Taylor importance on `images` training images drawn with
seed `member`, keeps the `keep` fraction of heads per layer that matter most,
and fine-tunes the pruned network for `steps` steps at `lr`. Members differ
only by their sample, so they drop different heads; evaluate.py merges them
into one grouped model (configs/demo_eval.py:hydra=M).
"""

from duojax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(
    arg, member=0, runs="runs/demo", keep=0.5, images=512, steps=300, lr=3e-4
  )
  config = config_lib.base_config()
  config.dataset = "fashion_mnist"
  config.model_name = "vit_mi7"  # the source's architecture (checked against it)
  config.prune_from = f"{arg.runs}/vit"
  config.prune_keep = arg.keep
  config.prune_images = arg.images
  config.prune_seed = arg.member
  # The brief fine-tune: its own data order per member as well.
  config.seed = 1000 + arg.member
  config.total_steps = arg.steps
  config.batch_size = 128
  config.lr = arg.lr
  config.weight_decay = 1e-4
  config.warmup_steps = 30
  config.checkpoint_every = arg.steps
  config.augment = ""
  return config
