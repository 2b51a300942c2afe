"""How a method looks in the report's figures: a color, a marker and a line style.

Methods come in families: "X" and its temperature-scaled twin "X+TS" share a
color and a marker; the twin is drawn hollow and dashed. Where the two
coincide (they often nearly do) the twin's ring shows around the base's dot.
Families take colors in order of first appearance and markers from a cycle
whose length is prime to the colors', so no two families share both color
and marker; `colors` (method -> color, a family's color serving its twin)
overrides the color, and the marker then moves on until the key is unique.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from matplotlib import colormaps
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D

PALETTE = tuple(colormaps["tab10"].colors) + tuple(colormaps["Dark2"].colors)
# Families cycle through 10 colors and 7 markers together: the 11th family is
# blue again, but with a diamond. Dark2's colors, in `PALETTE` for figures
# with a panel per method, are left out: too near tab10's to tell apart.
STYLE_COLORS = tuple(colormaps["tab10"].colors)
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
TWIN_SUFFIX = "+TS"


def method_colors(names: Sequence[str]) -> dict[str, tuple]:
  """Method -> color, by position (cycling past the palette's end)."""
  return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def family(name: str) -> str:
  """The method a temperature-scaled twin scales: "X" for "X+TS", else `name` itself."""
  if name.endswith(TWIN_SUFFIX) and len(name) > len(TWIN_SUFFIX):
    return name[: -len(TWIN_SUFFIX)]
  return name


@dataclasses.dataclass(frozen=True)
class Style:
  color: object
  marker: str
  twin: bool  # temperature-scaled: hollow marker, dashed line

  @property
  def key(self) -> tuple:
    """What tells two methods apart at a glance."""
    return self.marker, to_rgba(self.color), self.twin

  def markers(self, size: float, *, ring: bool = True) -> dict:
    """Keyword arguments of `Axes.plot` for a marker of about `size` points; a
    twin's is larger with `ring`, to surround its base's dot where they coincide."""
    if self.twin:
      return dict(
        marker=self.marker, ms=size * (1.45 if ring else 1.0), mfc="none", mec=self.color, mew=1.6
      )
    return dict(marker=self.marker, ms=size, mfc=self.color, mec="white", mew=0.7)

  def line(self, markevery=None) -> dict:
    """Keyword arguments of `Axes.plot` for a curve, markers at the `markevery` indices."""
    return dict(
      color=self.color,
      ls="--" if self.twin else "-",
      lw=1.5,
      markevery=markevery,
      **self.markers(4.5, ring=False),
    )

  def handle(self, label: str, *, curve: bool = False) -> Line2D:
    """A legend entry: the marker alone, or with `curve` on a short stretch of line."""
    line = dict(color=self.color, ls="--" if self.twin else "-", lw=1.5) if curve else {}
    return Line2D(
      [],
      [],
      label=label,
      **{"ls": "none", **line},
      **self.markers(5.5 if curve else 7.0, ring=False),
    )


def method_styles(names: Sequence[str], colors: Mapping | None = None) -> dict[str, Style]:
  """Method -> Style, every (marker, color, hollow) key distinct."""
  names = list(dict.fromkeys(names))
  families = list(dict.fromkeys(family(name) for name in names))
  given = dict(colors or {})
  styles, used = {}, set()
  for name in names:
    index = families.index(family(name))
    color = given.get(name, given.get(family(name), STYLE_COLORS[index % len(STYLE_COLORS)]))
    twin = name != family(name)
    for step in range(len(MARKERS)):  # the family's marker unless its key is taken
      style = Style(color, MARKERS[(index + step) % len(MARKERS)], twin)
      if style.key not in used:
        break
    used.add(style.key)
    styles[name] = style
  return styles
