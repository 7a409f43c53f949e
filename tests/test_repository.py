"""Checks the test command runs on the repository itself: the linters, the migrations check and the
import contract of the compute-host side: ``vmworker`` imports no Django, no Channels, no DRF and
no portal or tenants code (issue 12). Celery is the host's own message library (its Celery app is
vmworker/celery.py, configured from the environment); the Channels wire format of the console and
exec streams comes from ``channels_redis``, built without Django settings (vmworker.host_config).
Beyond the static check, a fresh interpreter that loads the host worker's app and tasks must end
with no portal or tenants module loaded and Django's settings never configured.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PORTAL_SIDE_PACKAGES = {"django", "rest_framework", "channels", "portal", "tenants"}


def portal_side_imports(package_dir: Path) -> list[str]:
    """Every ``import`` of a portal-side package in the package's modules, as ``path:line name``."""
    found = []
    for path in sorted(package_dir.rglob("*.py")):
        relative = path.relative_to(package_dir.parent).as_posix()
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
    assert portal_side_imports(ROOT / "vmworker") == []


def test_the_import_contract_sees_module_level_and_function_level_imports(tmp_path):
    package = tmp_path / "vmworker"
    (package / "driver").mkdir(parents=True)
    (package / "driver" / "host.py").write_text("import os\nfrom django.db import models\n")
    (package / "late.py").write_text("def f():\n    import portal.services.hosts\n")
    (package / "tasks.py").write_text("import tenants\nimport channels.layers\nimport celery\n")
    assert portal_side_imports(package) == [
        "vmworker/driver/host.py:2 django.db",
        "vmworker/late.py:2 portal.services.hosts",
        "vmworker/tasks.py:1 tenants",
        "vmworker/tasks.py:2 channels.layers",
    ]


HOST_PROCESS_PROBE = """
import json, sys
from vmworker.celery import app
import vmworker.tasks
from vmworker import host_config
host_config.channel_layer()  # the console and exec agents' layer
app.loader.import_default_modules()
app.finalize()
loaded = sorted(name for name in sys.modules if name.split(".")[0] in ("portal", "tenants", "rest_framework"))
django_conf = sys.modules.get("django.conf")
configured = bool(django_conf and django_conf.settings.configured)
print(json.dumps({"loaded": loaded, "configured": configured, "tasks": sorted(app.tasks)}))
"""


def test_the_host_worker_loads_no_portal_code_and_no_django_settings(tmp_path):
    """What ``celery -A vmworker worker`` loads, in a fresh interpreter without
    DJANGO_SETTINGS_MODULE: the host's tasks, and nothing of the portal's side."""
    env = {name: value for name, value in os.environ.items() if name != "DJANGO_SETTINGS_MODULE"}
    env["HYPERVM_BROKER_URL"] = "redis://127.0.0.1:1/0"  # never connected to here
    result = subprocess.run(
        [sys.executable, "-c", HOST_PROCESS_PROBE], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["loaded"] == []
    assert seen["configured"] is False
    assert {"vmworker.boot_instance", "vmworker.stop_instance", "vmworker.reconcile_host"} <= set(seen["tasks"])
    assert not any(name.startswith("portal.") for name in seen["tasks"])


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
