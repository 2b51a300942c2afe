"""The figures of a results report, as PNG files: risk–coverage, reliability
diagrams, cost–metric Pareto plots and metrics under distribution shift.

Figures use matplotlib's object API on an Agg canvas, never pyplot: no global
figure registry to leak into, no backend to switch, no display needed. Each
PNG is rendered to a temporary file beside its target and renamed into place,
so a reader never sees half a file. The directory must exist (callers choose
where reports go). A method's color is its position in the dict it comes in;
pass `colors=method_colors(all_names)` to keep colors fixed across figures
that show different subsets of methods. The risk–coverage and Pareto plots
tell methods apart by color and marker together, by family (`plot_style`):
"X" and its twin "X+TS" share both, the twin drawn hollow and dashed.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from duojax.errors import ConfigError, FileError, InputError
from duojax.eval.plot_style import PALETTE, method_colors, method_styles

DPI = 120
MAX_LINE_POINTS = 2000  # longer curves are thinned: invisible at this size, faster to draw
RELIABILITY_COLUMNS = 4
_GAP_COLOR = "0.15"  # dark hatching reads on every palette color
ZOOM_COVERAGE = 0.5  # the zoomed risk–coverage panels start here: where methods part


def _colors(names, given: Mapping | None) -> dict:
  return {**method_colors(list(names)), **(given or {})}


def _require_items(mapping, what: str) -> None:
  if not isinstance(mapping, Mapping) or not mapping:
    raise InputError(f"{what}: expected a non-empty dict, got {mapping!r:.80}")


def _check_directory(path) -> str:
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ConfigError(f"output directory {folder} does not exist; create it first")
  return path


def save_figure(fig: Figure, path: str) -> str:
  """Writes `fig` to `path` atomically: a temporary file in the same directory, then a rename."""
  fd, tmp = tempfile.mkstemp(
    dir=os.path.dirname(os.path.abspath(path)), prefix=".tmp-", suffix=".png"
  )
  os.close(fd)
  try:
    # "tight" grows the canvas to anything drawn past its edge (long labels).
    fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; the report is for reading
    os.replace(tmp, path)
  except BaseException as e:
    os.unlink(tmp)
    if isinstance(e, OSError) and e.errno is not None:  # the user's disk, not a bug
      raise FileError(e.errno, f"cannot write {path}: {e.strerror}") from e
    raise
  finally:
    fig.clear()  # frees the artists now rather than at garbage collection
  return path


def new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _panels(count: int, columns: int, width: float, height: float, **kwargs):
  """A figure with `count` panels of width × height inches in rows of `columns`."""
  rows = math.ceil(count / columns)
  fig = new_figure(width * columns + 0.6, height * rows + 0.7)
  axes = fig.subplots(rows, columns, squeeze=False, **kwargs).ravel()
  for ax in axes[count:]:  # no empty panels in an incomplete last row
    ax.remove()
  return fig, axes[:count]


def _curve(name: str, coverage, risk) -> tuple[np.ndarray, np.ndarray]:
  coverage = np.asarray(coverage, np.float64)
  risk = np.asarray(risk, np.float64)
  if coverage.ndim != 1 or coverage.shape != risk.shape or coverage.size == 0:
    raise InputError(
      f"risk_coverage: {name!r} needs coverage and risk of the same non-zero "
      f"length, got shapes {coverage.shape} and {risk.shape}"
    )
  if not np.all(np.isfinite(coverage)) or coverage.min() < 0 or coverage.max() > 1:
    raise InputError(f"risk_coverage: {name!r} has coverage outside [0, 1]")
  order = np.argsort(coverage, kind="stable")
  step = max(1, math.ceil(coverage.size / MAX_LINE_POINTS))
  keep = np.unique(np.r_[np.arange(0, coverage.size, step), coverage.size - 1])
  return coverage[order][keep], risk[order][keep]


def _fitted(ax, values) -> None:
  """Fits `ax`'s y range to the finite `values`, with a 6 % margin."""
  values = np.concatenate([np.ravel(v) for v in values] or [np.empty(0)])
  values = values[np.isfinite(values)]
  if values.size:
    low, high = values.min(), values.max()
    pad = 0.06 * (high - low) or 0.06 * abs(high) or 0.01
    ax.set_ylim(low - pad, high + pad)


