"""A catalogue of bad inputs: each stops with one clear line and leaves nothing half-written.

Together with the bad-input tests of test_trainer, test_evaluate, test_temperature,
test_metrics, test_data, test_duo, test_cascade* and test_distributed, this covers
the inputs listed in README's "Troubleshooting" section; test_error_catalogue walks
that list row by row and checks each error is one of the typed classes of
`duojax.errors`. Cases already tested there are not repeated; the CLI is used where
only the CLI shows the behaviour (exit status, one line on stderr, the workdir or
output left alone), the Python API elsewhere, since each CLI run costs seconds of
imports.
"""

import errno
import os
import shutil
import stat

import helpers
import jax
import numpy as np
import pytest
from helpers import ROOT, assert_one_line_error, cli_train_args, run_script, tiny_train_config

from duojax import cascade, config_lib, data, errors
from duojax.core import duo, metrics, temperature
from duojax.eval import outputs
from duojax.eval import sections as eval_sections
from duojax.train import checkpoint, loop


def _tiny_config(data_dir, **overrides):
  """The shared tiny run as a 4-step cnn_xs without augmentation."""
  config = tiny_train_config(
    data_dir,
    **{
      "model_name": "cnn_xs",
      "total_steps": 4,
      "warmup_steps": 1,
      "eval_batch_size": 100,
      "augment": "",
      **overrides,
    },
  )
  config.model.width = None  # a resnet8 override there; cnn_xs has no width
  return config


@pytest.fixture(scope="module")
def cnn_workdir(tmp_path_factory, learnable_data_dir):
  """A 10-class cnn_xs, trained for a few steps (in-process: no CLI start-up)."""
  workdir = tmp_path_factory.mktemp("bad_inputs") / "cnn"
  loop.train_and_evaluate(_tiny_config(learnable_data_dir), str(workdir))
  return workdir


@pytest.fixture(scope="module")
def five_class_workdir(tmp_path_factory):
  """The same architecture trained on a dataset of 5 classes: another label set."""
  data_dir = helpers.prepare_five_class_blocks(tmp_path_factory.mktemp("five_tfds"))
  workdir = tmp_path_factory.mktemp("bad_inputs") / "five"
  loop.train_and_evaluate(
    _tiny_config(data_dir, dataset="five_class_blocks", val_size=50), str(workdir)
  )
  return workdir


def _snapshot(path):
  """Every file under `path` with its size and mtime: to prove nothing changed."""
  path = os.fspath(path)
  if not os.path.exists(path):
    return None
  if os.path.isfile(path):
    info = os.stat(path)
    return [("", info.st_size, info.st_mtime_ns)]
  return sorted(
    (
      os.path.relpath(os.path.join(folder, name), path),
      os.stat(os.path.join(folder, name)).st_size,
      os.stat(os.path.join(folder, name)).st_mtime_ns,
    )
    for folder, _, names in os.walk(path)
    for name in names
  )


def _one_line(error):
  message = str(error.value)
  assert message and "\n" not in message, message
  return message


def _damaged_copy(learnable_data_dir, tmp_path):
  """A private copy of the prepared data (the fixture is shared by the session)."""
  copy = tmp_path / "tfds"
  shutil.copytree(learnable_data_dir, copy)
  version = copy / "duojax_fashion_mnist" / "1.0.0"
  assert version.is_dir()
  return copy, version


# ----------------------------------------------------------------------------
# train.py: damaged data, empty splits, unwritable workdirs, config and mesh typos.


@pytest.mark.slow
def test_cli_train_damaged_array_record_shard(tmp_path, learnable_data_dir):
  copy, version = _damaged_copy(learnable_data_dir, tmp_path)
  shutil.rmtree(version / "duojax_cache", ignore_errors=True)  # so the shard must be read
  [shard] = version.glob("*-train.array_record-*")
  shard.write_bytes(os.urandom(1000))
  workdir = tmp_path / "run"
  result = run_script("train.py", *cli_train_args(copy, workdir))
  assert_one_line_error(result, 1, "cannot read the prepared data in")
  assert "delete the folder and prepare the dataset again" in result.stderr
  assert not workdir.exists()


