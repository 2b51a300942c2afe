"""The per-input duos (duojax.core.per_input_duo): dynamic, entropy-weighted and guarded,
against plain-numpy references, on synthetic members built to need them, and through the API."""

import json

import numpy as np
import pytest

import duojax
from duojax.core import dynamic_duo, entropy_duo, guarded_duo, temperature
from duojax.errors import ConfigError, FileError, InputError


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _nll(log_p, y):
  return -log_p[np.arange(len(y)), y]


def _log_softmax(z):
  return np.log(_softmax(np.asarray(z, np.float64)))


def _halves(n, seed, classes=10):
  """Member A is right on half 0, member B on half 1; A's first feature says which half."""
  rng = np.random.default_rng(seed)
  y, half = rng.integers(0, classes, n), rng.integers(0, 2, n)
  onehot = np.eye(classes)[y]
  za = np.where(half[:, None] == 0, 4 * onehot, 0) + rng.normal(size=(n, classes))
  zb = np.where(half[:, None] == 1, 4 * onehot, 0) + rng.normal(size=(n, classes))
  fa = np.stack([half + 0.3 * rng.normal(size=n), rng.normal(size=n)], 1)
  fb = rng.normal(size=(n, 3))
  return [za.astype(np.float32), zb.astype(np.float32)], y, [fa.astype(np.float32), fb]


def _pair(n, seed, *, sidekick_wrong=0.0, large_noise=1.0, classes=10):
  """A sharp large model and a weaker sidekick; `sidekick_wrong` of the rows get a
  sidekick that is confidently wrong (a shift that breaks the sidekick)."""
  rng = np.random.default_rng(seed)
  y = rng.integers(0, classes, n)
  large = 3.0 * np.eye(classes)[y] + large_noise * rng.normal(size=(n, classes))
  sidekick = 1.5 * np.eye(classes)[y] + rng.normal(size=(n, classes))
  broken = rng.uniform(size=n) < sidekick_wrong
  wrong = (y + rng.integers(1, classes, n)) % classes
  sidekick[broken] = 6.0 * np.eye(classes)[wrong[broken]] + rng.normal(size=(broken.sum(), classes))
  return [large.astype(np.float32), sidekick.astype(np.float32)], y


def test_dynamic_duo_trusts_the_member_its_features_say_is_right():
  val, y_val, f_val = _halves(3000, 0)
  test, y_test, f_test = _halves(3000, 1)
  w = np.asarray(temperature.fit_temperatures(val, y_val))
  weighted = _nll(_log_softmax(np.einsum("m,mnc->nc", w, np.stack(test))), y_test).mean()
  params = dynamic_duo.fit(val, y_val, f_val)
  dynamic = _nll(_log_softmax(np.asarray(dynamic_duo.logits(params, test, f_test))), y_test).mean()
  assert dynamic < 0.5 * weighted, (dynamic, weighted)
  # On half 0 the large model (A) gets the lower temperature, on half 1 the sidekick.
  phi, _ = dynamic_duo.inputs_of(test, f_test)
  temps = np.asarray(dynamic_duo.temperatures(params, phi))
  half = f_test[0][:, 0] > 0.5
  assert np.median(temps[~half, 0]) < np.median(temps[~half, 1])
  assert np.median(temps[half, 1]) < np.median(temps[half, 0])
  # Without features it falls back to the logits' summaries, and still adapts.
  fallback = dynamic_duo.fit(val, y_val)
  assert fallback.source == dynamic_duo.LOGITS
  nll = _nll(_log_softmax(np.asarray(dynamic_duo.logits(fallback, test))), y_test).mean()
  assert nll < weighted


