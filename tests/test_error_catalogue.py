"""User errors versus bugs: the catalogue of bad inputs, row by row, and the CLIs' report.

Every row of docs/troubleshooting.md's "Catalogue of bad inputs" is either exercised here
through the Python API (cheap: no CLI start-up), checking that the error is
one of the typed classes of `duojax.errors` with the catalogue's one line,
or named with the test elsewhere that covers it (a CLI exit status, an
evaluation config). A row added to the catalogue without a test fails
`test_every_catalogue_row_is_tested`.

The second half checks `cli.report_errors`, which every command-line
program goes through: a typed error is one `error:` line; anything else is a
bug, printed with its traceback and `cli.BUG_LINE` last.
"""

import ast
import glob
import gzip
import math
import os
import re
import shutil
import subprocess
import sys

import helpers
import numpy as np
import pytest
from helpers import ROOT, assert_one_line_error, cli_train_args

import duojax
from duojax import cascade, cli, config_lib, convert, data, errors, models
from duojax.core import duo, metrics, temperature
from duojax.data import embedded
from duojax.parallel import distributed, sharding
from duojax.train import checkpoint

_CATALOGUE = os.path.join(ROOT, "docs", "troubleshooting.md")
_CATALOGUE_HEADING = "## Catalogue of bad inputs"


def _catalogue_rows() -> list[str]:
  """The first cell ("input") of every row of the catalogue table."""
  with open(_CATALOGUE) as f:
    text = f.read()
  assert _CATALOGUE_HEADING in text, "the catalogue moved: update this test"
  section = text.split(_CATALOGUE_HEADING, 1)[1].split("\n#", 1)[0]
  rows = [line for line in section.splitlines() if line.startswith("|")]
  # rows[0] is the header, rows[1] the |---| line.
  return [row.split("|")[1].strip() for row in rows[2:]]


def _logits(n=40, c=10, seed=0):
  rng = np.random.default_rng(seed)
  return rng.normal(size=(n, c)).astype(np.float32), rng.integers(0, c, n)


def _config(**overrides):
  return helpers.tiny_train_config("data", **overrides)


def _gzipped(path, payload: bytes):
  with gzip.open(path, "wb") as f:
    f.write(payload)
  return path


