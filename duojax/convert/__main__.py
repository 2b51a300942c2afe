"""Exports a trained duojax model as a PyTorch-layout safetensors file.

    python -m duojax.convert --workdir runs/large --out large.safetensors --layout timm

The file loads into the matching library (timm's and torchvision's ResNets and
timm's ViT with `load_state_dict`, Hugging Face models with `from_pretrained`
next to their config) and back into duojax with `--config.init_weights`.
"""

import os

from absl import flags

from duojax import cli, convert
from duojax.errors import ConfigError
from duojax.train import checkpoint

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding the checkpoint.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUT = flags.DEFINE_string("out", None, "Path of the .safetensors file to write.")
_LAYOUT = flags.DEFINE_enum("layout", "timm", list(convert.LAYOUTS), "Tensor naming layout.")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _OUT.value.endswith(".safetensors"):
    raise ConfigError(f"--out={_OUT.value!r} must end in .safetensors")
  model, meta = checkpoint.load_model(_WORKDIR.value, _STEP.value)
  convert.export_pretrained(model, _OUT.value, _LAYOUT.value)
  print(
    f"wrote {meta['model_name']} (step {meta['step']}) in layout {_LAYOUT.value} "
    f"to {os.path.abspath(_OUT.value)}"
  )


if __name__ == "__main__":
  cli.run(main)
