"""The product packages import one another without a cycle, and never the test package.

Builds the import graph of every module under the product packages by parsing their
source with `ast` (module-level and function-level imports both count; imports under
`if TYPE_CHECKING:` do not, since they never run) and fails naming each cycle it finds.
A cycle means two modules cannot be understood, tested or replaced apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "orchestration",
    "training",
    "serving",
    "registry",
    "ingestion",
    "evaluation",
    "observability",
)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name an import statement in `tree` may refer to, TYPE_CHECKING excluded."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            names.add(target)
            names.update(f"{target}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def all_imports() -> dict[str, set[str]]:
    """Product module -> every module name its import statements may refer to."""
    imports: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            module = _module_name(path)
            tree = ast.parse(path.read_text(), filename=str(path))
            imports[module] = _imported_names(tree, module, path.name == "__init__.py")
    return imports


def import_graph() -> dict[str, set[str]]:
    """Module -> the product modules it imports (a package is its ``__init__``)."""
    imports = all_imports()
    return {
        module: {name for name in names if name in imports and name != module}
        for module, names in imports.items()
    }


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                strongconnect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in sorted(graph):
        if node not in index:
            strongconnect(node)
    return components


def test_graph_sees_the_product_modules() -> None:
    graph = import_graph()
    assert "serving.gateway.proxy" in graph
    assert "serving.breaker" in graph["serving.gateway.routing"]


def test_cycle_finder_names_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]


def test_product_never_imports_the_test_package() -> None:
    """Fakes and fault hooks live in ``testing/``, which does not ship."""
    offenders = {
        module: sorted(n for n in names if n == "testing" or n.startswith("testing."))
        for module, names in all_imports().items()
    }
    assert not {m: n for m, n in offenders.items() if n}


def test_product_packages_have_no_import_cycle() -> None:
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)
