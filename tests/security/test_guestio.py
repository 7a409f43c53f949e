"""Issue 9, rows 5 and 6 (logs): everything a guest writes to the host is hostile input.

Real stack (web, Celery, beat, host workers booting TCG HyperVMs). The hostile guest is the
tenant's own app acting as root in its VM: it rewrites the format of the init's ``exit`` record
in the init's memory (``/proc/1/mem``: root in the guest owns it) so the record the host reads
is ``exit A``, not a number. The flooding guest prints without end on stdout (the log port) and
on ``/dev/ttyS0`` (the serial console) while the host's per-instance log caps are small.
"""

from __future__ import annotations

import os
import time

import pytest

from portal.choices import INSTANCE_UP, InstanceStatus
from portal.marathon import parse_app_definition
from portal.models import Instance
from portal.services.apps import app_create
from tests.portal.test_consumers import Socket, lines_of, run, session_cookie
from tests.portal.test_pipeline import access, command_app, wait_until  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Finds the init's "exit %d" format (the suffix of "exec-result %s exit %d" in the static init)
# in the init's mapped image and makes it "exit %c": the app's exit code 65 then reaches the
# host as the record "exit A".
FORGE_EXIT_RECORD = r"""
off=$(busybox strings -t d /proc/1/exe \
  | busybox awk '/ exit %d$/ { s = $0; sub(/^ *[0-9]+ /, "", s); print $1 + length(s) - 7; exit }')
while read range perms mapoff dev inode path; do
  case "$path" in *init*) ;; *) continue ;; esac
  start=$((0x${range%-*})); end=$((0x${range#*-})); base=$((0x$mapoff))
  if [ "$off" -ge "$base" ] && [ "$off" -lt $((base + end - start)) ]; then addr=$((start + off - base)); break; fi
done < /proc/1/maps
printf 'exit %%c' | busybox dd of=/proc/1/mem bs=1 seek="$addr" conv=notrunc 2>/dev/null
echo "forged the exit record format at $addr"
sleep 2
exit 65
"""


def hostile_app(test_images) -> dict:
    return {
        "id": "/hostile",
        "instances": 1,
        "cpus": 0.5,
        "mem": 128,
        "cmd": FORGE_EXIT_RECORD,
        "container": {"docker": {"image": test_images["httpd"].reference}},
        "portDefinitions": [],
        "maxLaunchDelaySeconds": 3600,
        "backoffSeconds": 600,  # one run is enough: no relaunch during the test
    }


def test_a_guest_forging_its_exit_record_stops_nothing_and_is_not_believed(access, one_host, test_images):  # noqa: F811
    hostile = app_create(access=access, definition=parse_app_definition(hostile_app(test_images))).app
    instance = wait_until("the hostile app runs", lambda: Instance.objects.filter(app=hostile).first(), 90)
    guest_log = one_host.state_dir / "instances" / str(instance.pk) / "guest.log"
    wait_until(
        "the forged record is in the guest log",
        lambda: guest_log.exists() and b"\nexit A\n" in guest_log.read_bytes(),
        90,
        0.2,
    )

    ended = wait_until(
        "the reconciler ends the hostile instance",
        lambda: Instance.objects.filter(pk=instance.pk).exclude(status__in=INSTANCE_UP).first(),
        60,
    )
    assert ended.exit_code is None, f"the forged exit record was believed: {ended.exit_code}"
    assert ended.status in (InstanceStatus.LOST, InstanceStatus.FAILED)

    # The host keeps working for the others: a healthy neighbour on the same host passes its checks.
    neighbour = app_create(
        access=access,
        definition=parse_app_definition(command_app(test_images, app_id="/neighbour", command="true", max_failures=3)),
    ).app
    wait_until(
        "the neighbour becomes healthy",
        lambda: Instance.objects.filter(app=neighbour, status=InstanceStatus.HEALTHY).exists(),
        120,
    )


