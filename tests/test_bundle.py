"""The bundle (duojax/bundle): a fitted duo written as one folder, read back into
duojax, and run through its exported program with jax alone."""

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

import duojax
from duojax import bundle
from duojax.bundle import exported, serve, threshold
from duojax.bundle import format as bundle_format
from duojax.data.preprocess import InputSpec, prepare
from duojax.errors import FileError, InputError
from duojax.models.spec import ModelSpec

CLASSES = ["cat", "dog", "fox", "owl", "yak"]
SERVE = os.path.join(os.path.dirname(bundle.__file__), "serve.py")


def _members():
  """A bfloat16 ViT large model at 24 px and a float32 ResNet sidekick at 16 px,
  with other statistics, crops and filters."""
  large = ModelSpec("vit_mu4", {"dtype": "bfloat16"}, len(CLASSES), (24, 24, 3))
  sidekick = ModelSpec("resnet8", {"width": 4}, len(CLASSES), (16, 16, 3))
  return [
    bundle.BundleMember(
      large.build(0), large, InputSpec(24, (0.5,) * 3, (0.5,) * 3, interpolation="bicubic")
    ),
    bundle.BundleMember(
      sidekick.build(1), sidekick, InputSpec(16, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3), "x", 0.8)
    ),
  ]


def _validation(n=200, seed=0):
  rng = np.random.default_rng(seed)
  confidence = rng.uniform(0.2, 1.0, n).astype(np.float32)
  return confidence, rng.uniform(size=n) < confidence


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  members = _members()
  duo = duojax.Duo(np.array([0.8, 0.45], np.float32), ("large", "sidekick"))
  path = tmp_path_factory.mktemp("bundles") / "duo"
  bundle.write_bundle(
    path,
    members,
    duo,
    CLASSES,
    validation=_validation(),
    provenance={"dataset": "toy", "split": "val", "rows": 200},
    metrics={"nll": 1.2},
  )
  return str(path), members, duo


def _images(b, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (b, 24, 24, 3), dtype=np.uint8)


def test_predict_is_the_fused_forward_and_the_duo(written):
  path, members, duo = written
  loaded = duojax.load_bundle(path)
  images = _images(5)
  out = loaded.predict(images)
  crop = max(m.inputs.crop_fraction for m in members)
  forward, states = duojax.fused_forward(
    [m.model for m in members],
    preprocess=[functools.partial(prepare, spec=m.inputs, source_crop=crop) for m in members],
  )
  stack = np.asarray(forward(states, images))
  np.testing.assert_allclose(out["probabilities"], duo.probabilities(stack), atol=1e-6)
  np.testing.assert_allclose(out["confidence"], duo.confidence(stack), atol=1e-6)
  np.testing.assert_array_equal(out["class_index"], duo.predict(stack))
  np.testing.assert_array_equal(out["disagree"], stack[0].argmax(-1) != stack[1].argmax(-1))
  assert out["class_index"].shape == out["abstain"].shape == (5,)
  assert out["abstain"].dtype == out["disagree"].dtype == bool
  with pytest.raises(InputError, match=r"uint8 \[B, 24, 24, 3\]"):
    loaded.predict(images[:, :16, :16])


def test_abstention_follows_the_threshold_and_its_rule(written, tmp_path):
  path, _, _ = written
  loaded = duojax.load_bundle(path)
  manifest = loaded.manifest
  confidence, correct = loaded.validation
  np.testing.assert_array_equal((confidence, correct), _validation())
  if manifest["threshold_rule"] == threshold.EMPIRICAL:
    assert manifest["threshold"] == threshold.empirical_threshold(confidence, correct)
  assert manifest["provenance"] == {"dataset": "toy", "split": "val", "rows": 200}
  assert manifest["validation_metrics"] == {"nll": 1.2}
  assert manifest["duojax_version"] == duojax.__version__
  loaded.threshold = float(np.median(loaded.predict(_images(8))["confidence"]))
  out = loaded.predict(_images(8))
  np.testing.assert_array_equal(out["abstain"], out["confidence"] < np.float32(loaded.threshold))
  assert 0 < out["abstain"].sum() < 8


