"""Gatekeeper (arXiv 2502.19335): confidence-tune the demo's trained sidekick.

  python train.py --config configs/gatekeeper.py:alpha=0.3,runs=runs/demo \
      --workdir runs/demo/gatekeeper_0.3

Starts from `{runs}/sidekick` and fine-tunes it with
  α · CE on the rows it gets right + (1 − α) · KL(p ‖ uniform) on the others,
so that its confidence separates its right answers from its wrong ones and a
cascade defers the right inputs to the large model. Small α pushes harder
towards uncertainty on errors (more deferral, better gating); α → 1 is plain
fine-tuning. `make demo` sweeps α over its GATEKEEPER_ALPHAS (0.1, 0.3,
0.5, 0.7, 0.9) and evaluates every fine-tune.
"""

from duojax import config_lib


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, alpha=0.5, runs="runs/demo", epochs=1.0, lr=5e-4)
  config = config_lib.base_config()
  config.dataset = "fashion_mnist"
  # The sidekick's architecture (configs/demo_sidekick.py): init_from checks it.
  config.model_name = "cnn_xs"
  config.init_from = f"{arg.runs}/sidekick"
  config.loss = "gatekeeper"
  config.gatekeeper_alpha = arg.alpha
  config.epochs = arg.epochs
  config.batch_size = 128
  config.lr = arg.lr  # a fine-tune: a fraction of the sidekick's 2e-3
  config.warmup_steps = 20
  config.augment = ""
  return config
