"""The config disk: Python round trip, and the init's C parser on good and hostile bytes."""

import os
import random
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from vmworker.guestinit.config import (
    CONFIG_MAGIC,
    ConfigDiskError,
    GuestConfig,
    GuestNetwork,
    GuestTenantInterface,
    GuestVolume,
    decode_config,
    encode_config,
    write_config_disk,
)
from vmworker.guestinit.initramfs import INIT_SOURCE

FULL_CONFIG = GuestConfig(
    hostname="web-1",
    argv=("/bin/sh", "-c", 'echo "$GREETING"; exit 3', "ünïcödé $(rm -rf /) `x` ;|&"),
    env=("PATH=/usr/bin:/bin", "GREETING=hello world", "EMPTY="),
    working_dir="/srv/app",
    user="app:extra",
    rootfs_serial="hvm-rootfs",
    rootfs_type="erofs",
    overlay_size_mib=64,
    stop_grace_s=10,
    network=GuestNetwork(
        ip_cidr="10.0.2.15/24",
        gateway="10.0.2.2",
        mac="52:54:00:12:34:56",
        nameservers=("10.0.2.3", "1.1.1.1"),
    ),
    tenant_interface=GuestTenantInterface(mac="02:6b:1f:00:aa:01", ip_cidr="10.1.0.7/24"),
    volumes=(GuestVolume(serial="hvm-vol0", name="data"), GuestVolume(serial="hvm-vol1", name="pg data ü")),
)
MINIMAL_CONFIG = GuestConfig(
    hostname="",
    argv=("true",),
    env=(),
    working_dir="",
    user="",
    rootfs_serial="r",
    rootfs_type="ext4",
    overlay_size_mib=1,
    stop_grace_s=0,
)


def test_round_trip_through_a_disk_file(tmp_path):
    disk = tmp_path / "config.img"
    write_config_disk(FULL_CONFIG, disk)

    image = disk.read_bytes()
    assert len(image) % 4096 == 0
    assert image.startswith(CONFIG_MAGIC)
    assert decode_config(image) == FULL_CONFIG
    assert decode_config(encode_config(MINIMAL_CONFIG)) == MINIMAL_CONFIG


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"argv": ()}, "argv"),
        ({"argv": ("a\x00b",)}, "NUL"),
        ({"env": ("NOVALUE",)}, "NAME=VALUE"),
        ({"hostname": "bad host"}, "host name"),
        ({"working_dir": "relative"}, "absolute"),
        ({"rootfs_serial": "x" * 21}, "rootfs_serial"),
        ({"rootfs_type": "btrfs"}, "rootfs_type"),
        ({"overlay_size_mib": 0}, "overlay_size_mib"),
        ({"stop_grace_s": -1}, "stop_grace_s"),
        ({"network": GuestNetwork(ip_cidr="10.0.2.300/24")}, "network"),
        ({"network": GuestNetwork(ip_cidr="10.0.2.15/24", mac="52-54")}, "mac"),
        ({"tenant_interface": GuestTenantInterface(mac="02:00:00:00:00:01", ip_cidr="10.1.0.300/24")}, "tenant"),
        ({"tenant_interface": GuestTenantInterface(mac="02-00", ip_cidr="10.1.0.3/24")}, "tenant network mac"),
        (
            {
                "network": GuestNetwork(ip_cidr="10.0.2.15/24", mac="02:00:00:00:00:01"),
                "tenant_interface": GuestTenantInterface(mac="02:00:00:00:00:01", ip_cidr="10.1.0.3/24"),
            },
            "different MACs",
        ),
        ({"volumes": (GuestVolume(serial="hvm-vol0", name="../etc"),)}, "one path segment"),
        ({"volumes": (GuestVolume(serial="hvm-vol0", name=".."),)}, "one path segment"),
        ({"volumes": (GuestVolume(serial="hvm-vol0", name=""),)}, "one path segment"),
        ({"volumes": (GuestVolume(serial="vol 0", name="d"),)}, "volume serial"),
        ({"volumes": (GuestVolume(serial="hvm-rootfs", name="d"),)}, "volume serial"),
        ({"volumes": (GuestVolume(serial="a", name="d"), GuestVolume(serial="b", name="d"))}, "one path"),
        ({"volumes": (GuestVolume(serial="a", name="d"), GuestVolume(serial="a", name="e"))}, "one serial"),
    ],
)
def test_undeliverable_configs_are_refused(change, message):
    fields = {**FULL_CONFIG.__dict__, **change}

    with pytest.raises(ConfigDiskError, match=message):
        encode_config(GuestConfig(**fields))


def _reseal(payload: bytes) -> bytes:
    """A config image around an arbitrary payload, with a valid header and checksum."""
    header = struct.pack("<8sII", CONFIG_MAGIC, 1, len(payload))
    return header + payload + struct.pack("<I", zlib.crc32(payload))


