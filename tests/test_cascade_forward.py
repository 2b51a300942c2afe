"""The batched duo cascade equals its unbatched reference, with bounded compilations."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from duojax import models
from duojax.cascade import forward as cascade_forward
from duojax.core import duo

ROOT = Path(__file__).resolve().parent.parent
BATCH = 16
SCALE = 1.7
DUO_WEIGHTS = (0.8, 0.45)


@pytest.fixture(scope="module")
def pair():
  large = models.get_model("resnet8", 10, rngs=nnx.Rngs(0), width=4, image_size=28, in_channels=1)
  small = models.get_model("cnn_xs", 10, rngs=nnx.Rngs(1), image_size=28, in_channels=1)
  # Non-trivial BatchNorm statistics, so that eval mode matters.
  large(jax.random.normal(jax.random.key(9), (32, 28, 28, 1)), train=True)
  (g_l, g_s), (s_l, s_s) = duo.split_members([large, small])
  apply_l = jax.jit(lambda x: nnx.merge(g_l, s_l)(x, train=False)[0])
  apply_s = jax.jit(lambda x: nnx.merge(g_s, s_s)(x, train=False)[0])
  batches = [jax.random.normal(jax.random.key(i), (BATCH, 28, 28, 1)) for i in range(3)]
  return dict(g_l=g_l, g_s=g_s, s_l=s_l, s_s=s_s, apply_l=apply_l, apply_s=apply_s, batches=batches)


@pytest.fixture(scope="module")
def runs(pair):
  """One cascade per answer kind, shared so that each bucket compiles once per file."""
  buckets = cascade_forward.default_buckets(BATCH)
  return {
    w: cascade_forward.make_cascade_forward(
      pair["g_s"], pair["g_l"], weights=w, small_scale=SCALE, buckets=buckets
    )
    for w in (None, DUO_WEIGHTS)
  }


def _threshold_for(pair, images, k):
  """A threshold deferring exactly k rows (between two sidekick confidences)."""
  conf = np.sort(np.asarray(duo.msp_confidence(SCALE * pair["apply_s"](images))))
  if k == 0:
    return 0.0
  if k == len(conf):
    return 1.5
  return float((conf[k - 1] + conf[k]) / 2)


@pytest.mark.parametrize("weights", [None, DUO_WEIGHTS], ids=["plain", "duo"])
def test_bucketed_cascade_equals_reference(pair, runs, weights):
  run = runs[weights]
  for b, images in enumerate(pair["batches"]):
    for k in (0, 1 + b, 5 + b, 9, BATCH):
      threshold = _threshold_for(pair, images, k)
      out = run(pair["s_s"], pair["s_l"], images, threshold)
      ref = cascade_forward.reference_cascade(
        pair["apply_s"], pair["apply_l"], images, threshold, weights=weights, small_scale=SCALE
      )
      assert out["num_deferred"] == ref["num_deferred"] == k
      np.testing.assert_array_equal(out["deferred"], ref["deferred"])
      expected_bucket = 0 if k == 0 else min(s for s in run.buckets if s >= k)
      assert out["bucket"] == expected_bucket
      assert out["logits"].shape == (BATCH, 10) and out["logits"].dtype == jnp.float32
      np.testing.assert_array_equal(np.argmax(out["logits"], -1), np.argmax(ref["logits"], -1))
      np.testing.assert_allclose(out["logits"], ref["logits"], rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(out["confidence"], ref["confidence"], rtol=1e-5, atol=1e-6)


def test_compilations_bounded_by_bucket_count(pair, runs):
  run = runs[DUO_WEIGHTS]
  used = set()
  for images in pair["batches"]:
    for k in range(BATCH + 1):
      used.add(run(pair["s_s"], pair["s_l"], images, _threshold_for(pair, images, k))["bucket"])
  assert used == {0, *run.buckets}
  # Every bucket was used, each compiled once; the sidekick stage once in all.
  assert run.traces == {"small": 1, "large": len(run.buckets)}


@pytest.mark.parametrize("weights", [None, DUO_WEIGHTS], ids=["plain", "duo"])
def test_threshold_extremes(pair, runs, weights):
  run = runs[weights]
  images = pair["batches"][0]
  z_s, z_l = pair["apply_s"](images), pair["apply_l"](images)
  out = run(pair["s_s"], pair["s_l"], images, 0.0)
  assert out["bucket"] == 0 and not out["deferred"].any()
  np.testing.assert_allclose(out["logits"], SCALE * z_s, rtol=1e-5, atol=1e-5)
  out = run(pair["s_s"], pair["s_l"], images, 1.01)
  assert out["bucket"] == BATCH and out["deferred"].all()
  answer = z_l if weights is None else DUO_WEIGHTS[0] * z_l + DUO_WEIGHTS[1] * z_s
  np.testing.assert_allclose(out["logits"], answer, rtol=1e-5, atol=1e-5)


def test_padding_never_overwrites_kept_rows(pair):
  # A bucket larger than the batch pads with many entries: kept rows (row 0
  # included) must still hold the sidekick's answer.
  run = cascade_forward.make_cascade_forward(
    pair["g_s"], pair["g_l"], weights=DUO_WEIGHTS, small_scale=SCALE, buckets=(BATCH,)
  )
  images = pair["batches"][1]
  threshold = _threshold_for(pair, images, 1)
  out = run(pair["s_s"], pair["s_l"], images, threshold)
  kept = ~out["deferred"]
  assert out["bucket"] == BATCH and kept.sum() == BATCH - 1
  np.testing.assert_allclose(
    np.asarray(out["logits"])[kept],
    SCALE * np.asarray(pair["apply_s"](images))[kept],
    rtol=1e-5,
    atol=1e-5,
  )


def test_default_buckets():
  for b in (1, 2, 3, 7, 8, 64, 500, 513):
    buckets = cascade_forward.default_buckets(b)
    assert buckets[-1] == b and buckets[0] >= 1
    assert list(buckets) == sorted(set(buckets))
    assert buckets[0] >= b / 8 and len(buckets) <= 8
    # Padding never exceeds an eighth of the batch.
    assert all(hi - lo <= -(-b // 8) for lo, hi in zip((0, *buckets), buckets))
  assert cascade_forward.default_buckets(500) == (63, 125, 188, 250, 313, 375, 438, 500)
  assert cascade_forward.default_buckets(1) == (1,)
  for bad in (0, -4, 2.5, True):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
      cascade_forward.default_buckets(bad)


def test_bad_inputs_raise_one_line_errors(pair, runs):
  def one_line(excinfo):
    assert "\n" not in str(excinfo.value)

  for weights in ((1.0,), (1.0, 2.0, 3.0), (1.0, float("nan"))):
    with pytest.raises(ValueError, match="weights must be two finite numbers") as e:
      cascade_forward.make_cascade_forward(pair["g_s"], pair["g_l"], weights=weights, buckets=(4,))
    one_line(e)
  for buckets in ((), (0, 4), "ab"):
    with pytest.raises(ValueError, match="buckets") as e:
      cascade_forward.make_cascade_forward(pair["g_s"], pair["g_l"], buckets=buckets)
    one_line(e)
  with pytest.raises(ValueError, match="small_scale") as e:
    cascade_forward.make_cascade_forward(pair["g_s"], pair["g_l"], small_scale=0.0, buckets=(4,))
  one_line(e)
  run = runs[None]
  big = jnp.zeros((BATCH + 1, 28, 28, 1))
  with pytest.raises(ValueError, match="exceeds the largest bucket") as e:
    run(pair["s_s"], pair["s_l"], big, 0.5)
  one_line(e)
  with pytest.raises(ValueError, match="threshold") as e:
    run(pair["s_s"], pair["s_l"], pair["batches"][0], float("nan"))
  one_line(e)


# ---------------------------------------------------------------------------
# bench/bench_cascade.py, end to end on tiny sizes (its speed is not tested).


@pytest.mark.slow
def test_bench_cascade_quick(tmp_path):
  out = tmp_path / "B.md"
  out.write_text("# Benchmarks\n\nIntro kept.\n")
  results = tmp_path / "results.json"
  results.write_text(json.dumps({"cascade": {"duo_cascade": {"ratio_at_duo_aurc": 0.25}}}))
  proc = subprocess.run(
    [
      sys.executable,
      str(ROOT / "bench" / "bench_cascade.py"),
      "--quick",
      "--out",
      str(out),
      "--results",
      str(results),
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  text = out.read_text()
  assert text.startswith("# Benchmarks\n\nIntro kept.\n")
  assert "<!-- bench:cascade:start -->" in text and "<!-- bench:cascade:end -->" in text
  assert "Command: `python bench/bench_cascade.py --quick" in text
  rows = [l for l in text.splitlines() if l.startswith("| 0.")]
  rows += [l for l in text.splitlines() if l.startswith("| 1.0")]
  assert len(rows) == 8, rows  # the grid of 7, plus the matching ratio measured itself
  assert "| 0.25 |" in text and "r = 0.25" in text and "time saved" in text


def test_bench_reads_the_ratio_optionally(tmp_path):
  sys.path.insert(0, str(ROOT / "bench"))
  import bench_cascade  # noqa: E402

  path = tmp_path / "results.json"
  assert bench_cascade.ratio_at_duo_aurc(path) is None  # no file
  for content, expected in (
    ({}, None),
    ({"cascade": {"duo_cascade": {}}}, None),
    ({"cascade": {"duo_cascade": {"ratio_at_duo_aurc": None}}}, None),
    ({"cascade": {"duo_cascade": {"ratio_at_duo_aurc": 0.4}}}, 0.4),
  ):
    path.write_text(json.dumps(content))
    assert bench_cascade.ratio_at_duo_aurc(path) == expected
  path.write_text("not json")
  assert bench_cascade.ratio_at_duo_aurc(path) is None
