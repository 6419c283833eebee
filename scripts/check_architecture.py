"""Report the architecture rules of ``src/asyrp`` (issue 16): modules over 500 lines, library → CLI imports, and
import cycles. Uses only ``ast`` (nothing is imported), prints the three lists and exits 0 either way.

    python scripts/check_architecture.py [SRC_ROOT]      # default: src next to this script's folder

A CLI module is ``asyrp.cli`` or one of its modules (one per command), or ``asyrp.__main__``; every other module is
library. Cycles are strongly connected components of the
graph of asyrp → asyrp imports (every import statement,
also those inside functions).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_LINES = 500


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def read_modules(src: Path, package: str = "asyrp") -> dict[str, Path]:
    return {module_name(p, src): p for p in sorted((src / package).rglob("*.py"))}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The asyrp modules ``name`` imports (``from a import b`` counts as ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # asyrp.models.delta.X → asyrp.models.delta
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def is_cli(name: str) -> bool:
    """The command line: ``asyrp.cli`` and its modules (one per command), and ``asyrp.__main__``."""
    return name in ("asyrp.cli", "asyrp.__main__") or name.startswith("asyrp.cli.")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def analyse(src: Path) -> dict:
    modules = read_modules(src)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    lines = {name: len(path.read_text().splitlines()) for name, path in modules.items()}
    cli = {name for name in modules if is_cli(name)}
    return {
        "long": sorted(((n, k) for n, k in lines.items() if k > MAX_LINES), key=lambda x: -x[1]),
        "library_to_cli": sorted((n, t) for n in modules if n not in cli for t in graph[n] if t in cli),
        "cycles": cycles(graph),
        "lines": lines,
        "cli": sorted(cli),
    }


def main(argv: list[str]) -> int:
    src = Path(argv[0]) if argv else Path(__file__).resolve().parent.parent / "src"
    report = analyse(src)
    print(f"modules over {MAX_LINES} lines: {len(report['long'])}")
    for name, n in report["long"]:
        print(f"  {name}: {n}")
    print(f"library -> CLI imports: {len(report['library_to_cli'])}")
    for name, target in report["library_to_cli"]:
        print(f"  {name} -> {target}")
    print(f"import cycles: {len(report['cycles'])}")
    for comp in report["cycles"]:
        print("  " + " <-> ".join(comp))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
