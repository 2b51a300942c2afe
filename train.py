"""Trains one classifier: `python train.py --config configs/x.py:arg --workdir DIR`.

Resumes automatically from the latest checkpoint in DIR. On several hosts, run
the same command on each (see README, "Scale out"); process 0 writes the logs.
"""

from absl import flags
from ml_collections import config_flags

from duojax import cli, distributed, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
_RESUME = flags.DEFINE_bool("resume", False, "Fail unless WORKDIR holds a checkpoint to resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  summary = trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                       require_resume=_RESUME.value)
  if not distributed.is_main_process():
    return
  print(f"{summary['model_name']}: test accuracy {summary['test_accuracy']:.4f} "
        f"(val {summary['val_accuracy']:.4f}), {summary['params']:,} params, "
        f"{summary['flops_per_image'] / 1e6:.1f} MFLOPs/image, "
        f"trained {summary['train_seconds']:.0f} s; checkpoint: {summary['checkpoint']}")


if __name__ == "__main__":
  cli.run(main)
