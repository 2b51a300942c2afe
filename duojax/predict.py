"""`python -m duojax.predict --bundle B --input SRC --output OUT`: a fitted duo on new images.

SRC is an image folder (searched recursively), a text file of image paths,
or `tfds:NAME[:SPLIT]` (a tfds array_record set in --data_dir, e.g. one
`duojax.import_folder` wrote). OUT is a `.jsonl` or `.csv` file with one row
per image: id, class, class_index, probability, top_k, uncertainty, abstain,
disagree (`duojax.bundle.prediction_rows`). Images that do not decode get no
row: they are listed on stderr and in OUT.skipped. A stopped run, rerun with
the same command, continues where it stopped (OUT.progress records where).

Shift check: the bundle's shift alarm (calibrated on the validation rows the
duo was fit on) tests every chunk of rows written (1,024 images by default):
a chunk unlike that data gets a `warning:` line on stderr, and every chunk's
verdict and p-value a line in OUT.shift.jsonl. In distribution about α (5%) of
chunks alarm by chance; under a shift that makes the duo worse than its large
model, nearly all do (docs/evaluation.md). --noshift_check turns it off.

Abstention: at the bundle's threshold, or at the one that guarantees
selective risk at most --target_risk with probability 1 − --delta on the
bundle's validation rows (`duojax.guaranteed_threshold`).

Bad arguments are one `error:` line and exit 1 (2 for a bad command line),
before anything is written.
"""

import sys

from absl import flags

from duojax import cli
from duojax.bundle import load_bundle
from duojax.bundle import prediction as prediction_lib
from duojax.bundle.prediction_input import open_input
from duojax.core import selective
from duojax.errors import ConfigError

_BUNDLE = flags.DEFINE_string("bundle", None, "Bundle folder (evaluate.py's OUTPUT_DIR/bundle).")
_INPUT = flags.DEFINE_string(
  "input", None, "Image folder, text file of image paths, or tfds:NAME[:SPLIT]."
)
_OUTPUT = flags.DEFINE_string("output", None, "Rows file to write: OUT.jsonl or OUT.csv.")
_DATA_DIR = flags.DEFINE_string("data_dir", "data", "tfds data_dir of a tfds:NAME input.")
_TARGET_RISK = flags.DEFINE_float(
  "target_risk",
  None,
  "Abstain so that the error rate among answered images is at most this, with probability "
  "1 - delta (default: the bundle's threshold).",
)
_DELTA = flags.DEFINE_float("delta", 0.05, "Failure probability of the --target_risk guarantee.")
_TOP_K = flags.DEFINE_integer("top_k", prediction_lib.DEFAULT_TOP_K, "Classes in each row's top_k.")
_BATCH = flags.DEFINE_integer(
  "batch_size", prediction_lib.DEFAULT_BATCH, "Images per step, over this process's devices."
)
_WORKERS = flags.DEFINE_integer(
  "workers", -1, "Decoding processes (-1: one per 500 images, up to the cores; 0: in this process)."
)
_SHIFT_CHECK = flags.DEFINE_bool(
  "shift_check",
  True,
  "Test every chunk of rows with the bundle's shift alarm (OUT.shift.jsonl; a warning line "
  "for a chunk unlike the duo's validation data).",
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite", False, "Replace OUT (a finished run or another command's stopped one)."
)
flags.mark_flags_as_required(["bundle", "input", "output"])
flags.adopt_module_key_flags(cli)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  bundle = load_bundle(_BUNDLE.value)
  threshold = None
  if _TARGET_RISK.value is not None:
    confidence, correct = bundle.validation
    found = selective.guaranteed_threshold(confidence, correct, _TARGET_RISK.value, _DELTA.value)
    threshold = found.threshold
    print(
      f"threshold {threshold:.4f}: selective risk <= {_TARGET_RISK.value:g} with probability "
      f">= {1 - _DELTA.value:g} ({found.coverage:.1%} of the bundle's validation rows answered)",
      file=sys.stderr,
    )
  source = open_input(_INPUT.value, data_dir=_DATA_DIR.value)
  summary = prediction_lib.predict_to_file(
    bundle,
    source,
    _OUTPUT.value,
    threshold=threshold,
    top_k=_TOP_K.value,
    batch_size=_BATCH.value,
    workers=_WORKERS.value,
    overwrite=_OVERWRITE.value,
    shift_check=_SHIFT_CHECK.value,
  )
  print(summary.line(), flush=True)


if __name__ == "__main__":
  cli.run(main)