def test_dynamic_duo_matches_its_numpy_formula_and_starts_at_the_weighted_duo():
  val, y_val, f_val = _halves(500, 2)
  # With an overwhelming penalty the kernel stays 0: the weighted duo's temperatures.
  stiff = dynamic_duo.fit(val, y_val, f_val, l2=1e6)
  w = np.asarray(temperature.fit_temperatures(val, y_val))
  phi, _ = dynamic_duo.inputs_of(val, f_val)
  np.testing.assert_allclose(
    np.asarray(dynamic_duo.temperatures(stiff, phi)), 1 / w + 0 * phi[:, :2], rtol=2e-3
  )
  params = dynamic_duo.fit(val, y_val, f_val)
  x = (phi - params.mean) / params.scale @ params.projection
  temps = np.log1p(np.exp(x @ params.kernel + params.bias)) + dynamic_duo.T_MIN
  want = val[0] / temps[:, :1] + val[1] / temps[:, 1:]
  np.testing.assert_allclose(
    np.asarray(dynamic_duo.logits(params, val, f_val)), want, rtol=1e-4, atol=1e-4
  )
  with pytest.raises(InputError, match="fit on features"):
    dynamic_duo.logits(params, val)  # fit with features, applied without


def test_entropy_weights_match_numpy_and_follow_the_surer_member():
  members, y = _pair(800, 3)
  params = entropy_duo.fit(members, y)
  h = np.stack([
    -(_softmax(s * z) * _log_softmax(s * z)).sum(-1) for s, z in zip(params.single_weights, members)
  ])  # fmt: skip
  alpha = 2 * np.exp(-h) / np.exp(-h).sum(0)
  want = sum(w * a[:, None] * z for w, a, z in zip(params.weights, alpha, members))
  np.testing.assert_allclose(
    np.asarray(entropy_duo.logits(params, members)), want, rtol=1e-4, atol=1e-4
  )
  assert np.allclose(alpha.mean(0), 1.0) and (alpha > 0).all()
  # A member made unsure on some rows loses its say there.
  flat = [members[0].copy(), members[1]]
  flat[0][:100] *= 0.05
  a = np.asarray(entropy_duo.alphas(params.single_weights, flat))
  assert a[0, :100].mean() < a[0, 100:].mean()


def _reference_parts(params, members):
  """log p of the weighted duo and of large+TS, in numpy, from the fitted weights."""
  stack = np.stack(members)
  duo_log_p = _log_softmax(np.einsum("m,mnc->nc", params.duo_weights, stack))
  return duo_log_p, _log_softmax(params.single_weights[0] * stack[0])


def test_the_guarded_duo_is_the_numpy_mixture_and_never_far_worse_than_the_large_model():
  val, y_val = _pair(3000, 4)
  params = guarded_duo.fit(val, y_val)
  # Under a shift that breaks the sidekick on 60% of the rows (confidently wrong).
  test, y = _pair(3000, 5, sidekick_wrong=0.6)
  duo_log_p, large_log_p = _reference_parts(params, test)
  g = np.asarray(guarded_duo.gate(params, test))
  want = np.log(g[:, None] * np.exp(duo_log_p) + (1 - g[:, None]) * np.exp(large_log_p))
  got = np.asarray(guarded_duo.log_probabilities(params, test))
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-4)
  guarded, duo, large = (_nll(p, y) for p in (got, duo_log_p, large_log_p))
  # The convexity bound, row by row, and never more than -log(1 - g) above large+TS.
  assert (guarded <= g * duo + (1 - g) * large + 1e-4).all()
  assert (guarded - large <= -np.log1p(-g) + 1e-4).all()
  assert duo.mean() > large.mean() + 0.3  # the weighted duo is badly hurt here
  # It avoids most of that loss (the rest: broken rows whose large model is unsure).
  assert guarded.mean() - large.mean() < 0.35 * (duo.mean() - large.mean())


def test_the_guarded_duo_keeps_the_duos_gain_where_the_large_model_breaks():
  val, y_val = _pair(3000, 6)
  params = guarded_duo.fit(val, y_val)
  for shifted in (False, True):  # in distribution, and with a large model gone noisy
    test, y = _pair(3000, 7, large_noise=2.5 if shifted else 1.0)
    duo, large = (_nll(p, y).mean() for p in _reference_parts(params, test))
    guarded = _nll(np.asarray(guarded_duo.log_probabilities(params, test)), y).mean()
    assert duo < large
    assert large - guarded >= 0.5 * (large - duo), (shifted, guarded, duo, large)


