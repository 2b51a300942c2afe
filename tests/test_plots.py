import math
import os
import re

import matplotlib.figure
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from duojax.eval import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _curves():
  coverage = np.arange(1, 501) / 500
  return {
    "large": (coverage, 0.08 * coverage**2),
    "duo": (coverage, 0.06 * coverage**2),
    "small": (coverage, 0.12 * coverage**1.5),
  }


def _diagram(shift):
  edges = np.linspace(0, 1, 11)
  count = np.r_[0, 0, 0, 5, 10, 20, 40, 80, 160, 700]
  confidence = np.where(count > 0, (edges[:-1] + edges[1:]) / 2, np.nan)
  accuracy = np.clip(confidence - shift, 0, 1)
  return {"confidence": confidence, "accuracy": accuracy, "count": count, "edges": edges}


def _diagrams():
  return {
    "large": {**_diagram(0.05), "ece": 0.041},
    "duo": _diagram(0.01),
    "small": {**_diagram(-0.03), "ece": 0.02},
  }


def _points():
  return {
    "small": (0.6, 0.009),
    "large": (4.1, 0.0045),
    "large+TS": (4.1, 0.0044),
    "duo": (4.7, 0.0027),
    "ensemble": (8.2, 0.0030),
  }


def _series():
  return {
    kind: {"large": [0.92, 0.9, 0.87, 0.83, 0.8, 0.76], "duo": [0.93, 0.91, 0.89, 0.86, 0.83, 0.8]}
    for kind in ("gaussian_noise", "blur", "rotation", "contrast")
  }


def _check_png(path, directory, name):
  assert os.path.basename(path) == name
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  height, width, _ = matplotlib.image.imread(path).shape
  # A readable figure at ~120 dpi: a few hundred to a couple of thousand pixels.
  assert 300 <= width <= 3000 and 250 <= height <= 2500, (width, height)
  assert sorted(os.listdir(directory)) == [name]  # no temporary files left behind
  assert plt.get_fignums() == []


@pytest.mark.parametrize(
  "draw, name",
  [
    (lambda p: plots.risk_coverage(_curves(), p), "risk_coverage.png"),
    (lambda p: plots.reliability(_diagrams(), p, title="Reliability (test)"), "reliability.png"),
    (lambda p: plots.pareto(_points(), p, y_label="AURC"), "pareto_aurc.png"),
    (
      lambda p: plots.pareto(
        _points(), p, y_label="SAC@98", lower_is_better=False, title="Cost vs SAC@98"
      ),
      "pareto_sac.png",
    ),
    (lambda p: plots.shift_curves(_series(), p, metric_label="accuracy"), "shift_acc.png"),
  ],
)
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
  points = {
    "cheap bad": (1.0, 0.9),
    "mid": (2.0, 0.5),
    "dominated": (3.0, 0.6),
    "costly good": (5.0, 0.1),
  }
  assert plots.pareto_front(points) == ["cheap bad", "mid", "costly good"]


def test_front_higher_is_better():
  points = {
    "cheap bad": (1.0, 0.1),
    "mid": (2.0, 0.5),
    "dominated": (3.0, 0.4),
    "costly good": (5.0, 0.9),
  }
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


@pytest.mark.parametrize(
  "draw, message",
  [
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
    (
      lambda p: plots.shift_curves({"blur": {"a": [1, 2], "b": [1]}}, p, metric_label="m"),
      "same non-zero number",
    ),
  ],
)
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


# ----------------------------------------------------------------------------
# Readability: what a person needs to tell the methods apart.

FAMILIES = (
  "large",
  "sidekick",
  "duo (weighted)",
  "duo (unweighted)",
  "duo (UQ only)",
  "ensemble m=2",
  "soup (uniform)",
  "soup (greedy)",
  "MC dropout K=8",
  "ViT",
  "Hydra M=3",
)


def _crowded_points():
  """23 methods as in the report: each "X" beside an almost identical "X+TS",
  most costing about the same, so that names next to points would pile up."""
  rng = np.random.default_rng(0)
  points = {}
  for i, name in enumerate(FAMILIES):
    gflops = 0.0006 if name == "sidekick" else 0.037 + 0.0002 * i
    aurc = 0.0145 + 0.0003 * i if i < 8 else rng.uniform(0.014, 0.026)
    points[name] = (gflops, aurc)
    points[name + "+TS"] = (gflops, aurc * 1.0004)
  points["ViT duo (weighted)"] = (0.0195, 0.0173)
  assert len(points) == 23
  return points


def _figure(monkeypatch, draw, tmp_path):
  """The figure `draw` renders, laid out and kept from being cleared (nothing is written)."""
  figures = []
  monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
  draw(str(tmp_path / "plot.png"))
  (fig,) = figures
  fig.draw_without_rendering()
  return fig


def _marker_key(handle):
  """What tells a legend entry apart at a glance: marker, color, hollow or not, line style."""
  face = handle.get_markerfacecolor()
  hollow = isinstance(face, str) and face == "none"
  color = handle.get_markeredgecolor() if hollow else face
  return handle.get_marker(), matplotlib.colors.to_rgba(color), hollow, handle.get_linestyle()


def _no_overlaps(boxes):
  for i, a in enumerate(boxes):
    for b in boxes[i + 1 :]:
      assert not a.overlaps(b), (a, b)