# Rows exercised here: the catalogue's input cell -> [(call, typed class, what the message says)].
# `call` takes pytest's tmp_path.
_A, _Y = _logits()
_B, _ = _logits(c=5, seed=1)
_API = {
  "typo in a config file's argument (`configs/x.py:modle=…`)": [
    (
      lambda tmp: config_lib.parse_arg("modle=cnn_xs", model="resnet14", epochs=2.0),
      errors.ConfigError,
      "unknown config argument 'modle'; valid: epochs, model",
    )
  ],
  "unknown model name": [
    (
      lambda tmp: models.get_model("resnet999", 10),
      errors.ConfigError,
      "unknown model 'resnet999'; known models: ",
    )
  ],
  "unknown optimizer / loss": [
    (
      lambda tmp: config_lib.validate(_config(optimizer="adam9")),
      errors.ConfigError,
      "config.optimizer='adam9'; valid: adamw, sgd",
    ),
    (
      lambda tmp: config_lib.validate(_config(loss="focal")),
      errors.ConfigError,
      "config.loss='focal'; valid: ce, gatekeeper",
    ),
  ],
  "Gatekeeper α outside [0, 1]": [
    (
      lambda tmp: config_lib.validate(_config(loss="gatekeeper", gatekeeper_alpha=1.5)),
      errors.ConfigError,
      "config.gatekeeper_alpha must be in [0, 1], got 1.5",
    ),
    (
      lambda tmp: cascade.gatekeeper_loss(_A, _Y, 1.5),
      errors.ConfigError,
      "alpha must be in [0, 1], got 1.5",
    ),
  ],
  "deferral ratio outside [0, 1], NaN threshold": [
    (
      lambda tmp: cascade.threshold_for_ratio(np.linspace(0, 1, 10), 1.2),
      errors.ConfigError,
      "ratio must be in [0, 1], got 1.2",
    ),
    (
      lambda tmp: cascade.cascade_sweep(
        _A, _A, _Y, ratios=[0.5, 1.2], flops_small=1, flops_answer_extra=1
      ),
      errors.ConfigError,
      "ratio must be in [0, 1], got 1.2",
    ),
    (
      lambda tmp: cascade.cascade_outputs(_A, _A, math.nan),
      errors.ConfigError,
      "threshold is NaN",
    ),
  ],
  "zero or negative batch size": [
    (
      lambda tmp: config_lib.validate(_config(batch_size=0)),
      errors.ConfigError,
      "config.batch_size must be > 0, got 0",
    ),
    (
      lambda tmp: data.eval_batches(
        data.Split(
          data.ArraySource(np.zeros((4, 2, 2, 1), np.uint8), np.zeros(4, np.int32)), np.arange(4)
        ),
        global_batch_size=-8,
        mean=[0.0],
        std=[1.0],
      ),
      errors.DataError,
      "global_batch_size=-8 must be positive",
    ),
  ],
  "more devices than exist, bad FSDP size": [
    (
      lambda tmp: sharding.make_mesh(num_devices=4096),
      errors.ConfigError,
      "num_devices=4096 but ",
    ),
    (
      lambda tmp: sharding.make_mesh(fsdp=3),
      errors.ConfigError,
      "fsdp=3 must be a positive divisor of the ",
    ),
  ],
  "bad multi-process flags": [
    (
      lambda tmp: distributed.settings_from("on", "localhost:1234", 2, 5, env={}),
      errors.DistributedError,
      "process_id=5 is not in [0, 2)",
    )
  ],
  "unknown dataset, or not prepared in `data_dir`": [
    (
      lambda tmp: data.load_dataset("cifar10", tmp),
      errors.DataError,
      "dataset 'cifar10' is not prepared in ",
    )
  ],
  "Fashion-MNIST files missing, no `apt-get`": [
    (
      lambda tmp: _without_apt_get(lambda: embedded._download_deb(tmp, tmp / "target")),
      errors.DataError,
      "apt-get/dpkg-deb not found: install Debian's dataset-fashion-mnist package",
    )
  ],
  "corrupt idx file": [
    (
      lambda tmp: embedded.read_idx(_gzipped(tmp / "x.gz", b"\0\0\x08\x01" + b"\0" * 20), rank=3),
      errors.DataError,
      "bad idx magic 0x801, expected 0x803",
    ),
    # Not gzip at all, and missing: the library's errors, caught where the file is read.
    (
      lambda tmp: embedded.read_idx(helpers_write(tmp / "plain.gz", b"not gzip"), rank=1),
      errors.DataError,
      "cannot read the idx file (BadGzipFile: ",
    ),
    (
      lambda tmp: embedded.read_idx(tmp / "missing.gz", rank=1),
      errors.DataError,
      "cannot read the idx file (FileNotFoundError: ",
    ),
  ],
  "empty validation split (`val_size=0`) or none left to train (`val_size` ≥ train size)": [
    (
      lambda tmp: config_lib.validate(_config(val_size=0)),
      errors.ConfigError,
      "config.val_size must be > 0, got 0",
    )
  ],
  "images that do not fit the model": [
    (
      lambda tmp: models.get_model("cnn_xs", 10, image_size=28, in_channels=3)(
        np.zeros((2, 28, 28, 1), np.float32)
      ),
      errors.InputError,
      "expects images of shape (28, 28, 3), got (28, 28, 1)",
    )
  ],
  "workdir holding a checkpoint of another architecture": [
    (
      lambda tmp: checkpoint.check_compatible(
        {"model_name": "cnn_xs"}, {"model_name": "cnn_s"}, where="runs/x"
      ),
      errors.CheckpointError,
      "checkpoint in 'runs/x' has model_name='cnn_xs' but the config asks for 'cnn_s'; ",
    )
  ],
  "`init_from` a checkpoint of another class count": [
    (
      lambda tmp: checkpoint.check_compatible(
        {"model_name": "cnn_xs", "num_classes": 5},
        {"model_name": "cnn_xs", "num_classes": 10},
        where="runs/x",
      ),
      errors.CheckpointError,
      "has num_classes=5 but the config asks for 10; ",
    )
  ],
  "workdir that is a file, or under a file (or a read-only folder)": [
    (
      lambda tmp: cli.check_output_dir(helpers_write(tmp / "a_file", b"x") / "run", "--workdir"),
      errors.FileError,
      "/a_file' is a file, not a directory",
    ),
    (
      lambda tmp: cli.check_output_dir(helpers_write(tmp / "a_file", b"x"), "--workdir"),
      errors.FileError,
      "/a_file' is a file, not a directory",
    ),
  ],
  "workdir missing, empty, or not an orbax checkpoint": [
    (
      lambda tmp: checkpoint.read_meta(str(tmp / "missing")),
      errors.CheckpointError,
      "/missing' does not exist",
    ),
    (
      lambda tmp: checkpoint.read_meta(str(tmp)),
      errors.CheckpointError,
      "holds no checkpoints (train into it first)",
    ),
  ],
  "output directory / `--output` under a file": [
    (
      lambda tmp: cli.check_output_dir(
        helpers_write(tmp / "a_file", b"x") / "results", "config.output_dir"
      ),
      errors.FileError,
      "config.output_dir '",
    ),
  ],
  "duo members with different class counts": [
    (
      lambda tmp: duo.combine_mode([_A, _B], "weighted", joint_weights=[1.0, 0.5]),
      errors.InputError,
      "member 1's logits have 5 classes but member 0's have 10",
    ),
    (
      lambda tmp: temperature.fit_temperatures([_A, _B], _Y),
      errors.InputError,
      "member 1 has 5 classes but member 0 has 10",
    ),
  ],
  "logits / labels with different N": [
    (
      lambda tmp: temperature.fit_temperatures([_A, _A[:-3]], _Y),
      errors.InputError,
      "member 1 has 37 examples but member 0 has 40",
    ),
    (
      lambda tmp: temperature.fit_temperatures([_A], _Y[:-1]),
      errors.InputError,
      "labels have shape (39,); expected (40,)",
    ),
    (
      lambda tmp: metrics.evaluate(_A[:17], _Y[:16]),
      errors.InputError,
      "labels shape (16,) does not match the 17 rows of logits",
    ),
  ],
  "logits of the wrong rank (1-D, 3-D, an unstacked [N, C])": [
    (
      lambda tmp: metrics.evaluate(_A[:17, 0], _Y[:17]),
      errors.InputError,
      "logits must be 2-D [N, C], got shape (17,)",
    ),
    (
      lambda tmp: temperature.fit_temperatures(_A, _Y),
      errors.InputError,
      "a single logits array must be stacked [m, N, C], ",
    ),
    (
      lambda tmp: duo.combine(_A, [1.0]),
      errors.InputError,
      "logits must be stacked [m, N, C] ",
    ),
  ],
  "wrong number of weights, NaN weights": [
    (
      lambda tmp: duo.combine_mode(np.stack([_A, _A]), "unweighted", single_weights=[1.0] * 3),
      errors.InputError,
      "single_weights have shape (3,); expected (2,), one per member",
    ),
    (
      lambda tmp: duo.combine_mode(np.stack([_A, _A]), "weighted", joint_weights=[np.nan, 1.0]),
      errors.InputError,
      "joint_weights must be finite, got [nan, 1.0] ",
    ),
  ],
  "NaN/inf logits": [
    (
      lambda tmp: temperature.fit_temperatures([np.where(_A > 2.5, np.nan, _A)], _Y),
      errors.InputError,
      "non-finite values (NaN or inf) (member 0: ",
    ),
    (
      lambda tmp: metrics.evaluate(np.where(_A > 2.5, np.inf, _A), _Y),
      errors.InputError,
      "non-finite values (NaN or inf)",
    ),
  ],
  "labels out of range for the class count": [
    (
      lambda tmp: temperature.fit_temperatures([_A], np.where(np.arange(40) < 1, -1, _Y)),
      errors.InputError,
      "labels must lie in [0, 10); found min -1, max ",
    ),
    (
      lambda tmp: metrics.evaluate(_A, np.where(np.arange(40) < 3, 10, _Y)),
      errors.InputError,
      "labels have 3 values outside [0, 10)",
    ),
    (
      lambda tmp: cascade.gatekeeper_loss(_A, np.where(np.arange(40) < 3, 10, _Y), 0.5),
      errors.InputError,
      "labels have 3 values outside [0, 10)",
    ),
  ],
  "float labels, string arrays": [
    (
      lambda tmp: temperature.fit_temperatures([_A], _Y.astype(np.float32)),
      errors.InputError,
      "labels must be integers, got dtype float32",
    ),
    (
      lambda tmp: temperature.fit_temperatures([_A.astype(str)], _Y),
      errors.InputError,
      "member 0 has dtype <U",
    ),
    (
      lambda tmp: metrics.evaluate(_A.astype(str), _Y),
      errors.InputError,
      "logits must be real numbers, got dtype <U",
    ),
  ],
  "integer logits": [
    (
      lambda tmp: temperature.fit_temperatures([_A.astype(np.int32)], _Y),
      errors.InputError,
      "member 0 has dtype int32; expected floating logits",
    )
  ],
  "ragged nested lists": [
    (
      lambda tmp: metrics.evaluate([[0.1, 0.2], [0.3]], [0, 1]),
      errors.InputError,
      "logits must be a rectangular array (rows of equal length)",
    )
  ],
  "empty split": [
    (
      lambda tmp: temperature.fit_temperatures([_A[:0]], _Y[:0]),
      errors.InputError,
      "empty validation split (N = 0)",
    ),
    (
      lambda tmp: metrics.evaluate(np.zeros((0, 5), np.float32), np.zeros(0, np.int32)),
      errors.InputError,
      "logits are empty (shape (0, 5))",
    ),
  ],
  "unknown solver": [
    (
      lambda tmp: temperature.fit_temperatures([_A], _Y, solver="bfgs"),
      errors.ConfigError,
      "unknown solver 'bfgs'; valid: 'jaxopt', 'optax'",
    )
  ],
  "a pretrained file of another family, layout or class count": [
    (
      lambda tmp: convert.load_pretrained(models.get_model("resnet8", 10), _vit_file(tmp)),
      errors.WeightsMismatchError,
      "holds a ViT, but the model resnet8 is a ResNet",
    )
  ],
  "a damaged or foreign duo file": [
    (
      lambda tmp: duojax.load_duo(helpers_write(tmp / "duo.json", b"{}")),
      errors.FileError,
      'is not a duo file (no "format": ',
    ),
    (
      lambda tmp: duojax.load_duo(helpers_write(tmp / "duo.json", b"{not json")),
      errors.FileError,
      "cannot read duo file ",
    ),
  ],
  "a risk the validation rows cannot guarantee (r below what N rows reach)": [
    (
      lambda tmp: duojax.guaranteed_threshold(np.linspace(0, 1, 100), np.ones(100, bool), 0.01),
      errors.InputError,
      "the smallest risk any 100 rows can reach at delta=0.05 is 0.09411",
    )
  ],
}

