"""Host report signatures (vmworker.report_signing): only the key that signed exactly these
arguments verifies them; nothing a report carries makes the check raise."""

from __future__ import annotations

import pytest

from vmworker.report_signing import canonical, derive_host_key, sign, verify

MASTER = b"m" * 32
TASK = "portal.instance_report"
ARGS = [{"instance_id": "1", "host": "h1", "state": "running", "timings_s": {"b": 1.25, "a": 0.1}}]


def test_the_signing_hosts_key_verifies_and_no_other_does() -> None:
    key = derive_host_key(MASTER, "h1")
    signature = sign(key, TASK, ARGS, {})
    assert verify(key, TASK, ARGS, {}, signature)
    assert not verify(derive_host_key(MASTER, "h2"), TASK, ARGS, {}, signature)
    assert not verify(derive_host_key(b"n" * 32, "h1"), TASK, ARGS, {}, signature)


def test_any_change_to_the_task_or_its_arguments_breaks_the_signature() -> None:
    key = derive_host_key(MASTER, "h1")
    signature = sign(key, TASK, ARGS, {})
    changed = [{**ARGS[0], "state": "failed"}]
    assert not verify(key, TASK, changed, {}, signature)
    assert not verify(key, "portal.host_report", ARGS, {}, signature)
    assert not verify(key, TASK, ARGS, {"destroyed": True}, signature)


def test_the_signature_survives_the_json_trip_whatever_the_key_order() -> None:
    import json

    key = derive_host_key(MASTER, "h1")
    signature = sign(key, TASK, ARGS, {})
    delivered = json.loads(json.dumps(list(reversed(list(ARGS[0].items())))))
    assert verify(key, TASK, [dict(delivered)], {}, signature)
    assert canonical(TASK, (1, 2), None) == canonical(TASK, [1, 2], {})


@pytest.mark.parametrize("signature", ["", None, 7, "0" * 63, "z" * 64, ["a"], "0" * 64, "é" * 64])
def test_a_malformed_or_missing_signature_is_refused_without_raising(signature) -> None:
    assert not verify(derive_host_key(MASTER, "h1"), TASK, ARGS, {}, signature)


def test_arguments_json_cannot_carry_are_refused_without_raising() -> None:
    assert not verify(derive_host_key(MASTER, "h1"), TASK, [object()], {}, "0" * 64)


def test_a_sealed_value_opens_only_with_the_hosts_own_key() -> None:
    from vmworker.report_signing import SealBroken, seal, unseal

    key = derive_host_key(MASTER, "h1")
    token = seal(key, {"username": "u", "password": "p"})
    assert "password" not in token
    assert unseal(key, token) == {"username": "u", "password": "p"}
    for wrong_key, wrong_token in [(derive_host_key(MASTER, "h2"), token), (key, token[:-4] + "AAAA"), (key, 7)]:
        with pytest.raises(SealBroken):
            unseal(wrong_key, wrong_token)