def test_on_a_flagged_batch_the_guarded_duo_is_the_equal_mixture_with_its_bounds():
  val, y_val = _pair(3000, 4)
  params = guarded_duo.fit(val, y_val)
  test, y = _pair(1000, 5, sidekick_wrong=0.3)
  duo_log_p, large_log_p = _reference_parts(params, test)
  flags = np.arange(1000) % 3 == 0  # any rows may be flagged
  got = np.asarray(guarded_duo.log_probabilities(params, test, flags))
  half = np.log(0.5 * np.exp(duo_log_p) + 0.5 * np.exp(large_log_p))
  np.testing.assert_allclose(got[flags], half[flags], rtol=2e-4, atol=1e-4)
  np.testing.assert_array_equal(
    got[~flags], np.asarray(guarded_duo.log_probabilities(params, test))[~flags]
  )
  np.testing.assert_array_equal(np.asarray(guarded_duo.gate(params, test, flags))[flags], 0.5)
  guarded, duo, large = (_nll(p, y)[flags] for p in (got, duo_log_p, large_log_p))
  # Row by row: at least half the duo's gain kept, at most half its excess lost,
  # never more than log 2 above the better of the two.
  assert (guarded - large <= 0.5 * (duo - large) + 1e-4).all()
  assert (guarded <= np.minimum(duo, large) + np.log(2) + 1e-4).all()
  with pytest.raises(InputError, match="shifted must be a bool"):
    guarded_duo.log_probabilities(params, test, flags[:10])


def test_the_guarded_duos_alarm_flags_the_shifted_batches_of_a_stream():
  val, y_val = _pair(3000, 10)
  fitted = duojax.fit_duo(val, y_val, method="guarded")
  assert fitted.alarm is not None and fitted.alarm.batch_size == 500
  clean, _ = _pair(1500, 11)
  broken, _ = _pair(1500, 12, sidekick_wrong=0.5)
  stream = [np.concatenate([c, b]) for c, b in zip(clean, broken)]
  flags = fitted.shifted_rows(stream)  # 6 consecutive batches of 500
  np.testing.assert_array_equal(flags.reshape(6, 500).all(1), [False] * 3 + [True] * 3)
  np.testing.assert_array_equal(flags.reshape(6, 500).any(1), flags.reshape(6, 500).all(1))
  # Each batch alone, as `ShiftAlarm.check` sees it.
  for b in range(6):
    alarm, _ = fitted.alarm.check([z[500 * b : 500 * (b + 1)] for z in stream])
    assert alarm == flags[500 * b]
  # By default the duo's logits use those verdicts.
  want = np.asarray(guarded_duo.log_probabilities(fitted.params, stream, flags))
  np.testing.assert_array_equal(fitted.logits(stream), want)
  # Rows taken in another order: a shuffle mixes the broken rows into every batch.
  order = np.random.default_rng(0).permutation(3000)
  assert fitted.shifted_rows(stream, order=order).all()
  # 1,200 rows: three batches of 400, not 500 + 500 + 200.
  flags = fitted.shifted_rows([z[1100:2300] for z in stream])
  np.testing.assert_array_equal(flags.reshape(3, 400).all(1), [False, True, True])
  with pytest.raises(InputError, match="order must be a permutation"):
    fitted.shifted_rows(stream, order=np.zeros(3000, int))
  with pytest.raises(InputError, match='only "guarded" does'):
    duojax.fit_duo(val, y_val, alarm_options={"alpha": 0.1})
  small = duojax.fit_duo(val, y_val, method="guarded", alarm_options={"batch_size": 100})
  assert (
    small.alarm.batch_size == 100 and small.shifted_rows(stream).reshape(30, 100).all(1)[15:].all()
  )
  # Without an alarm, the weak-agreement cut stands in for it; with one, none.
  alone = duojax.fit_duo(val, y_val, method="guarded", alarm_options=False)
  assert alone.alarm is None and alone.params.agreement_limit > 0
  assert fitted.params.agreement_limit == 0
  with pytest.raises(InputError, match="shifted= is for a guarded duo"):
    duojax.fit_duo(val, y_val, method="entropy").logits(stream, shifted=flags)