# Rows whose behaviour only a CLI run, a prepared data set or an evaluation
# config shows: the tests that cover them (test_data_set_rows below takes the
# data set rows through the Python API as well).
_ELSEWHERE = {
  "unknown `--config.KEY` (typo)": "test_bad_inputs.py::test_cli_evaluate_unknown_config_key_is_one_line",
  "config override of the wrong type (`--config.batch_size=abc`)": (
    "test_bad_inputs.py::test_cli_train_config_override_of_the_wrong_type"
  ),
  "damaged prepared data (array_record shard)": "test_error_catalogue.py::test_data_set_rows",
  "damaged `dataset_info.json`": "test_error_catalogue.py::test_data_set_rows",
  "corrupt cache file (`duojax_cache/*.npz`, `stats_*.json`)": (
    "test_bad_inputs.py::test_corrupt_cache_file_is_named"
  ),
  "`--resume` without a checkpoint": "test_trainer.py::test_cli_train_bad_input_leaves_no_workdir",
  "neither or both of `--config` / `--workdirs`": (
    "test_evaluate.py::test_evaluate_needs_exactly_one_mode"
  ),
  "a member's workdir missing": "test_evaluate.py::test_evaluate_missing_member_workdir",
  "large model and sidekick with different class counts (other label sets)": (
    "test_bad_inputs.py::test_cli_evaluate_duo_of_models_with_different_class_counts"
  ),
  "Gatekeeper member not trained with `loss=gatekeeper`": (
    "test_evaluate.py::test_evaluate_gatekeeper_member_must_be_gatekeeper_tuned"
  ),
  "image files that do not decode (truncated, empty, not an image)": (
    "test_import_folder.py::test_bad_files_are_left_out_warned_about_and_listed"
  ),
  "logits files of different images or row orders": (
    "test_logits_members.py::test_members_must_hold_the_same_rows"
  ),
  # A FileError: the test checks its class and errno.
  "disk full while writing results": (
    "test_bad_inputs.py::test_results_on_a_full_disk_leave_no_partial_output"
  ),
}