@pytest.mark.slow
def test_cli_train_damaged_dataset_metadata(tmp_path, learnable_data_dir):
  copy, version = _damaged_copy(learnable_data_dir, tmp_path)
  (version / "dataset_info.json").write_text("{")
  before = _snapshot(copy)
  workdir = tmp_path / "run"
  result = run_script("train.py", *cli_train_args(copy, workdir))
  assert_one_line_error(result, 1, "dataset 'fashion_mnist' in")
  assert "has unreadable metadata" in result.stderr
  assert not workdir.exists()
  assert _snapshot(copy) == before  # nothing "repaired" behind the user's back


@pytest.mark.slow
def test_cli_train_val_split_that_leaves_no_training_data(tmp_path, learnable_data_dir):
  workdir = tmp_path / "run"
  result = run_script(
    "train.py", *cli_train_args(learnable_data_dir, workdir, "--config.val_size=600")
  )
  assert_one_line_error(result, 1, "val_size=600 must be in [1, 599] for the 600 training")
  assert not workdir.exists()


@pytest.mark.slow
def test_cli_train_workdir_under_a_regular_file(tmp_path, learnable_data_dir):
  # Stands in for an unwritable location where tests run as root (chmod binds no root).
  blocker = tmp_path / "a_file"
  blocker.write_text("not a folder")
  result = run_script("train.py", *cli_train_args(learnable_data_dir, blocker / "run"))
  assert_one_line_error(result, 1, f"cannot be created: '{blocker}' is a file, not a directory")
  assert blocker.read_text() == "not a folder"
  result = run_script("train.py", *cli_train_args(learnable_data_dir, blocker))
  assert_one_line_error(result, 1, f"--workdir '{blocker}' is a file, not a directory")
  assert blocker.read_text() == "not a folder"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permission bits")
def test_cli_train_workdir_in_a_read_only_folder(tmp_path, learnable_data_dir):
  parent = tmp_path / "read_only"
  parent.mkdir()
  parent.chmod(stat.S_IRUSR | stat.S_IXUSR)  # 0o500
  try:
    result = run_script("train.py", *cli_train_args(learnable_data_dir, parent / "run"))
    assert_one_line_error(result, 1, f"'{parent}' is not writable")
    assert list(parent.iterdir()) == []
  finally:
    parent.chmod(0o700)


@pytest.mark.slow
def test_cli_train_config_argument_typo_is_one_line_without_traceback(tmp_path):
  workdir = tmp_path / "run"
  result = run_script(
    "train.py",
    "--config",
    os.path.join(ROOT, "configs/fashion_mnist.py:modle=cnn_xs"),
    f"--workdir={workdir}",
  )
  assert_one_line_error(result, 2, "unknown config argument 'modle'; valid: ")
  assert not workdir.exists()


@pytest.mark.slow
def test_cli_train_config_override_of_the_wrong_type(tmp_path, learnable_data_dir):
  workdir = tmp_path / "run"
  result = run_script(
    "train.py", *cli_train_args(learnable_data_dir, workdir, "--config.batch_size=abc")
  )
  assert_one_line_error(
    result, 2, "bad command line: flag --config.batch_size=abc: invalid literal for int()"
  )
  assert not workdir.exists()


@pytest.mark.slow
def test_cli_train_more_devices_than_exist(tmp_path, learnable_data_dir):
  workdir = tmp_path / "run"
  result = run_script(
    "train.py", *cli_train_args(learnable_data_dir, workdir, "--config.num_devices=4096")
  )
  assert_one_line_error(result, 1, "num_devices=4096 but ")
  assert not workdir.exists()


# ----------------------------------------------------------------------------
# evaluate.py: members that disagree, output paths, a full disk, typos.


_EVAL_CONFIG = """
import importlib.util


def get_config(arg=None):
  # configs/demo_eval.py with every member list emptied but the duo's two.
  spec = importlib.util.spec_from_file_location("demo_eval", {demo!r})
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runs=/nonexistent-runs")
  for key, value in list(config.items()):
    if isinstance(value, str) and "/nonexistent-runs" in value:
      config[key] = ""
  config.large, config.sidekick, config.output_dir = {large!r}, {sidekick!r}, {output!r}
  for key, value in dict(ood="", shifts="", mc_dropout_samples=0, bootstrap=0, cascade=False,
                         batch_size=100).items():
    if key in config:
      config[key] = value
  return config
"""


