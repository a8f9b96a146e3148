"""The shape of the code: the packages' import graph has no cycle, the core's dependencies
point one way (sites <- families <- locate <- model <- hooks <- backend <- nnsight_backend
<- load), and the top-level packages depend in the designed order (probe <- interventions
<- circuits <- app)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("probe", "interventions", "circuits", "app")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                if hasattr(child, "lineno"):
                    lines.add(child.lineno)
    return lines


def import_graph() -> dict[str, set[str]]:
    """module -> project modules it imports, at module level or inside functions (imports
    under ``if TYPE_CHECKING`` are not run and do not count)."""
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        deps = set()
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def _cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep) :] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    # a package's __init__ re-exports its modules; a module importing its own package's
    # __init__ back would be a cycle, and is one here
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_core_dependencies_point_one_way():
    order = [
        "probe.sites",
        "probe.families",
        "probe.locate",
        "probe.model",
        "probe.hooks",
        "probe.backend",
        "probe.nnsight_backend",
        "probe.load",
    ]
    graph = import_graph()
    rank = {m: i for i, m in enumerate(order)}
    for module in order:
        for dep in graph[module]:
            base = next((m for m in order if dep == m or dep.startswith(m + ".")), None)
            if base is not None and base != module:
                assert rank[base] < rank[module], f"{module} imports {dep}, which depends on it"


def test_packages_depend_in_the_designed_order():
    rank = {pkg: i for i, pkg in enumerate(PACKAGES)}
    for module, deps in import_graph().items():
        for dep in deps:
            src, dst = module.split(".")[0], dep.split(".")[0]
            assert rank[dst] <= rank[src], f"{module} ({src}) imports {dep} ({dst})"