def _vit_file(tmp):
  path = str(tmp / "vit.safetensors")
  convert.export_pretrained(models.get_model("vit_mu4", 10, rngs=0, image_size=16), path, "timm")
  return path


def helpers_write(path, payload: bytes):
  path.write_bytes(payload)
  return path


def _without_apt_get(call):
  real = shutil.which
  shutil.which = lambda name, *a, **k: None if name in ("apt-get", "dpkg-deb") else real(name)
  try:
    return call()
  finally:
    shutil.which = real


def test_every_catalogue_row_is_tested():
  rows = _catalogue_rows()
  assert len(rows) > 30
  untested = [row for row in rows if row not in _API and row not in _ELSEWHERE]
  assert untested == [], "catalogue rows without a test: add them to _API or _ELSEWHERE"
  gone = sorted((set(_API) | set(_ELSEWHERE)) - set(rows))
  assert gone == [], "rows no longer in the catalogue"
  for where in _ELSEWHERE.values():
    path, name = where.split("::")
    with open(os.path.join(ROOT, "tests", path)) as f:
      assert re.search(rf"^def {name}\(", f.read(), re.M), f"{where} is gone"


@pytest.mark.parametrize(
  "call, kind, message",
  [case for cases in _API.values() for case in cases],
  ids=[f"{row[:40]}-{i}" for row, cases in _API.items() for i in range(len(cases))],
)
def test_catalogue_row(tmp_path, call, kind, message):
  with pytest.raises(errors.USER_ERRORS) as error:
    call(tmp_path)
  assert type(error.value) is kind, f"{type(error.value).__name__}: {error.value}"
  text = str(error.value)
  assert text and "\n" not in text, text
  assert message in text, text


