"""Listing the image files below a folder, for imports and predictions alike.

A folder a user points at holds more than images: `notes.txt`, `Thumbs.db`,
`.DS_Store`, a `README`. Hidden names (".name") are never looked at; the
other files count as images when their extension is one PIL opens
(`duojax.data.images.is_image_name`), and the rest are counted and left out
without trying to decode them, so that a decode failure always means a
damaged image, never a text file.
"""

from __future__ import annotations

import os
import sys
from typing import Iterator

from duojax.data import images
from duojax.errors import DataError

# Names shown in a one-line note; the count says how many more there are.
NOTE_NAMES = 3


def readable(name: str) -> str:
  """A file system name as text (undecodable bytes as U+FFFD), for metadata and messages."""
  return os.fsencode(name).decode("utf-8", "replace")


def files_below(folder: str) -> Iterator[str]:
  """Non-hidden files anywhere below `folder`, through links, each directory once."""

  def unlistable(error: OSError):
    raise DataError(f"cannot list {error.filename}: {error.strerror}: fix its permissions")

  seen = set()
  for here, dirs, names in os.walk(folder, onerror=unlistable, followlinks=True):
    real = os.path.realpath(here)
    if real in seen:  # a link back up the tree: walking it again would never end
      dirs[:] = []
      continue
    seen.add(real)
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    yield from (os.path.join(here, n) for n in sorted(names) if not n.startswith("."))


def split_images(paths) -> tuple[list[str], list[str]]:
  """(the paths with an image extension, the others), each in the order given."""
  kept, other = [], []
  for p in paths:
    (kept if images.is_image_name(p) else other).append(p)
  return kept, other


def note_non_images(other: list[str], where: str) -> None:
  """One stderr line saying how many files were left out for not being images."""
  if not other:
    return
  names = ", ".join(readable(os.path.basename(p)) for p in other[:NOTE_NAMES])
  more = ", ..." if len(other) > NOTE_NAMES else ""
  print(
    f"note: {len(other)} files in {where} are not images by their extension and were "
    f"left out: {names}{more}",
    file=sys.stderr,
    flush=True,
  )