def _eval_config(tmp_path, large, sidekick, output):
  path = tmp_path / "eval_config.py"
  path.write_text(
    _EVAL_CONFIG.format(
      demo=os.path.join(ROOT, "configs/demo_eval.py"),
      large=str(large),
      sidekick=str(sidekick),
      output=str(output),
    )
  )
  return str(path)


@pytest.mark.slow
def test_cli_evaluate_duo_of_models_with_different_class_counts(
  tmp_path, cnn_workdir, five_class_workdir
):
  out = tmp_path / "results"
  before = _snapshot(five_class_workdir)
  result = run_script(
    "evaluate.py", "--config", _eval_config(tmp_path, cnn_workdir, five_class_workdir, out)
  )
  assert_one_line_error(
    result, 1, "members disagree on num_classes: 'large' has 10, 'sidekick' has 5"
  )
  assert not out.exists()
  assert _snapshot(five_class_workdir) == before


@pytest.mark.slow
def test_cli_evaluate_output_dir_under_a_regular_file(tmp_path, cnn_workdir):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  result = run_script(
    "evaluate.py", "--config", _eval_config(tmp_path, cnn_workdir, cnn_workdir, blocker / "results")
  )
  assert_one_line_error(
    result,
    1,
    f"config.output_dir '{blocker / 'results'}' cannot be "
    f"created: '{blocker}' is a file, not a directory",
  )
  assert blocker.read_text() == "x"


@pytest.mark.slow
def test_cli_evaluate_unknown_config_key_is_one_line(tmp_path, cnn_workdir):
  result = run_script(
    "evaluate.py",
    "--config",
    _eval_config(tmp_path, cnn_workdir, cnn_workdir, tmp_path / "results"),
    "--config.solverr=optax",
  )
  assert_one_line_error(result, 2, "unknown key 'solverr'")
  assert 'Did you mean "solver"' in result.stderr
  assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_cli_evaluate_output_file_under_a_regular_file(tmp_path, cnn_workdir):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  result = run_script(
    "evaluate.py", f"--workdirs={cnn_workdir}", f"--output={blocker / 'eval.json'}"
  )
  assert_one_line_error(result, 1, f"--output's folder '{blocker}' is a file, not a directory")
  assert blocker.read_text() == "x"