def test_data_set_rows(tmp_path, learnable_data_dir):
  """Damaged prepared data and metadata, and a val_size that leaves nothing to train on."""
  with pytest.raises(errors.DataError) as error:
    data.load_dataset("fashion_mnist", learnable_data_dir, val_size=600)
  assert "val_size=600 must be in [1, 599] for the 600 training examples" in str(error.value)

  copy = tmp_path / "tfds"
  shutil.copytree(learnable_data_dir, copy)
  version = copy / "duojax_fashion_mnist" / "1.0.0"
  shutil.rmtree(version / "duojax_cache", ignore_errors=True)  # so the shard must be read
  [shard] = version.glob("*-train.array_record-*")
  shard.write_bytes(os.urandom(1000))
  with pytest.raises(errors.DataError) as error:
    data.load_dataset("fashion_mnist", copy, val_size=100)
  assert str(error.value).startswith(f"cannot read the prepared data in {version} (")

  (version / "dataset_info.json").write_text("{")
  with pytest.raises(errors.DataError) as error:
    data.load_dataset("fashion_mnist", copy, val_size=100)
  assert f"dataset 'fashion_mnist' in {copy} has unreadable metadata (" in str(error.value)


# ----------------------------------------------------------------------------
# The catalogue of classes, and how the CLIs report user errors and bugs.


def test_user_errors_are_value_errors_or_runtime_errors():
  for kind in errors.USER_ERRORS:
    assert issubclass(kind, (ValueError, RuntimeError)), kind
  # Plain standard errors are bugs: they keep their traceback.
  assert not {ValueError, OSError, KeyError, IndexError, TypeError} & set(errors.USER_ERRORS)
  # Every class the module defines is a user error the CLIs print as one line.
  defined = [
    v for v in vars(errors).values() if isinstance(v, type) and v.__module__ == errors.__name__
  ]
  assert len(defined) >= 9
  assert set(defined) <= set(errors.USER_ERRORS)


def test_file_error_keeps_the_errno_of_a_failed_write():
  error = errors.FileError(28, "cannot write x: No space left on device")
  assert isinstance(error, OSError) and isinstance(error, ValueError)
  assert error.errno == 28 and str(error) == "[Errno 28] cannot write x: No space left on device"