def risk_coverage(
  curves: dict[str, tuple[np.ndarray, np.ndarray]],
  path,
  *,
  title: str = "Risk–coverage",
  colors: Mapping | None = None,
  reference: str | None = None,
) -> str:
  """Selective risk against coverage, one line per method; returns `path`.

  Panels: all coverages; coverage ≥ ZOOM_COVERAGE with the y axis fitted to
  the curves there; with `reference` (a method among `curves`), each
  method's risk minus the reference's over that same range. In the first
  the y axis starts at 0 and ends just above the highest risk at coverage
  ≥ 10 %: below that, a curve rests on a handful of images and its spikes
  would flatten everything else.
  """
  _require_items(curves, "risk_coverage")
  if reference is not None and reference not in curves:
    raise InputError(f"risk_coverage: reference {reference!r} is not among the curves")
  path = _check_directory(path)
  styles = method_styles(list(curves), colors)
  data = {name: _curve(name, *pair) for name, pair in curves.items()}
  count = 2 if reference is None else 3
  fig, axes = _panels(count, count, 4.0, 3.6)
  fig.set_figwidth(fig.get_figwidth() + 1.8)  # room for the legend on the right
  full, zoom = axes[:2]
  diffs = {}
  if reference is not None:  # each risk minus the reference's, at the curve's coverages
    ref_coverage, ref_risk = data[reference]
    diffs = {
      n: r - (ref_risk if np.array_equal(c, ref_coverage) else np.interp(c, ref_coverage, ref_risk))
      for n, (c, r) in data.items()
    }
  for i, (name, (coverage, risk)) in enumerate(data.items()):
    # Markers every 0.1 of coverage (0.05 zoomed in), staggered from curve to curve.
    marks = [
      np.unique(np.searchsorted(coverage[:-1], np.arange(start, 1, step) + step * i / len(data)))
      for start, step in ((0.0, 0.1), (ZOOM_COVERAGE, 0.05))
    ]
    full.plot(coverage, risk, label=name, **styles[name].line(marks[0]))
    for ax, values in zip(axes[1:], (risk, diffs.get(name))):
      ax.plot(coverage, values, label=name, **styles[name].line(marks[1]))
  settled = [r[c >= 0.1] for c, r in data.values()]
  top = max((np.nanmax(r) for r in settled if np.isfinite(r).any()), default=np.nan)
  full.set_xlim(0, 1)
  full.set_ylim(0, 1.08 * top if np.isfinite(top) and top > 0 else None)
  full.set(title="All coverages", ylabel="Selective risk (error rate on kept images)")
  zoom.set(title=f"Coverage ≥ {ZOOM_COVERAGE:g}, risk axis fitted")
  _fitted(zoom, [r[c >= ZOOM_COVERAGE] for c, r in data.values()])
  zoom.set_ylim(bottom=max(0.0, zoom.get_ylim()[0]))  # no negative risks
  if diffs:
    axes[2].axhline(0.0, color="0.3", lw=0.8, zorder=0)
    axes[2].set(
      title=f"Risk minus {reference}'s risk", ylabel=f"Risk − risk of {reference} (> 0: worse)"
    )
    _fitted(axes[2], [diffs[n][c >= ZOOM_COVERAGE] for n, (c, _) in data.items()])
  for ax in axes:
    ax.title.set_fontsize("medium")
    ax.grid(alpha=0.3)
  for ax in axes[1:]:
    ax.set_xlim(ZOOM_COVERAGE, 1)
  fig.legend(
    handles=[styles[n].handle(n, curve=True) for n in data],  # long enough for dashes
    loc="outside right upper",
    fontsize="small",
    frameon=False,
    handlelength=4,
  )
  fig.supxlabel("Coverage (fraction of images kept, most confident first)")
  fig.suptitle(title)
  return save_figure(fig, path)


