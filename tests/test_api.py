"""The Python API (duojax/api.py): the README's example runs, and the API is the
layer underneath."""

import json
import pathlib
import re

import numpy as np
import pytest
from flax import nnx

import duojax
from duojax import models
from duojax.core import mahalanobis, temperature

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _members(n=600, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 7, n)
  signal = np.eye(7)[labels] * 2.5
  return [
    (signal + rng.normal(size=(n, 7))).astype(np.float32),
    (0.5 * signal + rng.normal(size=(n, 7))).astype(np.float32),
  ], labels


def test_the_readme_example_runs(tmp_path, monkeypatch):
  text = README.read_text()
  start = text.index("## Use it from Python")
  section = text[start : text.index("\n## ", start + 1)]
  blocks = re.findall(r"```python\n(.*?)```", section, re.S)
  assert len(blocks) == 2  # the duo, and the Mahalanobis score
  monkeypatch.chdir(tmp_path)
  for code in blocks:
    exec(compile(code.replace("/tmp/duo.json", str(tmp_path / "duo.json")), "README", "exec"), {})


def test_fit_duo_is_the_joint_temperature_fit():
  logits, labels = _members()
  duo = duojax.fit_duo(logits, labels)
  np.testing.assert_allclose(duo.weights, temperature.fit_temperatures(logits, labels), rtol=1e-6)
  assert duo.weights[1] > 0  # an informative sidekick gets weight


def test_the_duos_outputs_follow_their_definitions():
  logits, labels = _members()
  duo = duojax.fit_duo(logits, labels)
  z = duo.weights[0] * logits[0] + duo.weights[1] * logits[1]
  np.testing.assert_allclose(duo.logits(logits), z, rtol=1e-5, atol=1e-5)
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  np.testing.assert_allclose(duo.probabilities(logits), p, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(duo.predict(logits), z.argmax(-1))
  np.testing.assert_allclose(duo.uncertainty(logits), 1 - p.max(-1), atol=1e-6)
  large_pred = logits[0].argmax(-1)
  np.testing.assert_allclose(
    duo.confidence(logits, score="large_prediction"), p[np.arange(len(p)), large_pred], atol=1e-6
  )
  with pytest.raises(ValueError, match="score='entropy'"):
    duo.confidence(logits, score="entropy")
  with pytest.raises(ValueError, match="2 members but 1 logits arrays"):
    duo.logits(logits[:1])


def test_save_and_load_round_trip_and_bad_files_are_one_line_errors(tmp_path):
  logits, labels = _members()
  duo = duojax.fit_duo(logits, labels, names=["a", "b"])
  duo.save(tmp_path / "duo.json")
  back = duojax.load_duo(tmp_path / "duo.json")
  np.testing.assert_array_equal(back.weights, duo.weights)
  assert back.names == ("a", "b")
  cases = {
    "not json": "{",
    "other": json.dumps({"format": "x"}),
    "version": json.dumps({"format": "duojax.duo", "version": 9, "weights": [1.0]}),
    "nan": '{"format": "duojax.duo", "version": 1, "weights": [NaN]}',
    "names": json.dumps(
      {"format": "duojax.duo", "version": 1, "weights": [1.0], "names": ["a", "b"]}
    ),
  }
  for name, text in cases.items():
    path = tmp_path / f"{name}.json"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
      duojax.load_duo(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value), name


def test_score_matches_the_metrics_suite_and_adds_ood():
  logits, labels = _members()
  result = duojax.score(logits[0], labels, ood_logits=logits[1][:100] * 0.1)
  assert result["acc"] == pytest.approx(float(np.mean(logits[0].argmax(-1) == labels)))
  assert 0.5 < result["ood"]["auroc"] <= 1.0  # flattened logits are less confident


def test_fused_forward_runs_models_in_one_program():
  members = [
    models.get_model("cnn_xs", 4, rngs=nnx.Rngs(i), image_size=12, in_channels=1) for i in range(2)
  ]
  forward, states = duojax.fused_forward(members)
  x = np.random.default_rng(0).normal(size=(3, 12, 12, 1)).astype(np.float32)
  out = np.asarray(forward(states, x))
  assert out.shape == (2, 3, 4)
  np.testing.assert_allclose(out[1], np.asarray(members[1](x, train=False)[0]), atol=1e-5)


def test_fused_forward_hands_back_the_large_models_features():
  members = [
    models.get_model("cnn_xs", 4, rngs=nnx.Rngs(i), image_size=12, in_channels=1) for i in range(2)
  ]
  forward, states = duojax.fused_forward(members, with_features=True)
  x = np.random.default_rng(1).normal(size=(3, 12, 12, 1)).astype(np.float32)
  logits, features = forward(states, x)
  alone, out = members[0](x, train=False)
  assert np.asarray(logits).shape == (2, 3, 4)
  np.testing.assert_allclose(logits[0], alone, atol=1e-5)
  np.testing.assert_allclose(features, out["pre_logits"], atol=1e-5)


def test_mahalanobis_through_the_api_is_the_core_detector():
  rng = np.random.default_rng(3)
  labels = rng.integers(0, 3, 300)
  means = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
  train = means[labels] + rng.normal(size=(300, 4))
  detector = duojax.fit_mahalanobis(train, labels)  # num_classes from the labels
  assert detector.means.shape == (3, 4)
  near, far = means[[0, 1, 2]] + 0.1, means[[0, 1, 2]] + np.array([0.0, 0.0, 9.0, 9.0])
  near_scores = duojax.mahalanobis_score(detector, near)
  np.testing.assert_allclose(
    near_scores, mahalanobis.score(mahalanobis.fit(train, labels, 3), near), rtol=1e-6
  )
  assert isinstance(near_scores, np.ndarray) and np.all(
    near_scores > duojax.mahalanobis_score(detector, far)
  )
  ood = duojax.score_ood(near_scores, duojax.mahalanobis_score(detector, far))
  assert ood == {"auroc": 1.0, "aupr": 1.0, "fpr95": 0.0}
  with pytest.raises(ValueError, match="classes have no training rows"):
    duojax.fit_mahalanobis(train, labels, num_classes=4)
