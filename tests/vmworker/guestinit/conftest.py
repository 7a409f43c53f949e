"""Real boots of the guest init: QEMU (TCG), the Debian cloud kernel, our initramfs.

No libvirt here (the driver's tests do that): plain qemu-system-x86_64 with the
devices the driver is expected to give a HyperVM: the rootfs and config disks on
virtio-blk with serials, and the two virtio-serial ports of the guest protocol.
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

import pytest

from vmworker.guestinit import (
    CONFIG_DISK_SERIAL,
    CONTROL_PORT_NAME,
    KERNEL_CMDLINE,
    LOG_PORT_NAME,
    GuestConfig,
    build_initramfs,
    write_config_disk,
)
from vmworker.guestinit.protocol import GuestRunSummary, parse_guest_log

ROOTFS_SERIAL = "hvm-rootfs"
BOOT_TIMEOUT_S = 90  # TCG boots in ~3 s; this only bounds a hung guest on a loaded host
BUSYBOX = Path("/bin/busybox")


def _guest_kernel() -> Path:
    kernels = sorted(Path("/boot").glob("vmlinuz-*-cloud-amd64"))
    if not kernels:
        pytest.fail("linux-image-cloud-amd64 is required for the boot tests")
    return kernels[-1]


@pytest.fixture(scope="session")
def guest_kernel() -> Path:
    return _guest_kernel()


@pytest.fixture(scope="session")
def guest_initramfs(guest_kernel, tmp_path_factory) -> Path:
    release = guest_kernel.name.removeprefix("vmlinuz-")
    return build_initramfs(
        kernel_release=release,
        modules_root=Path("/lib/modules"),
        cache_dir=tmp_path_factory.mktemp("initramfs-cache"),
    )


@pytest.fixture(scope="session")
def rootfs_tree(tmp_path_factory) -> Path:
    """A tiny image tree: busybox-static with its applets, two users, a non-executable."""
    if not BUSYBOX.is_file():
        pytest.fail("busybox-static is required for the boot tests")
    root = tmp_path_factory.mktemp("rootfs-tree")
    (root / "bin").mkdir()
    (root / "etc").mkdir()
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (root / "etc/group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app\n")
    (root / "home/app").mkdir(parents=True)
    os.chown(root / "home/app", 1000, 1000)
    (root / "bin/not-executable").write_text("#!/bin/sh\necho never\n")
    os.chmod(root / "bin/not-executable", 0o644)
    return root


@pytest.fixture(scope="session")
def erofs_rootfs(rootfs_tree, tmp_path_factory) -> Path:
    image = tmp_path_factory.mktemp("rootfs") / "rootfs.erofs"
    subprocess.run(["mkfs.erofs", "--quiet", str(image), str(rootfs_tree)], check=True)
    return image


@pytest.fixture
def ext4_rootfs(rootfs_tree, tmp_path) -> Path:
    image = tmp_path / "rootfs.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(rootfs_tree), str(image), "16M"],
        check=True, capture_output=True,
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
    """What a test can do while the VM runs: watch the log port, talk on control."""

    def __init__(self, log_path: Path, control_path: Path, process: subprocess.Popen):
        self._log_path = log_path
        self._control_path = control_path
        self._process = process
        self._control: socket.socket | None = None

    def wait_for_stdout(self, text: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            log = self._log_path.read_bytes() if self._log_path.exists() else b""
            summary = parse_guest_log(log)
            if any(line.text == text for line in summary.output):
                return
            if self._process.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"guest never printed {text!r}")

    def send_control(self, data: bytes) -> None:
        if self._control is None:
            self._control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._control.settimeout(5)
            self._control.connect(str(self._control_path))
        self._control.sendall(data)

    def close(self) -> None:
        if self._control is not None:
            self._control.close()


BootGuest = Callable[..., BootResult]


@pytest.fixture
def boot_guest(guest_kernel, guest_initramfs, tmp_path) -> BootGuest:
    processes: list[subprocess.Popen] = []

    def boot(
        config: GuestConfig | None,
        *,
        rootfs: Path,
        config_image: bytes | None = None,
        rootfs_readonly: bool = True,
        extra_qemu_args: tuple[str, ...] = (),
        interact: Callable[[RunningGuest], None] | None = None,
    ) -> BootResult:
        config_disk = tmp_path / "config.img"
        if config_image is not None:
            config_disk.write_bytes(config_image)
        else:
            write_config_disk(config, config_disk)
        log_path = tmp_path / "log-port"
        control_path = tmp_path / "control.sock"
        console_path = tmp_path / "console.log"
        for stale in (log_path, control_path, console_path):
            stale.unlink(missing_ok=True)
        readonly = "on" if rootfs_readonly else "off"
        command = [
            "qemu-system-x86_64", "-accel", "tcg", "-machine", "q35", "-m", "256",
            "-nodefaults", "-no-reboot", "-display", "none",
            "-serial", f"file:{console_path}",
            "-kernel", str(guest_kernel), "-initrd", str(guest_initramfs),
            "-append", KERNEL_CMDLINE,
            "-drive", f"file={rootfs},if=none,id=rootfs,format=raw,readonly={readonly}",
            "-device", f"virtio-blk-pci,drive=rootfs,serial={ROOTFS_SERIAL}",
            "-drive", f"file={config_disk},if=none,id=config,format=raw,readonly=on",
            "-device", f"virtio-blk-pci,drive=config,serial={CONFIG_DISK_SERIAL}",
            "-device", "virtio-serial-pci,id=vser",
            "-chardev", f"file,id=log,path={log_path}",
            "-device", f"virtserialport,bus=vser.0,chardev=log,name={LOG_PORT_NAME}",
            "-chardev", f"socket,id=control,path={control_path},server=on,wait=off",
            "-device", f"virtserialport,bus=vser.0,chardev=control,name={CONTROL_PORT_NAME}",
            *extra_qemu_args,
        ]
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        processes.append(process)
        guest = RunningGuest(log_path, control_path, process)
        try:
            if interact is not None:
                interact(guest)
            output, _ = process.communicate(timeout=BOOT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(
                f"the guest did not power off within {BOOT_TIMEOUT_S} s; console:\n"
                + console_path.read_text(errors="replace")[-3000:]
            ) from None
        finally:
            guest.close()
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

    yield boot
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
