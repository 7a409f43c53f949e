"""Boot a HyperVM guest with plain QEMU (no libvirt): for the guest init's tests and bench.

The devices are the ones the driver gives a HyperVM: the rootfs and config disks on
virtio-blk with serials, one virtio-serial controller with the log port (file) and
the control port (unix socket, QEMU listens), the console on ttyS0 to a file.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vmworker.guestinit import (
    CONFIG_DISK_SERIAL,
    CONTROL_PORT_NAME,
    KERNEL_CMDLINE,
    LOG_PORT_NAME,
)
from vmworker.guestinit.protocol import GuestRunSummary, parse_guest_log

ROOTFS_SERIAL = "hvm-rootfs"
BUSYBOX = Path("/bin/busybox")
BOOT_TIMEOUT_S = 90  # TCG boots in ~3 s; this only bounds a hung guest on a loaded host


def guest_kernel() -> Path | None:
    """The newest Debian cloud kernel installed on this host."""
    kernels = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    return kernels[-1] if kernels else None


def make_busybox_tree(root: Path) -> Path:
    """A tiny image tree: busybox-static with its applets, two users, a non-executable."""
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    (root / "home/app").mkdir(parents=True)
    os.chown(root / "home/app", 1000, 1000)
    (root / "bin/not-executable").write_text("#!/bin/sh\necho never\n")
    os.chmod(root / "bin/not-executable", 0o644)
    return root


def make_erofs(tree: Path, image: Path) -> Path:
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(tree)], check=True, timeout=120)
    return image


def make_ext4(tree: Path, image: Path, size_mib: int = 16) -> Path:
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), f"{size_mib}M"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return image


@dataclass
class BootResult:
    summary: GuestRunSummary
    log: bytes
    console: str
    qemu_returncode: int
    wall_s: float

    @property
    def stdout_lines(self) -> list[str]:
        return [line.text for line in self.summary.output if line.stream == "stdout"]

    @property
    def stderr_lines(self) -> list[str]:
        return [line.text for line in self.summary.output if line.stream == "stderr"]

    def assert_powered_off_cleanly(self) -> None:
        # The guest ended by itself with an ACPI power-off, not a panic or our timeout.
        assert self.qemu_returncode == 0
        assert "Kernel panic" not in self.console
        assert "reboot: Power down" in self.console


class RunningGuest:
    """What a caller can do while the VM runs: watch the log port, talk on control."""

    def __init__(self, log_path: Path, control_path: Path, process: subprocess.Popen):
        self._log_path = log_path
        self._control_path = control_path
        self._process = process
        self._control: socket.socket | None = None

    def wait_for_stdout(self, text: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            log = self._log_path.read_bytes() if self._log_path.exists() else b""
            if any(line.text == text for line in parse_guest_log(log).output):
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"guest never printed {text!r}")

    def connect_control(self, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while self._control is None:
            control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                control.connect(str(self._control_path))
            except (FileNotFoundError, ConnectionRefusedError):
                control.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # QEMU has not created the socket yet
            else:
                self._control = control

    def send_control(self, data: bytes) -> None:
        self.connect_control()
        self._control.sendall(data)

    def read_control_until(self, marker: bytes, timeout_s: float = 60) -> bytes:
        """What the guest mirrored on the control port, up to the line starting with marker."""
        self.connect_control()
        received = b""
        deadline = time.monotonic() + timeout_s
        while not any(line.startswith(marker) for line in received.split(b"\n")):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {marker!r} on the control port: {received!r}")
            self._control.settimeout(remaining)
            chunk = self._control.recv(4096)
            if not chunk:
                break
            received += chunk
        return received

    def close(self) -> None:
        if self._control is not None:
            self._control.close()


def boot_guest(
    *,
    kernel: Path,
    initramfs: Path,
    rootfs: Path,
    config_disk: Path,
    work_dir: Path,
    rootfs_readonly: bool = True,
    extra_qemu_args: tuple[str, ...] = (),
    interact: Callable[[RunningGuest], None] | None = None,
    timeout_s: float = BOOT_TIMEOUT_S,
) -> BootResult:
    """Boots, lets ``interact`` act, waits (bounded) for the guest to power itself off."""
    log_path = work_dir / "log-port"
    control_path = work_dir / "control.sock"
    console_path = work_dir / "console.log"
    for stale in (log_path, control_path, console_path):
        stale.unlink(missing_ok=True)
    readonly = "on" if rootfs_readonly else "off"
    command = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-machine",
        "q35",
        "-m",
        "256",
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        f"file:{console_path}",
        "-kernel",
        str(kernel),
        "-initrd",
        str(initramfs),
        "-append",
        KERNEL_CMDLINE,
        "-drive",
        f"file={rootfs},if=none,id=rootfs,format=raw,readonly={readonly}",
        "-device",
        f"virtio-blk-pci,drive=rootfs,serial={ROOTFS_SERIAL}",
        "-drive",
        f"file={config_disk},if=none,id=config,format=raw,readonly=on",
        "-device",
        f"virtio-blk-pci,drive=config,serial={CONFIG_DISK_SERIAL}",
        "-device",
        "virtio-serial-pci,id=vser",
        "-chardev",
        f"file,id=log,path={log_path}",
        "-device",
        f"virtserialport,bus=vser.0,chardev=log,name={LOG_PORT_NAME}",
        "-chardev",
        f"socket,id=control,path={control_path},server=on,wait=off",
        "-device",
        f"virtserialport,bus=vser.0,chardev=control,name={CONTROL_PORT_NAME}",
        *extra_qemu_args,
    ]
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    guest = RunningGuest(log_path, control_path, process)
    try:
        if interact is not None:
            interact(guest)
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"the guest did not power off within {timeout_s} s; console:\n"
            + console_path.read_text(errors="replace")[-3000:]
        ) from None
    finally:
        guest.close()
        if process.poll() is None:
            process.kill()
            process.wait()
    wall_s = time.monotonic() - started
    assert process.returncode == 0, output.decode(errors="replace")
    log = log_path.read_bytes()
    return BootResult(
        summary=parse_guest_log(log),
        log=log,
        console=console_path.read_text(errors="replace"),
        qemu_returncode=process.returncode,
        wall_s=wall_s,
    )
