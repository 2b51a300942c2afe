import math
import os
import re

import matplotlib.figure
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from duojax import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _curves():
  coverage = np.arange(1, 501) / 500
  return {"large": (coverage, 0.08 * coverage ** 2), "duo": (coverage, 0.06 * coverage ** 2),
          "small": (coverage, 0.12 * coverage ** 1.5)}


def _diagram(shift):
  edges = np.linspace(0, 1, 11)
  count = np.r_[0, 0, 0, 5, 10, 20, 40, 80, 160, 700]
  confidence = np.where(count > 0, (edges[:-1] + edges[1:]) / 2, np.nan)
  accuracy = np.clip(confidence - shift, 0, 1)
  return {"confidence": confidence, "accuracy": accuracy, "count": count, "edges": edges}


def _diagrams():
  return {"large": {**_diagram(0.05), "ece": 0.041}, "duo": _diagram(0.01),
          "small": {**_diagram(-0.03), "ece": 0.02}}


def _points():
  return {"small": (0.6, 0.009), "large": (4.1, 0.0045), "large+TS": (4.1, 0.0044),
          "duo": (4.7, 0.0027), "ensemble": (8.2, 0.0030)}


def _series():
  return {kind: {"large": [0.92, 0.9, 0.87, 0.83, 0.8, 0.76],
                 "duo": [0.93, 0.91, 0.89, 0.86, 0.83, 0.8]}
          for kind in ("gaussian_noise", "blur", "rotation", "contrast")}


def _check_png(path, directory, name):
  assert os.path.basename(path) == name
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  height, width, _ = matplotlib.image.imread(path).shape
  # A readable figure at ~120 dpi: a few hundred to a couple of thousand pixels.
  assert 300 <= width <= 3000 and 250 <= height <= 2500, (width, height)
  assert sorted(os.listdir(directory)) == [name]  # no temporary files left behind
  assert plt.get_fignums() == []


@pytest.mark.parametrize("draw, name", [
    (lambda p: plots.risk_coverage(_curves(), p), "risk_coverage.png"),
    (lambda p: plots.reliability(_diagrams(), p, title="Reliability (test)"), "reliability.png"),
    (lambda p: plots.pareto(_points(), p, y_label="AURC"), "pareto_aurc.png"),
    (lambda p: plots.pareto(_points(), p, y_label="SAC@98", lower_is_better=False,
                            title="Cost vs SAC@98"), "pareto_sac.png"),
    (lambda p: plots.shift_curves(_series(), p, metric_label="accuracy"), "shift_acc.png"),
])
def test_writes_a_png(tmp_path, draw, name):
  path = draw(str(tmp_path / name))
  assert path == str(tmp_path / name)
  _check_png(path, tmp_path, name)


def test_reliability_edges_default_to_equal_bins(tmp_path):
  diagram = {k: v for k, v in _diagram(0.02).items() if k != "edges"}
  plots.reliability({"a": diagram}, tmp_path / "r.png")
  _check_png(str(tmp_path / "r.png"), tmp_path, "r.png")


def test_single_items_and_pathlike(tmp_path):
  plots.reliability({"only": _diagram(0.0)}, tmp_path / "r.png")
  plots.shift_curves({"blur": {"m": [0.9, 0.8]}}, tmp_path / "s.png", metric_label="acc")
  plots.pareto({"a": (1.0, 0.5)}, tmp_path / "p.png", y_label="NLL")
  plots.risk_coverage({"a": ([1.0], [0.1])}, tmp_path / "c.png")
  assert sorted(os.listdir(tmp_path)) == ["c.png", "p.png", "r.png", "s.png"]
  assert plt.get_fignums() == []


def test_non_finite_values_are_drawn_around(tmp_path):
  points = {"a": (1.0, 0.3), "no flops": (math.nan, 0.2), "b": (200.0, 0.1)}  # log x
  plots.pareto(points, tmp_path / "p.png", y_label="AURC")
  plots.pareto({"x": (math.nan, 1.0)}, tmp_path / "q.png", y_label="AURC")
  series = {"blur": {"m": [0.9, math.nan, 0.7]}}
  plots.shift_curves(series, tmp_path / "s.png", metric_label="AURC")
  assert sorted(os.listdir(tmp_path)) == ["p.png", "q.png", "s.png"]


def test_replaces_an_existing_file(tmp_path):
  path = tmp_path / "plot.png"
  path.write_bytes(b"old")
  plots.risk_coverage(_curves(), path)
  _check_png(str(path), tmp_path, "plot.png")


