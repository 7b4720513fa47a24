"""Package layering (docs/ARCHITECTURE.md): models, data and metrics at the bottom; stages
(training) and inference side by side above them, neither importing the other; evaluation
above inference; the CLI, quickstart, demo and launchers on top. A package imports nothing
above it (module-level or inside a function alike)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = ("moee.cli", "moee.quickstart", "moee.showcase", "moee.demo", "moee.launch")
ABOVE = {
    "data": ("moee.stages", "moee.inference", "moee.evaluation", "moee.metrics", *TOP),
    "metrics": ("moee.stages", "moee.inference", "moee.evaluation", *TOP),
    "models": ("moee.data", "moee.metrics", "moee.stages", "moee.inference", "moee.evaluation",
               *TOP),
    "stages": ("moee.inference", "moee.evaluation", *TOP),
    "inference": ("moee.stages", "moee.evaluation", *TOP),
    "evaluation": ("moee.stages", *TOP),
}
"""package -> the modules it must not import (the SynthEmo probes live in moee.evaluation)."""


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name an import statement of the file names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(ABOVE))
def test_package_imports_nothing_above_it(package):
    upward = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in (ROOT / "moee" / package).rglob("*.py")
        for name in imported_modules(path)
        if any(name == above or name.startswith(f"{above}.") for above in ABOVE[package])
    )
    assert not upward, "\n".join(upward)


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from moee import evaluation\n    import moee.stages.base\n")
    assert {"moee.evaluation", "moee.stages.base"} <= imported_modules(module)
