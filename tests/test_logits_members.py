"""Members given as logits files (`logits:PATH`), alone and beside trained workdirs."""

import json
import os
import re
import sys

import numpy as np
import pytest

from duojax import config_lib, data, eval_config_lib
from duojax.eval import logits_files, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, labels_val, labels_test, strength, seed, ood=True, classes=6, **extra):
  rng = np.random.default_rng(seed)
  arrays = {"val_labels": labels_val, "test_labels": labels_test}
  for split, labels in (("val", labels_val), ("test", labels_test)):
    arrays[f"{split}_logits"] = (
      strength * np.eye(classes)[labels] + rng.normal(size=(len(labels), classes))
    ).astype(np.float32)
  if ood:
    arrays["ood_logits"] = (0.3 * rng.normal(size=(150, classes))).astype(np.float32)
  np.savez(path, **arrays, **extra)
  return f"logits:{path}"


def _labels(seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 6, 400), rng.integers(0, 6, 500)


def _config(tmp_path, large, sidekick, **overrides):
  config = eval_config_lib.base_eval_config()
  config.update(
    {
      "large": large,
      "sidekick": sidekick,
      "sections": "methods,paired,sidekicks",
      "shifts": "",
      "ood": "",
      "bootstrap": 20,
      "conformal_alphas": "0.1",
      "output_dir": str(tmp_path / "out"),
      **overrides,
    }
  )
  return config


def test_a_duo_of_two_logits_files_needs_no_workdir_and_no_images(tmp_path):
  val, test = _labels()
  large = _write(tmp_path / "large.npz", val, test, 3.0, 1, flops_per_image=np.float64(1e9))
  sidekick = _write(tmp_path / "sidekick.npz", val, test, 1.5, 2)
  results = pipeline.run(
    _config(tmp_path, large, sidekick, sections="methods,paired,sidekicks,conformal")
  )
  assert results["splits"] == {"val": 400, "test": 500, "ood": 150}
  duo = results["methods"]["duo (weighted)"]
  assert len(duo["fitted"]["weights"]) == 2 and duo["fitted"]["weights"][1] > 0
  assert "msp" in duo["ood"] and results["ood_set"] == "the logits files' ood_logits"
  assert results["members"]["sidekick"]["logits_file"].endswith("sidekick.npz")
  assert np.isnan(results["methods"]["duo (weighted)"]["relative_flops"])  # sidekick unknown
  assert results["sidekicks"]["rows"]["sidekick"]["relative_flops"] is None
  assert "conformal" in results and "feature_ood" not in results
  # The one thing left out: a logits file holds no features for the Mahalanobis score.
  assert results["skipped"] == {
    "Mahalanobis": "the large model is a logits file: no features to fit"
  }
  assert (
    set(
      pipeline.run(
        _config(tmp_path, large, sidekick, sections="methods", mahalanobis_train_rows=0)
      )["skipped"]
    )
    == set()
  )


def test_what_logits_cannot_give_is_skipped_and_said(tmp_path):
  val, test = _labels()
  large = _write(tmp_path / "large.npz", val, test, 3.0, 1, ood=False)
  sidekick = _write(tmp_path / "sidekick.npz", val, test, 1.5, 2)
  results = pipeline.run(_config(tmp_path, large, sidekick, mc_dropout_samples=4))
  assert "ood" not in results["splits"]
  assert set(results["skipped"]) == {"MC dropout", "OOD"}
  from duojax.eval import render, sections  # noqa: PLC0415

  text = render.markdown(results, sections.load(["methods"]))
  assert text.startswith(
    "Not evaluated: OOD (logits file of 'large' has no ood_logits); MC dropout"
  )


