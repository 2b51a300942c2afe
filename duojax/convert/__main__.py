"""Exports a trained duojax model as a PyTorch-layout safetensors file.

    python -m duojax.convert --workdir runs/large --out large.safetensors --layout timm

With `--names` it prints instead the table of timm / torchvision / Hugging
Face model names and duojax's (`duojax.convert.names`), as markdown; with
`--out FILE.md` it writes it there (docs/model_names.md is that page).

The file loads into the matching library (timm's and torchvision's ResNets and
timm's ViT with `load_state_dict`, Hugging Face models with `from_pretrained`
next to their config) and back into duojax with `--config.init_weights`.
"""

import os

from absl import flags

from duojax import cli, convert, files
from duojax.convert import names
from duojax.errors import ConfigError
from duojax.train import checkpoint

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoint.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Path of the .safetensors file to write.")
_LAYOUT = flags.DEFINE_enum("layout", "timm", list(convert.LAYOUTS), "Tensor naming layout.")
_NAMES = flags.DEFINE_bool(
  "names", False, "Print the table of timm/torchvision/Hugging Face names (--out: a .md to write)."
)
flags.register_multi_flags_validator(
  ["workdir", "out", "names"],
  lambda v: v["names"] or (v["workdir"] is not None and v["out"] is not None),
  message="--workdir and --out are required (or --names, for the table of model names)",
)


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  if _NAMES.value:
    _names_table(_OUT.value)
    return
  if not _OUT.value.endswith(".safetensors"):
    raise ConfigError(f"--out={_OUT.value!r} must end in .safetensors")
  model, meta = checkpoint.load_model(_WORKDIR.value, _STEP.value)
  convert.export_pretrained(model, _OUT.value, _LAYOUT.value)
  print(
    f"wrote {meta['model_name']} (step {meta['step']}) in layout {_LAYOUT.value} "
    f"to {os.path.abspath(_OUT.value)}"
  )


def _names_table(out: str | None) -> None:
  """The model names table on stdout, or written to `out` (a .md file)."""
  if not out:
    print(names.markdown(), end="")
    return
  if not out.endswith(".md"):
    raise ConfigError(f"--out={out!r} must end in .md with --names")
  files.write_atomically(out, names.markdown())
  print(f"wrote the table of {len(names.all_rows())} model names to {os.path.abspath(out)}")


if __name__ == "__main__":
  cli.run(main)
