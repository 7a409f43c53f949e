"""The portal takes a host's messages only when signed by that host's own key, and recent
(portal.services.host_keys): a forged, unsigned, other host's or replayed report changes nothing,
and no such report makes the task raise."""

from __future__ import annotations

import time

import pytest

from portal import tasks
from portal.models import ComputeHost
from portal.services.host_keys import host_key, host_key_file_write
from tests.portal.services.test_host_sync import report as host_report
from vmworker.report_signing import sign

pytestmark = pytest.mark.django_db


def signed(host: str, task: str, args: list, kwargs: dict | None = None, *, age_s: float = 0.0) -> dict:
    """The keyword arguments a host sends with ``args``: when it sent them, and its signature."""
    kwargs = dict(kwargs or {}) | {"sent_at": time.time() - age_s}
    return kwargs | {"signature": sign(host_key(host), task, args, kwargs)}


def test_a_host_registers_only_with_its_own_key_and_a_fresh_report() -> None:
    report = host_report(name="keyed-host", register=True)
    tasks.host_report.run(report)  # unsigned
    tasks.host_report.run(report, **signed("other-host", "portal.host_report", [report]))
    tasks.host_report.run(report, signature="0" * 64, sent_at=time.time())
    tasks.host_report.run(report, **signed("keyed-host", "portal.host_report", [report], age_s=60))  # replayed
    changed = signed("keyed-host", "portal.host_report", [report])
    tasks.host_report.run(report, signature=changed["signature"], sent_at=changed["sent_at"] + 1)
    assert not ComputeHost.objects.filter(name="keyed-host").exists()

    tasks.host_report.run(report, **signed("keyed-host", "portal.host_report", [report]))
    assert ComputeHost.objects.filter(name="keyed-host").exists()


def test_a_host_cannot_report_for_another_hosts_volume_or_usage(monkeypatch) -> None:
    applied = []
    monkeypatch.setattr("portal.services.host_sync.volume_report_apply", lambda **kw: applied.append(kw))
    monkeypatch.setattr("portal.services.usage.usage_record", lambda **kw: applied.append(kw))
    kwargs = {"used_bytes": None, "destroyed": True}
    tasks.volume_report.run("h-b", "v1", **signed("h-a", "portal.volume_report", ["h-b", "v1"], kwargs))
    tasks.usage_report.run("h-b", [], **signed("h-a", "portal.usage_report", ["h-b", []]))
    assert applied == []

    tasks.volume_report.run("h-b", "v1", **signed("h-b", "portal.volume_report", ["h-b", "v1"], kwargs))
    assert applied == [{"host_name": "h-b", "volume_id": "v1", "used_bytes": None, "destroyed": True}]


@pytest.mark.parametrize(
    "report,signature",
    [
        ({"name": "h1"}, "é" * 64),  # not ASCII: compare_digest would raise
        ({"name": "h\udc80"}, "0" * 64),  # a name JSON carries but no key is made of
        ({"name": ["h1"]}, "0" * 64),
        ("not a report", "0" * 64),
    ],
)
def test_a_malformed_signed_report_is_dropped_without_raising(report, signature) -> None:
    tasks.host_report.run(report, signature=signature, sent_at=time.time())
    assert not ComputeHost.objects.exists()


def test_the_key_file_a_host_gets_is_private_and_holds_its_key(tmp_path) -> None:
    path = tmp_path / "keys" / "h1.key"
    host_key_file_write("h1", path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert bytes.fromhex(path.read_text().strip()) == host_key("h1")
