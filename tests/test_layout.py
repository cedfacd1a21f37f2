"""The package layout is the architecture (spd_ref/__init__.py): imports flow one way, no cycles,
no module over 300 lines, a small core."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "spd_ref"
ENTRY_POINTS = {"spd_ref.__main__", "spd_ref.demo"}
# Which packages each layer may import (besides itself and the core; kernels, a leaf, not even the core).
ALLOWED = {"kernels": set(), "core": {"kernels"}, "calibration": set(), "latency": set(),
           "evaluation": {"calibration"}, "notebooks": {"calibration", "evaluation", "latency"}}
MAX_LINES = 300
MAX_CORE_MODULES = 12


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "core"


def imports_of(path: Path) -> set[str]:
    """Every spd_ref module this file imports, at any depth (lazy imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("spd_ref"):
            assert node.level == 0, f"{path}: use absolute imports (from spd_ref.x import ...)"
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if (PACKAGE.parent / (
                f"{node.module}.{a.name}".replace(".", "/") + ".py")).exists())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("spd_ref"))
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_flow_one_way(module):
    if module in ENTRY_POINTS:
        return
    own = layer(module)
    for target in imports_of(MODULES[module]):
        other = layer(target)
        allowed = {own} | ALLOWED[own] | (set() if own == "kernels" else {"core"})
        assert other in allowed, f"{module} ({own}) imports {target} ({other})"


def test_no_import_cycles():
    graph = {m: {t for t in imports_of(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            assert state.get(t) != 1, "import cycle: " + " -> ".join(stack + [m, t])
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_modules_are_short_and_the_core_is_small():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
    core = [p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"]
    assert len(core) <= MAX_CORE_MODULES, f"{len(core)} core modules: {sorted(core)}"
