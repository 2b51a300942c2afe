"""Trains one classifier: `python train.py --config configs/x.py:arg --workdir DIR`.

Resumes automatically from the latest checkpoint in DIR that restores (newer
unreadable ones are set aside with a warning). On several hosts, run the same
command on each (see README, "Scale out"); process 0 writes the logs.

On SIGTERM (or SLURM's SIGUSR1 warning) it finishes the current step, saves
it and exits with 128 + the signal's number (143 for SIGTERM); rerunning the
same command resumes exactly where it stopped.
"""

import sys

from absl import flags
from ml_collections import config_flags

from duojax import cli
from duojax.errors import ConfigError
from duojax.parallel import distributed
from duojax.train import loop

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Training config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_RESUME = flags.DEFINE_bool("resume", False, "Fail unless WORKDIR holds a checkpoint to resume.")
flags.mark_flags_as_required(["config", "workdir"])
# The multi-process flags live in duojax/cli.py; shown in --help, not only --helpfull.
flags.adopt_module_key_flags(cli)


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  # Before loading data and building the model: a typo'd path fails at once.
  cli.check_output_dir(_WORKDIR.value, "--workdir")
  try:
    summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, require_resume=_RESUME.value)
  except loop.Preempted as e:
    # Not "error:": nothing is wrong, the job just has to be run again.
    print(e, file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  if not distributed.is_main_process():
    return
  scores = f"val accuracy {summary['val_accuracy']:.4f}"
  if summary["test_accuracy"] is not None:
    scores = f"test accuracy {summary['test_accuracy']:.4f} ({scores})"
  print(
    f"{summary['model_name']}: {scores}, {summary['params']:,} params, "
    f"{summary['flops_per_image'] / 1e6:.1f} MFLOPs/image, "
    f"trained {summary['train_seconds']:.0f} s; checkpoint: {summary['checkpoint']}"
  )


if __name__ == "__main__":
  cli.run(main)
