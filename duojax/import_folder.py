"""`python -m duojax.import_folder SRC [--test_folder SRC_TEST] --dataset NAME [--data_dir DIR]`.

Imports an image folder (one subfolder per class) as the tfds array_record
data set NAME in DIR (`duojax.data.folder`). DIR defaults to the training
configs' own `data_dir` (`data`), so `configs/imagenet_duo.py:...,dataset=NAME`
finds it; another DIR is named to training as `data_dir=DIR` (or
`--config.data_dir=DIR`). Files that do not decode are left out with a
warning on stderr; bad input is one `error:` line and exit 1 (2 for a bad
command line), with nothing written. stdout is the one-line report.

This entry point does not use `cli.run`: an import joins no multi-process job.
"""

import os
import sys

from absl import app, flags

from duojax import cli, config_lib
from duojax.data import folder, folder_scan
from duojax.errors import ConfigError

_TEST_FOLDER = flags.DEFINE_string(
  "test_folder", None, "Image folder of the 'test' split: class subfolders among SRC's."
)
_DATASET = flags.DEFINE_string(
  "dataset", None, "Name of the tfds data set to write (lowercase snake_case)."
)
# The training configs' default, so that a recipe finds what was imported with no data_dir.
_DATA_DIR = flags.DEFINE_string(
  "data_dir", config_lib.base_config().data_dir, "tfds data_dir to write it into."
)
_WORKERS = flags.DEFINE_integer(
  "workers",
  None,
  "Processes that decode the images (1: none; default: one per "
  f"{folder_scan.FILES_PER_WORKER} files, up to the usable cores).",
)
flags.mark_flags_as_required(["dataset"])

_USAGE = "python -m duojax.import_folder SRC --dataset NAME [--data_dir DIR]"


def main(argv: list[str]) -> None:
  if len(argv) != 2:
    got = "got " + " ".join(argv[1:]) if len(argv) > 2 else "none given"
    raise ConfigError(f"give one image folder SRC ({got}): {_USAGE}")
  cli.check_output_dir(_DATA_DIR.value, "--data_dir")
  # tfds renames the whole version folder into place: if it is there, it is complete.
  prepared = os.path.join(os.path.expanduser(_DATA_DIR.value), _DATASET.value, folder.VERSION)
  existed = os.path.exists(prepared)
  try:
    report = folder.import_folder(
      argv[1],
      dataset=_DATASET.value,
      data_dir=_DATA_DIR.value,
      test_folder=_TEST_FOLDER.value,
      workers=_WORKERS.value,
    )
  except KeyboardInterrupt:
    # Not "error:": the input was fine.
    done = not existed and os.path.exists(prepared)
    print(
      f"interrupted after the import: {prepared} is complete"
      if done
      else "interrupted: no data set was written; run the command again to import",
      file=sys.stderr,
      flush=True,
    )
    sys.exit(130)
  print(report.summary(), flush=True)


def _main(argv: list[str]) -> None:
  cli.quiet_libraries()
  cli.report_errors(main, argv)


if __name__ == "__main__":
  app.run(_main, flags_parser=cli.parse_flags)
