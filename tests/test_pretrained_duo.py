"""Pretrained members on real data, end to end through the CLIs.

A generated ImageNet-like folder is imported; a tiny ViT of the real timm code
and a tiny CIFAR-style ResNet in torchvision's layout (the in-repo twin,
bench/torch_models.py: torchvision has no CIFAR stem) are written with PyTorch; both are fine-tuned from
those files by train.py with the real-data recipe (configs/imagenet_duo.py,
overriding only sizes, steps and batch) at different input sizes, each with its
pretrained file's normalisation; evaluate.py then scores the duo
(configs/eval_real.py) with OOD images from a second generated folder.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, imported_image_folder, make_image_folder, run_script, timm_vit_mu4

from duojax.data import preprocess

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
sys.path.insert(0, str(Path(ROOT) / "bench"))
import torch_models  # noqa: E402

pytestmark = pytest.mark.slow  # train.py and evaluate.py subprocesses


def _save(model, path):
  safetensors_torch.save_file(
    {k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"format": "pt"}
  )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("pretrained")
  imported_image_folder(root, "tiny_folder", per_class=12, bad=True)
  make_image_folder(root / "ood", classes=("x",), per_class=8, seed=2, bad=False)
  torch.manual_seed(0)
  # "Pretrained" on 1000 classes at 16 px (timm layout) and on 1000 classes
  # (torchvision layout): the fine-tunes take fresh 3-class heads.
  vit = timm_vit_mu4()
  _save(vit, root / "vit.safetensors")
  _save(torch_models.resnet("resnet8", 1000), root / "resnet.safetensors")
  return root


def _train(setup, name, model, size, weights):
  workdir = setup / name
  config = (
    f"configs/imagenet_duo.py:model={model},weights={setup / weights},"
    f"dataset=tiny_folder,test_split=test,size={size},steps=8,batch_size=8,probe=2,"
    f"dtype=float32"
  )
  result = run_script(
    "train.py",
    "--config",
    config,
    f"--workdir={workdir}",
    f"--config.data_dir={setup / 'tfds'}",
    "--config.val_size=6",
    "--config.eval_batch_size=8",
    "--config.log_every=4",
    "--config.checkpoint_every=8",
    "--config.warmup_steps=2",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def members(setup):
  return (
    _train(setup, "vit", "vit_mu4", 32, "vit.safetensors"),
    _train(setup, "resnet", "resnet8", 24, "resnet.safetensors"),
  )


def test_each_member_keeps_its_pretrained_files_size_and_normalisation(members):
  from duojax.train import checkpoint

  (vit_meta, resnet_meta) = (checkpoint.read_meta(str(w))[1] for w in members)
  assert vit_meta["input"]["image_size"] == 32 and vit_meta["image_shape"] == [32, 32, 3]
  assert tuple(vit_meta["input"]["mean"]) == preprocess.HALF
  assert "timm" in vit_meta["input"]["source"]
  assert resnet_meta["input"]["image_size"] == 24
  assert tuple(resnet_meta["input"]["mean"]) == preprocess.IMAGENET_MEAN
  assert "torchvision" in resnet_meta["input"]["source"]
  summary = json.loads((members[0] / "summary.json").read_text())
  assert summary["steps"] == 8 and 0 <= summary["test_accuracy"] <= 1


def test_the_duo_of_both_is_evaluated_with_ood_from_an_image_folder(setup, members, tmp_path):
  out = tmp_path / "results"
  config = (
    f"configs/eval_real.py:large={members[0]},sidekick={members[1]},"
    f"ood=folder:{setup / 'ood'},shift_images=6,mc_dropout=2,batch_size=8,"
    f"output={out}"
  )
  result = run_script("evaluate.py", "--config", config, "--config.bootstrap=20")
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  assert results["splits"]["test"] == 12 and results["splits"]["ood"] == 8
  assert results["splits"]["val"] == 6
  assert any(k.startswith("blur/") for k in results["splits"])
  methods = results["methods"]
  for name in ("large+TS", "sidekick+TS", "duo (weighted)", "MC dropout K=2"):
    assert name in methods, name
  duo = methods["duo (weighted)"]
  assert np.all(np.isfinite(duo["fitted"]["weights"])) and len(duo["fitted"]["weights"]) == 2
  assert 0 <= duo["test"]["acc"] <= 1 and "msp" in duo["ood"] and duo["shift_mean"]
  assert "cascade" in results and "paired_vs_reference" in results
  assert (out / "results.md").exists()
