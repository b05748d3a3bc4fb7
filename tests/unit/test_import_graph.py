"""No import cycle anywhere in src/poft: every module can be read (and imported) before the ones that use it.

The graph is built from the source with `ast`, from every import statement, including those inside
functions: a lazy import that closes a loop is still a loop (`demo/parallel.py` once imported `demo/run.py`
inside a worker initialiser while `run.py` imported `parallel.py` through `assets.py`).
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"


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


def test_poft_has_no_import_cycle():
    graph = import_graph(SRC, "poft")
    assert {"poft.trainer", "poft.demo.run", "poft.demo.parallel"} <= set(graph)
    assert "poft.loss" in graph["poft.trainer"]  # the graph really holds the imports
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


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
