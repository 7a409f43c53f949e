import subprocess
import sys

# portal/__init__.py loads the Celery app; what matters is what portal.marathon adds on top of it.
PROBE = """
import sys
import portal
before = set(sys.modules)
import portal.marathon
added = sorted(m for m in set(sys.modules) - before if m.split(".")[0] not in sys.stdlib_module_names)
# vmworker.image_reference: the image-reference grammar the host worker uses too (stdlib only).
print([m for m in added if not m.startswith("portal.marathon") and m not in {"vmworker", "vmworker.image_reference"}])
"""


def test_the_parser_adds_no_imports_outside_the_standard_library():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
