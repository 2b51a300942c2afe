"""Members given as pretrained safetensors files (`pretrained:MODEL[@SIZE][:LAYOUT]:PATH`).

A generated image folder is imported as a 3-class data set; a tiny ViT (timm
layout, 16 px) and a tiny ResNet (torchvision layout) are written with
`export_pretrained`, as timm and torchvision would write them. They are
evaluated with no training workdir, beside one, and with every bad input.
"""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
  assert_one_line_error,
  imported_image_folder,
  make_image_folder,
  run_script,
  spread_head_model,
  tiny_train_config,
)

from duojax import config_lib, data, eval_config_lib
from duojax.convert import export_pretrained
from duojax.data import preprocess
from duojax.eval import member_specs, pipeline
from duojax.eval import pretrained_members as pm

CROP = config_lib.base_config().crop_fraction


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("pretrained_members")
  imported_image_folder(root, "tiny_folder", per_class=8)
  make_image_folder(root / "ood", classes=("x",), per_class=6, seed=2, bad=False)
  export_pretrained(
    spread_head_model("vit_mu4", 3, 1, image_size=16), str(root / "vit.safetensors"), "timm"
  )
  export_pretrained(spread_head_model("resnet8", 3, 2), str(root / "rn.safetensors"), "torchvision")
  export_pretrained(
    spread_head_model("vit_mu4", 5, 3, image_size=16), str(root / "vit5.safetensors"), "timm"
  )
  export_pretrained(
    spread_head_model("resnet8", 3, 4, in_channels=1), str(root / "gray.safetensors"), "torchvision"
  )
  (root / "notes.safetensors").write_text("not a weights file")
  return root


def _specs(root):
  return (
    f"pretrained:vit_mu4:{root / 'vit.safetensors'}",
    f"pretrained:resnet8@24:{root / 'rn.safetensors'}",
  )


def _config(root, large, sidekick, **overrides):
  config = eval_config_lib.base_eval_config()
  config.update(
    {
      "large": large,
      "sidekick": sidekick,
      "dataset": "tiny_folder",
      "test_split": "test",
      "val_size": 6,
      "data_dir": str(root / "tfds"),
      "sections": "methods",
      "bootstrap": 0,
      "conformal_alphas": "",
      "batch_size": 8,
      "output_dir": str(root / "out"),
      **overrides,
    }
  )
  return config


def test_the_spellings_of_a_pretrained_member():
  assert pm.parse("pretrained:vit_b16:w/vit.safetensors") == pm.PretrainedSpec(
    "vit_b16", "auto", "w/vit.safetensors"
  )
  assert pm.parse("pretrained:resnet18@160:torchvision:a:b.safetensors") == pm.PretrainedSpec(
    "resnet18", "torchvision", "a:b.safetensors", 160
  )
  assert pm.parse("pretrained:vit_b16:dir:x.safetensors").path == "dir:x.safetensors"
  assert member_specs.kind("pretrained:a:b") == "pretrained"
  assert member_specs.kind("logits:a.npz") == "logits" and member_specs.kind("runs/a") == "workdir"
  for bad in (
    "pretrained:vit_b16",
    "pretrained::x.safetensors",
    "pretrained:vit_b16@x:a",
    "pretrained:vit_b16@0:a",
  ):
    with pytest.raises(ValueError) as error:
      pm.parse(bad)
    assert "\n" not in str(error.value)


def test_the_header_gives_classes_channels_layout_and_a_vits_own_size(setup):
  vit, rn = (pm.parse(s) for s in _specs(setup))
  assert pm.inspect(vit, where="x") == ("timm", 3, {"image_size": 16, "in_channels": 3})
  assert pm.inspect(rn, where="x") == ("torchvision", 3, {"image_size": 24, "in_channels": 3})
  nominal = pm.parse(f"pretrained:resnet8:{setup / 'rn.safetensors'}")
  assert pm.inspect(nominal, where="x")[2]["image_size"] == 224  # the model's nominal size
  bigger = pm.parse(f"pretrained:vit_mu4@32:timm:{setup / 'vit.safetensors'}")
  assert pm.inspect(bigger, where="x")[2]["image_size"] == 32  # resampled position embeddings