def test_pareto_names_each_method_once_and_no_text_overlaps(tmp_path, monkeypatch):
  points = _crowded_points()
  fig = _figure(monkeypatch, lambda p: plots.pareto(points, p, y_label="AURC"), tmp_path)
  ax, (legend,) = fig.axes[0], fig.legends
  renderer = fig.canvas.get_renderer()
  texts = [*ax.texts, *legend.get_texts()]
  _no_overlaps([t.get_window_extent(renderer) for t in texts])
  # The legend sits beside the axes: it hides no point.
  assert not legend.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer))
  labels = [t.get_text() for t in legend.get_texts()]
  assert labels[:2] == ["Pareto front", "on the front (bold)"]
  assert labels[2:] == list(points)  # every method exactly once
  keys = [_marker_key(h) for h in legend.legend_handles[2:]]
  assert len(set(keys)) == len(points)
  # Each method's point is drawn where it belongs, in its legend entry's style.
  drawn = {line.get_label(): line for line in ax.lines}
  for (name, (cost, metric)), handle in zip(points.items(), legend.legend_handles[2:]):
    assert list(drawn[name].get_xdata()) == [cost] and list(drawn[name].get_ydata()) == [metric]
    assert _marker_key(drawn[name])[:3] == _marker_key(handle)[:3]
  # The front stays visible: a step line through the front's points, bold in the legend.
  front = plots.pareto_front(points)
  assert list(drawn["Pareto front"].get_xdata()) == [points[n][0] for n in front]
  bold = [t.get_text() for t in legend.get_texts()[2:] if t.get_fontweight() == "bold"]
  assert bold == [n for n in points if n in front]
  assert ax.get_xscale() == "log" and ax.get_xlabel() == "GFLOPs / image"


def test_method_styles_pair_twins_and_stay_distinct():
  names = [f"method {i}" + ("+TS" if i % 3 == 0 else "") for i in range(80)]
  styles = plots.method_styles(["large", "large+TS", *names])
  base, twin = styles["large"], styles["large+TS"]
  assert (base.color, base.marker, base.twin) == (twin.color, twin.marker, False) and twin.twin
  assert len({s.key for s in styles.values()}) == len(styles)
  # Given colors win, and the markers move on to keep keys apart.
  same = plots.method_styles(names[:7], {n: "black" for n in names})
  assert {s.color for s in same.values()} == {"black"}
  assert len({s.key for s in same.values()}) == 7
  assert plots.method_styles(["x+TS"], {"x": "red"})["x+TS"].color == "red"


def _close_curves():
  """13 curves on one coverage grid whose risks differ by under 10 %, with a spike
  where few images are kept."""
  coverage = np.arange(1, 2001) / 2000  # short enough to be drawn unthinned
  names = [
    "large+TS",
    "sidekick+TS",
    "duo (unweighted)",
    "duo (weighted)",
    "duo (UQ only)",
    "ensemble m=2",
    "ensemble m=2+TS",
    "soup (uniform)",
    "soup (uniform)+TS",
    "soup (greedy)",
    "soup (greedy)+TS",
    "MC dropout K=8",
    "MC dropout K=8+TS",
  ]
  curves = {}
  for i, name in enumerate(names):
    risk = (0.02 + 0.1 * coverage**4) * (0.95 + 0.008 * i)
    risk[:40] = 0.4
    curves[name] = (coverage, risk)
  return curves


def test_risk_coverage_zooms_and_subtracts_the_reference(tmp_path, monkeypatch):
  curves = _close_curves()
  fig = _figure(
    monkeypatch, lambda p: plots.risk_coverage(curves, p, reference="large+TS"), tmp_path
  )
  full, zoom, difference = fig.axes
  assert full.get_xlim() == (0, 1) and full.get_ylim()[1] < 0.4 / 2  # spike cut off
  assert zoom.get_xlim() == difference.get_xlim() == (plots.ZOOM_COVERAGE, 1)
  # The zoomed risk axis is fitted to the risks there, not to the full scale.
  high = np.concatenate([r[c >= plots.ZOOM_COVERAGE] for c, r in curves.values()])
  low_limit, high_limit = zoom.get_ylim()
  assert low_limit <= high.min() and high.max() <= high_limit
  assert high_limit - low_limit <= 1.15 * (high.max() - high.min())
  lines = {line.get_label(): line for line in difference.lines if line.get_label() in curves}
  assert list(lines) == list(curves)
  assert np.all(lines["large+TS"].get_ydata() == 0)
  reference = curves["large+TS"][1]
  for name, (_, risk) in curves.items():
    np.testing.assert_allclose(lines[name].get_ydata(), risk - reference, atol=1e-15)
  # One legend: every method once, no two drawn alike.
  (legend,) = fig.legends
  assert [t.get_text() for t in legend.get_texts()] == list(curves)
  assert len({_marker_key(h) for h in legend.legend_handles}) == len(curves)
  assert [ax.get_legend() for ax in fig.axes] == [None] * 3


def test_risk_coverage_reference_on_other_coverages(tmp_path, monkeypatch):
  curves = {
    "a": (np.linspace(0.01, 1, 300), np.linspace(0, 0.2, 300)),
    "b": (np.linspace(0.02, 1, 77), np.linspace(0, 0.1, 77)),
  }
  fig = _figure(monkeypatch, lambda p: plots.risk_coverage(curves, p, reference="b"), tmp_path)
  lines = {line.get_label(): line for line in fig.axes[2].lines}
  assert np.all(lines["b"].get_ydata() == 0)
  coverage = curves["a"][0]
  np.testing.assert_allclose(
    lines["a"].get_ydata(), curves["a"][1] - np.interp(coverage, *curves["b"]), atol=1e-12
  )
  fig = _figure(monkeypatch, lambda p: plots.risk_coverage(curves, p), tmp_path)
  assert len(fig.axes) == 2  # no reference, no difference panel


def test_risk_coverage_unknown_reference(tmp_path):
  with pytest.raises(ValueError, match="reference 'zz' is not among the curves"):
    plots.risk_coverage(_curves(), tmp_path / "plot.png", reference="zz")
  assert os.listdir(tmp_path) == []