def test_a_guarded_duo_file_keeps_its_alarm_and_a_version_2_file_loads_without(tmp_path):
  val, y_val = _pair(2000, 13)
  fitted = duojax.fit_duo(val, y_val, method="guarded")
  fitted.save(tmp_path / "duo.json")
  loaded = duojax.load_duo(tmp_path / "duo.json")
  np.testing.assert_array_equal(loaded.alarm.null, fitted.alarm.null)
  stream, _ = _pair(1000, 14, sidekick_wrong=0.5)
  np.testing.assert_array_equal(loaded.shifted_rows(stream), fitted.shifted_rows(stream))
  np.testing.assert_array_equal(loaded.logits(stream), fitted.logits(stream))
  record = json.loads((tmp_path / "duo.json").read_text())
  del record["shift_alarm"]
  record["version"] = 2
  (tmp_path / "old.json").write_text(json.dumps(record))
  old = duojax.load_duo(tmp_path / "old.json")
  assert old.alarm is None and not old.shifted_rows(stream).any()
  record = json.loads((tmp_path / "duo.json").read_text())
  record["shift_alarm"]["null"] = "many"
  (tmp_path / "bad.json").write_text(json.dumps(record))
  with pytest.raises(FileError, match="bad.json.*must be lists of finite numbers"):
    duojax.load_duo(tmp_path / "bad.json")
  record = json.loads((tmp_path / "duo.json").read_text())
  entropy = duojax.fit_duo(val, y_val, method="entropy").record()
  (tmp_path / "odd.json").write_text(
    json.dumps({**record, **entropy, "shift_alarm": record["shift_alarm"]})
  )
  with pytest.raises(FileError, match='odd.json\': its "entropy" duo holds a shift alarm'):
    duojax.load_duo(tmp_path / "odd.json")


@pytest.mark.parametrize("method", ["weighted", "dynamic", "entropy", "guarded"])
def test_fit_duo_methods_save_and_load(method, tmp_path):
  members, y, features = _halves(600, 8)
  features = features if method == "dynamic" else None
  fitted = duojax.fit_duo(members, y, method=method, features=features, names=["a", "b"])
  path = tmp_path / "duo.json"
  fitted.save(path)
  loaded = duojax.load_duo(path)
  assert loaded.method == method and tuple(loaded.names) == ("a", "b")
  p = fitted.probabilities(members, features=features)
  np.testing.assert_array_equal(loaded.probabilities(members, features=features), p)
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(
    fitted.uncertainty(members, features=features), 1 - p.max(-1), atol=1e-6
  )


def test_bad_methods_features_and_files_are_one_line_errors(tmp_path):
  members, y, features = _halves(200, 9)
  with pytest.raises(ConfigError, match="method='median'"):
    duojax.fit_duo(members, y, method="median")
  with pytest.raises(InputError, match='only "dynamic"'):
    duojax.fit_duo(members, y, method="entropy", features=features)
  with pytest.raises(InputError, match="features must be one"):
    duojax.fit_duo(members, y, method="dynamic", features=features[:1])
  fitted = duojax.fit_duo(members, y, method="guarded")
  path = tmp_path / "duo.json"
  fitted.save(path)
  record = json.loads(path.read_text())
  del record["params"]["theta"]
  path.write_text(json.dumps(record))
  with pytest.raises(FileError, match="damaged per-input duo"):
    duojax.load_duo(path)


def test_the_fused_forward_hands_back_every_members_features():
  from flax import nnx

  from duojax import models

  large = models.get_model("resnet8", 4, rngs=nnx.Rngs(0), width=4, image_size=16)
  sidekick = models.get_model("cnn_xs", 4, rngs=nnx.Rngs(1), image_size=16, in_channels=3)
  images = np.random.default_rng(0).uniform(size=(6, 16, 16, 3)).astype(np.float32)
  forward, states = duojax.fused_forward([large, sidekick], with_features="all")
  logits, features = forward(states, images)
  assert logits.shape == (2, 6, 4) and len(features) == 2
  for model, got in zip((large, sidekick), features):
    z, out = model(images, train=False)
    np.testing.assert_allclose(np.asarray(got), np.asarray(out["pre_logits"]), rtol=1e-5, atol=1e-5)
  _, first = duojax.fused_forward([large, sidekick], with_features=True)[0](states, images)
  np.testing.assert_allclose(np.asarray(first), np.asarray(features[0]), rtol=1e-6)
