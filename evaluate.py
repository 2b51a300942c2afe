"""Evaluates trained models.

  python evaluate.py --config configs/demo_eval.py          # the duo and every baseline
  python evaluate.py --workdirs DIR[,DIR2...] --split test  # accuracy of single checkpoints

With --config: restores the checkpoints the config names, computes logits once
per split (val, test, the OOD set of config.ood, corrupted test sets), fits temperatures
and duo weights on val only, and writes results.json, results.md and plots to
config.output_dir.
"""

import json
import os

from absl import flags
from ml_collections import config_flags

from duojax import cli, files
from duojax.errors import ConfigError, FileError
from duojax.eval import outputs, pipeline, render, schema
from duojax.eval.accuracy import accuracy_of_workdirs
from duojax.parallel import distributed

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  None,
  "Evaluation config: configs/eval_real.py (your training workdirs), eval_pretrained.py "
  "(pretrained safetensors files), eval_logits.py (logits files), demo_eval.py (the demo).",
)
_WORKDIRS = flags.DEFINE_list("workdirs", None, "Training workdirs: report their accuracy.")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "val", "test"], "Split for --workdirs.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "tfds data_dir (default: the training one).")
_BATCH = flags.DEFINE_integer("batch_size", 500, "Global evaluation batch size (--workdirs).")
_OUTPUT = flags.DEFINE_string("output", None, "JSON file for the --workdirs results.")
# The multi-process flags live in duojax/cli.py; shown in --help, not only --helpfull.
flags.adopt_module_key_flags(cli)


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  if (_CONFIG.value is None) == (_WORKDIRS.value is None):
    raise ConfigError("give exactly one of --config (full evaluation) or --workdirs (accuracy)")
  if _CONFIG.value is not None:
    config = schema.complete_eval_config(_CONFIG.value)
    schema.validate_eval(config)
    # Checked before the evaluation, which can take hours, rather than after it.
    cli.check_output_dir(config.output_dir, "config.output_dir")
    sections = pipeline.active_sections(config)
    # The fitted duo as a bundle beside the results (`config.bundle`), by the main process.
    bundle_dir = os.path.join(config.output_dir, "bundle")
    results = pipeline.run(config, bundle_dir=bundle_dir if distributed.is_main_process() else None)
    if not distributed.is_main_process():  # every process computed the same results
      return
    paths = outputs.write(results, config.output_dir, sections)
    print(render.markdown(results, sections))
    print(f"results: {paths['json']}, {paths['markdown']} and plots in {config.output_dir}")
    return
  if _BATCH.value <= 0:
    raise ConfigError(f"--batch_size must be > 0, got {_BATCH.value}")
  if _OUTPUT.value:
    # Checked before evaluating, not when the results are written.
    output = os.path.abspath(os.path.expanduser(_OUTPUT.value))
    if os.path.isdir(output):
      raise FileError(f"--output {_OUTPUT.value!r} is a directory; give a JSON file path")
    cli.check_output_dir(os.path.dirname(output), "--output's folder")
    if not os.path.isdir(os.path.dirname(output)):
      raise FileError(
        f"--output {_OUTPUT.value!r}: folder {os.path.dirname(output)!r} does not exist"
      )
  results = accuracy_of_workdirs(_WORKDIRS.value, _SPLIT.value, _DATA_DIR.value, _BATCH.value)
  if _OUTPUT.value and distributed.is_main_process():
    files.write_atomically(_OUTPUT.value, json.dumps(results, indent=2))


if __name__ == "__main__":
  cli.run(main)
