"""The layering the design card asks for: `bridges` -> `streamer` -> `engine`, one way. Protects:
no module of the engine imports the streamer or the bridges, and no module of the streamer imports
the bridges - at the top of a file or inside a function (lazy imports count); and no two modules
import each other round a cycle (type-only imports count too: a reader follows them)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BELOW = {"engine": ("streamer", "bridges"), "streamer": ("bridges",)}  # what each layer may not import


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an import-from names, relative ones resolved from the file's package
    (`from ..config import x` in bridges/cluster/spec.py -> musicgen_live.bridges.config)."""
    if node.level == 0:
        return node.module or ""
    package = path.relative_to(ROOT).parent.parts
    base = package[: len(package) - (node.level - 1)]
    return ".".join(["musicgen_live", *base, *([node.module] if node.module else [])])


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones resolved within the package."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((node.lineno, _resolve(path, node)))
    return out


def test_every_layer_imports_only_the_layers_below_it():
    wrong = []
    for layer, forbidden in BELOW.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                target = parts[1] if parts[0] == "musicgen_live" and len(parts) > 1 else parts[0]
                if target in forbidden:
                    wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    """The scan itself: a lazy upward import inside a function, and a relative one, are found."""
    global ROOT
    fake = tmp_path / "engine" / "x.py"
    fake.parent.mkdir()
    fake.write_text("def f():\n    from musicgen_live.bridges import cli\n    from ..streamer import session\n")
    saved, ROOT = ROOT, tmp_path
    try:
        assert _imports(fake) == [(2, "musicgen_live.bridges"), (3, "musicgen_live.streamer")]
    finally:
        ROOT = saved


def _graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (lazy and type-only imports count: a reader
    follows them all), e.g. "streamer.session" -> {"streamer.group", "engine.model", ...}."""
    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for layer in ("engine", "streamer", "bridges")
        for path in (ROOT / layer).rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.removeprefix("musicgen_live.") for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(path, node).removeprefix("musicgen_live.")
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names}  # `from . import commands`
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle (its modules in order, the first again at the end), or []."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return path[path.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return []

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_no_module_imports_itself_round_a_cycle():
    graph = _graph()
    assert "streamer.group" in graph["streamer.session"] and "engine.model" in graph["bridges.cluster.spec"]
    assert "bridges.config" in graph["bridges.cluster.spec"] and "bridges.cli.settings" in graph["bridges.cli"]
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
