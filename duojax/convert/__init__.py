"""PyTorch-layout checkpoints (timm, torchvision, Hugging Face) in and out of duojax."""

from duojax.convert.layouts import LAYOUTS
from duojax.convert.pretrained import (
  HEAD_MODES,
  export_pretrained,
  flat_state,
  load_pretrained,
  resample_posemb,
)
from duojax.errors import WeightsFileError, WeightsMismatchError

__all__ = [
  "HEAD_MODES",
  "LAYOUTS",
  "WeightsFileError",
  "WeightsMismatchError",
  "export_pretrained",
  "flat_state",
  "load_pretrained",
  "resample_posemb",
]
