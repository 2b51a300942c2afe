"""The real torchvision and timm model code, as references for the weight layouts.

    from reference_libs import timm, torchvision_models

    tv = torchvision_models()  # the package torchvision.models, submodules on attribute access
    model = tv.convnext.convnext_tiny(num_classes=10)  # tv.resnet, tv.efficientnet, tv.regnet, ...
    model = timm().create_model("convnext_tiny", pretrained=False, num_classes=10)

Both accessors cost nothing after the first call and download nothing: the pinned
wheels (timm 1.0.31, torchvision 0.29.1) are fetched and unpacked into
`.venv/reference-libs/` by `make install-dev` (the `$(DEV_STAMP)` rule), beside the
environment rather than installed into it. Installed, torchvision would be imported by
transformers, and no PyPI torchvision loads beside this PyTorch build: registering its
compiled operators fails in `torchvision/__init__.py`. The model code itself needs none
of those operators, so the package `__init__`s are replaced by stub modules whose
`__path__` points at the unpacked folders: every submodule (`torchvision.models.convnext`,
`torchvision.ops.misc`, all of timm) then loads from the real files. The stubs supply
what the model code takes from the packages' `__init__`s: the `InterpolationMode` enum,
a placeholder `ImageClassification` preset (only the pretrained-weights metadata names
it), the building blocks of `torchvision.ops.misc` and `torchvision.ops.stochastic_depth`
on `torchvision.ops`, and a placeholder class for any other transform or dataset name
(timm's data modules import some at load time and use them only when asked to).
transformers, imported before or after, is first made to settle that torchvision is
not installed, as it is not.

A missing folder fails with the command that makes it; nothing here skips a test.
"""

from __future__ import annotations

import enum
import importlib
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / ".venv" / "reference-libs"
VERSIONS = {"timm": "1.0.31", "torchvision": "0.29.1"}


class InterpolationMode(enum.Enum):
  """torchvision.transforms.InterpolationMode, with the same values."""

  NEAREST = "nearest"
  NEAREST_EXACT = "nearest-exact"
  BILINEAR = "bilinear"
  BICUBIC = "bicubic"
  BOX = "box"
  HAMMING = "hamming"
  LANCZOS = "lanczos"


class _Placeholder:
  """Stands for a transform or dataset class the model code names but never calls."""

  def __init__(self, *args, **kwargs):
    raise RuntimeError("torchvision transforms and datasets are not available to the tests")


def _placeholders(module_name: str):
  """A module `__getattr__` that answers any public name with a placeholder class."""

  def __getattr__(name: str):
    if name.startswith("__"):
      raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
    return type(name, (_Placeholder,), {"__module__": module_name})

  return __getattr__


def _module(name: str, path: Path | None = None) -> types.ModuleType:
  """A stub module in sys.modules; with `path`, a package whose submodules load from it."""
  module = types.ModuleType(name)
  if path is not None:
    module.__path__ = [str(path)]
  sys.modules[name] = module
  parent, _, child = name.rpartition(".")
  if parent:
    setattr(sys.modules[parent], child, module)
  return module


def _submodules(package: types.ModuleType):
  """A package `__getattr__` that imports `package.<name>` on first access."""

  def __getattr__(name: str):
    if name.startswith("__"):
      raise AttributeError(f"module {package.__name__!r} has no attribute {name!r}")
    try:
      return importlib.import_module(f"{package.__name__}.{name}")
    except ModuleNotFoundError:
      raise AttributeError(f"module {package.__name__!r} has no attribute {name!r}") from None

  return __getattr__


def _check_folder() -> None:
  wanted = [ROOT / "timm" / "__init__.py", ROOT / "torchvision" / "models" / "resnet.py"]
  if not all(p.is_file() for p in wanted):
    raise RuntimeError(
      f"the reference timm/torchvision code is not unpacked in {ROOT}; run "
      "`rm -f .venv/.installed-core-test-torch && make install-dev`"
    )


def _settle_transformers() -> None:
  """Has transformers decide, once and before the stubs exist, that torchvision is absent.

  It asks `importlib.util.find_spec("torchvision")` (an error for a stub without a
  spec; a spec would make it import torchvision's transforms) and caches the answer.
  """
  try:
    from transformers.utils import import_utils
  except ImportError:
    return
  import_utils.is_torchvision_available()


def _install() -> None:
  if "torchvision.models" in sys.modules:
    if getattr(sys.modules["torchvision"], "__duojax_reference__", False):
      return
    raise RuntimeError("a torchvision other than the reference one is already imported")
  _check_folder()
  _settle_transformers()
  if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
  tv_dir = ROOT / "torchvision"
  tv = _module("torchvision", tv_dir)
  tv.__version__ = VERSIONS["torchvision"]
  tv.__duojax_reference__ = True

  transforms = _module("torchvision.transforms", tv_dir / "transforms")
  functional = _module("torchvision.transforms.functional")
  presets = _module("torchvision.transforms._presets")
  for module in (transforms, functional, presets):
    module.InterpolationMode = InterpolationMode
    module.__getattr__ = _placeholders(module.__name__)
  presets.ImageClassification = type("ImageClassification", (_Placeholder,), {})
  transforms.functional = functional
  datasets = _module("torchvision.datasets")
  datasets.__getattr__ = _placeholders(datasets.__name__)

  ops = _module("torchvision.ops", tv_dir / "ops")
  for name in ("misc", "stochastic_depth"):
    source = importlib.import_module(f"torchvision.ops.{name}")
    for attr in getattr(source, "__all__", [n for n in vars(source) if not n.startswith("_")]):
      setattr(ops, attr, getattr(source, attr))
  models = _module("torchvision.models", tv_dir / "models")
  models.__getattr__ = _submodules(models)


def torchvision_models() -> types.ModuleType:
  """The real `torchvision.models` package; `.resnet`, `.convnext`, ... import on access."""
  _install()
  return sys.modules["torchvision.models"]


def timm() -> types.ModuleType:
  """The real `timm` package (1.0.31): `timm().create_model(name, pretrained=False, ...)`."""
  _install()
  module = importlib.import_module("timm")
  assert module.__version__ == VERSIONS["timm"], module.__version__
  return module