@pytest.mark.parametrize("name", ["deit_ti16_distilled", "vit_b16_siglip"])
def test_a_files_own_size_counts_the_prefix_tokens_its_position_embeddings_cover(name, tmp_path):
  # DeiT embeds two prefix tokens, SigLIP none: a 48-px file is 3 × 3 patches either way.
  small = dict(width=32, num_heads=2, mlp_dim=64)  # the named depth: the file must hold it
  path = tmp_path / f"{name}.safetensors"
  export_pretrained(spread_head_model(name, 3, 0, image_size=48, **small), str(path), "timm")
  assert pm.inspect(pm.parse(f"pretrained:{name}:{path}"), where="x")[2]["image_size"] == 48


@pytest.mark.parametrize(
  "large, overrides, message",
  [
    (
      "pretrained:vit_mu4:{root}/missing.safetensors",
      {},
      "config.large: pretrained file '{root}/missing.safetensors' does not exist",
    ),
    ("pretrained:resnet9:{root}/vit.safetensors", {}, "config.large: unknown model 'resnet9'"),
    (
      "pretrained:resnet8:{root}/vit.safetensors",
      {},
      "does not hold a resnet8 in layout timm: it lacks",
    ),
    (
      "pretrained:vit_mu4:hf:{root}/vit.safetensors",
      {},
      "does not hold a vit_mu4 in layout hf: it lacks",
    ),
    ("pretrained:vit_mu4:{root}/notes.safetensors", {}, "is not a safetensors file"),
    ("pretrained:vit_mu4@15:{root}/vit.safetensors", {}, "patch size 4 does not divide"),
    (
      "pretrained:vit_mu4:{root}/vit5.safetensors",
      {},
      "has a 5-class head, the data set tiny_folder has 3 classes",
    ),
    (
      "pretrained:resnet8:{root}/gray.safetensors",
      {},
      "takes 1-channel images, the data set tiny_folder has 3-channel ones",
    ),
    ("pretrained:vit_mu4:{root}/vit.safetensors", {"dataset": ""}, "config.dataset is empty"),
    ("pretrained:vit_mu4:{root}/vit.safetensors", {"val_size": 0}, "config.val_size must be > 0"),
    (
      "pretrained:vit_mu4:{root}/vit.safetensors",
      {"soup_ingredients": "pretrained:a:{root}/x"},
      "config.soup_ingredients: 'pretrained:a:{root}/x': only large, sidekick, ensemble, "
      "sidekicks, sidekick_pool may be pretrained files",
    ),
  ],
)
def test_a_bad_pretrained_member_is_a_one_line_error(setup, large, overrides, message):
  overrides = {k: v.format(root=setup) if isinstance(v, str) else v for k, v in overrides.items()}
  config = _config(setup, large.format(root=setup), "", **overrides)
  with pytest.raises(ValueError) as error:
    pipeline.run(config)
  assert message.format(root=setup) in str(error.value)
  assert "\n" not in str(error.value)


def test_each_members_logits_are_its_model_alone_on_its_own_preprocessing(setup, monkeypatch):
  banks = []
  collect = pipeline.bank_lib.collect
  monkeypatch.setattr(
    pipeline.bank_lib, "collect", lambda *a, **k: banks.append(collect(*a, **k)) or banks[-1]
  )
  large, sidekick = _specs(setup)
  results = pipeline.run(_config(setup, large, sidekick, sections=""))
  # Images read once at the largest member's side (24), each model's taken to its own.
  dataset = data.load_dataset(
    "tiny_folder", setup / "tfds", val_size=6, test_split="test", image_size=24, crop_fraction=CROP
  )
  images, labels = data.read_examples(dataset.test, np.arange(len(dataset.test)))
  bank = banks[0]
  np.testing.assert_array_equal(bank.labels["test"], labels)
  for name, model, spec in (
    (
      "large",
      spread_head_model("vit_mu4", 3, 1, image_size=16),
      data.InputSpec(16, preprocess.HALF, preprocess.HALF),
    ),
    (
      "sidekick",
      spread_head_model("resnet8", 3, 2),
      data.InputSpec(24, preprocess.IMAGENET_MEAN, preprocess.IMAGENET_STD),
    ),
  ):
    alone = model(data.prepare(jnp.asarray(images), spec))[0]
    np.testing.assert_allclose(bank.member("test", name), alone, atol=1e-5, err_msg=name)
  assert results["members"]["large"]["pretrained"]["layout"] == "timm"
  assert results["members"]["sidekick"]["pretrained"]["input"]["mean"] == list(
    preprocess.IMAGENET_MEAN
  )
  assert results["members"]["large"]["step"] is None and results["skipped"] == {}