def _diagram(name: str, diagram) -> dict[str, np.ndarray]:
  keys = ("confidence", "accuracy", "count")
  missing = [k for k in keys if k not in diagram] if isinstance(diagram, Mapping) else keys
  if missing:
    raise InputError(f"reliability: {name!r} lacks {', '.join(missing)}")
  out = {k: np.asarray(diagram[k], np.float64) for k in keys}
  # Without edges, the bins are taken to be equal-width on [0, 1] (the ECE bins).
  out["edges"] = np.asarray(
    diagram.get("edges", np.linspace(0, 1, out["accuracy"].size + 1)), np.float64
  )
  keys += ("edges",)
  shapes = [out[k].shape for k in keys]
  bins = shapes[0][0] if len(shapes[0]) == 1 else 0
  if bins == 0 or shapes != [(bins,)] * 3 + [(bins + 1,)]:
    raise InputError(
      f"reliability: {name!r} needs B confidences, accuracies and counts and "
      f"B + 1 edges, got shapes {shapes}"
    )
  return out


def reliability(
  diagrams: dict[str, dict], path, *, title: str = "Reliability", colors: Mapping | None = None
) -> str:
  """One reliability diagram per method, in a grid of panels; returns `path`.

  Each diagram: "confidence" (mean per bin, NaN if empty), "accuracy" and
  "count" [B]; optionally "edges" [B + 1] (default: B equal bins on [0, 1])
  and "ece" (shown in the panel title).

  Bars: accuracy in each confidence bin. Hatched: the gap to the bin's mean
  confidence (above the bar: overconfident). Dashed: perfect calibration.
  """
  _require_items(diagrams, "reliability")
  path = _check_directory(path)
  colors = _colors(diagrams, colors)
  data = {name: _diagram(name, d) for name, d in diagrams.items()}
  columns = min(len(data), RELIABILITY_COLUMNS)
  fig, axes = _panels(len(data), columns, 3.0, 3.0)
  for ax, (name, d) in zip(axes, data.items()):
    left, width = d["edges"][:-1], np.diff(d["edges"])
    filled = (d["count"] > 0) & np.isfinite(d["accuracy"]) & np.isfinite(d["confidence"])
    accuracy = np.where(filled, d["accuracy"], 0.0)
    gap = np.where(filled, d["confidence"] - accuracy, 0.0)
    ax.bar(
      left,
      accuracy,
      width=width,
      align="edge",
      color=colors[name],
      alpha=0.85,
      edgecolor="white",
      linewidth=0.6,
    )
    # Hatch only, no fill: readable both above a bar and over it.
    ax.bar(
      left,
      gap,
      bottom=accuracy,
      width=width,
      align="edge",
      facecolor="none",
      edgecolor=_GAP_COLOR,
      hatch="////",
      linewidth=0.6,
    )
    ax.plot([0, 1], [0, 1], ls="--", color="0.25", lw=1.0)
    ece = diagrams[name].get("ece")
    heading = name if ece is None else f"{name}\nECE = {float(ece):.4f}"
    ax.set(xlim=(0, 1), ylim=(0, 1), title=heading, aspect="equal", xlabel="Confidence")
    ax.title.set_fontsize("medium")
    ax.grid(alpha=0.3)
  for ax in fig.axes[::columns]:
    ax.set_ylabel("Accuracy")
  fig.legend(
    handles=[
      Patch(facecolor="0.6", label="accuracy in bin"),
      Patch(facecolor="none", edgecolor=_GAP_COLOR, hatch="////", label="gap to mean confidence"),
      Line2D([], [], ls="--", color="0.25", label="perfect calibration"),
    ],
    loc="outside lower center",
    ncols=3 if columns > 1 else 1,
    fontsize="small",
    frameon=False,
  )
  fig.suptitle(title)
  return save_figure(fig, path)


def _finite_points(points) -> dict[str, tuple[float, float]]:
  _require_items(points, "pareto")
  out = {}
  for name, point in points.items():
    if np.ndim(point) != 1 or np.shape(point) != (2,):
      raise InputError(f"pareto: {name!r} must be a (cost, metric) pair, got {point!r:.80}")
    cost, metric = (float(v) for v in point)
    if math.isfinite(cost) and math.isfinite(metric):
      out[name] = (cost, metric)
  return out


