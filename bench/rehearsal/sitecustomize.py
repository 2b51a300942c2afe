"""An accelerator host's imports, rehearsed here: any module outside its list fails to import.

With this folder on PYTHONPATH and `DUOJAX_ALLOWED_MODULES` naming a file of
top-level module names (`python bench/device_kit.py modules`), Python refuses
every other top-level import as if the package were not installed, and
appends the refused name to `DUOJAX_REFUSED_LOG` when that is set. Packages
that try an optional import and carry on keep working, as they would there.
"""

import importlib.abc
import os
import sys


class _Guard(importlib.abc.MetaPathFinder):
  """The interpreter's own finders, asked only for allowed top-level names.

  A refused name is simply not found (`find_spec` gives None, `import`
  raises ModuleNotFoundError), exactly as on a host without the package.
  """

  def __init__(self, finders, allowed, log):
    self.finders, self.allowed, self.log = finders, allowed, log
    # Namespace packages shared by several distributions are allowed part by part.
    self.namespaces = {name.partition(".")[0] for name in allowed if "." in name}

  def find_spec(self, fullname, path=None, target=None):
    parts = fullname.split(".")
    name = ".".join(parts[:2]) if parts[0] in self.namespaces and len(parts) > 1 else parts[0]
    if name not in self.allowed and not name.startswith("_"):
      if self.log:
        with open(self.log, "a") as f:
          f.write(f"{name}\n")
      return None
    for finder in self.finders:
      find = getattr(finder, "find_spec", None)
      spec = None if find is None else find(fullname, path, target)
      if spec is not None:
        return spec
    return None

  def invalidate_caches(self):
    for finder in self.finders:
      if hasattr(finder, "invalidate_caches"):
        finder.invalidate_caches()


def _install():
  listing = os.environ.get("DUOJAX_ALLOWED_MODULES")
  if not listing:
    return
  with open(listing) as f:
    allowed = {line.strip() for line in f if line.strip()}
  sys.meta_path[:] = [_Guard(list(sys.meta_path), allowed, os.environ.get("DUOJAX_REFUSED_LOG"))]


_install()
