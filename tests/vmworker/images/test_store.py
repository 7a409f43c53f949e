"""ImageStore against a real docker-registry with htpasswd auth: pulls, cache, eviction, errors."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

from tests.support.oci_images import (
    HTTPD_PORT,
    NOENTRY,
    PRINTER,
    PRINTER_GREETING_ENV,
    PushedImage,
    build_and_push,
    build_image,
    build_platform_index,
    payload_recipe,
    push_image,
)
from tests.support.registry import LocalRegistry
from tests.vmworker.images.store_inspection import (
    blob_requests,
    dangerous_host_files,
    skopeo_inspect_digest,
    unexpected_store_files,
    work_dir_entries,
)
from vmworker.images import (
    ImageConfig,
    ImageError,
    ImageNotFound,
    ImageStore,
    ImageTooLarge,
    RegistryCredentials,
    RegistryUnauthorized,
)

GIB = 1024 * 1024 * 1024
EXPECTED_CONFIGS = {
    "printer": ImageConfig(
        entrypoint=("/bin/printer",),
        cmd=("3",),
        env=("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", PRINTER_GREETING_ENV),
        working_dir="/",
        user="",
        exposed_ports=(),
    ),
    "httpd": ImageConfig(
        entrypoint=("/bin/httpd", "-f", "-p", str(HTTPD_PORT), "-h", "/www"),
        cmd=(),
        env=("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",),
        working_dir="/www",
        user="",
        exposed_ports=(f"{HTTPD_PORT}/tcp",),
    ),
    "sigterm": ImageConfig(
        entrypoint=(),
        cmd=("/bin/sigterm-waiter",),
        env=("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",),
        working_dir="",
        user="",
        exposed_ports=(),
    ),
    "noentry": ImageConfig(
        entrypoint=(),
        cmd=(),
        env=("PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",),
        working_dir="",
        user="",
        exposed_ports=(),
    ),
}
EROFS_MAGIC_OFFSET = 1024
EROFS_MAGIC = bytes.fromhex("e2e1f5e0")  # 0xE0F5E1E2 little-endian


@pytest.mark.parametrize("name", sorted(EXPECTED_CONFIGS))
def test_prepare_reads_config_and_records_the_registry_digest(
    name: str,
    store: ImageStore,
    store_root: Path,
    credentials: RegistryCredentials,
    test_images: dict[str, PushedImage],
    registry_authfile: Path,
) -> None:
    pushed = test_images[name]

    prepared = store.prepare(pushed.reference, credentials=credentials, tls_verify=False)

    assert prepared.config == EXPECTED_CONFIGS[name]
    assert prepared.manifest_digest == skopeo_inspect_digest(pushed.reference, registry_authfile)
    assert prepared.reference == pushed.reference
    assert prepared.fs_type == "erofs"
    with prepared.fs_path.open("rb") as fs_image:
        fs_image.seek(EROFS_MAGIC_OFFSET)
        assert fs_image.read(4) == EROFS_MAGIC
    assert prepared.size_bytes == prepared.fs_path.stat().st_size
    assert prepared.fs_path.stat().st_mode & 0o777 == 0o444
    assert set(prepared.timings_s) == {"pull", "count", "unpack", "fs_image"}
    assert work_dir_entries(store_root) == []
    assert unexpected_store_files(store_root) == []
    assert dangerous_host_files(store_root) == []


def test_second_prepare_is_a_cache_hit_without_blob_downloads(
    store: ImageStore,
    credentials: RegistryCredentials,
    test_images: dict[str, PushedImage],
    registry: LocalRegistry,
) -> None:
    pushed = test_images["httpd"]
    first = store.prepare(pushed.reference, credentials=credentials, tls_verify=False)
    log_offset = registry.log_offset()

    second = store.prepare(pushed.reference, credentials=credentials, tls_verify=False)

    assert set(second.timings_s) == {"cache"}
    assert second.timings_s["cache"] < sum(first.timings_s.values())
    assert (second.fs_path, second.manifest_digest, second.config) == (
        first.fs_path,
        first.manifest_digest,
        first.config,
    )
    assert blob_requests(registry.log_since(log_offset)) == []


def test_cache_hit_still_asks_the_registry_with_the_callers_credentials(
    store: ImageStore, credentials: RegistryCredentials, test_images: dict[str, PushedImage]
) -> None:
    pushed = test_images["printer"]
    store.prepare(pushed.reference, credentials=credentials, tls_verify=False)

    with pytest.raises(RegistryUnauthorized):
        store.prepare(pushed.reference, credentials=None, tls_verify=False)


def test_two_concurrent_prepares_of_one_image_pull_it_once(
    store: ImageStore, credentials: RegistryCredentials, test_images: dict[str, PushedImage]
) -> None:
    pushed = test_images["sigterm"]
    results = []

    def prepare() -> None:
        results.append(store.prepare(pushed.reference, credentials=credentials, tls_verify=False))

    threads = [threading.Thread(target=prepare) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(tuple(sorted(result.timings_s)) for result in results) == [
        ("cache",),
        ("count", "fs_image", "pull", "unpack"),
    ]
    assert results[0].fs_path == results[1].fs_path


def test_least_recently_used_image_is_evicted_beyond_the_bound(
    store_root: Path, credentials: RegistryCredentials, test_images: dict[str, PushedImage]
) -> None:
    probe = ImageStore(store_root / "probe", max_cache_bytes=GIB, max_image_bytes=GIB)
    one_image_bytes = probe.prepare(
        test_images["printer"].reference, credentials=credentials, tls_verify=False
    ).size_bytes
    store = ImageStore(store_root / "bounded", max_cache_bytes=int(one_image_bytes * 2.5), max_image_bytes=GIB)
    printer = store.prepare(test_images["printer"].reference, credentials=credentials, tls_verify=False)
    httpd = store.prepare(test_images["httpd"].reference, credentials=credentials, tls_verify=False)
    store.prepare(test_images["printer"].reference, credentials=credentials, tls_verify=False)

    sigterm = store.prepare(test_images["sigterm"].reference, credentials=credentials, tls_verify=False)

    assert printer.fs_path.exists()
    assert sigterm.fs_path.exists()
    assert not httpd.fs_path.exists()
    assert sorted(entry.digest for entry in store.cache.entries()) == sorted(
        [printer.manifest_digest, sigterm.manifest_digest]
    )
    again = store.prepare(test_images["httpd"].reference, credentials=credentials, tls_verify=False)
    assert "pull" in again.timings_s
    assert not printer.fs_path.exists()  # now printer is the least recently used


def test_an_image_larger_than_the_whole_cache_is_still_returned(
    store_root: Path, credentials: RegistryCredentials, test_images: dict[str, PushedImage]
) -> None:
    store = ImageStore(store_root, max_cache_bytes=1, max_image_bytes=GIB)
    first = store.prepare(test_images["printer"].reference, credentials=credentials, tls_verify=False)

    second = store.prepare(test_images["httpd"].reference, credentials=credentials, tls_verify=False)

    assert second.fs_path.exists()
    assert not first.fs_path.exists()


SYSTEM_TEMP_DIR = Path("/var/tmp")  # where skopeo would spill blobs without our TMPDIR


@pytest.fixture
def system_temp_before() -> set[Path]:
    return set(SYSTEM_TEMP_DIR.iterdir())


def _assert_clean_failure(store_root: Path, error: ImageError, password: str, system_temp_before: set[Path]) -> None:
    assert set(SYSTEM_TEMP_DIR.iterdir()) <= system_temp_before
    assert work_dir_entries(store_root) == []
    assert unexpected_store_files(store_root) == []
    assert "\n" not in str(error)
    for text in (str(error), repr(error), error.detail):
        assert password not in text


def test_wrong_password_is_refused_as_unauthorized(
    system_temp_before: set[Path],
    store: ImageStore,
    store_root: Path,
    registry: LocalRegistry,
    test_images: dict[str, PushedImage],
) -> None:
    wrong = RegistryCredentials(username=registry.username, password="wrong-" + registry.password)

    with pytest.raises(RegistryUnauthorized) as raised:
        store.prepare(test_images["printer"].reference, credentials=wrong, tls_verify=False)

    assert str(raised.value) == (f"registry {registry.host_port} refused the credentials for hypervm-test/printer")
    _assert_clean_failure(store_root, raised.value, wrong.password, system_temp_before)


def test_unknown_image_is_not_found(
    system_temp_before: set[Path],
    store: ImageStore,
    store_root: Path,
    registry: LocalRegistry,
    credentials: RegistryCredentials,
) -> None:
    reference = f"{registry.host_port}/hypervm-test/does-not-exist:latest"

    with pytest.raises(ImageNotFound) as raised:
        store.prepare(reference, credentials=credentials, tls_verify=False)

    assert str(raised.value) == f"image {reference} not found"
    _assert_clean_failure(store_root, raised.value, registry.password, system_temp_before)


def test_unknown_tag_is_not_found(
    store: ImageStore,
    store_root: Path,
    registry: LocalRegistry,
    credentials: RegistryCredentials,
    test_images: dict[str, PushedImage],
) -> None:
    with pytest.raises(ImageNotFound):
        store.prepare(
            f"{registry.host_port}/hypervm-test/printer:no-such-tag",
            credentials=credentials,
            tls_verify=False,
        )

    assert work_dir_entries(store_root) == []


def test_too_large_image_is_refused_before_any_blob_download(
    system_temp_before: set[Path],
    store_root: Path,
    registry: LocalRegistry,
    registry_authfile: Path,
    oci_image_cache_dir: Path,
    credentials: RegistryCredentials,
) -> None:
    pushed = build_and_push(
        payload_recipe(),
        cache_dir=oci_image_cache_dir,
        registry=registry.host_port,
        authfile=registry_authfile,
    )
    store = ImageStore(store_root, max_cache_bytes=GIB, max_image_bytes=pushed.layer_bytes - 1)
    log_offset = registry.log_offset()

    with pytest.raises(ImageTooLarge) as raised:
        store.prepare(pushed.reference, credentials=credentials, tls_verify=False)

    assert "over the" in str(raised.value)
    assert blob_requests(registry.log_since(log_offset)) == []
    assert "/manifests/" in registry.log_since(log_offset)  # it did ask, for the manifest only
    _assert_clean_failure(store_root, raised.value, registry.password, system_temp_before)
    assert list((store_root / "images").iterdir()) == []


def test_plain_http_registry_with_tls_verification_is_a_clear_error(
    store: ImageStore,
    store_root: Path,
    credentials: RegistryCredentials,
    test_images: dict[str, PushedImage],
) -> None:
    with pytest.raises(ImageError) as raised:
        store.prepare(test_images["printer"].reference, credentials=credentials, tls_verify=True)

    assert "plain HTTP" in str(raised.value)
    assert work_dir_entries(store_root) == []


def test_unreachable_registry_is_a_clear_error(store: ImageStore, store_root: Path) -> None:
    with pytest.raises(ImageError) as raised:
        store.prepare("127.0.0.1:1/nothing/here:latest", tls_verify=False)

    assert str(raised.value) == "cannot reach registry 127.0.0.1:1"
    assert work_dir_entries(store_root) == []


SKOPEO_ARGV_RECORDER = """#!/bin/sh
# Records the argv exactly as the kernel has it, then runs the real skopeo.
tr '\\0' '\\n' < /proc/$$/cmdline >> "{record}"
echo "--- end of argv" >> "{record}"
exec {real_skopeo} "$@"
"""


def test_credentials_never_reach_argv_logs_or_errors(
    tmp_path: Path,
    store: ImageStore,
    registry: LocalRegistry,
    credentials: RegistryCredentials,
    test_images: dict[str, PushedImage],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    record = tmp_path / "skopeo-argv.txt"
    wrapper_dir = tmp_path / "bin"
    wrapper_dir.mkdir()
    wrapper = wrapper_dir / "skopeo"
    wrapper.write_text(SKOPEO_ARGV_RECORDER.format(record=record, real_skopeo="/usr/bin/skopeo"))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper_dir}{os.pathsep}{os.environ['PATH']}")
    caplog.set_level(logging.DEBUG)
    wrong = RegistryCredentials(username=registry.username, password="wrong-" + registry.password)

    store.prepare(test_images["noentry"].reference, credentials=credentials, tls_verify=False)
    with pytest.raises(RegistryUnauthorized) as raised:
        store.prepare(test_images["noentry"].reference, credentials=wrong, tls_verify=False)

    argv_text = record.read_text()
    assert argv_text.count("--- end of argv") >= 3  # inspect + copy, then the refused inspect
    secrets = {*credentials.secrets(), *wrong.secrets()}
    logged = "\n".join(f"{record.getMessage()} {record.__dict__}" for record in caplog.records)
    for secret in secrets:
        assert secret not in argv_text
        assert secret not in logged
        assert secret not in f"{raised.value} {raised.value!r} {raised.value.detail}"
    assert "auth.json" not in argv_text and "--creds" not in argv_text
    assert "--authfile" not in argv_text
    assert registry.password not in repr(credentials)
    assert registry.password not in str(credentials)


def test_multi_platform_index_resolves_to_the_linux_amd64_image(
    store: ImageStore,
    registry: LocalRegistry,
    registry_authfile: Path,
    oci_image_cache_dir: Path,
    credentials: RegistryCredentials,
) -> None:
    printer = build_image(PRINTER, oci_image_cache_dir)
    noentry = build_image(NOENTRY, oci_image_cache_dir)
    index = build_platform_index("multiplatform", [(noentry, "arm64"), (printer, "amd64")], oci_image_cache_dir)
    reference = push_image(
        index,
        registry=registry.host_port,
        repository_tag="hypervm-test/multiplatform:latest",
        authfile=registry_authfile,
    )

    prepared = store.prepare(reference, credentials=credentials, tls_verify=False)

    assert prepared.manifest_digest == printer.manifest_digest
    assert prepared.config == EXPECTED_CONFIGS["printer"]


def test_reference_pinned_by_digest_prepares_that_image(
    store: ImageStore, credentials: RegistryCredentials, test_images: dict[str, PushedImage]
) -> None:
    pushed = test_images["sigterm"]
    repository = pushed.reference.rsplit(":", 1)[0]

    prepared = store.prepare(f"{repository}@{pushed.manifest_digest}", credentials=credentials, tls_verify=False)

    assert prepared.manifest_digest == pushed.manifest_digest
    assert prepared.config == EXPECTED_CONFIGS["sigterm"]