def pareto_front(
  points: dict[str, tuple[float, float]], *, lower_is_better: bool = True
) -> list[str]:
  """Methods no other method beats on both cost and metric, by increasing cost.

  Lower cost is always better; the metric is better lower or higher as told.
  Points with a non-finite coordinate are left out; identical points do not
  dominate each other, so all of them stay on the front.
  """
  finite = _finite_points(points)
  sign = 1.0 if lower_is_better else -1.0
  scored = {name: (cost, sign * metric) for name, (cost, metric) in finite.items()}

  def dominated(a):
    return any(b[0] <= a[0] and b[1] <= a[1] and b != a for b in scored.values())

  front = [name for name, score in scored.items() if not dominated(score)]
  return sorted(front, key=lambda name: scored[name])


def pareto(
  points: dict[str, tuple[float, float]],
  path,
  *,
  y_label: str,
  x_label: str = "GFLOPs / image",
  lower_is_better: bool = True,
  title: str | None = None,
  colors: Mapping | None = None,
) -> str:
  """Cost against a metric, one marker per method, front as a step line; returns `path`.

  Methods are named in a legend beside the axes, never in text next to their
  points: many sit on top of one another (a method and its +TS twin nearly
  always do). Methods on the front are ringed in grey and bold in the legend.
  """
  finite = _finite_points(points)
  path = _check_directory(path)
  styles = method_styles(list(points), colors)
  front = pareto_front(points, lower_is_better=lower_is_better)
  # Tall enough for a one-column legend of every method.
  fig = new_figure(8.4, max(4.6, 0.19 * (len(finite) + 2) + 0.9))
  ax = fig.add_subplot()
  if finite:
    xs, ys = np.array(list(finite.values())).T
    # A log axis only when costs differ by more than 10×: easier to read otherwise.
    if xs.min() > 0 and xs.max() / xs.min() > 10:
      ax.set_xscale("log")  # ticks at 1, 2, 5 × 10^k, written as plain numbers
      ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
      ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
      ax.xaxis.set_minor_formatter(NullFormatter())
    fx, fy = [finite[n][0] for n in front], [finite[n][1] for n in front]
    handles = ax.step(
      fx, fy, where="post", color="0.35", lw=1.3, ls="--", zorder=1, label="Pareto front"
    )
    handles += ax.plot(
      fx, fy, ls="none", marker="o", ms=17, color="0.82", zorder=2, label="on the front (bold)"
    )
    for name, (x, y) in finite.items():  # twins on top: their rings go around the dots
      ax.plot(
        [x],
        [y],
        ls="none",
        label=name,
        zorder=4 if styles[name].twin else 3,
        **styles[name].markers(7.5),
      )
    ax.margins(x=0.08, y=0.1)
    legend = fig.legend(
      handles=handles + [styles[n].handle(n) for n in finite],
      loc="outside right upper",
      fontsize="small",
      frameon=False,
    )
    for name, text in zip(finite, legend.get_texts()[len(handles) :]):
      text.set_fontweight("bold" if name in front else "normal")
  hidden = [n for n in points if n not in finite]
  if hidden:
    fig.text(
      0.01,
      0.0,
      "not shown (non-finite value): " + ", ".join(hidden),
      fontsize=7,
      color="0.4",
      va="bottom",
    )
  better = "lower" if lower_is_better else "higher"
  ax.set(
    xlabel=x_label, ylabel=f"{y_label} ({better} is better)", title=title or f"Cost vs {y_label}"
  )
  ax.grid(alpha=0.3, which="both")
  return save_figure(fig, path)


def _check_series(series) -> list[str]:
  """Validates `series`; returns every method, in order of first appearance."""
  _require_items(series, "shift_curves")
  methods = {}
  for kind, by_method in series.items():
    _require_items(by_method, f"shift_curves[{kind!r}]")
    lengths = {name: len(values) for name, values in by_method.items()}
    if len(set(lengths.values())) != 1 or 0 in lengths.values():
      raise InputError(
        f"shift_curves: methods under {kind!r} need the same non-zero number "
        f"of values, got {lengths}"
      )
    methods.update(dict.fromkeys(by_method))
  return list(methods)


