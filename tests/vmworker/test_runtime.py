from __future__ import annotations

import subprocess
import time

import pytest

from tests.support.oci_images import PRINTER_STDOUT_LINES, SIGTERM_READY_LINE
from vmworker.cli import credentials_from_authfile, parse_publish
from vmworker.driver.spec import PortForward
from vmworker.guestinit.protocol import OutputLine
from vmworker.images.manifest import ImageConfig
from vmworker.runtime import (
    BootFailed,
    HyperVMRuntime,
    InstanceSpec,
    InvalidSpec,
    NothingToRun,
    RuntimeSettings,
    merge_env,
    resolve_argv,
)

IMAGE = ImageConfig(
    entrypoint=("/entry",),
    cmd=("serve", "--port=80"),
    env=("A=1", "PATH=/bin"),
    working_dir="/srv",
    user="app",
    exposed_ports=("80/tcp",),
)


@pytest.mark.parametrize(
    "entrypoint,command,shell,expected",
    [
        (None, None, None, ("/entry", "serve", "--port=80")),
        (None, ("other",), None, ("/entry", "other")),
        (("/bin/echo",), None, None, ("/bin/echo",)),  # an Entrypoint override drops the image Cmd
        (("/bin/echo",), ("x",), None, ("/bin/echo", "x")),
        (None, None, "echo $HOME && sleep 1", ("/bin/sh", "-c", "echo $HOME && sleep 1")),
    ],
)
def test_resolve_argv_follows_docker_and_marathon(entrypoint, command, shell, expected):
    assert resolve_argv(IMAGE, entrypoint=entrypoint, command=command, shell_command=shell) == expected


def test_an_image_with_nothing_to_run_is_refused():
    empty = ImageConfig(entrypoint=(), cmd=(), env=(), working_dir="", user="", exposed_ports=())
    with pytest.raises(NothingToRun):
        resolve_argv(empty, entrypoint=None, command=None, shell_command=None)


def test_env_overrides_replace_image_values_by_name():
    assert merge_env(("A=1", "B=2=3"), {"A": "x", "C": ""}) == ("A=x", "B=2=3", "C=")


def test_publish_and_authfile_parsing(tmp_path):
    assert parse_publish("8080:80", "127.0.0.1") == PortForward("127.0.0.1", 8080, 80)
    assert parse_publish("127.0.0.2:81:8000", "127.0.0.1") == PortForward("127.0.0.2", 81, 8000)
    authfile = tmp_path / "auth.json"
    authfile.write_text('{"auths": {"127.0.0.1:5000": {"auth": "dTpwOnc="}}}')  # u:p:w
    credentials = credentials_from_authfile(authfile, "127.0.0.1:5000/a/b:c")
    assert (credentials.username, credentials.password) == ("u", "p:w")
    assert credentials_from_authfile(authfile, "docker.io/library/x") is None


def spec_for(image, registry_authfile, **overrides) -> InstanceSpec:
    return InstanceSpec(
        image=image.reference,
        credentials=credentials_from_authfile(registry_authfile, image.reference),
        tls_verify=False,
        **overrides,
    )


def domains_named(name: str) -> list[str]:
    listing = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True, check=True
    ).stdout
    return [line for line in listing.split() if line == name]


@pytest.mark.vm
def test_boot_reports_phase_timings_and_a_second_boot_finds_the_same_domain(
    runtime, runtime_state_dir, test_images, registry_authfile
):
    spec = spec_for(test_images["sigterm"], registry_authfile, name="twice")
    phases = []
    first = runtime.boot(spec, on_phase=phases.append)
    assert phases == ["pulling", "preparing", "booting"]
    assert not first.reused and first.virt_type in ("qemu", "kvm")
    for phase in ("initramfs", "define", "boot_to_init", "init_to_exec", "boot_to_exec"):
        assert first.timings_s[phase] > 0, phase
    assert "pull" in first.timings_s or "cache" in first.timings_s

    again = runtime.boot(spec)  # a re-delivered task
    assert again.reused and again.domain_name == first.domain_name
    assert domains_named(first.domain_name) == [first.domain_name]

    # A runtime made afresh (a restarted worker) reads the same instance from its files.
    restarted = HyperVMRuntime(RuntimeSettings(state_dir=runtime_state_dir))
    assert restarted.status(spec.instance_id).state == "running"
    deadline = time.monotonic() + 20
    while OutputLine("stdout", SIGTERM_READY_LINE) not in restarted.records(spec.instance_id):
        assert time.monotonic() < deadline, "the app's first line never reached the log"
        time.sleep(0.1)
    assert restarted.stop(spec.instance_id, timeout_s=10).exit_code == 0
    assert domains_named(first.domain_name) == []


@pytest.mark.vm
def test_follow_streams_output_until_exit(runtime, test_images, registry_authfile):
    spec = spec_for(test_images["printer"], registry_authfile)
    runtime.boot(spec)
    lines = [record.text for record in runtime.follow(spec.instance_id) if isinstance(record, OutputLine)]
    assert [line for line in lines if line in PRINTER_STDOUT_LINES] == list(PRINTER_STDOUT_LINES)
    assert runtime.status(spec.instance_id).exit_code == 3


@pytest.mark.vm
def test_a_missing_program_is_a_boot_failure_with_the_reason_and_no_domain(runtime, test_images, registry_authfile):
    spec = spec_for(test_images["printer"], registry_authfile, entrypoint=("/no/such/program",))
    with pytest.raises(BootFailed) as excinfo:
        runtime.boot(spec)
    assert excinfo.value.exit_code == 127
    assert "/no/such/program" in str(excinfo.value)
    assert domains_named(f"hvm-{spec.instance_id}") == []


def test_too_little_memory_is_refused_before_anything_is_made(runtime, runtime_state_dir):
    with pytest.raises(InvalidSpec):
        runtime.boot(InstanceSpec(image="127.0.0.1:1/x:y", memory_mib=32))
    assert not any(path.name.startswith("x") for path in (runtime_state_dir / "instances").iterdir())
