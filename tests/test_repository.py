"""Checks the test command runs on the repository itself: the linters, the migrations check and the
import contract of the compute-host side (``vmworker`` imports no Django and no portal code).

``vmworker/tasks.py`` is today's glue between the host worker and the portal's database; issue 12
turns it into messages. ``GLUE_IMPORTS`` names what it still imports of the portal side, and
nothing else may come in: a name it no longer imports must leave the list too, so the list only
shrinks until the module is dropped from it.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTAL_SIDE_PACKAGES = {"django", "rest_framework", "channels", "celery", "portal", "tenants"}
GLUE_IMPORTS = {
    "vmworker/tasks.py": frozenset(
        {
            "celery",
            "celery.signals",
            "channels.layers",
            "django.conf",
            "tenants.embedded_registry",
            "tenants.registry_address",
        }
    )
}
GLUE_MODULES = set(GLUE_IMPORTS)


def portal_side_imports(package_dir: Path, *, skip: set[str]) -> list[str]:
    """Every ``import`` of a portal-side package in the package's modules, as ``path:line name``."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir.parent).as_posix()
        if relative in skip:
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            found += [
                f"{relative}:{node.lineno} {name}" for name in names if name.split(".")[0] in PORTAL_SIDE_PACKAGES
            ]
    return found


def test_vmworker_imports_nothing_from_the_portal_side():
    assert portal_side_imports(ROOT / "vmworker", skip=GLUE_MODULES) == []


def _glue_imports() -> set[tuple[str, str]]:
    found = portal_side_imports(ROOT / "vmworker", skip=set())
    return {(where.split(":", 1)[0], where.split(" ", 1)[1]) for where in found}


def test_the_host_glue_imports_nothing_new_from_the_portal_side():
    found = _glue_imports()
    allowed = {(module, name) for module, names in GLUE_IMPORTS.items() for name in names}
    assert sorted(found - allowed) == []


def test_the_host_glue_allowance_names_only_what_is_still_imported():
    found = _glue_imports()
    allowed = {(module, name) for module, names in GLUE_IMPORTS.items() for name in names}
    assert sorted(allowed - found) == [], "imports that are gone leave GLUE_IMPORTS (it only shrinks)"


def test_the_import_contract_sees_module_level_and_function_level_imports(tmp_path):
    package = tmp_path / "vmworker"
    (package / "driver").mkdir(parents=True)
    (package / "driver" / "host.py").write_text("import os\nfrom django.db import models\n")
    (package / "late.py").write_text("def f():\n    import portal.services.hosts\n")
    (package / "tasks.py").write_text("import tenants\n")
    assert portal_side_imports(package, skip=GLUE_MODULES) == [
        "vmworker/driver/host.py:2 django.db",
        "vmworker/late.py:2 portal.services.hosts",
    ]


def host_task_imports(package_dir: Path) -> list[str]:
    """Every import of vmworker.tasks (the host's Celery glue) in the package, as ``path:line``."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                hit = any(alias.name.startswith("vmworker.tasks") for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                hit = node.module == "vmworker.tasks" or (
                    node.module == "vmworker" and any(alias.name == "tasks" for alias in node.names)
                )
            else:
                continue
            if hit:
                found.append(f"{path.relative_to(ROOT).as_posix()}:{node.lineno}")
    return found


def test_the_portal_sends_host_tasks_by_name_and_never_imports_them():
    assert host_task_imports(ROOT / "portal") + host_task_imports(ROOT / "tenants") == []


def run_tool(*args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"DJANGO_SETTINGS_MODULE": os.environ.get("DJANGO_SETTINGS_MODULE", "portal.settings.test")}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def test_ruff_lint_passes():
    result = run_tool("-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_is_clean():
    result = run_tool("-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_model_change_has_its_migration():
    result = run_tool("manage.py", "makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
