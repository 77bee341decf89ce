"""The layering the design card asks for: `bridges` -> `streamer` -> `engine`, one way. Protects:
no module of the engine imports the streamer or the bridges, and no module of the streamer imports
the bridges - at the top of a file or inside a function (lazy imports count)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BELOW = {"engine": ("streamer", "bridges"), "streamer": ("bridges",)}  # what each layer may not import


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, relative ones resolved within the package."""
    layer = path.relative_to(ROOT).parts[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 1:  # from .x import y: the same layer
                name = f"musicgen_live.{layer}.{name}"
            elif node.level >= 2:
                name = f"musicgen_live.{name}"
            out.append((node.lineno, name))
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
