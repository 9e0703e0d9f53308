"""The import graph of prefjax: no cycles, few function-local imports, layers point one way.

The graph is read from the source with `ast` (nothing is imported), so an import inside a
function counts as an edge just like one at the top of a module (and so does
``importlib.import_module("prefjax....")`` with a literal name).
"""

from __future__ import annotations

import ast
import pathlib
from collections.abc import Iterator

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prefjax"

# At most this many function-local imports of prefjax modules in the whole package (a
# module-level import is the default; keep one inside a function only where it keeps a light
# module light, e.g. config files that must load without the train package). Third-party
# imports are not counted: lazy imports of heavy optional packages (torch, transformers, gguf,
# reasoning_gym, statsmodels, ...) are fine.
MAX_LOCAL_IMPORTS = 20

LOWER = ("models", "losses", "data", "metrics", "sampling", "tokenizers")
UPPER = ("train", "eval", "rl", "rewards", "studies", "testbed")

# The testbed is reached only through its data source and its evaluator.
TESTBED_GATES = frozenset({"prefjax.train.data_source", "prefjax.eval.testbed_eval"})


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _resolve(name: str) -> str | None:
  """The longest prefjax module that `name` names (a module, or an attribute of one)."""
  while name:
    if name in MODULES:
      return name
    name = name.rpartition(".")[0]
  return None


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
  if not node.level:
    return node.module or ""
  base = module.split(".")
  if not is_package:
    base.pop()
  base = base[: len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: pathlib.Path) -> Iterator[tuple[str, int, bool]]:
  """(imported prefjax module, line, whether the import sits inside a function)."""
  tree = ast.parse(path.read_text(), str(path))
  is_package = path.name == "__init__.py"

  def visit(node: ast.AST, local: bool) -> Iterator[tuple[str, int, bool]]:
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.Import):
        for alias in child.names:
          target = _resolve(alias.name)
          if target:
            yield target, child.lineno, local
      elif isinstance(child, ast.ImportFrom):
        source = _absolute(module, is_package, child)
        for alias in child.names:
          # `from prefjax.x import y` imports the submodule prefjax.x.y when there is one.
          target = _resolve(f"{source}.{alias.name}") or _resolve(source)
          if target:
            yield target, child.lineno, local
      else:
        if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
            and child.func.attr == "import_module" and child.args
            and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str)):
          target = _resolve(child.args[0].value)   # importlib.import_module("prefjax....")
          if target:
            yield target, child.lineno, local
        inner = local or isinstance(
            child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        yield from visit(child, inner)

  yield from visit(tree, False)


def _edges() -> list[tuple[str, str, int, bool]]:
  """(importer, imported, line, local) for every prefjax-to-prefjax import statement."""
  edges = set()
  for module, path in MODULES.items():
    for target, line, local in _imports(module, path):
      if target != module:
        edges.add((module, target, line, local))
  return sorted(edges)


EDGES = _edges()


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
  """Tarjan's strongly connected components, iterative, components of size > 1."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  components = []
  counter = 0
  for root in sorted(graph):
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = counter
    counter += 1
    stack.append(root)
    on_stack.add(root)
    while work:
      node, children = work[-1]
      child = next(children, None)
      if child is not None:
        if child not in index:
          index[child] = low[child] = counter
          counter += 1
          stack.append(child)
          on_stack.add(child)
          work.append((child, iter(sorted(graph[child]))))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      work.pop()
      if work:
        low[work[-1][0]] = min(low[work[-1][0]], low[node])
      if low[node] == index[node]:
        component = []
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.append(member)
          if member == node:
            break
        if len(component) > 1:
          components.append(sorted(component))
  return components


def _where(edges) -> str:
  return "\n".join(
      f"  {a} -> {b} (line {line}{', in a function' if local else ''})"
      for a, b, line, local in sorted(edges))


def test_cycle_finder():
  assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert _strongly_connected({"a": {"b"}, "b": {"b"}, "c": set()}) == []


def test_graph_is_read():
  assert "prefjax.train.run" in MODULES
  assert ("prefjax.train.run", "prefjax.train.stages") in {(a, b) for a, b, *_ in EDGES}
  assert any(local for *_, local in EDGES)


def test_no_import_cycles():
  graph = {m: set() for m in MODULES}
  for a, b, _, _ in EDGES:
    graph[a].add(b)
  cycles = _strongly_connected(graph)
  message = []
  for component in cycles:
    members = set(component)
    inside = [e for e in EDGES if e[0] in members and e[1] in members]
    message.append(f"cycle among {', '.join(component)}:\n{_where(inside)}")
  assert not cycles, "\n\n".join(message)


def test_few_function_local_imports():
  local = [e for e in EDGES if e[3]]
  assert len(local) <= MAX_LOCAL_IMPORTS, (
      f"{len(local)} function-local prefjax imports (at most {MAX_LOCAL_IMPORTS}); "
      f"import at module level where no cycle results:\n{_where(local)}")


def _layer(module: str) -> int | None:
  """0: top-level modules (prefjax.distributed, prefjax.sharding, ...); 1: the lower
  packages; 2: the upper ones; None: the package itself."""
  parts = module.split(".")
  if len(parts) < 2:
    return None
  if parts[1] in LOWER:
    return 1
  if parts[1] in UPPER:
    return 2
  return 0 if len(parts) == 2 else None


def test_layers_point_one_way():
  bad = [e for e in EDGES
         if None not in (_layer(e[0]), _layer(e[1])) and _layer(e[1]) > _layer(e[0])]
  assert not bad, (
      "top-level modules (prefjax.distributed, prefjax.sharding, ...) import only each other; "
      f"{' / '.join(LOWER)} import nothing from {' / '.join(UPPER)}:\n{_where(bad)}")


def test_testbed_is_reached_only_through_its_source_and_evaluator():
  bad = [
      e for e in EDGES if e[1].startswith("prefjax.testbed")
      and not e[0].startswith("prefjax.testbed") and e[0] not in TESTBED_GATES
  ]
  assert not bad, (
      "only prefjax.train.data_source (its data source) and prefjax.eval.testbed_eval "
      f"(its evaluator) import the testbed:\n{_where(bad)}")
