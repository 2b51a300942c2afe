"""`python -m duojax.bundle --config EVAL_CONFIG --output DIR`: a duo bundle from any members.

Takes the members an evaluation config names (its `large` and first
`sidekick`: training workdirs or `pretrained:` safetensors files, as
`evaluate.py` accepts them) and the data set they read, computes their logits
on val once, fits the duo's weights there and writes the bundle folder DIR
(`duojax.bundle`), the same one `evaluate.py` writes beside its report, but
without scoring anything else. For example:

  python -m duojax.bundle --config configs/eval_real.py:large=runs/vit,sidekick=runs/r18 \\
      --output runs/duo_bundle

Logits-file members have no weights to bundle: a one-line error, before any work.
"""

import os

from absl import flags
from ml_collections import config_flags

from duojax import cli
from duojax.bundle import format as bundle_format
from duojax.errors import ConfigError, FileError
from duojax.eval import member_specs, pipeline, schema
from duojax.eval.members import PRETRAINED, WORKDIR
from duojax.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Evaluation config naming the members: configs/eval_real.py (training workdirs) or "
  "configs/eval_pretrained.py (pretrained safetensors files), with their overrides.",
)
_OUTPUT = flags.DEFINE_string("output", None, "Bundle folder to write (replaced if a bundle).")
flags.mark_flags_as_required(["config", "output"])
flags.adopt_module_key_flags(cli)

# Everything the report scores beyond the fitted duo: off, so only val and test are read.
_REPORT_ONLY = dict(
  sections="",
  ood="",
  shifts="",
  mc_dropout_samples=0,
  mahalanobis_train_rows=0,
  soup_ingredients="",
  ensemble="",
  bundle=True,
)


def bundle_config(config):
  """The evaluation `config` reduced to what fitting and writing the bundle needs."""
  config = schema.complete_eval_config(config)
  config.update(_REPORT_ONLY)
  schema.validate_eval(config)
  if not config.sidekick:
    raise ConfigError("a bundle holds a duo: set config.sidekick (and config.large)")
  specs = member_specs.parse_config(config)
  for key in ("large", "sidekick"):
    spec = specs[key][0]
    if spec.kind not in (WORKDIR, PRETRAINED):
      raise ConfigError(
        f"config.{key} {spec.text!r} is a logits file: a bundle needs models with weights "
        "(a training workdir or a pretrained: file)"
      )
  return config


def check_output(path: str) -> str:
  """`path` made absolute; a FileError if it cannot become a bundle folder."""
  path = os.path.abspath(os.path.expanduser(path))
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise FileError(f"--output {path}: folder {parent} does not exist")
  if not os.access(parent, os.W_OK):
    raise FileError(f"--output {path}: folder {parent} is not writable")
  if os.path.exists(path) and not os.path.isfile(os.path.join(path, bundle_format.MANIFEST)):
    raise FileError(f"--output {path} exists and is not a bundle: choose another folder")
  return path


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  output = check_output(_OUTPUT.value)
  config = bundle_config(_CONFIG.value)
  # Every process computes the logits of its rows; the main one writes the folder.
  pipeline.run(config, bundle_dir=output if distributed.is_main_process() else None)


if __name__ == "__main__":
  cli.run(main)