def _one_payload_byte_flipped(image: bytes) -> bytes:
    return image[:20] + bytes([image[20] ^ 0xFF]) + image[21:]


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"", "too small"),
        (b"\x00" * 4096, "bad magic"),
        (struct.pack("<8sII", CONFIG_MAGIC, 2, 0) + b"\0" * 4, "version"),
        (struct.pack("<8sII", CONFIG_MAGIC, 1, 0xFFFFFFF0) + b"\0" * 4, "truncated"),
        (_one_payload_byte_flipped(encode_config(MINIMAL_CONFIG)), "checksum"),
        (_reseal(struct.pack("<HI", 1, 1000) + b"short"), "overruns"),
        (_reseal(struct.pack("<HI", 99, 1) + b"x"), "unknown record tag"),
        (_reseal(struct.pack("<HI", 1, 1) + b"a" + struct.pack("<HI", 1, 1) + b"b"), "twice"),
        (_reseal(struct.pack("<HI", 2, 3) + b"a\x00b"), "NUL"),
        (_reseal(b"\x01\x00\x00"), "truncated record header"),
    ],
)
def test_python_decoder_rejects_bad_images(image, message):
    with pytest.raises(ConfigDiskError, match=message):
        decode_config(image)


@pytest.fixture(scope="module")
def c_config_parser(tmp_path_factory) -> Path:
    """The init's own parser, compiled for the host with ASan+UBSan."""
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required (Debian package gcc)")
    binary = tmp_path_factory.mktemp("parser") / "hvparse"
    subprocess.run(
        [
            "gcc",
            "-O1",
            "-g",
            "-DHVINIT_PARSE_ONLY",
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-o",
            str(binary),
            str(INIT_SOURCE),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return binary


def _run_c_parser(binary: Path, images: list[Path]) -> list[list[str]]:
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0"}
    result = subprocess.run([str(binary), *map(str, images)], capture_output=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-3000:]
    blocks = result.stdout.decode("utf-8", "replace").split("== ")[1:]
    return [block.splitlines()[1:] for block in blocks]


def _canonical_lines(config: GuestConfig) -> list[str]:
    lines = [f"hostname={config.hostname}"]
    lines += [f"argv={item}" for item in config.argv]
    lines += [f"env={item}" for item in config.env]
    lines += [
        f"working_dir={config.working_dir}",
        f"user={config.user}",
        f"rootfs_serial={config.rootfs_serial}",
        f"rootfs_type={config.rootfs_type}",
        f"overlay_size_mib={config.overlay_size_mib}",
        f"stop_grace_s={config.stop_grace_s}",
    ]
    if config.network:
        lines.append(f"net_ip_cidr={config.network.ip_cidr}")
        if config.network.gateway:
            lines.append(f"net_gateway={config.network.gateway}")
        if config.network.mac:
            lines.append(f"net_mac={config.network.mac}")
        lines += [f"nameserver={server}" for server in config.network.nameservers]
    if config.tenant_interface:
        lines.append(f"tenant_net_mac={config.tenant_interface.mac}")
        lines.append(f"tenant_net_ip_cidr={config.tenant_interface.ip_cidr}")
    lines += [f"volume={volume.serial} {volume.name}" for volume in config.volumes]
    return lines


def test_c_parser_reads_what_python_writes(c_config_parser, tmp_path):
    paths = []
    for index, config in enumerate((FULL_CONFIG, MINIMAL_CONFIG)):
        paths.append(tmp_path / f"{index}.img")
        write_config_disk(config, paths[-1])

    full, minimal = _run_c_parser(c_config_parser, paths)

    assert full == _canonical_lines(FULL_CONFIG)
    assert minimal == _canonical_lines(MINIMAL_CONFIG)


@pytest.mark.parametrize("value", ["hvm-vol0 ..", "hvm-vol0 a/b", "nospace", " data", "x" * 21 + " d", "v\x01 d"])
def test_c_parser_refuses_a_volume_that_is_not_one_path_segment(c_config_parser, tmp_path, value):
    record = value.encode()
    image = tmp_path / "bad-volume.img"
    good = encode_config(MINIMAL_CONFIG)
    payload = good[16 : 16 + struct.unpack_from("<I", good, 12)[0]]
    image.write_bytes(_reseal(payload + struct.pack("<HI", 16, len(record)) + record))

    (lines,) = _run_c_parser(c_config_parser, [image])

    assert lines == ["error=config: record 16 has an invalid value"]


def test_c_parser_survives_truncated_and_mutated_images(c_config_parser, tmp_path):
    # Mutations are re-sealed with a valid checksum so they reach the record parser.
    rng = random.Random(1234)
    valid = encode_config(FULL_CONFIG)
    payload_len = struct.unpack_from("<I", valid, 12)[0]
    payload = valid[16 : 16 + payload_len]
    images = [valid[:cut] for cut in sorted(rng.sample(range(len(valid)), 150))]
    for _ in range(400):
        mutated = bytearray(payload)
        for _ in range(rng.randint(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        images.append(_reseal(bytes(mutated)))
    for _ in range(100):
        images.append(_reseal(payload[: rng.randrange(len(payload))]))
        images.append(bytes(rng.randrange(256) for _ in range(rng.randrange(64))))
    paths = []
    for index, image in enumerate(images):
        paths.append(tmp_path / f"fuzz-{index}.img")
        paths[-1].write_bytes(image)

    results = _run_c_parser(c_config_parser, paths)

    assert len(results) == len(images)
    for image, lines in zip(images, results, strict=True):
        try:
            expected = _canonical_lines(decode_config(image))
        except (ConfigDiskError, UnicodeDecodeError):
            expected = None
        if expected is not None:
            assert lines == expected  # what Python accepts, C reads identically
        elif lines[0].startswith("error="):
            assert lines[0].startswith("error=config: ")
    rejected = sum(lines[0].startswith("error=") for lines in results)
    assert rejected > len(images) // 2  # the fuzzing did reach the failure paths