FLOOD_S = 60
LINES_PER_ROUND = 20000
FLOOD_SCRIPT = (
    f"end=$(( $(date +%s) + {FLOOD_S} )); "
    "( while [ $(date +%s) -lt $end ]; do busybox head -c 65536 /dev/zero | busybox tr '\\0' c > /dev/ttyS0; done ) & "
    "while [ $(date +%s) -lt $end ]; do "
    "busybox yes 'flooding the log port with a line of about a hundred characters .....................' "
    f"| busybox head -n {LINES_PER_ROUND}; "
    "done; wait; echo flood done; exec sleep 3600"
)


def disk_bytes(paths) -> int:
    """What the files hold on the disk (allocated blocks)."""
    total = 0
    for path in paths:
        try:
            total += os.stat(path).st_blocks * 512
        except FileNotFoundError:
            pass  # rotated out between the listing and the stat
    return total


def log_paths(directory, name: str) -> list:
    """The log and its rotated files (virtlogd: name.0, name.1, ...)."""
    return [
        directory / entry
        for entry in os.listdir(directory)
        if entry == name or entry.startswith(name + ".") and entry[len(name) + 1 :].isdigit()
    ]


def test_an_app_printing_without_end_stays_within_the_log_caps_and_the_console_stays_live(
    access,  # noqa: F811
    one_host,  # noqa: F811
    test_images,
):
    from vmworker.log_files import log_caps
    from vmworker.runtime import HyperVMRuntime, RuntimeSettings

    caps = log_caps()
    assert caps["through_virtlogd"], "QEMU's file chardevs do not go through virtlogd on this host"
    cap_bytes = caps["max_size_bytes"] * (1 + caps["max_backups"])
    app = app_create(
        access=access,
        definition=parse_app_definition(
            {
                "id": "/flood",
                "instances": 1,
                "cpus": 0.5,
                "mem": 128,
                "cmd": FLOOD_SCRIPT,
                "container": {"docker": {"image": test_images["httpd"].reference}},
                "portDefinitions": [],
            }
        ),
    ).app
    instance = wait_until("the flood runs", lambda: Instance.objects.filter(app=app, status__in=INSTANCE_UP).first())
    directory = one_host.state_dir / "instances" / str(instance.pk)
    largest = {"guest.log": 0, "console.log": 0}
    deadline = time.monotonic() + FLOOD_S + 60
    while time.monotonic() < deadline and b"out flood done" not in _tail(directory / "guest.log"):
        for name in largest:
            largest[name] = max(largest[name], disk_bytes(log_paths(directory, name)))
        time.sleep(0.2)
    print(f"largest on disk: {largest}; cap per log {cap_bytes}")  # the measured figures
    assert all(size <= cap_bytes + 64 * 1024 for size in largest.values()), f"a log grew past its cap: {largest}"

    cookie = session_cookie(access.actor)
    path = f"/ws/t/{access.tenant.slug}/instances/{instance.pk}/console/"

    async def scenario():
        async with Socket(cookie, f"{path}?after=0") as socket:
            return await socket.receive_until(
                lambda m: m["type"] == "lines" and any(line["text"] == "flood done" for line in m["lines"]), limit=50
            )

    messages = run(scenario())
    truncated = [m for m in messages if m["type"] == "truncated"]
    seqs = lines_of(messages)
    (done,) = [line for m in messages if m["type"] == "lines" for line in m["lines"] if line["text"] == "flood done"]
    print(f"lines printed: {done['seq']}; the backlog starts at {seqs[0]}; {truncated}")
    # seq is the line's index among all the app's lines: the rounds printed whole, then this one...
    assert done["seq"] % LINES_PER_ROUND == 0 and done["seq"] * 100 > cap_bytes, done
    # ...the older ones are gone, and the console says so; what it gives has no gap.
    assert truncated and truncated[0]["first_seq"] == seqs[0] > 1
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))

    # The host still knows the app started (its "started" record was rotated out long ago),
    # also when it reads the logs afresh (a restarted worker).
    fresh = HyperVMRuntime(RuntimeSettings(state_dir=one_host.state_dir))
    assert fresh.status(str(instance.pk)).state == "running"
    assert Instance.objects.get(pk=instance.pk).status in INSTANCE_UP


def _tail(path, size: int = 4096) -> bytes:
    try:
        with open(path, "rb") as log:
            log.seek(max(0, os.fstat(log.fileno()).st_size - size))
            return log.read()
    except FileNotFoundError:
        return b""
