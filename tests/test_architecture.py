"""The package's structure: no import cycle among module-level imports, and every differentiable op
recorded in the engine (dreidel/ops) only."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("dreidel", "importers")


def _modules():
    """{dotted module name: path} for every .py file under the packages."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
        for path in [*(ROOT / package).rglob("*.pyx"), *(ROOT / package).rglob("*.so")]:  # compiled: no edges
            parts = path.relative_to(ROOT).parts
            found[".".join(parts[:-1] + (parts[-1].split(".")[0],))] = None
    return found


def _resolve(module, node, is_package):
    """The absolute module a `from ... import` names (relative imports resolved against `module`)."""
    if not node.level:
        return node.module
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph():
    """Edges module → the in-tree modules it imports at module level (statements at the top of the
    module, including inside top-level if/try blocks, not inside functions or classes).
    `from a import b` points at a.b when that is a module, else at a; a parent package is not an
    edge by itself (Python runs it first, but it imports its children, not the reverse)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        if path is None:
            graph[name] = set()
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges = set()
        body = list(tree.body)
        while body:
            node = body.pop(0)
            if isinstance(node, (ast.If, ast.Try)):
                body.extend(node.body + node.orelse + getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    body.extend(handler.body)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, node, path.name == "__init__.py")
                for alias in node.names:
                    child = f"{target}.{alias.name}"
                    if child in modules:
                        edges.add(child)
                    elif target in modules:
                        edges.add(target)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycles(graph):
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
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


def test_the_graph_sees_the_known_edges():
    graph = import_graph()
    assert "dreidel.tensor" in graph["dreidel.ops.math"]
    assert "dreidel.ops" in graph["dreidel.functional"]
    assert "dreidel.ops.spectral" in graph["dreidel.nn.spectral"]


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, f"module-level import cycles: {cycles}"


def test_the_core_imports_no_op():
    assert not {m for m in import_graph()["dreidel.tensor"] if m.startswith("dreidel.")}


def _calls(path, names):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call) and (
        getattr(node.func, "id", None) in names or getattr(node.func, "attr", None) in names)]


def test_ops_are_recorded_only_in_the_engine():
    """Outside dreidel/ops (and the core itself) nothing in dreidel defines a differentiable op: no
    `record` call, no `Function` subclass."""
    offenders = []
    for name, path in _modules().items():
        if path is None or not name.startswith("dreidel.") or name.startswith("dreidel.ops") or name == "dreidel.tensor":
            continue
        offenders += [f"{name}:{line}" for line in _calls(path, {"record", "_result"})]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        offenders += [f"{name}:{node.lineno} class {node.name}" for node in ast.walk(tree)
                      if isinstance(node, ast.ClassDef) and any(getattr(b, "id", getattr(b, "attr", None)) == "Function"
                                                                for b in node.bases)]
    assert not offenders, offenders
