"""The import graph of the project (Python's ast, nothing imported): no circles, and the
library never imports the layers built on it."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Lower layers never import higher ones: the library, then the experiment configs and
# entry points, then what measures them.
LAYERS = {"dfm_flax": 0, "experiments": 1, "benchmarks": 2, "studies": 2}


def modules(root: str = ROOT) -> dict[str, str]:
  """Dotted module name -> file, for every package of LAYERS."""
  found = {}
  for top in LAYERS:
    for dirpath, _, filenames in os.walk(os.path.join(root, top)):
      for name in filenames:
        if name.endswith(".py"):
          path = os.path.join(dirpath, name)
          dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
          found[dotted.removesuffix(".__init__")] = path
  return found


def _imported(node, package: str) -> list[str]:
  if isinstance(node, ast.Import):
    return [a.name for a in node.names]
  base = node.module or ""
  if node.level:
    parts = package.split(".")[:len(package.split(".")) - node.level + 1]
    base = ".".join(parts + ([base] if base else []))
  return [base] + [f"{base}.{a.name}" for a in node.names]


def _parents(name: str) -> list[str]:
  """A module and the packages Python runs on the way to it."""
  parts = name.split(".")
  return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def import_graph(root: str = ROOT) -> tuple[dict[str, set], list[tuple[str, str, int]]]:
  """(module -> the project modules it imports, [(module, imported, line)] of imports
  inside functions)."""
  mods = modules(root)
  edges, inner = {m: set() for m in mods}, []
  for mod, path in mods.items():
    tree = ast.parse(open(path).read(), path)
    package = mod if path.endswith("__init__.py") else mod.rpartition(".")[0]
    in_function = {id(n) for f in ast.walk(tree)
                   if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      targets = {p for name in _imported(node, package) for p in _parents(name)
                 if p in mods and p != mod and not mod.startswith(p + ".")}
      edges[mod] |= targets
      if id(node) in in_function:
        inner += [(mod, t, node.lineno) for t in sorted(targets)]
  return edges, inner


def cycles(edges: dict[str, set]) -> list[list[str]]:
  """Every strongly connected group of more than one module (Tarjan)."""
  index, low, stack, on, found = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in edges.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = []
      while True:
        w = stack.pop()
        on.discard(w)
        group.append(w)
        if w == v:
          break
      if len(group) > 1:
        found.append(sorted(group))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return found


def upward(edges: dict[str, set]) -> list[tuple[str, str]]:
  """(importer, imported module) for each import into a higher layer (the packages on the
  way to a module are not counted again)."""
  layer = lambda m: LAYERS[m.split(".")[0]]  # noqa: E731
  return sorted((a, b) for a, targets in edges.items() for b in targets
                if layer(b) > layer(a) and not any(t.startswith(b + ".") for t in targets))


def test_no_import_circles():
  assert cycles(import_graph()[0]) == []


def test_at_most_one_import_points_up():
  assert len(upward(import_graph()[0])) <= 1, upward(import_graph()[0])


def test_library_imports_no_layer_above_it():
  edges, _ = import_graph()
  assert [(a, b) for a, b in upward(edges) if a.startswith("dfm_flax")] == []


def test_the_checks_see_a_planted_circle_and_an_import_up(tmp_path):
  for top in LAYERS:
    (tmp_path / top).mkdir()
    (tmp_path / top / "__init__.py").write_text("")
  (tmp_path / "dfm_flax" / "a.py").write_text("from dfm_flax import b\n")
  (tmp_path / "dfm_flax" / "b.py").write_text("def f():\n  from dfm_flax.a import g\n")
  (tmp_path / "dfm_flax" / "c.py").write_text("import experiments.x\n")
  (tmp_path / "experiments" / "x.py").write_text("")
  edges, inner = import_graph(str(tmp_path))
  assert cycles(edges) == [["dfm_flax.a", "dfm_flax.b"]]
  assert upward(edges) == [("dfm_flax.c", "experiments.x")]
  assert inner == [("dfm_flax.b", "dfm_flax.a", 2)]


def test_an_import_inside_a_function_says_why():
  """Imports of project modules belong at the top; one deferred (a heavy dependency kept off
  start-up, a backend chosen first) carries its reason on its line."""
  unexplained = []
  for mod, target, line in import_graph()[1]:
    text = open(modules()[mod]).read().splitlines()[line - 1]
    if "#" not in text:
      unexplained.append(f"{mod}:{line} imports {target}")
  assert sorted(set(unexplained)) == []
