"""The dependency direction: CLI -> stages -> judges -> services -> config, one way down.

Every `deliberate` module's imports (top-level, inside functions, and type-checking only) are read from its
source. A module may import its own layer or a lower one; a stage reaches another stage only through its saved
outputs, never by importing it; judges and data loading import no training code; the recipe schema imports no
heavy library; and outside the CLI (which defers loading stages so that `--help` is instant) internal imports
sit at the top of the module, where a reader sees them.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deliberate"
LAYERS = {"errors": 0, "config": 1, "services": 2, "judges": 3, "stages": 4, "cli": 5, "__main__": 5}
TRAINING = ("trl", "peft", "accelerate", "mergekit", "deliberate.services.training", "deliberate.stages")
HEAVY = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "mergekit", "openai", "pandas", "numpy")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def imports(name: str) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in the module's source."""
    path = modules()[name]
    tree = ast.parse(path.read_text(), str(path))
    top = {id(n) for n in tree.body} | {id(n) for stmt in tree.body if isinstance(stmt, ast.If)
                                        for n in stmt.body}  # `if TYPE_CHECKING:` blocks count as top level
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:  # `from deliberate.x import y` may name a module y
                full = f"{base}.{a.name}"
                out.append((full if full in modules() else base, node.lineno, id(node) in top))
    return out


def layer(name: str) -> int | None:
    parts = name.split(".")
    if parts[0] != "deliberate":
        return None
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def stage_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "stages" else None


def internal_edges() -> list[tuple[str, str, int, bool]]:
    return [(m, target, line, top) for m in modules() for target, line, top in imports(m)
            if target.startswith("deliberate")]


def test_every_import_points_down_or_sideways():
    up = [f"{m}:{line} imports {t}" for m, t, line, _ in internal_edges()
          if layer(t) is not None and layer(t) > layer(m)]
    assert up == []


def test_a_stage_never_imports_another_stage():
    crossing = [f"{m}:{line} imports {t}" for m, t, line, _ in internal_edges()
                if stage_of(m) and stage_of(t) and stage_of(m) != stage_of(t)]
    assert crossing == []


def test_judges_and_data_import_no_training_code():
    for name in [m for m in modules() if m.startswith("deliberate.judges")] + [
            "deliberate.services.data", "deliberate.services.spec", "deliberate.services.preferences"]:
        found = [f"{name}:{line} imports {t}" for t, line, _ in imports(name) if t.startswith(TRAINING)]
        assert found == []


def test_the_recipe_schema_imports_no_heavy_library():
    found = [f"{m}:{line} imports {t}" for m in modules() if m.startswith("deliberate.config")
             for t, line, _ in imports(m) if t.split(".")[0] in HEAVY]
    assert found == []


def test_internal_imports_sit_at_the_top_outside_the_cli():
    hidden = [f"{m}:{line} imports {t}" for m, t, line, top in internal_edges()
              if not top and layer(m) < LAYERS["cli"]]
    assert hidden == []


def test_the_import_graph_has_no_cycles():
    graph = {m: {t for t, _, top in imports(m) if t in modules() and top} for m in modules()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]) if t in path else f"{m} -> {t}")
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []
