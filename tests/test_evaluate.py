"""evaluate.py --config end to end on tiny trained members, and its bad inputs."""

import json
import os
import subprocess
import sys

import helpers
import numpy as np
import pytest
from PIL import Image

import duojax
from duojax import config_lib, data, eval_config_lib
from duojax.core import metrics
from duojax.eval import pipeline
from duojax.models import functional, spec
from duojax.train import checkpoint, loop, optim, steps

# Slow as a whole (evaluate.py end to end on trained members):
# `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(data_dir, workdir, model_name, *, seed=0, steps=30, init_from="", loss="ce", **model):
  config = config_lib.base_config()
  config.data_dir = str(data_dir)
  config.val_size = 150
  config.model_name = model_name
  for key, value in model.items():
    config.model[key] = value
  config.batch_size = 32
  config.eval_batch_size = 100
  config.total_steps = steps
  config.warmup_steps = 2
  config.lr = 5e-3
  config.augment = ""
  config.seed = seed
  config.init_from = init_from
  config.loss = loss
  config.gatekeeper_alpha = 0.3
  config.log_every = 10
  config.checkpoint_every = steps
  loop.train_and_evaluate(config, str(workdir))
  return str(workdir)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, learnable_data_dir):
  root = tmp_path_factory.mktemp("runs")
  large = _train(learnable_data_dir, root / "large", "resnet8", width=4, dropout=0.1)
  # A sidekick weaker than the large model, so that cascades have work to do.
  sidekick = _train(learnable_data_dir, root / "sidekick", "cnn_xs", steps=4)
  _train(
    learnable_data_dir,
    root / "gatekeeper_0.3",
    "cnn_xs",
    steps=10,
    init_from=sidekick,
    loss="gatekeeper",
  )
  _train(learnable_data_dir, root / "large_seed1", "resnet8", seed=1, width=4, dropout=0.1)
  for i in (1, 2):
    _train(
      learnable_data_dir,
      root / f"soup_{i}",
      "resnet8",
      seed=i,
      steps=5,
      init_from=large,
      width=4,
      dropout=0.1,
    )
  return root


