"""The package's layout rules that a reader relies on: no import cycle among rwkv_np's modules
(counting imports inside functions too), and every generation's float64 reference reachable
without Numba (a student's path is NumPy only)."""
import ast
import os
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "rwkv_np"


def import_graph() -> dict[str, set[str]]:
    """{module: modules of rwkv_np it imports}, from the source (static imports, any depth)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            edges |= {c for c in candidates if c in modules and c not in (name, "rwkv_np")}
        graph[name] = edges
    return graph


def test_no_import_cycle():
    graph, done, cycles = import_graph(), set(), []

    def visit(node, stack):
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack)
        stack.pop()
        done.add(node)

    for node in sorted(graph):
        if node not in done:
            visit(node, [])
    assert not cycles, cycles


def test_the_references_import_no_numba():
    generations = sorted(p.name for p in PACKAGE.iterdir() if (p / "reference.py").is_file())
    assert "v4" in generations and "v7" in generations
    for gen in generations:
        code = (f"import sys, rwkv_np.{gen}.reference; "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite')))")
        out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, check=True).stdout
        assert out.strip() == "[]", f"rwkv_np.{gen}.reference imports {out}"


def test_every_folder_of_code_is_a_package():
    """setup.cfg's `packages = find:` installs only folders with an __init__.py: without one,
    `pip install .` left rwkv_np/formats out and the installed rwkv-np could not start, while
    the tests (importing from the checkout) passed."""
    for folder in {p.parent for p in PACKAGE.rglob("*.py")}:
        assert (folder / "__init__.py").is_file(), f"{folder.relative_to(REPO)} has no __init__.py"
