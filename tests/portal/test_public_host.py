"""portal.public_host: the rule that the portal never shares a host with tenants' published apps
(the live view of the same rule, start refusal included, is tests/security/test_cookies.py)."""

import pytest

from portal.public_host import public_host_problems, public_url_parse


def problem_ids(public_url: str, allowed_hosts: list[str] | None = None, publish_ip: str = "127.0.0.1") -> list[str]:
    allowed = allowed_hosts if allowed_hosts is not None else [public_url_parse(public_url).host_header]
    return [
        check_id
        for check_id, _ in public_host_problems(public_url=public_url, allowed_hosts=allowed, publish_ip=publish_ip)
    ]


@pytest.mark.parametrize(
    ("public_url", "publish_ip", "expected"),
    [
        ("http://127.0.0.2:8000", "127.0.0.1", []),
        ("https://127.0.0.2", "127.0.0.1", []),
        ("http://127.0.0.1:8000", "127.0.0.1", ["portal.E001"]),  # another port is no boundary
        ("http://LOCALHOST:8000", "127.0.0.1", ["portal.E001"]),  # resolves to it
        ("http://127.0.0.2:8000", "0.0.0.0", ["portal.E001"]),  # apps published on every address
        ("http://[::1]:8000", "::1", ["portal.E001"]),
        ("http://[::1]:8000", "127.0.0.1", []),
    ],
)
def test_the_public_host_must_not_be_the_apps_publish_address(public_url, publish_ip, expected):
    assert problem_ids(public_url, publish_ip=publish_ip) == expected


def test_no_other_host_the_portal_answers_for_may_be_it():
    hosts = ["127.0.0.2", "127.0.0.3", "localhost", "*", "127.0.0.1"]
    assert problem_ids("http://127.0.0.2:8000", hosts) == ["portal.E002"] * 3


@pytest.mark.parametrize(
    "public_url",
    ["127.0.0.2:8000", "ftp://127.0.0.2", "http://127.0.0.2:8000/portal/", "http://user@127.0.0.2", "http://:80"],
)
def test_a_public_url_that_is_not_a_hosts_root_is_refused(public_url):
    assert [
        check_id
        for check_id, _ in public_host_problems(public_url=public_url, allowed_hosts=[], publish_ip="127.0.0.1")
    ] == ["portal.E003"]


def test_origins_and_host_headers():
    assert public_url_parse("HTTP://127.0.0.2:80/").origin == "http://127.0.0.2"
    assert public_url_parse("https://portal.example.test:8443").origin == "https://portal.example.test:8443"
    assert public_url_parse("http://[::1]:8000").host_header == "[::1]"