def test_a_failed_render_leaves_nothing(tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
  with pytest.raises(RuntimeError, match="disk full"):
    plots.risk_coverage(_curves(), tmp_path / "plot.png")
  assert os.listdir(tmp_path) == []


def test_method_colors_follow_position():
  colors = plots.method_colors(["a", "b", "c"])
  assert list(colors) == ["a", "b", "c"]
  assert len(set(colors.values())) == 3
  assert plots.method_colors(["z", "y"]) == {"z": colors["a"], "y": colors["b"]}
  many = plots.method_colors([str(i) for i in range(len(plots.PALETTE) + 1)])
  assert many["0"] == many[str(len(plots.PALETTE))]  # cycles past the palette


# ----------------------------------------------------------------------------
# pareto_front.


def test_front_lower_is_better():
  points = {"cheap bad": (1.0, 0.9), "mid": (2.0, 0.5), "dominated": (3.0, 0.6),
            "costly good": (5.0, 0.1)}
  assert plots.pareto_front(points) == ["cheap bad", "mid", "costly good"]


def test_front_higher_is_better():
  points = {"cheap bad": (1.0, 0.1), "mid": (2.0, 0.5), "dominated": (3.0, 0.4),
            "costly good": (5.0, 0.9)}
  assert plots.pareto_front(points, lower_is_better=False) == ["cheap bad", "mid", "costly good"]
  # The same points read the other way round: only the cheapest survives.
  assert plots.pareto_front(points, lower_is_better=True) == ["cheap bad"]


def test_front_ties():
  # Identical points: neither beats the other, both stay.
  assert plots.pareto_front({"a": (1.0, 0.5), "b": (1.0, 0.5)}) == ["a", "b"]
  # Same cost: only the better metric. Same metric: only the cheaper.
  assert plots.pareto_front({"a": (1.0, 0.5), "b": (1.0, 0.4)}) == ["b"]
  assert plots.pareto_front({"a": (1.0, 0.5), "b": (1.0, 0.4)}, lower_is_better=False) == ["a"]
  assert plots.pareto_front({"a": (2.0, 0.5), "b": (1.0, 0.5)}) == ["b"]
  assert plots.pareto_front({"a": (2.0, 0.5), "b": (1.0, 0.5)}, lower_is_better=False) == ["b"]


def test_front_skips_non_finite_points():
  points = {"a": (1.0, 0.5), "no cost": (math.nan, 0.1), "no metric": (0.5, math.inf)}
  assert plots.pareto_front(points) == ["a"]
  assert plots.pareto_front({"x": (math.nan, 1.0)}) == []


# ----------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("draw, message", [
    (lambda p: plots.risk_coverage({}, p), "non-empty"),
    (lambda p: plots.risk_coverage({"a": ([0.5, 1.0], [0.1])}, p), "same non-zero length"),
    (lambda p: plots.risk_coverage({"a": ([], [])}, p), "same non-zero length"),
    (lambda p: plots.risk_coverage({"a": ([0.5, 1.5], [0.1, 0.2])}, p), "outside [0, 1]"),
    (lambda p: plots.reliability({}, p), "non-empty"),
    (lambda p: plots.reliability({"a": {"accuracy": [1.0]}}, p), "lacks confidence, count"),
    (lambda p: plots.reliability({"a": {**_diagram(0.0), "edges": [0.0, 1.0]}}, p), "B + 1"),
    (lambda p: plots.reliability({"a": {**_diagram(0.0), "count": [1]}}, p), "B + 1"),
    (lambda p: plots.pareto({}, p, y_label="m"), "non-empty"),
    (lambda p: plots.pareto({"a": (1.0, 2.0, 3.0)}, p, y_label="m"), "(cost, metric) pair"),
    (lambda p: plots.shift_curves({}, p, metric_label="m"), "non-empty"),
    (lambda p: plots.shift_curves({"blur": {}}, p, metric_label="m"), "non-empty"),
    (lambda p: plots.shift_curves({"blur": {"a": [1, 2], "b": [1]}}, p, metric_label="m"),
     "same non-zero number"),
])
def test_bad_inputs(tmp_path, draw, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    draw(str(tmp_path / "plot.png"))
  assert os.listdir(tmp_path) == []
  assert plt.get_fignums() == []


def test_pareto_front_rejects_bad_points():
  with pytest.raises(ValueError, match="non-empty"):
    plots.pareto_front({})
  with pytest.raises(ValueError, match="pair"):
    plots.pareto_front({"a": 1.0})


def test_missing_directory_is_not_created(tmp_path):
  missing = tmp_path / "no" / "such"
  with pytest.raises(ValueError, match=re.escape(f"{missing} does not exist")):
    plots.risk_coverage(_curves(), missing / "plot.png")
  assert not (tmp_path / "no").exists()