@pytest.fixture
def report(monkeypatch, capsys):
  """`cli.report_errors(main, ["prog"])` -> (exit status, stderr lines)."""
  # cli.fail silences sys.unraisablehook for good; the test process keeps its own.
  monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)

  def run(main):
    with pytest.raises(SystemExit) as exit_:
      cli.report_errors(main, ["prog"])
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()

  return run


@pytest.mark.parametrize(
  "kind",
  [k for k in errors.USER_ERRORS if k.__module__ == errors.__name__],
  ids=lambda k: k.__name__,
)
def test_typed_user_error_is_one_line(report, kind):
  def main(argv):
    raise kind("the input is bad:\n  fix it")

  code, lines = report(main)
  assert code == 1
  assert lines == ["error: the input is bad: fix it"]


_BUGS = {
  "IndexError": lambda: [][1],
  "KeyError": lambda: {}["missing"],
  "TypeError": lambda: len(3),
  "AttributeError": lambda: None.shape,
  # A plain ValueError (numpy's, here) is a bug too: only the typed classes are user errors.
  "numpy ValueError": lambda: np.zeros(3).reshape(2, 2),
}


@pytest.mark.parametrize("bug", list(_BUGS.values()), ids=list(_BUGS))
def test_bug_keeps_its_traceback_and_says_it_is_a_bug(report, bug):
  def main(argv):
    bug()

  code, lines = report(main)
  assert code == 1
  assert lines[0] == "Traceback (most recent call last):"
  assert any(line.strip().endswith("in main") for line in lines)
  assert lines[-1] == cli.BUG_LINE
  assert not any(line.startswith("error: ") for line in lines)


@pytest.mark.slow
def test_cli_bug_in_train_py_shows_the_traceback_and_the_bug_line(tmp_path, learnable_data_dir):
  # train.py with a training loop that fails the way a bug does, not the way bad input does.
  wrapper = tmp_path / "buggy_train.py"
  wrapper.write_text(
    "import runpy, sys\n"
    "from duojax.train import loop\n"
    "def train_and_evaluate(*args, **kwargs):\n"
    "  return [][0]\n"
    "loop.train_and_evaluate = train_and_evaluate\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
  )
  workdir = tmp_path / "run"
  result = helpers.run_script(
    str(wrapper), os.path.join(ROOT, "train.py"), *cli_train_args(learnable_data_dir, workdir)
  )
  assert result.returncode == 1, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1] == cli.BUG_LINE, result.stderr[-2000:]
  assert "Traceback (most recent call last):" in result.stderr
  assert "IndexError: list index out of range" in result.stderr


def test_library_raises_no_plain_value_or_os_errors():
  """Every user error in the library is typed: a plain ValueError or OSError
  raised by duojax itself would reach the CLIs as a bug report."""
  allowed = {
    # A parse that raises ValueError to its own `except ValueError` a line below.
    "duojax/config_lib.py": 1,
  }
  plain = {"ValueError", "OSError", "IOError", "FileNotFoundError", "PermissionError"}
  paths = sorted(glob.glob(os.path.join(ROOT, "duojax", "**", "*.py"), recursive=True))
  paths += [os.path.join(ROOT, "train.py"), os.path.join(ROOT, "evaluate.py")]
  found = {}
  for path in paths:
    where = os.path.relpath(path, ROOT)
    with open(path) as f:
      tree = ast.parse(f.read())
    for node in ast.walk(tree):
      if (
        isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and isinstance(node.exc.func, ast.Name)
        and node.exc.func.id in plain
      ):
        found.setdefault(where, []).append(f"{node.lineno}: {node.exc.func.id}")
  extra = {w: lines for w, lines in found.items() if len(lines) > allowed.get(w, 0)}
  assert extra == {}


@pytest.mark.slow
def test_cli_typed_error_from_another_main_is_one_line(tmp_path):
  # python -m duojax.data on a data_dir under a regular file: the FileError of a
  # folder it cannot make, one line through cli.report_errors.
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  result = subprocess.run(
    [sys.executable, "-m", "duojax.data", str(blocker / "data")],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert_one_line_error(result, 1, f"cannot prepare fashion_mnist in {blocker / 'data'}: ")
  assert blocker.read_text() == "x"
