"""shared/ by concern: each package imports only the packages below it (shared/__init__.py's list)."""

from __future__ import annotations

import ast
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1] / "shared"

# package → the packages of ours it may import (itself always)
ALLOWED = {
    "physics": set(),
    "plots": set(),
    "nn": {"physics", "plots"},
    "wire": {"physics"},
    "solver": {"physics", "nn", "wire", "plots"},
    "state": {"physics", "nn", "wire", "solver", "plots"},
}


def package_of(module: str) -> str:
    """'shared.solver.trust' → 'solver'; 'shared.plots' → 'plots'; 'shared' (the version) → ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(path: Path) -> set[str]:
    """Every module of ours a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("shared")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("shared"):
            if node.module == "shared":
                found |= {f"shared.{alias.name}" for alias in node.names if not alias.name.startswith("__")}
            else:
                found.add(node.module)
    return found


def test_packages_import_one_way():
    wrong = []
    for path in sorted(SHARED.rglob("*.py")):
        here = path.relative_to(SHARED).parts
        if len(here) == 1:
            if here[0] == "__init__.py":
                continue
            package = here[0].removesuffix(".py")
        else:
            package = here[0]
        for module in imports_of(path):
            target = package_of(module)
            if target and target != package and target not in ALLOWED[package]:
                wrong.append(f"{path.relative_to(SHARED.parent)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_every_module_lives_in_a_package():
    loose = sorted(p.name for p in SHARED.glob("*.py") if p.name not in {"__init__.py", "plots.py"})
    assert not loose, f"modules outside a package: {loose}"
    for package in ALLOWED:
        if package != "plots":
            doc = ast.get_docstring(ast.parse((SHARED / package / "__init__.py").read_text()))
            assert doc and "import" in doc.lower(), f"shared/{package} says what it holds and what it may import"