@pytest.mark.parametrize(
  "member, message",
  [
    ("pretrained:vit_mu4:{root}/missing.safetensors", "does not exist"),
    ("pretrained:vit_mu4:{root}/vit5.safetensors", "has a 5-class head"),
    ("pretrained:nomodel:{root}/vit.safetensors", "unknown model 'nomodel'"),
  ],
)
def test_evaluate_py_fails_in_one_line_and_writes_nothing(setup, tmp_path, member, message):
  out = tmp_path / "out"
  config = (
    f"configs/eval_pretrained.py:large={member.format(root=setup)},"
    f"dataset=tiny_folder,data_dir={setup / 'tfds'},output={out}"
  )
  result = run_script(
    "evaluate.py", "--config", config, "--config.test_split=test", "--config.val_size=6"
  )
  assert_one_line_error(result, 1, message)
  assert not out.exists()


@pytest.mark.slow
def test_evaluate_py_on_two_pretrained_files_and_no_workdir(setup, tmp_path):
  out = tmp_path / "out"
  large, sidekick = _specs(setup)
  config = (
    f"configs/eval_pretrained.py:large={large},sidekick={sidekick},"
    f"dataset=tiny_folder,data_dir={setup / 'tfds'},ood=folder:{setup / 'ood'},"
    f"shifts=blur,shift_images=6,mc_dropout=2,batch_size=8,output={out}"
  )
  result = run_script(
    "evaluate.py",
    "--config",
    config,
    "--config.test_split=test",
    "--config.val_size=6",
    "--config.bootstrap=10",
    f"--config.soup_ingredients={setup}",
    f"--config.sidekick_pool=pretrained:resnet8@16:{setup / 'rn.safetensors'}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  members = results["members"]
  assert members["large"]["pretrained"]["input"]["source"] == "timm vit default"
  assert members["sidekick"]["pretrained"]["layout"] == "torchvision"
  assert members["candidate rn.safetensors"]["pretrained"]["input"]["image_size"] == 16
  assert set(results["skipped"]) == {"soups"} and "pretrained file" in results["skipped"]["soups"]
  assert results["splits"]["test"] == 12 and results["splits"]["ood"] == 6
  assert results["splits"]["blur/1"] == 6
  assert "MC dropout K=2" in results["methods"] and "cascade" in results
  assert "candidate rn.safetensors" in results["sidekicks"]["rows"]
  assert (out / "results.md").read_text().startswith("Not evaluated: soups")


@pytest.mark.slow
def test_a_pretrained_sidekick_beside_a_trained_largespread_head_model(setup, tmp_path):
  from duojax.train import loop  # noqa: PLC0415

  train = tiny_train_config(
    setup / "tfds",
    dataset="tiny_folder",
    test_split="test",
    val_size=6,
    batch_size=8,
    eval_batch_size=8,
    total_steps=4,
    checkpoint_every=4,
    augment="",
  )
  train.model.image_size = 16
  loop.train_and_evaluate(train, str(tmp_path / "large"))
  large, sidekick = str(tmp_path / "large"), _specs(setup)[1]
  # The workdir's data set and splits are used; the evaluation's data keys stay unset.
  config = _config(
    setup, large, sidekick, dataset="", test_split="test", val_size=5000, data_dir=""
  )
  results = pipeline.run(config)
  assert results["members"]["large"]["step"] == 4
  assert "pretrained" not in results["members"]["large"]
  assert results["members"]["sidekick"]["pretrained"]["layout"] == "torchvision"
  assert results["splits"] == {"val": 6, "test": 12}
  with pytest.raises(ValueError, match="leave the data keys unset") as error:
    pipeline.run(_config(setup, large, sidekick))
  assert "\n" not in str(error.value)
  # A file that does not fit the workdir's data set is named, with both numbers.
  for spec, message in (
    (
      f"pretrained:vit_mu4:{setup}/vit5.safetensors",
      "has a 5-class head, the data set tiny_folder has 3 classes",
    ),
    (
      f"pretrained:resnet8:{setup}/gray.safetensors",
      "takes 1-channel images, the data set tiny_folder has 3-channel ones",
    ),
  ):
    with pytest.raises(ValueError, match=message) as error:
      pipeline.run(
        _config(setup, large, spec, dataset="", test_split="test", val_size=5000, data_dir="")
      )
    assert f"member 'sidekick': '{setup}/" in str(error.value) and "\n" not in str(error.value)
