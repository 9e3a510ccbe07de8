"""The package's shape: imports flow one way (no circles), and modules stay small."""
import ast
import pathlib

from conftest import ROOT

PACKAGE = ROOT / "trajax"


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """trajax modules `path` imports, at any depth of its code (lazy imports count too)."""
  name = _module_name(path)
  package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(
            package.split(".")[:len(package.split(".")) - node.level + 1] +
            ([base] if base else []))
      out.add(base)
      out.update(f"{base}.{a.name}" for a in node.names)
  # `from trajax.models import opt` names a module; `from trajax.flops import x` a function.
  return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
  paths = sorted(PACKAGE.rglob("*.py"))
  modules = {_module_name(p) for p in paths}
  # A package's __init__ importing its own submodules is not an edge back into it.
  return {
      _module_name(p): {m for m in _imports(p, modules) if not _module_name(p).startswith(m + ".")}
      for p in paths
  }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_graph_finds_a_planted_cycle():
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_package():
  graph = _graph()
  assert {"trajax.sweep", "trajax.stream", "trajax.models.opt"} <= set(graph)
  assert "trajax.stream" in graph["trajax.sweep"]  # the graph sees real edges
  assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"


def test_no_library_module_over_450_lines():
  """A module does one thing: ~400 lines is a sign to split (STYLE.md); 450 is the ceiling."""
  sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
  assert len(sizes) > 40 and max(sizes.values()) > 200  # it counted the real package
  assert {p: n for p, n in sizes.items() if n > 450} == {}