def test_the_empirical_threshold_keeps_95_percent_accuracy():
  confidence = np.array([0.9, 0.8, 0.8, 0.7, 0.6, 0.5], np.float32)
  correct = np.array([1, 1, 1, 1, 0, 1], bool)
  assert threshold.empirical_threshold(confidence, correct) == pytest.approx(0.7)
  # Rows tied at a confidence are accepted together, never split.
  tied = np.array([1, 0, 1, 1, 1, 1], bool)
  assert threshold.empirical_threshold(confidence, tied) == pytest.approx(0.9)
  # Never 95% correct: above every confidence, so everything is abstained on.
  assert threshold.empirical_threshold(confidence, np.zeros(6, bool)) > 0.9


def _copy(path, tmp_path):
  target = tmp_path / "copy"
  shutil.copytree(path, target)
  return target


def _one_line_file_error(path, match):
  with pytest.raises(FileError, match=match) as caught:
    duojax.load_bundle(path)
  assert "\n" not in str(caught.value) and " at 0x" not in str(caught.value)


def test_damaged_or_foreign_bundles_are_one_line_file_errors(written, tmp_path):
  path, _, _ = written
  foreign = tmp_path / "foreign"
  foreign.mkdir()
  _one_line_file_error(foreign, "not a readable bundle")
  (foreign / "manifest.json").write_text('{"format": "other"}')
  _one_line_file_error(foreign, "not a bundle")
  copy = _copy(path, tmp_path)
  manifest = json.loads((copy / "manifest.json").read_text())
  (copy / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
  _one_line_file_error(copy, "version 99")
  (copy / "manifest.json").write_text(json.dumps({**manifest, "members": [{"file": 3}]}))
  _one_line_file_error(copy, "damaged bundle manifest")
  (copy / "manifest.json").write_text(json.dumps(manifest)[:-40])
  _one_line_file_error(copy, "not a readable bundle")
  (copy / "manifest.json").write_text(json.dumps(manifest))
  os.remove(copy / "members" / "1.safetensors")
  _one_line_file_error(copy, "member 1")
  from duojax.convert import safetensors_io

  arrays = safetensors_io.read(copy / "members" / "0.safetensors")[0]
  name = next(n for n in arrays if arrays[n].ndim == 2)
  arrays[name] = arrays[name][:, :1]
  safetensors_io.write(str(copy / "members" / "1.safetensors"), arrays)
  _one_line_file_error(copy, "member 1")
  safetensors_io.write(str(copy / "members" / "0.safetensors"), arrays)
  shutil.copy(os.path.join(path, "members", "1.safetensors"), copy / "members" / "1.safetensors")
  _one_line_file_error(copy, f"member 0's {name} has shape")
  shutil.copy(os.path.join(path, "members", "0.safetensors"), copy / "members" / "0.safetensors")
  np.savez(copy / "validation.npz", confidence=np.zeros(3), correct=np.zeros(4))
  _one_line_file_error(copy, "wrong shapes")


def test_writing_is_atomic(written, tmp_path, monkeypatch):
  path, members, duo = written

  def fail(*args, **kwargs):
    raise RuntimeError("lowering failed")

  monkeypatch.setattr(exported, "serialized", fail)
  target = tmp_path / "new"
  with pytest.raises(RuntimeError, match="lowering failed"):
    bundle.write_bundle(target, members, duo, CLASSES, validation=_validation())
  assert os.listdir(tmp_path) == []  # no bundle, no temporary folder
  # Over an existing bundle, a failed write leaves the old one whole.
  old = _copy(path, tmp_path)
  before = sorted(os.listdir(old))
  with pytest.raises(RuntimeError, match="lowering failed"):
    bundle.write_bundle(old, members, duo, CLASSES, validation=_validation())
  assert sorted(os.listdir(old)) == before and sorted(os.listdir(tmp_path)) == ["copy"]
  with pytest.raises(FileError, match="exists and is not a bundle"):
    bundle.write_bundle(tmp_path, members, duo, CLASSES, validation=_validation())
  with pytest.raises(InputError, match="3 class names"):
    bundle.write_bundle(target, members, duo, CLASSES[:3], validation=_validation())


def test_the_exported_cpu_program_takes_any_batch_and_matches_predict(written):
  path, _, _ = written
  loaded = duojax.load_bundle(path)
  predict = serve.load(path, "cpu")
  for b in (2, 5):
    images = _images(b, seed=b)
    want, got = loaded.predict(images), predict(images)
    for key in ("probabilities", "confidence"):
      np.testing.assert_allclose(got[key], want[key], atol=1e-5)
    for key in ("class_index", "abstain", "disagree"):
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.slow
def test_serve_runs_the_bundle_without_duojax(written, tmp_path):
  path, _, _ = written
  alone = tmp_path / "alone"
  alone.mkdir()
  shutil.copy(SERVE, alone / "serve.py")
  (alone / "duojax.py").write_text('raise ImportError("duojax is not installed here")\n')
  images = _images(3, seed=7)
  np.save(alone / "images.npy", images)
  script = textwrap.dedent(
    f"""
    import numpy as np
    try:
      import duojax
    except ImportError:
      pass
    else:
      raise SystemExit("duojax imported")
    import serve
    out = serve.load({path!r})(np.load("images.npy"))
    np.savez("out.npz", **out)
    """
  )
  env = {**os.environ, "PYTHONPATH": str(alone), "JAX_PLATFORMS": "cpu"}
  done = subprocess.run(
    [sys.executable, "-c", script], cwd=alone, env=env, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stderr[-2000:]
  got = np.load(alone / "out.npz")
  want = duojax.load_bundle(path).predict(images)
  for key in ("probabilities", "confidence"):
    np.testing.assert_allclose(got[key], want[key], atol=1e-5)
  for key in ("class_index", "abstain", "disagree"):
    np.testing.assert_array_equal(got[key], want[key])


def test_the_accelerator_programs_have_no_callbacks_and_keep_bfloat16(written):
  _, members, duo = written
  f, _ = exported.fused_program(
    [m.model for m in members], [m.inputs for m in members], duo.weights, 0.875
  )
  arrays = [a for m in members for a in exported.member_arrays(m.model)[1]]
  for platform in ("cuda", "tpu"):
    text = exported.export(f, arrays, (24, 24, 3), platform).mlir_module()
    # Host callbacks are custom calls; the only one here is the check of the batch's shape.
    targets = set(re.findall(r"custom_call @(\w+)", text))
    assert targets <= {"shape_assertion"}, targets
    for op in ("stablehlo.dot_general", "stablehlo.convolution"):
      ops = [line for line in text.splitlines() if op in line]
      assert any("bf16" in line for line in ops), (platform, op)


def test_the_bundle_layout(written):
  path, _, _ = written
  files = sorted(
    os.path.relpath(os.path.join(d, f), path) for d, _, names in os.walk(path) for f in names
  )
  assert files == [
    "duo.json",
    "exported/cpu.bin",
    "exported/cuda.bin",
    "exported/tpu.bin",
    "manifest.json",
    "members/0.safetensors",
    "members/1.safetensors",
    "validation.npz",
  ]
  assert os.path.getsize(os.path.join(path, "exported", "cpu.bin")) < 200_000
  assert bundle_format.read_manifest(path)["class_names"] == CLASSES
  assert jax.export.deserialize(
    bytearray(open(os.path.join(path, "exported", "cpu.bin"), "rb").read())
  ).platforms == ("cpu",)


def test_an_evaluation_with_a_logits_file_member_writes_no_bundle_and_says_why(capsys, tmp_path):
  from duojax.eval import bundle_output

  member = lambda kind: types.SimpleNamespace(kind=kind)
  inputs = types.SimpleNamespace(
    sidekick="sidekick", members={"large": member("workdir"), "sidekick": member("logits")}
  )
  assert bundle_output.write(inputs, None, str(tmp_path / "bundle")) is None
  assert capsys.readouterr().out == (
    "bundle: not written: the sidekick is a logits file, not a model with weights\n"
  )
  assert not os.path.exists(tmp_path / "bundle")
  inputs.sidekick = None
  assert bundle_output.why_not(inputs) == "no sidekick, so no duo"


def test_the_default_threshold_is_the_guaranteed_one_where_the_risk_is_reachable():
  selective = pytest.importorskip("duojax.core.selective")
  rng = np.random.default_rng(0)
  confidence = rng.uniform(0.5, 1.0, 3000)
  correct = rng.uniform(size=3000) < confidence**0.2
  value, rule = threshold.default_threshold(confidence, correct)
  assert rule.startswith("guaranteed_threshold(risk=0.05, delta=0.05)")
  assert value == selective.guaranteed_threshold(confidence, correct, 0.05, 0.05).threshold
  # Ten rows cannot guarantee a 5% risk: the empirical rule instead.
  value, rule = threshold.default_threshold(confidence[:10], correct[:10])
  assert rule == threshold.EMPIRICAL
  assert value == threshold.empirical_threshold(confidence[:10], correct[:10])


@pytest.mark.parametrize("method", ["guarded", "dynamic"])
def test_a_per_input_duo_bundles_and_its_program_combines_per_input(method, tmp_path):
  members = _members()
  images = _images(40, seed=3)
  crop = max(m.inputs.crop_fraction for m in members)
  forward, states = duojax.fused_forward(
    [m.model for m in members],
    preprocess=[functools.partial(prepare, spec=m.inputs, source_crop=crop) for m in members],
    with_features="all",
  )
  stack, features = forward(states, images)
  stack = np.asarray(stack)
  features = [np.asarray(f, np.float32) for f in features]
  labels = np.random.default_rng(0).integers(0, len(CLASSES), 40)
  duo = duojax.fit_duo(
    list(stack), labels, method=method, features=features if method == "dynamic" else None
  )
  path = bundle.write_bundle(
    tmp_path / "b", members, duo, CLASSES, validation=_validation(), platforms=("cpu",)
  )
  loaded = duojax.load_bundle(path)
  assert loaded.duo.method == method and loaded.manifest["duo_method"] == method
  out = loaded.predict(images)
  want = duo.probabilities(list(stack), features=features if method == "dynamic" else None)
  np.testing.assert_allclose(out["probabilities"], want, rtol=1e-4, atol=1e-5)
  program = jax.export.deserialize(
    bytearray(open(os.path.join(path, "exported/cpu.bin"), "rb").read())
  )
  arrays = [a for m in loaded.models for a in exported.member_arrays(m)[1]]
  served = np.asarray(program.call(arrays, images)[1])
  if method == "guarded":
    # The 40 images are one batch for the duo's alarm, which the bundle holds; an
    # exported program (no alarm in it) computes the rows of an unflagged batch.
    assert loaded.guards_shifts and loaded.shift_alarm.null.tolist() == duo.alarm.null.tolist()
    shifted, _ = loaded.shift_check(images)
    np.testing.assert_array_equal(duo.shifted_rows(list(stack)), shifted)
    for flag in (False, True):
      np.testing.assert_allclose(
        loaded.predict(images, shifted=flag)["probabilities"],
        duo.probabilities(list(stack), shifted=flag),
        rtol=1e-4,
        atol=1e-5,
      )
    out = loaded.predict(images, shifted=False)
  np.testing.assert_allclose(served, out["probabilities"], rtol=1e-5, atol=1e-6)
