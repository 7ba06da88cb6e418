"""The package's import rules, read from the source with ``ast``.

- The twin (``chemomech.twin``) makes ground truth; it never imports an analysis module.
- Only ``study`` and ``evaluate`` (and the twin itself) import the twin: the analysis never sees it.
- No module uses another module's ``_private`` name.
- Only ``plotting`` imports matplotlib, and only the command line imports ``plotting``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lib" / "chemomech"
#: Modules the twin may import: shared physics, constants and checks.
TWIN_MAY_IMPORT = {"chemomech.materials", "chemomech.elasticity", "chemomech.geometry", "chemomech._validate"}
#: Modules (besides the twin) that may import the twin.
MAY_IMPORT_TWIN = {"chemomech.study", "chemomech.evaluate"}
#: Modules that may import chemomech.plotting.
MAY_IMPORT_PLOTTING = {"chemomech.__main__"}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """Absolute name of a (possibly relative) import target."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import in a file.

    ``from . import strain`` gives ``("chemomech.strain", None, line)`` (a module);
    ``from .strain import _x`` gives ``("chemomech.strain", "_x", line)``.
    """
    module = _module_name(path, root)
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, is_package, node.level, node.module)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if base.startswith("chemomech") and _is_module(candidate, root):
                    found.append((candidate, None, node.lineno))
                else:
                    found.append((base, alias.name, node.lineno))
    return found


def _is_module(name: str, root: Path) -> bool:
    rel = Path(*name.split(".")[1:])
    return (root / rel).with_suffix(".py").is_file() or (root / rel / "__init__.py").is_file()


def private_attribute_uses(path: Path, root: Path = PACKAGE) -> list[tuple[str, int]]:
    """``module._name`` attribute uses where ``module`` was imported as a chemomech module."""
    modules = {}
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path, root)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, path.name == "__init__.py", node.level, node.module)
            for alias in node.names:
                if base.startswith("chemomech") and _is_module(f"{base}.{alias.name}", root):
                    modules[alias.asname or alias.name] = f"{base}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("chemomech"):
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
    bad = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and modules[node.value.id] != module):
            bad.append((f"{modules[node.value.id]}.{node.attr}", node.lineno))
    return bad


def violations(root: Path = PACKAGE) -> list[str]:
    """Every broken rule in the package under `root`, one line each."""
    out = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        in_twin = module == "chemomech.twin" or module.startswith("chemomech.twin.")
        in_plotting = module == "chemomech.plotting" or module.startswith("chemomech.plotting.")
        where = f"{path.relative_to(root.parent)}"
        for target, name, line in imports_of(path, root):
            full = f"{target}.{name}" if name else target
            is_twin = target == "chemomech.twin" or target.startswith("chemomech.twin.")
            if in_twin and target.startswith("chemomech") and not is_twin and target not in TWIN_MAY_IMPORT:
                out.append(f"{where}:{line}: the twin imports analysis module {target}")
            if is_twin and not in_twin and module not in MAY_IMPORT_TWIN:
                out.append(f"{where}:{line}: {module} imports the twin ({full})")
            if name and name.startswith("_") and not name.startswith("__") and target.startswith("chemomech"):
                out.append(f"{where}:{line}: imports private name {full}")
            if target.split(".")[0] == "matplotlib" and not in_plotting:
                out.append(f"{where}:{line}: imports matplotlib outside chemomech.plotting")
            if (target == "chemomech.plotting" or target.startswith("chemomech.plotting.")) and not in_plotting \
                    and module not in MAY_IMPORT_PLOTTING:
                out.append(f"{where}:{line}: {module} imports chemomech.plotting")
        for full, line in private_attribute_uses(path, root):
            out.append(f"{where}:{line}: uses private name {full}")
    return out


def test_package_follows_the_import_rules():
    found = violations()
    assert not found, "import rules broken:\n" + "\n".join(found)


def test_the_checker_sees_the_package():
    names = {_module_name(p, PACKAGE) for p in PACKAGE.rglob("*.py")}
    assert {"chemomech.strain", "chemomech.twin.stem4d", "chemomech.study", "chemomech.plotting"} <= names


@pytest.mark.parametrize("module, source, expected", [
    ("strain.py", "from .twin import stem4d\n", "chemomech.strain imports the twin"),
    ("strain.py", "from . import twin\n", "chemomech.strain imports the twin"),
    ("twin/stem4d.py", "from .. import strain\n", "the twin imports analysis module chemomech.strain"),
    ("twin/pair.py", "from ..registration import register\n", "the twin imports analysis module"),
    ("study.py", "from .registration import _apply\n", "imports private name chemomech.registration._apply"),
    ("learning.py", "from . import elasticity\nelasticity._rotation_voigt(0.0)\n",
     "uses private name chemomech.elasticity._rotation_voigt"),
    ("xanes.py", "import matplotlib.pyplot as plt\n", "imports matplotlib outside"),
    ("study.py", "from . import plotting\n", "chemomech.study imports chemomech.plotting"),
])
def test_a_forbidden_import_is_caught(tmp_path, module, source, expected):
    """Copy the package, add one forbidden line, and check that the rules name it."""
    import shutil

    root = tmp_path / "chemomech"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    target = root / module
    target.write_text(target.read_text() + "\n" + source)
    found = violations(root)
    assert any(expected in line for line in found), found


def test_allowed_imports_pass(tmp_path):
    import shutil

    root = tmp_path / "chemomech"
    shutil.copytree(PACKAGE, root, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "evaluate.py").write_text((root / "evaluate.py").read_text() + "\nfrom .twin import stem4d\n")
    (root / "twin" / "pair.py").write_text((root / "twin" / "pair.py").read_text()
                                           + "\nfrom .. import geometry, materials\n")
    (root / "strain.py").write_text((root / "strain.py").read_text() + "\nfrom . import _validate\n")
    assert violations(root) == violations(PACKAGE)