# Runs evaluate.py with a disk that fills up while --output is written: the
# first bytes reach the temporary file, then the write fails with ENOSPC.
_FULL_DISK = """
import os, runpy, sys

sys.path.insert(0, {tests!r})
from helpers import FullDisk

real_fdopen = os.fdopen


def full_disk(fd, *args, **kwargs):
  f = real_fdopen(fd, *args, **kwargs)
  # Only the output file's temporary copy (see duojax.files) hits the full disk.
  return FullDisk(f) if os.readlink(f"/proc/self/fd/{{fd}}").endswith("eval.json") else f


os.fdopen = full_disk
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_cli_evaluate_full_disk_leaves_no_partial_output(tmp_path, cnn_workdir):
  wrapper = tmp_path / "full_disk.py"
  wrapper.write_text(_FULL_DISK.format(tests=os.path.dirname(os.path.abspath(__file__))))
  out = tmp_path / "eval.json"
  result = run_script(
    str(wrapper),
    os.path.join(ROOT, "evaluate.py"),
    f"--workdirs={cnn_workdir}",
    "--split=val",
    f"--output={out}",
  )
  assert_one_line_error(result, 1, f"cannot write {out}: No space left on device")
  assert sorted(os.listdir(tmp_path)) == ["full_disk.py"]  # neither eval.json nor its .tmp


@pytest.mark.slow
def test_cli_evaluate_folder_that_is_not_a_checkpoint(tmp_path):
  # A "checkpoints" folder with a step that orbax never wrote.
  junk = tmp_path / "not_a_run"
  (junk / "checkpoints" / "7").mkdir(parents=True)
  (junk / "checkpoints" / "7" / "state").write_text("junk")
  before = _snapshot(junk)
  result = run_script("evaluate.py", f"--workdirs={junk}")
  assert result.returncode == 1, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and str(junk) in last, result.stderr[-2000:]
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert _snapshot(junk) == before


# ----------------------------------------------------------------------------
# Python API: checkpoints, data caches, writers.


@pytest.mark.slow
def test_fine_tune_from_a_checkpoint_with_another_class_count(
  tmp_path, learnable_data_dir, five_class_workdir
):
  workdir = tmp_path / "run"
  config = _tiny_config(learnable_data_dir, init_from=str(five_class_workdir))
  with pytest.raises(checkpoint.CheckpointError) as error:
    loop.train_and_evaluate(config, str(workdir))
  assert "has num_classes=5 but the config asks for 10" in _one_line(error)
  assert not workdir.exists()


@pytest.mark.parametrize(
  "cache_file, garbage",
  [
    ("train_image_label_None.npz", b"not an npz"),
    ("train_image_label_None.npz", b"PK\x03\x04 truncated zip"),
    ("stats_image_None.json", b'{"mean": [0.2]'),
  ],
)
def test_corrupt_cache_file_is_named(tmp_path, learnable_data_dir, cache_file, garbage):
  copy, version = _damaged_copy(learnable_data_dir, tmp_path)
  data.load_dataset("fashion_mnist", copy, val_size=100)  # makes sure the caches exist
  path = version / "duojax_cache" / cache_file
  path.write_bytes(garbage)
  with pytest.raises(data.DataError) as error:
    data.load_dataset("fashion_mnist", copy, val_size=100)
  assert _one_line(error).startswith(f"cache file {path} is corrupt (")
  assert "delete it and it is rebuilt" in str(error.value)
  os.remove(path)  # ... as the message says: then it loads again
  assert data.load_dataset("fashion_mnist", copy, val_size=100).num_classes == 10


_MINIMAL_RESULTS = {"methods": {}, "reference": "large+TS", "large_flops": 1e6}
_SECTIONS = eval_sections.load(["methods", "paired"])


@pytest.mark.parametrize("fail_on_write", [1, 2])  # results.json, results.md
def test_results_on_a_full_disk_leave_no_partial_output(tmp_path, monkeypatch, fail_on_write):
  real_fdopen, calls = os.fdopen, []

  def fdopen(fd, mode):
    calls.append(fd)
    f = real_fdopen(fd, mode)
    return helpers.FullDisk(f) if len(calls) == fail_on_write else f

  monkeypatch.setattr(outputs.os, "fdopen", fdopen)
  out = tmp_path / "new" / "results"
  with pytest.raises(OSError) as error:
    outputs.write(dict(_MINIMAL_RESULTS), str(out), _SECTIONS)
  assert isinstance(error.value, errors.FileError) and error.value.errno == errno.ENOSPC
  assert _one_line(error).startswith("[Errno 28] cannot write ")
  assert os.listdir(tmp_path) == []  # the folders it made are gone again

  # In an existing folder the earlier results stay whole; no temporary files remain.
  existing = tmp_path / "existing"
  existing.mkdir()
  (existing / "results.json").write_text("{}")
  calls.clear()
  with pytest.raises(OSError):
    outputs.write(dict(_MINIMAL_RESULTS), str(existing), _SECTIONS)
  names = sorted(os.listdir(existing))
  assert not [n for n in names if n.startswith(".tmp")], names
  assert (existing / "results.json").read_text() in (
    "{}",
    outputs.json.dumps(_MINIMAL_RESULTS, indent=2),
  )


@pytest.mark.parametrize(
  "call, message",
  [
    (
      # -1 is AUTO (chosen from the data, duojax.train.sizing): -2 is the bad one.
      lambda: config_lib.validate(_tiny_config("data", eval_batch_size=-2)),
      "config.eval_batch_size must be > 0, got -2",
    ),
    (
      lambda: config_lib.validate(_tiny_config("data", val_size=0)),
      "config.val_size must be > 0, got 0",
    ),
    (
      lambda: data.eval_batches(
        data.Split(
          data.ArraySource(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4, np.int32)), np.arange(4)
        ),
        global_batch_size=-8,
        mean=[0.0],
        std=[1.0],
      ),
      "global_batch_size=-8 must be positive",
    ),
  ],
)
def test_bad_batch_sizes_and_empty_validation_splits(call, message):
  with pytest.raises((errors.ConfigError, errors.DataError)) as error:
    call()
  assert message in _one_line(error)


# ----------------------------------------------------------------------------
# Python API: logits and labels that do not fit together.


def _logits(n=40, c=10, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, c)).astype(np.float32), rng.integers(0, c, n)


@pytest.mark.parametrize(
  "call, message",
  [
    # The two models of a duo predicting different label sets.
    (
      lambda a, b, y: duo.combine_mode([a, b], "weighted", joint_weights=[1.0, 0.5]),
      "member 1's logits have 5 classes but member 0's have 10",
    ),
    (
      lambda a, b, y: duo.combine([a, b], [1.0, 0.5]),
      "member 1's logits have 5 classes but member 0's have 10",
    ),
    (
      lambda a, b, y: temperature.fit_temperatures([a, b], y),
      "member 1 has 5 classes but member 0 has 10",
    ),
    # N mismatch, wrong rank, wrong number of weights.
    (
      lambda a, b, y: duo.combine_mode([a, a[:-3]], "weighted", joint_weights=[1.0, 1.0]),
      "member 1's logits have 37 rows but member 0's have 40",
    ),
    (
      lambda a, b, y: duo.combine([a, a[:-3]], [1.0, 1.0]),
      "member 1's logits have 37 rows but member 0's have 40",
    ),
    (lambda a, b, y: duo.combine(a, [1.0]), r"logits must be stacked [m, N, C]"),
    (
      lambda a, b, y: duo.combine_mode(np.stack([a, a]), "unweighted", single_weights=[1.0] * 3),
      "single_weights have shape (3,); expected (2,), one per member",
    ),
    (
      lambda a, b, y: duo.combine_mode(np.stack([a, a]), "weighted", joint_weights=[np.nan, 1.0]),
      "joint_weights must be finite, got [nan, 1.0]",
    ),
    # Wrong dtypes: strings are refused by every entry point, not dumped in a TypeError.
    (lambda a, b, y: temperature.fit_temperatures([a.astype(str)], y), "member 0 has dtype <U"),
    (
      lambda a, b, y: temperature.fit_temperatures([a], y.astype(str)),
      "labels must be integers, got dtype <U",
    ),
    (
      lambda a, b, y: temperature.fit_temperatures([a.astype(np.int32)], y),
      "member 0 has dtype int32; expected floating logits",
    ),
    (
      lambda a, b, y: duo.combine(np.stack([a, a]).astype(str), [1.0, 1.0]),
      "logits must be real numbers, got dtype <U",
    ),
    (lambda a, b, y: metrics.evaluate(a.astype(str), y), "logits must be real numbers"),
    (
      lambda a, b, y: metrics.evaluate([[0.1, 0.2], [0.3]], [0, 1]),
      "logits must be a rectangular array",
    ),
    (
      lambda a, b, y: cascade.gatekeeper_loss(a, y.astype(str), 0.5),
      "labels must be integers, got dtype <U",
    ),
    # Labels out of range for the class count (silently NaN before).
    (
      lambda a, b, y: cascade.gatekeeper_loss(a, np.where(np.arange(40) < 3, 10, y), 0.5),
      "labels have 3 values outside [0, 10)",
    ),
  ],
)
def test_mismatched_logits_and_labels(call, message):
  a, y = _logits()
  b, _ = _logits(c=5, seed=1)
  with pytest.raises(errors.InputError) as error:
    call(a, b, y)
  assert message in _one_line(error)


def test_integer_logits_are_cast_where_documented_and_lists_accepted():
  # metrics and the duo combination cast integer logits to float32; the
  # temperature fit refuses them (above): a fit of integer "logits" is
  # almost surely a mix-up with labels or counts.
  a, y = _logits()
  rounded = np.round(a * 4)
  np.testing.assert_equal(
    metrics.evaluate(rounded.astype(np.int32), y), metrics.evaluate(rounded.astype(np.float32), y)
  )
  np.testing.assert_allclose(
    duo.combine(np.stack([rounded.astype(np.int32)] * 2), [0.5, 0.5]), rounded, rtol=1e-6
  )
  # Nested lists are arrays too.
  np.testing.assert_allclose(
    temperature.fit_temperatures([a.tolist()], y.tolist()),
    temperature.fit_temperatures([a], y),
    rtol=1e-5,
  )


def test_label_range_check_adds_no_sync_under_jit():
  # Traced labels are not range-checked (that would need their values); the
  # loss still compiles and runs as before inside a jitted training step.
  a, y = _logits()
  value = jax.jit(lambda z, t: cascade.gatekeeper_loss(z, t, 0.5))(a, y)
  assert np.isfinite(float(value))
  np.testing.assert_allclose(value, cascade.gatekeeper_loss(a, y, 0.5), rtol=1e-6)
