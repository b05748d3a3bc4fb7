"""No import cycle anywhere in src/poft or experiments/: every module can be read (and imported) before the ones
that use it; and the library never reaches back into the experiments or the tests.

The graph is built from the source with `ast`, from every import statement, including those inside
functions: a lazy import that closes a loop is still a loop (`demo/parallel.py` once imported `demo/run.py`
inside a worker initialiser while `run.py` imported `parallel.py` through `assets.py`).
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the modules of `package` it imports (absolute and relative imports, at any depth)."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    stem = ".".join([*base, node.module] if node.module else base)
                else:
                    stem = node.module
                # `from .x import y` imports x, or the module x.y when y is a module
                for alias in node.names:
                    targets.add(f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in files else stem)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, modules in sorted order)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_cycle_and_only_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_lazy_and_submodule_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nfrom pkg import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub.b"}, "pkg.sub": set(), "pkg.sub.b": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.a"]


def test_poft_and_the_experiments_have_no_import_cycle():
    graph = import_graph(SRC, "poft")
    assert (
        "poft.trainer" in graph and "poft.loss" in graph["poft.trainer"]
    )  # the graph really holds the imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    graph = import_graph(ROOT, "experiments")
    assert {"experiments.demo.run", "experiments.demo.parallel", "experiments.real_study"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


OUTSIDE = ("experiments", "tests")  # what the installed library must never need
PATH_INTO_OUTSIDE = re.compile(r"(?<![\w.-])(experiments|tests)[/\\]")


def reaches_outside(path: Path) -> list[str]:
    """Where the module at `path` imports `experiments` or `tests` (at any depth), or holds a path into
    `experiments/` or `tests/` in a string (a default file, a fixture): neither exists in an installed poft.
    Docstrings may name a test that pins a behaviour: they are documentation, not paths that are read."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in OUTSIDE
            ]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] in OUTSIDE:
                found.append(f"line {node.lineno}: import {node.module}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            if PATH_INTO_OUTSIDE.search(node.value):
                found.append(f"line {node.lineno}: the path {node.value!r}")
    return sorted(found)


def test_reaches_outside_sees_imports_and_paths_not_docstrings(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        '"""Pinned by tests/unit/test_m.py."""\nimport os\nfrom experiments.demo import run\n\n'
        "def f():\n    import tests.real.conftest\n\n"
        "ROWS = 'tests/real/data/rows.json'\nOK = 'see the tests; my_experiments/x'\n"
    )
    assert reaches_outside(module) == [
        "line 3: import experiments.demo",
        "line 6: import tests.real.conftest",
        "line 8: the path 'tests/real/data/rows.json'",
    ]


def test_the_library_never_reaches_into_the_experiments_or_the_tests():
    """src/poft is the library and its CLI only: the experiments import it, never the reverse, and it reads no
    file of tests/ or experiments/ (an installed poft has neither). The CLI has no `demo` command."""
    found = {
        str(path.relative_to(ROOT)): hits
        for path in sorted((SRC / "poft").rglob("*.py"))
        if (hits := reaches_outside(path))
    }
    assert not found, found
    from poft.cli import COMMANDS

    assert "demo" not in COMMANDS
    assert not (SRC / "poft" / "demo").exists()


HEAVY = ("torch", "transformers", "trl", "datasets", "accelerate")


def external_imports(root: Path, package: str) -> dict[str, set[str]]:
    """module -> the top-level names of the packages outside `package` it imports (at any depth)."""
    files = {module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    found: dict[str, set[str]] = {}
    for name, path in files.items():
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
        found[name] = names - {package}
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def test_inspect_and_filter_reach_no_torch_transformers_or_trl():
    """Everything `poft inspect` and `poft filter` can import, lazy imports included, through poft's modules:
    datasets, numpy, pandas, matplotlib (a table and its figures), never torch, transformers or TRL."""
    graph, external = import_graph(SRC, "poft"), external_imports(SRC, "poft")
    for start in ("poft.inspection", "poft.filtering", "poft.options", "poft.configs"):
        packages = set().union(*(external[m] for m in reachable(graph, start)))
        assert not packages & {"torch", "transformers", "trl", "accelerate"}, (start, sorted(packages))
    assert not set().union(*(external[m] for m in reachable(graph, "poft.options"))) & set(HEAVY)


def imported_by(argv: list[str]) -> tuple[list[str], float]:
    """The heavy packages a fresh `poft ARGV` process imported, and its seconds (from `import poft.cli`)."""
    import subprocess
    import sys

    code = (
        "import sys, time; t = time.perf_counter(); from poft.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules), time.perf_counter() - t)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    heavy, seconds = done.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    return ast.literal_eval(heavy), float(seconds)


def test_help_and_the_cli_module_import_nothing_heavy():
    """`import poft.cli`, `poft --help` and the help of every command but train and dpo (TRL's configs)
    import none of torch, transformers, TRL, datasets, accelerate: ~0.1-0.3 s instead of 8 s (with TRL's
    parser, `poft inspect --help` imported TRL: 0.3-0.7 s)."""
    assert imported_by([])[0] == []
    for argv in (
        ["--help"],
        ["inspect", "--help"],
        ["filter", "--help"],
        ["score", "--help"],
        ["eval", "--help"],
    ):
        assert imported_by(argv)[0] == [], argv
