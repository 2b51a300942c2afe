"""Same config and seed, same numbers: training and evaluation are reproducible.

Two trainings of one tiny config into two workdirs must log the same metrics
and end with identical parameters; the evaluation pipeline must give the same
results dict on them; and another seed must give other parameters, so that
the comparisons can fail at all.
"""

import importlib.util
import json
import math
import os

import jax
import numpy as np
import pytest
from helpers import ROOT, final_state, tiny_train_config

from duojax.eval import pipeline
from duojax.train import loop

# Slow as a whole (whole training runs and evaluations, twice):
# `make test-fast` leaves it out.
pytestmark = pytest.mark.slow

TOLERANCE = 1e-6
# Wall-clock measurements differ between any two runs.
TIMING_FIELDS = frozenset({"images_per_s", "train_seconds", "seconds"})


def _train(data_dir, workdir, *, seed=0, model_name="resnet8"):
  config = tiny_train_config(
    data_dir, model_name=model_name, seed=seed, total_steps=4, checkpoint_every=2
  )
  if model_name == "resnet8":
    config.model.dropout = 0.1  # so that the per-step dropout keys matter too
  else:
    config.model.width = None  # the sidekick at its default width
  return loop.train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, learnable_data_dir):
  """Workdirs: twins "a" and "b" (one config, seed 0), "seed1" (the same
  config, seed 1) and a small "sidekick"; plus their summaries."""
  root = tmp_path_factory.mktemp("determinism")
  summaries = {
    name: _train(learnable_data_dir, root / name, seed=seed)
    for name, seed in (("a", 0), ("b", 0), ("seed1", 1))
  }
  summaries["sidekick"] = _train(learnable_data_dir, root / "sidekick", model_name="cnn_xs")
  return root, summaries


def _assert_same_numbers(a, b, path="results"):
  """Walks two nested results (dicts, lists, arrays, scalars) and asserts
  that they have the same structure, equal strings and numbers within
  TOLERANCE (NaN equal to NaN), skipping TIMING_FIELDS."""
  if isinstance(a, dict):
    assert isinstance(b, dict), path
    keys = set(a) - TIMING_FIELDS
    assert keys == set(b) - TIMING_FIELDS, (path, sorted(keys ^ (set(b) - TIMING_FIELDS)))
    for key in sorted(keys, key=str):
      _assert_same_numbers(a[key], b[key], f"{path}[{key!r}]")
  elif isinstance(a, (list, tuple)):
    assert isinstance(b, (list, tuple)) and len(a) == len(b), path
    for i, (x, y) in enumerate(zip(a, b)):
      _assert_same_numbers(x, y, f"{path}[{i}]")
  elif isinstance(a, (np.ndarray, jax.Array)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype, (path, a.shape, b.shape)
    if np.issubdtype(a.dtype, np.number):
      np.testing.assert_allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE, equal_nan=True, err_msg=path)
    else:
      np.testing.assert_array_equal(a, b, err_msg=path)
  elif isinstance(a, (int, float, np.number)) and not isinstance(a, bool):
    assert isinstance(b, (int, float, np.number)) and not isinstance(b, bool), path
    both_nan = math.isnan(a) and math.isnan(b)
    assert both_nan or math.isclose(a, b, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (path, a, b)
  else:
    assert a == b, (path, a, b)


def _metrics_log(workdir):
  with open(os.path.join(workdir, loop.METRICS_FILE)) as f:
    return [json.loads(line) for line in f]


def test_same_config_and_seed_train_identically(runs):
  """The twins' summaries and every metrics.jsonl record agree to 1e-6 (bar
  wall-clock fields), and their final parameters and batch statistics are
  bit-identical."""
  root, summaries = runs
  a, b = dict(summaries["a"]), dict(summaries["b"])
  # The checkpoint path names its workdir; the rest of it must agree.
  assert os.path.relpath(a.pop("checkpoint"), root / "a") == os.path.relpath(
    b.pop("checkpoint"), root / "b"
  )
  _assert_same_numbers(a, b, "summary")
  log_a, log_b = _metrics_log(root / "a"), _metrics_log(root / "b")
  assert [r["step"] for r in log_a] == [r["step"] for r in log_b]
  assert any("train_loss" in r for r in log_a) and any("val_nll" in r for r in log_a)
  _assert_same_numbers(log_a, log_b, "metrics.jsonl")
  step_a, state_a = final_state(str(root / "a"))
  step_b, state_b = final_state(str(root / "b"))
  assert step_a == step_b == 4
  same = jax.tree.map(np.array_equal, state_a, state_b)
  assert all(jax.tree.leaves(same)), "the twins' parameters differ"


def test_another_seed_gives_other_parameters(runs):
  """Seed 1 (same config otherwise) trains different parameters: the
  comparisons above are not vacuous."""
  root, _ = runs
  _, state_a = final_state(str(root / "a"))
  _, state_seed1 = final_state(str(root / "seed1"))
  same = jax.tree.map(np.array_equal, state_a, state_seed1)
  assert not all(jax.tree.leaves(same)), "seed 1 gave the parameters of seed 0"


def _eval_config(root, large):
  """configs/demo_eval.py with the twin `large` and the sidekick, and no
  other members: every other member path it names is emptied. The seeded
  parts stay on (MC dropout, the paired bootstrap); OOD, shifts and the
  cascade section, more of the same computations, are off for time."""
  spec = importlib.util.spec_from_file_location(
    "demo_eval", os.path.join(ROOT, "configs", "demo_eval.py")
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f"runs={root}")
  for key, value in config.items():
    if (
      isinstance(value, str)
      and value.startswith(str(root))
      and key not in ("large", "sidekick", "output_dir")
    ):
      config[key] = ""
  config.large, config.sidekick = str(root / large), str(root / "sidekick")
  config.ood, config.shifts, config.cascade = "", "", False
  config.mc_dropout_samples = 2
  config.bootstrap = 3
  config.batch_size = 100
  config.solver = "optax"  # compiles faster than jaxopt; both are deterministic
  return config


def test_evaluation_pipeline_is_reproducible(runs):
  """pipeline.run on twin a and then on twin b (with the same sidekick)
  gives the same results dict: every number in it, however deeply nested,
  agrees to 1e-6 (bar the wall-clock "seconds")."""
  root, _ = runs
  first = pipeline.run(_eval_config(root, "a"))
  second = pipeline.run(_eval_config(root, "b"))
  assert {"large", "large+TS", "duo (weighted)"} <= set(first["methods"])
  assert len(first["methods"]["duo (weighted)"]["fitted"]["weights"]) == 2
  _assert_same_numbers(first, second)
