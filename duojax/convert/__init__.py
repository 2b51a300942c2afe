"""PyTorch-layout checkpoints (timm, torchvision, Hugging Face) in and out of duojax."""

from duojax.convert.pretrained import (HEAD_MODES, WeightsMismatchError, export_pretrained,
                                       flat_state, load_pretrained, resample_posemb)
from duojax.convert.safetensors_io import WeightsFileError
from duojax.convert.layouts import LAYOUTS

__all__ = ["HEAD_MODES", "LAYOUTS", "WeightsFileError", "WeightsMismatchError",
           "export_pretrained", "flat_state", "load_pretrained", "resample_posemb"]