@pytest.mark.parametrize(
  "change, message",
  [
    (lambda a: a.update(val_labels=a["val_labels"][::-1].copy()), "val labels differ"),
    (
      lambda a: a.update(
        val_logits=np.pad(a["val_logits"], ((0, 0), (0, 1))),
        test_logits=np.pad(a["test_logits"], ((0, 0), (0, 1))),
      ),
      "class count",
    ),
    (lambda a: a.update(val_ids=np.arange(400) + 1), None),
  ],
)
def test_members_must_hold_the_same_rows(tmp_path, change, message):
  val, test = _labels()
  large = _write(tmp_path / "large.npz", val, test, 3.0, 1, val_ids=np.arange(400))
  with np.load(tmp_path / "large.npz") as archive:
    arrays = dict(archive)
  change(arrays)
  np.savez(tmp_path / "other.npz", **arrays)
  config = _config(tmp_path, large, f"logits:{tmp_path / 'other.npz'}")
  if message is None:  # ids given by both and different: other rows
    message = "hold different val rows"
  with pytest.raises(ValueError, match=message) as error:
    pipeline.run(config)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize(
  "arrays, message",
  [
    ({"val_logits": np.zeros((3, 2))}, "lacks val_labels, test_logits, test_labels"),
    (
      {
        "val_logits": np.full((3, 2), np.nan),
        "val_labels": np.zeros(3, int),
        "test_logits": np.zeros((3, 2)),
        "test_labels": np.zeros(3, int),
      },
      "NaN or inf",
    ),
    (
      {
        "val_logits": np.zeros((3, 2)),
        "val_labels": np.array([0, 1, 2]),
        "test_logits": np.zeros((3, 2)),
        "test_labels": np.zeros(3, int),
      },
      r"lie in \[0, 2\)",
    ),
    (
      {
        "val_logits": np.zeros((3, 2)),
        "val_labels": np.zeros(3, int),
        "test_logits": np.zeros((3, 2)),
        "test_labels": np.zeros(3, int),
        "flops_per_image": np.float64(-1),
      },
      "flops_per_image must be one positive number",
    ),
    ({"val_logits": np.array([{"a": 1}], dtype=object)}, "without pickles"),
  ],
)
def test_a_bad_logits_file_is_a_one_line_error(tmp_path, arrays, message):
  np.savez(tmp_path / "bad.npz", **arrays)
  with pytest.raises(ValueError, match=message) as error:
    logits_files.load(f"logits:{tmp_path / 'bad.npz'}")
  assert "\n" not in str(error.value)


def test_only_the_large_model_sidekick_and_ensemble_may_be_logits(tmp_path):
  val, test = _labels()
  large = _write(tmp_path / "large.npz", val, test, 3.0, 1)
  config = _config(tmp_path, large, large, gatekeeper=large, sections="methods")
  with pytest.raises(ValueError, match="only large, sidekick, ensemble may be logits files"):
    pipeline.run(config)


@pytest.mark.slow
def test_a_logits_sidekick_beside_a_trained_large_model(tmp_path, learnable_data_dir):
  sys.path.insert(0, os.path.dirname(__file__))
  from test_evaluate import _train  # noqa: PLC0415 (a tiny trained member)

  large = _train(learnable_data_dir, tmp_path / "large", "resnet8", width=4, steps=20)
  train_config = config_lib.complete_config(
    json.loads((tmp_path / "large" / "config.json").read_text())
  )
  dataset = data.load_dataset_of(train_config)
  labels = {
    name: data.read_examples(split, np.arange(len(split)))[1]
    for name, split in (("val", dataset.val), ("test", dataset.test))
  }
  noise = _write(
    tmp_path / "noise.npz", labels["val"], labels["test"], 0.0, 3, ood=False, classes=10
  )
  results = pipeline.run(
    _config(tmp_path, large, noise, shifts="blur", shift_max_images=20, ood="mnist")
  )
  assert set(results["skipped"]) == {"shifts", "OOD"}
  assert abs(results["methods"]["duo (weighted)"]["fitted"]["weights"][1]) < 0.2  # noise


def test_the_documented_pytorch_writer_makes_a_file_duojax_reads(tmp_path):
  torch = pytest.importorskip("torch")
  text = open(os.path.join(ROOT, "docs", "evaluation.md")).read()
  section = text[text.index("**Members from anywhere: logits files.**") :]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  namespace = {}
  exec(compile(code, "docs/evaluation.md", "exec"), namespace)
  data_set = torch.utils.data.TensorDataset(torch.randn(64, 3, 8, 8), torch.randint(0, 5, (64,)))
  loader = torch.utils.data.DataLoader(data_set, batch_size=16)
  model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5))
  namespace["write_logits"](tmp_path / "toy.npz", model, loader, loader, flops_per_image=1920)
  member = logits_files.load(f"logits:{tmp_path / 'toy.npz'}")
  assert member.logits["val"].shape == (64, 5) and member.flops == 1920
