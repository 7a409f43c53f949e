"""``python -m vmworker``: the operator CLI of a compute host (and of the acceptance tests).

Like ``docker run`` for HyperVMs: ``run`` pulls, boots, streams the app's stdout/stderr and
exits with the app's exit code (``-d``: prints the id once the app runs). Errors are one line
on stderr and a non-zero exit, and leave no domain and no instance files behind.
Registry credentials come only from an authfile (containers-auth.json), never from argv.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import time
from pathlib import Path

from vmworker.driver.errors import DriverError
from vmworker.driver.spec import PortForward
from vmworker.guestinit.protocol import GuestEvent, OutputLine
from vmworker.images.credentials import RegistryCredentials
from vmworker.images.errors import ImageError
from vmworker.runtime import BootFailed, HyperVMRuntime, InstanceSpec, RuntimeSettings
from vmworker.runtime_types import RuntimeFailure

DEFAULT_STATE_DIR = Path(os.environ.get("HYPERVM_STATE_DIR", "/var/lib/hypervm"))
EXIT_CLI_ERROR = 125  # like docker: the CLI itself failed, not the app


class CliError(Exception):
    pass


def parse_publish(value: str, default_ip: str) -> PortForward:
    parts = value.split(":")
    try:
        if len(parts) == 2:
            ip, host_port, guest_port = default_ip, int(parts[0]), int(parts[1])
        elif len(parts) == 3:
            ip, host_port, guest_port = parts[0], int(parts[1]), int(parts[2])
        else:
            raise ValueError
        return PortForward(host_ip=ip, host_port=host_port, guest_port=guest_port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--publish {value!r}: use [IP:]HOST_PORT:CONTAINER_PORT") from None


def parse_env(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not key or not sep:
        raise argparse.ArgumentTypeError(f"--env {value!r}: use KEY=VALUE")
    return key, val


def credentials_from_authfile(authfile: Path, image: str) -> RegistryCredentials | None:
    """The entry of containers-auth.json for the image's registry host (read, never passed on)."""
    try:
        document = json.loads(authfile.read_text())
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read authfile {authfile}: {exc}") from None
    host = image.split("/", 1)[0] if "/" in image else "docker.io"
    entry = document.get("auths", {}).get(host)
    if not entry:
        return None
    if "auth" in entry:
        username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
    else:
        username, password = entry.get("username", ""), entry.get("password", "")
    return RegistryCredentials(username=username, password=password)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vmworker", description="Run container images as HyperVMs.")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="default: %(default)s")
    parser.add_argument("--libvirt-uri", default=os.environ.get("HYPERVM_LIBVIRT_URI", "qemu:///system"))
    parser.add_argument(
        "--virt-type",
        choices=("kvm", "qemu"),
        default=os.environ.get("HYPERVM_VIRT_TYPE"),
        help="force kvm or TCG (qemu); default: boot probe",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    probe = commands.add_parser("probe", help="decide kvm or TCG by booting a tiny guest")
    probe.add_argument("--fresh", action="store_true", help="ignore the recorded result")

    run = commands.add_parser("run", help="run an image in a new HyperVM")
    run.add_argument("image")
    run.add_argument("--authfile", type=Path)
    run.add_argument("--tls-verify", default="true", choices=("true", "false"))
    run.add_argument("--env", "-e", action="append", type=parse_env, default=[])
    run.add_argument("--publish", "-p", action="append", default=[])
    run.add_argument("--cpus", type=int, default=1)
    run.add_argument("--memory", type=int, default=128, help="MiB")
    run.add_argument("--name", default="")
    run.add_argument("--entrypoint")
    run.add_argument("-d", "--detach", action="store_true")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS... replaces the image's Cmd")

    commands.add_parser("ls", help="list instances")
    logs = commands.add_parser("logs", help="print an instance's output")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true")
    stop = commands.add_parser("stop", help="SIGTERM the app, SIGKILL after the timeout")
    stop.add_argument("name")
    stop.add_argument("--timeout", type=int, default=10)
    remove = commands.add_parser("rm", help="remove an instance (destroying it if running)")
    remove.add_argument("name")
    return parser


def print_record(record) -> None:
    if isinstance(record, OutputLine):
        stream = sys.stdout if record.stream == "stdout" else sys.stderr
        stream.write(record.text + "\n")
        stream.flush()


def command_run(runtime: HyperVMRuntime, args) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    ports = tuple(parse_publish(value, runtime.settings.publish_host_ip) for value in args.publish)
    spec = InstanceSpec(
        image=args.image,
        name=args.name,
        credentials=credentials_from_authfile(args.authfile, args.image) if args.authfile else None,
        tls_verify=args.tls_verify == "true",
        entrypoint=(args.entrypoint,) if args.entrypoint else None,
        command=tuple(cmd) if cmd else None,
        env=dict(args.env),
        vcpus=args.cpus,
        memory_mib=args.memory,
        ports=ports,
    )
    if args.name and any(status.name == args.name for status in runtime.list_instances()):
        raise CliError(f"an instance named {args.name!r} exists already (rm it first)")
    try:
        result = runtime.boot(spec)
    except BaseException:
        runtime.remove(spec.instance_id)
        raise
    if args.detach:
        print(result.instance_id)
        return 0
    interrupted = []

    def on_signal(signum, frame):
        if not interrupted:
            interrupted.append(signum)
            runtime.stop(result.instance_id, timeout_s=10)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    exit_code = None
    for record in runtime.follow(result.instance_id):
        print_record(record)
        if isinstance(record, GuestEvent) and record.name == "exit":
            exit_code = record.code
    runtime.stop(result.instance_id, timeout_s=1)  # the VM powers itself off; make sure
    if exit_code is None:
        tail = runtime.console_tail(result.instance_id)[-500:]
        raise CliError(f"the VM ended without reporting an exit code; console tail:\n{tail}")
    return exit_code


def command_ls(runtime: HyperVMRuntime, args) -> int:
    print(f"{'ID':<36}  {'NAME':<20}  {'STATE':<8}  {'EXIT':<4}  {'PORTS':<24}  IMAGE")
    for status in runtime.list_instances():
        ports = ",".join(f"{p.host_ip}:{p.host_port}->{p.guest_port}" for p in status.ports)
        exit_code = "" if status.exit_code is None else str(status.exit_code)
        print(
            f"{status.instance_id:<36}  {status.name:<20}  {status.state:<8}  {exit_code:<4}  {ports:<24}  "
            f"{status.image}"
        )
    return 0


def command_logs(runtime: HyperVMRuntime, args) -> int:
    instance_id = runtime.find(args.name)
    records = runtime.follow(instance_id) if args.follow else runtime.records(instance_id)
    for record in records:
        print_record(record)
    return 0


def command_stop(runtime: HyperVMRuntime, args) -> int:
    status = runtime.stop(runtime.find(args.name), timeout_s=args.timeout)
    print(f"{status.name} exited with {status.exit_code}" if status.exit_code is not None else f"{status.name} lost")
    return 0


def command_rm(runtime: HyperVMRuntime, args) -> int:
    instance_id = runtime.find(args.name)
    runtime.remove(instance_id)
    print(instance_id)
    return 0


def command_probe(runtime: HyperVMRuntime, args) -> int:
    started = time.monotonic()
    record = runtime.probe(fresh=args.fresh)
    print(f"virt type: {record['virt_type']}")
    print(f"probe: {record['probe_s']:.2f} s (this call {time.monotonic() - started:.2f} s)")
    for attempt in record["attempts"]:
        outcome = f"booted in {attempt['boot_s']:.2f} s" if attempt["succeeded"] else f"failed: {attempt['reason']}"
        print(f"  {attempt['virt_type']}: {outcome}")
    return 0


COMMANDS = {
    "run": command_run,
    "ls": command_ls,
    "logs": command_logs,
    "stop": command_stop,
    "rm": command_rm,
    "probe": command_probe,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = RuntimeSettings(state_dir=args.state_dir, libvirt_uri=args.libvirt_uri, virt_type=args.virt_type)
    try:
        runtime = HyperVMRuntime(settings)
        return COMMANDS[args.command](runtime, args)
    except BootFailed as exc:
        tail = "\n".join(exc.console_tail.strip().splitlines()[-10:])
        print(f"error: boot failed: {exc}" + (f"\nconsole tail:\n{tail}" if tail else ""), file=sys.stderr)
    except (ImageError, RuntimeFailure, DriverError, CliError) as exc:
        print(f"error: {exc}", file=sys.stderr)
    return EXIT_CLI_ERROR
