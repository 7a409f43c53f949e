"""The portal takes a host's messages only when signed by that host's own key
(portal.services.host_keys): a forged, unsigned or other host's report changes nothing."""

from __future__ import annotations

import pytest

from portal import tasks
from portal.models import ComputeHost
from portal.services.host_keys import host_key, host_key_file_write
from tests.portal.services.test_host_sync import report as host_report
from vmworker.report_signing import sign

pytestmark = pytest.mark.django_db


def test_a_host_registers_only_with_its_own_key() -> None:
    report = host_report(name="keyed-host", register=True)
    tasks.host_report.run(report)  # unsigned
    tasks.host_report.run(report, signature=sign(host_key("other-host"), "portal.host_report", [report], {}))
    tasks.host_report.run(report, signature="0" * 64)
    assert not ComputeHost.objects.filter(name="keyed-host").exists()

    tasks.host_report.run(report, signature=sign(host_key("keyed-host"), "portal.host_report", [report], {}))
    assert ComputeHost.objects.filter(name="keyed-host").exists()


def test_a_host_cannot_report_for_another_hosts_volume_or_usage(monkeypatch) -> None:
    applied = []
    monkeypatch.setattr("portal.services.host_sync.volume_report_apply", lambda **kw: applied.append(kw))
    monkeypatch.setattr("portal.services.usage.usage_record", lambda **kw: applied.append(kw))
    kwargs = {"used_bytes": None, "destroyed": True}
    forged = sign(host_key("h-a"), "portal.volume_report", ["h-b", "v1"], kwargs)
    tasks.volume_report.run("h-b", "v1", **kwargs, signature=forged)
    tasks.usage_report.run("h-b", [], signature=sign(host_key("h-a"), "portal.usage_report", ["h-b", []], {}))
    assert applied == []

    tasks.volume_report.run(
        "h-b", "v1", **kwargs, signature=sign(host_key("h-b"), "portal.volume_report", ["h-b", "v1"], kwargs)
    )
    assert applied == [{"host_name": "h-b", "volume_id": "v1", "used_bytes": None, "destroyed": True}]


def test_the_key_file_a_host_gets_is_private_and_holds_its_key(tmp_path) -> None:
    path = tmp_path / "keys" / "h1.key"
    host_key_file_write("h1", path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert bytes.fromhex(path.read_text().strip()) == host_key("h1")