def _evaluate(runs, *extra):
  args = [
    sys.executable,
    os.path.join(ROOT, "evaluate.py"),
    "--config",
    os.path.join(ROOT, f"configs/demo_eval.py:runs={runs},hydra=0"),
    "--config.shift_max_images=60",
    "--config.shifts=blur,contrast",
    "--config.bootstrap=10",
    "--config.batch_size=100",
    "--config.mc_dropout_samples=4",
    f"--config.gatekeeper={runs / 'gatekeeper_0.3'}",
    *extra,
  ]
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def test_evaluate_config_reports_every_method(runs):
  result = _evaluate(runs)
  assert result.returncode == 0, result.stderr[-3000:]
  out = runs / "results"
  results = json.loads((out / "results.json").read_text())
  # The fitted duo as a bundle beside the results, with the duo's val weights.
  bundle = duojax.load_bundle(out / "bundle")
  assert bundle.manifest["provenance"]["split"] == "val"
  assert [m["model"]["model_name"] for m in bundle.manifest["members"]] == ["resnet8", "cnn_xs"]
  assert bundle.predict(np.zeros((2, *bundle.image_shape), np.uint8))["confidence"].shape == (2,)
  # Its shift alarm is the evaluation's, calibrated on the same val rows.
  assert bundle.shift_alarm.alpha == 0.05 and len(bundle.shift_alarm.rows) == len(
    bundle.validation[0]
  )
  names = set(results["methods"])
  assert {
    "large",
    "large+TS",
    "sidekick+TS",
    "duo (weighted)",
    "duo (unweighted)",
    "duo (UQ only)",
    "ensemble m=2",
    "ensemble m=2+TS",
    "soup (uniform)",
    "soup (greedy)",
    "MC dropout K=4",
  } <= names
  duo = results["methods"]["duo (weighted)"]
  large = results["methods"]["large"]
  assert duo["relative_flops"] == pytest.approx(
    1 + results["members"]["sidekick"]["flops"] / results["members"]["large"]["flops"]
  )
  assert set(duo["test"]) >= {
    "acc",
    "nll",
    "brier",
    "ece",
    "auroc",
    "aurc",
    "eaurc",
    "augrc",
    "sac90",
    "sac95",
    "sac98",
    "sac99",
  }
  assert set(duo["ood"]) == {"msp", "neg_entropy", "energy", "max_logit"}
  assert set(duo["shifts"]) == {f"{k}/{s}" for k in ("blur", "contrast") for s in (1, 3, 5)}
  assert results["splits"] == {
    "val": 150,
    "test": 200,
    "ood": 10000,
    **{f"{k}/{s}": 60 for k in ("blur", "contrast") for s in (1, 3, 5)},
  }
  assert large["fitted"] == {} and len(duo["fitted"]["weights"]) == 2
  assert "paired_vs_reference" in results
  markdown = (out / "results.md").read_text()
  assert "| duo (weighted) |" in markdown and "Paired differences" in markdown
  cascade = results["cascade"]
  assert set(cascade["deferral"]) == {"sidekick", "gatekeeper α=0.3"}
  for name, gate in cascade["deferral"].items():
    # s_d needs a large model better than the gate's sidekick, s_o some errors.
    assert np.isfinite(gate["s_d"]) == (gate["acc_large"] > gate["acc_small"] > 0), gate
    assert np.isnan(gate["s_o"]) if gate["acc_small"] == 1 else 0 <= gate["s_o"] <= 1, gate
    assert gate["acc_large"] == pytest.approx(large["test"]["acc"])
    # Deferring everything to the duo is the always-on duo, at its cost.
    by = cascade["by_sidekick"][name]
    assert 0 <= by["ratio_at_duo_aurc"] <= 1
    assert by["relative_flops_at_duo_aurc"] <= by["duo"]["relative_flops"] + 1e-9
  assert cascade["duo_cascade"]["sidekick"] in cascade["deferral"]
  assert "### Cascades" in markdown and "duo (duo cascade)" in markdown
  assert "### OOD detection by the large model's scores" in markdown
  assert "| Mahalanobis (pre-logit features) |" in markdown and "mahalanobis" in results["seconds"]
  assert results["feature_ood"]["mahalanobis"]["train_rows"] == 450  # all: fewer than 10,000
  for png in (
    "risk_coverage",
    "reliability",
    "pareto_aurc",
    "pareto_sac98",
    "shift_acc",
    "shift_aurc",
    "deferral_curves",
    "cascade_aurc",
    "cascade_acc",
  ):
    assert (out / f"{png}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


def _pre_logits(model, spec, images, batch=500):
  """The model's pre-logit features [N, D] of uint8 images, by its own forward."""
  return np.concatenate(
    [
      np.asarray(
        model(data.prepare(images[i : i + batch], spec), train=False)[1]["pre_logits"], np.float64
      )
      for i in range(0, len(images), batch)
    ]
  )


def test_the_mahalanobis_score_is_the_reference_on_the_large_models_features(runs, tmp_path):
  """pipeline.run's score against its definition in float64, on the model's own features.

  The OOD images are of the training data's kind, half of them with their class block
  dimmed, so the AUROC lies well inside (0.5, 1) and checks the scores, not only their
  gross order. They are stored at 32×32 so that evaluation's centre crop (0.875) gives
  back the 28×28 image unchanged.
  """
  rows = 300  # of the 450 training rows: a seeded subset
  near, _ = helpers.learnable_split(150, 7)
  near[:75] = np.where(near[:75] == 255, 200, near[:75])
  (tmp_path / "ood").mkdir()
  for i, image in enumerate(np.pad(near, ((0, 0), (2, 2), (2, 2)))):
    Image.fromarray(image).save(tmp_path / "ood" / f"{i:03d}.png")
  config = eval_config_lib.base_eval_config()
  config.update(
    large=str(runs / "large"),
    sections="methods",
    ood=f"folder:{tmp_path / 'ood'}",
    shifts="",
    bootstrap=0,
    conformal_alphas="",
    batch_size=100,
    mahalanobis_train_rows=rows,
  )
  reported = pipeline.run(config)["feature_ood"]["mahalanobis"]

  model, meta = checkpoint.load_model(str(runs / "large"))
  dataset = data.load_dataset_of(config_lib.complete_config(meta["config"]))
  spec = data.InputSpec.from_meta(meta["input"])
  # The documented draw: default_rng(config.seed) over the training rows, kept in order.
  positions = np.sort(np.random.default_rng(0).permutation(len(dataset.train))[:rows])
  train_images, labels = data.read_examples(dataset.train, positions)
  train = _pre_logits(model, spec, train_images)
  means = np.stack([train[labels == c].mean(0) for c in range(dataset.num_classes)])
  centred = train - means[labels]
  # Units that never vary on the training rows (ReLU units that never fire) have no
  # spread to measure by: the pseudo-inverse leaves them out, as the score does.
  precision = np.linalg.pinv(centred.T @ centred / rows, rcond=1e-6, hermitian=True)

  def score(split):
    x = _pre_logits(model, spec, data.read_examples(split, np.arange(len(split)))[0])
    return -np.min([np.einsum("nd,de,ne->n", x - m, precision, x - m) for m in means], axis=0)

  ood = data.folder_split(
    tmp_path / "ood",
    image_size=dataset.image_shape[0],
    channels=1,
    crop_fraction=dataset.test.crop_fraction,
  )
  expected = metrics.ood(score(dataset.test).astype(np.float32), score(ood).astype(np.float32))
  assert 0.55 < expected["auroc"] < 0.99, expected
  assert reported["member"] == "large" and reported["train_rows"] == rows
  assert reported["dim"] == train.shape[1] and 1 <= reported["rank"] <= reported["dim"]
  for key in ("auroc", "aupr", "fpr95"):
    assert reported[key] == pytest.approx(expected[key], abs=1e-3), key


def _assert_fails(result, pattern):
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and pattern in last, result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def test_evaluate_missing_member_workdir(runs, tmp_path):
  out = tmp_path / "out"
  result = _evaluate(runs, f"--config.sidekick={tmp_path / 'nope'}", f"--config.output_dir={out}")
  _assert_fails(result, "does not exist")
  assert not out.exists()


def test_evaluate_sidekick_with_another_label_set(runs, tmp_path):
  # A real checkpoint of a 5-class sidekick (as if trained on another label set).
  config = config_lib.base_config()
  model_spec = spec.ModelSpec("cnn_xs", {}, 5, (28, 28, 1))
  graphdef, params, batch_stats = functional.split_model(model_spec.build())
  state = steps.init_state(params, batch_stats, optim.make_optimizer(config, 10))
  manager = checkpoint.make_manager(str(tmp_path / "five"))
  checkpoint.save(
    manager,
    0,
    state,
    {**model_spec.as_meta(), "dataset": "fashion_mnist", "config": config.to_dict(), "step": 0},
  )
  manager.close()
  out = tmp_path / "out"
  result = _evaluate(runs, f"--config.sidekick={tmp_path / 'five'}", f"--config.output_dir={out}")
  _assert_fails(result, "members disagree on num_classes")
  assert not out.exists()


def test_evaluate_gatekeeper_member_must_be_gatekeeper_tuned(runs, tmp_path):
  out = tmp_path / "out"
  result = _evaluate(runs, f"--config.gatekeeper={runs / 'sidekick'}", f"--config.output_dir={out}")
  _assert_fails(result, "was trained with loss='ce', not 'gatekeeper'")
  assert not out.exists()


def test_evaluate_needs_exactly_one_mode(tmp_path):
  result = subprocess.run(
    [sys.executable, os.path.join(ROOT, "evaluate.py")],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=ROOT,
  )
  _assert_fails(result, "exactly one of --config")
