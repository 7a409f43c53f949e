"""A shell script run inside a test VM to probe another VM on a tenant network: a bounded ping
(3 replies or the deadline) and an HTTP GET of the httpd test image's page with nc (busybox-static's
wget segfaulted in the guest here; cause not investigated). It prints PING_OK/PING_FAIL and
HTTP_OK/HTTP_FAIL, one line each. Targets are only the project's own test VMs' addresses."""

from __future__ import annotations

import ipaddress

PROBE_SCRIPT = """
if /bin/busybox ping -c 3 -w {ping_deadline_s} {target} >/dev/null 2>&1; then echo PING_OK; else echo PING_FAIL; fi
if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | /bin/busybox nc -w {http_timeout_s} {target} 8080 2>/dev/null \\
  | /bin/busybox grep -q 'Hello from a HyperVM'; then echo HTTP_OK; else echo HTTP_FAIL; fi
"""
REACHED = ["PING_OK", "HTTP_OK"]
NOT_REACHED = ["PING_FAIL", "HTTP_FAIL"]


def probe_script(target: str, *, ping_deadline_s: int, http_timeout_s: int) -> str:
    ipaddress.IPv4Address(target)  # only an address literal ever reaches the shell
    return PROBE_SCRIPT.format(target=target, ping_deadline_s=ping_deadline_s, http_timeout_s=http_timeout_s)


def probe_results(lines: list[str]) -> list[str]:
    return [line for line in lines if line in ("PING_OK", "PING_FAIL", "HTTP_OK", "HTTP_FAIL")]
