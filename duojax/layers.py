"""The package's layers, from the bottom up: the one table of them.

A module imports only from its own package and from the layers below it, never
from one beside or above it, and the import graph has no cycles.
tests/test_layers.py checks the import graph against `ROWS`, and the table in
README's "Code map" is `markdown()`, which a test compares with the README.
After editing `ROWS`, print the table to paste into the README with

    .venv/bin/python -m duojax.layers

A row names top-level modules (`errors.py`) and packages (`core/`) of duojax,
so a new module inside a package needs no row; `*/__main__.py` stands for every
package's `python -m` entry point. This module imports nothing of duojax and
sits in the lowest layer.
"""

from __future__ import annotations

from typing import NamedTuple


class Row(NamedTuple):
  layer: int
  names: tuple[str, ...]  # under duojax/: "module.py", "package/", "*/__main__.py"
  what: str  # what they hold, one line of markdown


ROWS = (
  Row(
    0,
    ("errors.py", "layers.py"),
    "every error a user can cause (`ConfigError`, `InputError`, `FileError`, `DataError`, "
    "`CheckpointError`, …; anything else is a bug), this table",
  ),
  Row(
    1,
    ("files.py", "timing.py"),
    "the atomic file writer (a failed write is a `FileError`), the per-phase wall clock of runs "
    "and evaluations",
  ),
  Row(
    1,
    ("config_lib.py",),
    "the training config schema: `base_config()` + `validate()`, and the `file.py:key=value` "
    "parser",
  ),
  Row(
    1,
    ("parallel/",),
    '`sharding` (the `("data", "fsdp")` mesh, batch/replicated/FSDP shardings), `distributed` '
    "(joining multi-process jobs), `accelerator` (the start-up warning when JAX runs on the CPU "
    "of a machine with a GPU or TPU, and the install that fixes it)",
  ),
  Row(
    2,
    ("core/",),
    "pure maths on arrays: `duo` (combination, modes, the fused forward), `temperature` (the "
    "joint fit; its input checks in `temperature_inputs`), `solvers` (L-BFGS), `metrics` (with "
    "`ranking`: ranks with ties), `losses` (cross-entropy, Gatekeeper), `soups`, `conformal` "
    "(split conformal prediction sets: LAC, APS, RAPS), `mahalanobis` (the feature OOD score: "
    "class means, tied covariance), `mixing` (Mixup and CutMix of a batch with itself flipped), "
    "`selective` (a confidence threshold with a guaranteed selective risk: SGR), the per-input "
    "duos (`per_input_duo`: `dynamic_duo`, `entropy_duo`, `guarded_duo`, on `per_input`), "
    "`shift_alarm` (a batch's disagreement and confidence gap against validation's)",
  ),
  Row(
    2,
    ("models/",),
    "the NNX models by family (`get_model`, `list_models`): ResNets with ResNeXt and Wide "
    "ResNet, ViTs (`vit` with `vit_blocks`, `vit_heads`, `vit_posemb`; the CLIP, DINOv2, DeiT "
    "and SigLIP towers in `vit_variants`), Swin-V2 (`swin`, `swin_blocks`), ConvNeXt, "
    "EfficientNet and V2, RegNet, MobileNetV2/V3 and MNASNet, ShuffleNetV2, small CNNs; "
    "`attention` (scaled dot-product attention in each platform's fastest form), `depthwise` "
    "(depthwise convolutions as shifted multiply-adds on the CPU), "
    "`functional` (modules ↔ pure pytrees, "
    "parameter and FLOP counts), `flops` (2 × multiply-adds from the traced program, the same "
    "on every backend), `spec` (what a checkpoint rebuilds a model from)",
  ),
  Row(
    2,
    ("data/",),
    "`sources` (tfds array_record sets and splits, encoded images read as bytes), `images` (decode,"
    " random-resized and centre crops of one image), `randaugment` (RandAugment of one image), "
    "`batches` (one batch from its index: order, draws, crops), `pipeline` (grain: batches in "
    "worker processes, uint8, on the devices; normalisation on the device), `folder` (an image "
    "folder imported; `folder_scan`: its scan and decode checks; `listing`: the image files below a folder), `ood_sources` (OOD sets from other tfds sets and image folders), `embedded` "
    "(Fashion-MNIST, MNIST), `shifts` (corruptions); `python -m duojax.data DIR` prepares the "
    "embedded set",
  ),
  Row(
    3,
    ("api.py",),
    "the Python API for a duo of models you already have: `fit_duo`, `load_duo`, `Duo`, "
    "`score`, `score_ood`, `fused_forward`, `fit_mahalanobis`, `mahalanobis_score`, "
    "`guaranteed_threshold` (also as "
    "`duojax.fit_duo`, …)",
  ),
  Row(
    3,
    ("conformal.py",),
    "`duojax.conformal`: the public names of `core/conformal` (`calibrate`, "
    "`ConformalPredictor`, `coverage`, `set_sizes`, …)",
  ),
  Row(
    3,
    ("convert/",),
    "PyTorch-layout safetensors in and out (timm, torchvision, Hugging Face): `entries` (how "
    "a tensor converts), `layouts` (ResNet, and detection) and one `layouts_*` per family "
    "(`layouts_vit`, `layouts_swin`, `layouts_convnext`, ...); "
    "`python -m duojax.convert`",
  ),
  Row(
    3,
    ("cascade/",),
    "`deferral` (gate quality s_d/s_o, cascade sweeps), `forward` (the bucketed batched cascade)",
  ),
  Row(
    3,
    ("hydra/",),
    "`heads` (Taylor head importance, selection, pruning), `merge` (the merged Hydra model)",
  ),
  Row(
    4,
    ("train/",),
    "`optim` (with `layer_decay`: layer-wise learning rates from the parameter paths), "
    "`steps` (jitted train/eval steps), `recipe` (their Mixup/CutMix, weight EMA and "
    "gradient accumulation), `loop` (`train_and_evaluate`: `model_init`, "
    "then the steps inside a `run_context` that owns the checkpoint manager, batches and "
    "progress bar; `preemption`), `checkpoint`, `hydra_member` (a run started from a pruned ViT)",
  ),
  Row(
    4,
    ("bundle/",),
    "a fitted duo as one folder that runs on new images: `format` (manifest, member "
    "safetensors, duo weights, validation confidences, the shift alarm; `write_bundle`), "
    "`exported` (the fused "
    "duo as `jax.export` programs, weights as arguments), `loaded` (`load_bundle`), `threshold` "
    "(the default abstention threshold), `serve` (the exported program with jax alone), "
    "`prediction_input` (folders, path lists and tfds splits read and cut for it), "
    "`prediction_rows` (rows written in chunks a rerun continues), `prediction` (the duo over "
    "many images on every local device, each chunk checked by the shift alarm)",
  ),
  Row(
    5,
    ("eval/",),
    "`schema` (the evaluation config: core keys plus each section's own), `member_specs` "
    "(members parsed once: workdir, `pretrained:` file via `pretrained_members`, `logits:` file "
    "via `logits_files`) → `members` (one `Member` of any kind), `data_spec` (the data set they "
    "read) → `bank` (every member's logits on every split, once) → `methods` (post-hoc methods "
    "as data), `feature_ood` (the large model's Mahalanobis score, fit on training rows) → "
    "`sections/` (`methods`, `paired`, `sidekicks`, `conformal`, `abstention`, `cascade`, "
    "`hydra`: each "
    "declares its keys, checks and members, `build(inputs, results) → dict` and "
    "`markdown(dict) → lines`) → `render`, `outputs`, `plots`; `pipeline.run(config)` ties them "
    "together",
  ),
  Row(
    6,
    ("eval_config_lib.py",),
    "the evaluation schema under its first name (`eval/schema`), for config files that import it",
  ),
  Row(
    6,
    ("cli.py",),
    "flags, one-line errors and exit codes; the repository's `train.py` and `evaluate.py` are "
    "thin absl mains on it",
  ),
  Row(
    6,
    ("demo/",),
    "`make demo` as a program: `plan` (the runs and what each needs), `runner` (independent "
    "runs side by side, each pinned to its cores), `timings` (the wall-time report), `pages` "
    "(the results into docs/demo_results.md and the README's headline); `python -m duojax.demo`",
  ),
  Row(
    7,
    ("import_folder.py",),
    "`python -m duojax.import_folder`: an image folder as a tfds array_record set; the work is "
    "in `data/folder_scan.py` (scan the class folders, decode-check every file in worker "
    "processes) and `data/folder.py` (write with a per-import tfds builder)",
  ),
  Row(
    7,
    ("predict.py",),
    "`python -m duojax.predict`: a bundle over a folder, a path list or a tfds split into "
    "`.jsonl`/`.csv` rows; the work is in `bundle/prediction*`",
  ),
  Row(
    7,
    ("*/__main__.py",),
    "the other `python -m duojax.PACKAGE` entry points (`data`, `convert`, `demo`, `bundle`): "
    "each may "
    "import from every layer below",
  ),
)


def key(name: str) -> str:
  """A row's name as the import graph's: "core/" → "core", "errors.py" → "errors",
  "*/__main__.py" → "__main__"."""
  return name.rstrip("/").removesuffix(".py").rpartition("/")[2]


def by_name() -> dict[str, int]:
  """{"errors": 0, "core": 2, …, "__main__": 7}: the layer of each top-level
  module and package, and of the entry points."""
  return {key(name): row.layer for row in ROWS for name in row.names}


def markdown() -> str:
  """README's "Code map" table."""
  lines = ["| layer | package | what it holds |", "|---|---|---|"]
  for row in ROWS:
    names = ", ".join(f"`{name}`" for name in row.names)
    lines.append(f"| {row.layer} | {names} | {row.what} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  print(markdown(), end="")
