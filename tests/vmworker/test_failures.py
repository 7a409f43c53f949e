"""Which host-side failures a task retries: classified from real failures (skopeo against a real
registry, a port nobody listens on, a server answering 503; libvirt at a socket that does not
exist) rather than from hand-made exceptions."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from tenants.registry_server import free_loopback_port
from tests.support.oci_images import PushedImage
from tests.support.registry import LocalRegistry
from vmworker.driver.errors import ConnectionFailed
from vmworker.driver.host import Host
from vmworker.failures import MAX_RETRIES, RETRY_BASE_S, RETRY_CAP_S, failure_is_transient, retry_countdown_s
from vmworker.images import ImageStore, RegistryCredentials
from vmworker.images.errors import ImageNotFound, RegistryUnauthorized, RegistryUnavailable
from vmworker.runtime import BootFailed, NothingToRun

GIB = 1024**3


def prepare_failure(tmp_path, image: str, credentials: RegistryCredentials | None = None) -> Exception:
    store = ImageStore(tmp_path / "store", max_cache_bytes=GIB, max_image_bytes=GIB)
    with pytest.raises(Exception) as raised:
        store.prepare(image, credentials=credentials, tls_verify=False)
    return raised.value


@pytest.fixture
def answers_503() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that answers every request 503 (a registry in trouble)."""

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_registry_port_with_nothing_listening_is_transient(tmp_path):
    failure = prepare_failure(tmp_path, f"127.0.0.1:{free_loopback_port()}/hypervm-test/sigterm:latest")
    assert isinstance(failure, RegistryUnavailable)
    assert failure_is_transient(failure)


def test_a_registry_answering_503_is_transient(tmp_path, answers_503):
    failure = prepare_failure(tmp_path, f"{answers_503}/hypervm-test/sigterm:latest")
    assert isinstance(failure, RegistryUnavailable), failure
    assert "503" in str(failure)
    assert failure_is_transient(failure)


def test_wrong_credentials_are_permanent(tmp_path, registry: LocalRegistry, test_images: dict[str, PushedImage]):
    wrong = RegistryCredentials(username=registry.username, password="wrong-" + registry.password)
    failure = prepare_failure(tmp_path, test_images["sigterm"].reference, wrong)
    assert isinstance(failure, RegistryUnauthorized)
    assert not failure_is_transient(failure)


def test_a_missing_image_is_permanent(tmp_path, registry: LocalRegistry, test_images: dict[str, PushedImage]):
    credentials = RegistryCredentials(username=registry.username, password=registry.password)
    failure = prepare_failure(tmp_path, f"{registry.host_port}/hypervm-test/sigterm:no-such-tag", credentials)
    assert isinstance(failure, ImageNotFound)
    assert not failure_is_transient(failure)


def test_libvirt_unreachable_is_transient(tmp_path):
    host = Host(f"qemu:///system?socket={tmp_path}/no-libvirtd.sock")
    with pytest.raises(ConnectionFailed) as raised:
        host.lookup("00000000-0000-0000-0000-000000000001")
    assert failure_is_transient(raised.value)


def test_failures_of_the_instance_itself_are_permanent():
    assert not failure_is_transient(NothingToRun("the image has no Entrypoint or Cmd and no command was given"))
    assert not failure_is_transient(BootFailed("exec: /app: no such file or directory", exit_code=127))


def test_retry_countdown_grows_exponentially_with_jitter_and_a_cap():
    lowest = [retry_countdown_s(n, jitter=lambda: 0.0) for n in range(MAX_RETRIES)]
    highest = [retry_countdown_s(n, jitter=lambda: 0.999) for n in range(MAX_RETRIES)]
    assert lowest == [RETRY_BASE_S * 2**n * 0.5 for n in range(MAX_RETRIES)]
    assert all(low < high <= RETRY_CAP_S for low, high in zip(lowest, highest, strict=True))
    assert retry_countdown_s(20, jitter=lambda: 0.999) == RETRY_CAP_S


def test_a_volume_still_attached_elsewhere_is_transient():
    """VolumeBusy says the VM that held the volume has not been destroyed yet (its instance was
    lost while its host was cut off): that passes, so the boot tries again before it fails."""
    from vmworker.runtime import VolumeBusy

    assert failure_is_transient(VolumeBusy("volume data is still attached to VM hvm-x"))
