"""The package's import graph: no cycles, and no layer imports one above it.

Run as a script to print the graph:

    .venv/bin/python tests/test_layers.py [PACKAGE_DIR] [--packages]

(module -> the duojax modules it imports, then any cycles; `--packages`
folds modules into their top-level package: core, train, eval, ...).
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import subprocess
import sys

import pytest

from duojax import layers

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "duojax"

# Layers from the bottom up, by top-level module or package (duojax/layers.py,
# shown in README's "Code map"). A module may import from its own package and
# from lower layers; packages that share a layer are independent of each other.
# `python -m` entry points (`__main__`) sit on top.
LAYERS = layers.by_name()
ENTRY_POINT_LAYER = LAYERS["__main__"]
README = PACKAGE.parent / "README.md"


def module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root.parent).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
  """{module: the package's modules it imports}, from the source (every import
  statement, also those inside functions)."""
  files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
  top = root.name
  graph = {}
  for name, path in files.items():
    deps = set()
    for node in ast.walk(ast.parse(path.read_text())):
      targets = []
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from a.b import c` imports module a.b.c when it exists, else a.b.
        targets = [
          f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in files else node.module
          for alias in node.names
        ]
      deps.update(t for t in targets if t == top or t.startswith(top + "."))
    deps.discard(name)
    graph[name] = deps
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every cycle found by a depth-first search (each reported once, as a path)."""
  found, state, stack = [], {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        found.append(stack[stack.index(dep) :] + [dep])
      elif dep not in state:
        visit(dep)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  return found


def package_of(module: str) -> str:
  """The top-level package (`core`, `eval`, ...); entry points are their own node."""
  parts = module.split(".")
  if parts[-1] == "__main__":
    return ".".join(parts[1:])
  return parts[1] if len(parts) > 1 else parts[0]


def layer_of(module: str) -> int | None:
  if module.endswith(".__main__"):
    return ENTRY_POINT_LAYER
  return LAYERS.get(package_of(module))


def fold(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  """The graph between top-level packages (intra-package edges dropped)."""
  folded = {}
  for module, deps in graph.items():
    edges = folded.setdefault(package_of(module), set())
    edges.update(package_of(d) for d in deps if package_of(d) != package_of(module))
  return folded


def test_every_module_has_a_layer():
  graph = import_graph()
  loose = [m for m in graph if m != "duojax" and layer_of(m) is None]
  assert not loose, f"modules outside every layer (add them to duojax/layers.py): {loose}"


def test_no_import_cycles():
  assert cycles(import_graph()) == []


def test_no_module_imports_from_a_layer_above_or_beside_it():
  bad = []
  for module, deps in import_graph().items():
    if module == "duojax":  # the root resolves moved names lazily, by name
      continue
    for dep in deps:
      if package_of(dep) == package_of(module) or dep == "duojax":
        continue
      if layer_of(dep) >= layer_of(module):
        bad.append(f"{module} (layer {layer_of(module)}) imports {dep} (layer {layer_of(dep)})")
  assert not bad, "\n".join(bad)


def _readme_table() -> str:
  text = README.read_text()
  start = text.index("## Code map")
  section = text[start : text.find("\n## ", start + 1)]
  lines = section.splitlines()
  first = next(i for i, line in enumerate(lines) if line.startswith("| layer |"))
  table = []
  for line in lines[first:]:
    if not line.startswith("|"):
      break
    table.append(line)
  return "\n".join(table) + "\n"


def test_the_readme_table_is_the_layers_module():
  assert _readme_table() == layers.markdown(), (
    "README's Code map table and duojax/layers.py differ: edit ROWS there, then paste "
    "the output of `.venv/bin/python -m duojax.layers` into the README"
  )


def test_python_m_duojax_layers_prints_the_table():
  printed = subprocess.run(
    [sys.executable, "-m", "duojax.layers"],
    cwd=PACKAGE.parent,
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  assert printed == layers.markdown()


def test_every_row_names_something_that_exists_once():
  names = [key for row in layers.ROWS for key in map(layers.key, row.names)]
  assert len(names) == len(set(names)), names
  missing = [
    name
    for row in layers.ROWS
    for name in row.names
    if not name.startswith("*/") and not (PACKAGE / name).exists()
  ]
  assert not missing, f"rows of duojax/layers.py name what is not in duojax/: {missing}"
  assert [row.layer for row in layers.ROWS] == sorted(row.layer for row in layers.ROWS)


def test_the_layers_module_is_in_the_lowest_layer():
  assert LAYERS["layers"] == min(LAYERS.values())
  assert import_graph()["duojax.layers"] == set()


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
  pkg = tmp_path / "duojax"
  (pkg / "core").mkdir(parents=True)
  (pkg / "eval").mkdir()
  for folder in (pkg, pkg / "core", pkg / "eval"):
    (folder / "__init__.py").write_text("")
  (pkg / "core" / "a.py").write_text("from duojax.eval import b\n")
  (pkg / "eval" / "b.py").write_text("def f():\n  from duojax.core import a\n")
  graph = import_graph(pkg)
  assert graph["duojax.core.a"] == {"duojax.eval.b"}
  assert cycles(graph) == [["duojax.core.a", "duojax.eval.b", "duojax.core.a"]]
  assert layer_of("duojax.core.a") < layer_of("duojax.eval.b")


@pytest.mark.parametrize(
  "module, name",
  [
    ("duojax.models", "get_model"),
    ("duojax.duo", "combine_mode"),
    ("duojax.temperature", "fit_temperatures"),
    ("duojax.metrics", "evaluate"),
    ("duojax.cascade", "gatekeeper_loss"),
    ("duojax.convert", "load_pretrained"),
    ("duojax.convert", "export_pretrained"),
    ("duojax.hydra", "merge"),
    ("duojax.data", "load_dataset"),
    ("duojax.sharding", "make_mesh"),
  ],
)
def test_public_names_keep_working(module, name):
  """What users imported before the packages existed still resolves."""
  try:
    owner = importlib.import_module(module)
  except ModuleNotFoundError:  # moved: resolved by the package root
    package, _, attr = module.rpartition(".")
    owner = getattr(importlib.import_module(package), attr)
  assert callable(getattr(owner, name))


def _print(root: pathlib.Path, packages: bool) -> None:
  graph = import_graph(root)
  if packages:
    graph = fold(graph)
  for module in sorted(graph):
    print(f"{module}: {', '.join(sorted(graph[module])) or '-'}")
  found = cycles(graph)
  print(f"\n{len(graph)} nodes, {sum(map(len, graph.values()))} edges, {len(found)} cycles")
  for cycle in found:
    print("cycle: " + " -> ".join(cycle))


if __name__ == "__main__":
  args = [a for a in sys.argv[1:] if not a.startswith("--")]
  _print(pathlib.Path(args[0]).resolve() if args else PACKAGE, "--packages" in sys.argv)
