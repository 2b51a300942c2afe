"""Hydra end to end: train a ViT, prune members with train.py, evaluate them merged."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from duojax import config_lib, data, hydra
from duojax.core import metrics
from duojax.eval import bank as bank_lib
from duojax.eval.members import Member
from duojax.eval.methods import log_mean_softmax
from duojax.parallel import sharding
from duojax.train import checkpoint, hydra_member, loop

# Slow as a whole (a ViT, its Hydra members and evaluate.py, end to end):
# `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(data_dir, model_name, *, steps, seed=0, **extra):
  config = config_lib.base_config()
  config.data_dir = str(data_dir)
  config.val_size = 150
  config.model_name = model_name
  config.batch_size = 32
  config.eval_batch_size = 100
  config.total_steps = steps
  config.warmup_steps = 2
  config.lr = 3e-3
  config.augment = ""
  config.seed = seed
  config.log_every = 10
  config.checkpoint_every = steps
  for key, value in extra.items():
    config[key] = value
  return config


def _member_config(data_dir, runs, member):
  return _config(
    data_dir,
    "vit_mu4",
    steps=6,
    seed=100 + member,
    prune_from=str(runs / "vit"),
    prune_keep=0.5,
    prune_images=64,
    prune_seed=member,
  )


@pytest.fixture(scope="module")
def runs(tmp_path_factory, learnable_data_dir):
  root = tmp_path_factory.mktemp("hydra_runs")
  for seed, name in ((0, "vit"), (1, "vit_seed1")):
    loop.train_and_evaluate(
      _config(learnable_data_dir, "vit_mu4", steps=40, seed=seed), str(root / name)
    )
  loop.train_and_evaluate(_config(learnable_data_dir, "cnn_xs", steps=4), str(root / "sidekick"))
  for member in (0, 1):
    loop.train_and_evaluate(
      _member_config(learnable_data_dir, root, member), str(root / f"hydra_{member}")
    )
  return root


def test_member_checkpoint_is_the_pruned_source(runs):
  step, meta = checkpoint.read_meta(str(runs / "hydra_0"))
  # vit_mu4 has 2 heads of 16 per layer: keep 0.5 leaves one, same head_dim.
  assert meta["model_overrides"] == {"num_heads": 1, "head_dim": 16}
  assert meta["config"]["prune_from"] == str(runs / "vit")
  heads = json.loads((runs / "hydra_0" / loop.HYDRA_HEADS_FILE).read_text())
  importance, kept = np.array(heads["importance"]), np.array(heads["kept_heads"], bool)
  np.testing.assert_array_equal(kept, hydra.select_heads(importance, 0.5))
  member, _ = checkpoint.load_model(str(runs / "hydra_0"))
  assert member.num_heads == 1 and member.head_dim == 16 and step == 6


def test_prune_checkpoint_equals_masked_source(runs, learnable_data_dir):
  dataset = data.load_dataset("fashion_mnist", str(learnable_data_dir), val_size=150)
  pruned, info = hydra_member.prune_checkpoint(
    str(runs / "vit"), dataset, keep=0.5, num_images=64, seed=0
  )
  source, _ = checkpoint.load_model(str(runs / "vit"))
  batch = next(hydra_member.importance_sample(dataset, num_images=16, seed=3))
  np.testing.assert_allclose(
    np.asarray(pruned(batch["image"])[0]),
    np.asarray(source(batch["image"], head_mask=np.array(info["kept_heads"]))[0]),
    rtol=1e-5,
    atol=1e-5,
  )
  # The member's recorded heads came from the same seeded sample.
  recorded = json.loads((runs / "hydra_0" / loop.HYDRA_HEADS_FILE).read_text())
  assert recorded["kept_heads"] == info["kept_heads"]


def test_importance_sample_is_seeded_and_distinct(learnable_data_dir):
  dataset = data.load_dataset("fashion_mnist", str(learnable_data_dir), val_size=150)
  labels = lambda seed: np.concatenate(
    [
      b["label"]
      for b in hydra_member.importance_sample(dataset, num_images=100, seed=seed, batch_size=32)
    ]
  )
  assert len(labels(0)) == 100
  np.testing.assert_array_equal(labels(0), labels(0))
  assert not np.array_equal(labels(0), labels(1))


def test_evaluate_reports_hydra_next_to_ensemble_and_duo(runs):
  out = runs / "results"
  args = [
    sys.executable,
    os.path.join(ROOT, "evaluate.py"),
    "--config",
    os.path.join(ROOT, f"configs/demo_eval.py:runs={runs},hydra=2,ensemble=0,soups=0,gatekeeper="),
    f"--config.large={runs / 'vit'}",
    "--config.shifts=",
    "--config.bootstrap=0",
    "--config.mc_dropout_samples=0",
    "--config.batch_size=100",
    "--config.cascade=False",
  ]
  result = subprocess.run(
    args,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((out / "results.json").read_text())
  rows = results["hydra"]["rows"]
  assert set(rows) == {
    "ViT",
    "ViT+TS",
    "ViT ensemble m=2",
    "ViT ensemble m=2+TS",
    "Hydra M=2",
    "Hydra M=2+TS",
    "Hydra M=2 (avg MLP)",
    "Hydra M=2 (avg MLP)+TS",
    "ViT duo (weighted)",
  }
  for name, row in rows.items():
    assert row["seconds_per_batch"] > 0 and row["flops"] > 0, name
    assert {"acc", "nll", "ece", "auroc", "aurc", "sac98"} <= set(row["test"])
    assert {"auroc", "fpr95"} <= set(row["ood"])

  # Cost: the grouped merge holds every member's parameters, the averaged one
  # shares the MLPs; both run every member's tokens.
  members = [checkpoint.load_model(str(runs / f"hydra_{j}"))[0] for j in (0, 1)]
  member_cost = [hydra.cost(m) for m in members]
  assert rows["Hydra M=2"]["params"] == sum(c["params"] for c in member_cost)
  assert rows["Hydra M=2 (avg MLP)"]["params"] < rows["Hydra M=2"]["params"]
  np.testing.assert_allclose(
    rows["Hydra M=2"]["flops"], sum(c["flops"] for c in member_cost), rtol=0.05
  )
  assert rows["ViT ensemble m=2"]["params"] == 2 * rows["ViT"]["params"]

  # Quality: the merged model's test NLL is that of the members' mean
  # probability, each member run alone.
  meta = checkpoint.read_meta(str(runs / "vit"))[1]
  dataset = data.load_dataset("fashion_mnist", meta["config"]["data_dir"], val_size=150)
  bank = bank_lib.collect(
    [Member(f"m{j}", m, meta) for j, m in enumerate(members)],
    dataset,
    {"test": dataset.test},
    mesh=sharding.make_mesh(1),
    batch_size=100,
  )
  mean = log_mean_softmax(bank.logits["test"])
  expected = metrics.evaluate(mean, bank.labels["test"], jax.nn.softmax(mean).max(-1))
  np.testing.assert_allclose(rows["Hydra M=2"]["test"]["nll"], float(expected["nll"]), rtol=1e-4)
  np.testing.assert_allclose(rows["Hydra M=2"]["test"]["acc"], float(expected["acc"]))
  markdown = (out / "results.md").read_text()
  assert "### Hydra ensembles (M = 2 members, 50% of the heads each)" in markdown


def test_prune_from_a_convnet_is_refused(runs, learnable_data_dir, tmp_path):
  config = _config(learnable_data_dir, "cnn_xs", steps=2, prune_from=str(runs / "sidekick"))
  with pytest.raises(checkpoint.CheckpointError, match="not a Vision Transformer"):
    loop.train_and_evaluate(config, str(tmp_path / "member"))
  assert not (tmp_path / "member").exists()


def test_prune_from_needs_the_source_architecture(runs, learnable_data_dir, tmp_path):
  config = _member_config(learnable_data_dir, runs, 0)
  config.model_name = "vit_ti16"
  with pytest.raises(checkpoint.CheckpointError, match="holds a 'vit_mu4'"):
    loop.train_and_evaluate(config, str(tmp_path / "member"))
  config = _member_config(learnable_data_dir, runs, 0)
  config.model.dropout = 0.1
  with pytest.raises(config_lib.ConfigError, match="must stay unset with config.prune_from"):
    loop.train_and_evaluate(config, str(tmp_path / "member"))
  assert not (tmp_path / "member").exists()


def test_evaluate_refuses_a_member_that_was_not_pruned(runs):
  import importlib.util

  from duojax.eval import pipeline

  spec = importlib.util.spec_from_file_location(
    "demo_eval", os.path.join(ROOT, "configs", "demo_eval.py")
  )
  demo_eval = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(demo_eval)
  config = demo_eval.get_config(f"runs={runs},hydra=2,ensemble=0,soups=0,gatekeeper=")
  config.large = str(runs / "vit")
  config.hydra = f"{runs / 'hydra_0'},{runs / 'vit_seed1'}"
  with pytest.raises(ValueError, match="is not a pruned Hydra member"):
    pipeline.run(config)