def shift_curves(
  series: dict[str, dict[str, list[float]]],
  path,
  *,
  metric_label: str,
  title: str | None = None,
  colors: Mapping | None = None,
  severities: Sequence[int] | None = None,
) -> str:
  """A metric against severity (0 = clean), one panel per shift kind; returns `path`.
  `severities` name the points after the clean one (default 1, 2, ...)."""
  methods = _check_series(series)
  path = _check_directory(path)
  colors = _colors(methods, colors)
  # A near-square grid (2 × 2 for the four kinds): wide rows flatten the curves.
  columns = math.ceil(math.sqrt(len(series)))
  fig, axes = _panels(len(series), columns, 3.4, 2.8, sharey=True)
  fig.set_figwidth(fig.get_figwidth() + 1.6)  # room for the legend on the right
  for ax, (kind, by_method) in zip(axes, series.items()):
    for name, values in by_method.items():
      values = np.asarray(values, np.float64)
      ax.plot(
        np.arange(values.size), values, color=colors[name], marker="o", ms=3.5, lw=1.6, label=name
      )
    points = len(next(iter(by_method.values())))
    names = list(severities) if severities is not None else range(1, points)
    ax.set_xticks(range(points), ["clean", *map(str, names)])
    ax.set_title(kind.replace("_", " "), fontsize="medium")
    ax.grid(alpha=0.3)
  # One legend entry per method, whichever panels it appears in.
  handles = [Line2D([], [], color=colors[m], marker="o", ms=3.5, lw=1.6) for m in methods]
  fig.legend(handles, methods, loc="outside right upper", fontsize="small", frameon=False)
  fig.supxlabel("Severity")
  fig.supylabel(metric_label)
  fig.suptitle(title or f"{metric_label} under distribution shift")
  return save_figure(fig, path)


def deferral_curves(
  curves: dict[str, dict], path, *, title: str = "Deferral curves (test)", columns: int = 3
) -> str:
  """Cascade accuracy against deferral ratio, one panel per gate; returns `path`.

  Each panel: the realized curve of the gate (`cascade.deferral_curve`), the
  random-deferral line and the ideal gate's curve.
  """
  _require_items(curves, "deferral_curves")
  path = _check_directory(path)
  fig, axes = _panels(len(curves), min(columns, len(curves)), 3.4, 2.8, sharey=True)
  for ax, (name, curve) in zip(axes, curves.items()):
    ratio, accuracy = _curve(name, curve["ratio"], curve["accuracy"])
    ax.plot(ratio, accuracy, color=PALETTE[0], lw=1.8, label="realized")
    ax.plot(curve["ratio"], curve["random"], color="0.5", lw=1.2, ls="--", label="random")
    ax.plot(curve["ratio"], curve["ideal"], color=PALETTE[2], lw=1.2, ls=":", label="ideal")
    ax.set_title(name, fontsize="medium")
    ax.set_xlim(0, 1)
    ax.grid(alpha=0.3)
  axes[0].legend(loc="lower right", fontsize="small", framealpha=0.9)
  fig.supxlabel("Deferral ratio (fraction sent to the large model)")
  fig.supylabel("Cascade accuracy")
  fig.suptitle(title)
  return save_figure(fig, path)


def cost_curves(
  curves: dict[str, tuple],
  points: dict[str, tuple[float, float]],
  path,
  *,
  x_label: str,
  y_label: str,
  title: str,
) -> str:
  """Metric against cost: lines for swept methods, markers for fixed ones."""
  _require_items(curves, "cost_curves")
  path = _check_directory(path)
  colors = _colors([*curves, *points], None)
  fig = new_figure(6.4, 4.4)
  ax = fig.add_subplot()
  for name, (xs, ys) in curves.items():
    ax.plot(
      np.asarray(xs, np.float64),
      np.asarray(ys, np.float64),
      color=colors[name],
      lw=1.8,
      marker="o",
      ms=2.5,
      label=name,
    )
  for name, (x, y) in _finite_points(points).items():
    ax.plot([x], [y], color=colors[name], marker="*", ms=12, ls="none", label=name)
  ax.set(xlabel=x_label, ylabel=y_label, title=title)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize="small", framealpha=0.9)
  return save_figure(fig, path)
