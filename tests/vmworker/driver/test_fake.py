"""What the fake does beyond the shared contract: it parses, validates and refuses like libvirt."""

from __future__ import annotations

import inspect
import uuid
from pathlib import Path

import pytest

from tests.vmworker.driver.backends import Backend, InitramfsFactory, make_backend
from vmworker.driver.errors import DriverError
from vmworker.driver.fake import FakeGuest, FakeHost
from vmworker.driver.guest import Guest
from vmworker.driver.host import Host


@pytest.fixture
def fake(vm_workdir: Path, guest_kernel: Path, tiny_initramfs: InitramfsFactory) -> Backend:
    return make_backend("fake", vm_workdir, guest_kernel, tiny_initramfs)


@pytest.mark.parametrize(("real", "fake_class"), [(Host, FakeHost), (Guest, FakeGuest)])
def test_the_fake_has_the_real_public_interface(real: type, fake_class: type) -> None:
    public = {name for name in dir(real) if not name.startswith("_")}

    missing = public - set(dir(fake_class))
    assert not missing
    for name in public:
        member = inspect.getattr_static(real, name)
        if callable(member):
            assert (
                inspect.signature(member).parameters.keys()
                == inspect.signature(getattr(fake_class, name)).parameters.keys()
            ), name


def test_invalid_domain_xml_is_refused(fake: Backend) -> None:
    with pytest.raises(DriverError, match="invalid XML"):
        fake.host.define_foreign_domain("<domain><name>x</name")


def test_a_missing_kernel_fails_the_start_and_leaves_no_domain(fake: Backend) -> None:
    spec = fake.spec(kernel=Path("/nonexistent/vmlinuz"))

    with pytest.raises(DriverError, match="/nonexistent/vmlinuz"):
        fake.host.define_and_start(spec)

    assert fake.host.lookup(spec.instance_id) is None


def test_the_fake_keeps_the_xml_it_was_given_and_reads_it_back(fake: Backend) -> None:
    spec = fake.spec()
    guest = fake.host.define_and_start(spec)

    assert f"<uuid>{spec.instance_id}</uuid>" in fake.host.domain_xml(spec.instance_id)
    assert guest.config().os.initrd == str(spec.initrd)


def test_lifecycle_events_are_reported_for_start_and_stop(fake: Backend) -> None:
    events: list[tuple[str, str]] = []
    fake.host.register_lifecycle_callback(lambda instance_id, event: events.append((instance_id, event)))
    spec = fake.spec()

    fake.host.define_and_start(spec).destroy()

    assert events == [(spec.instance_id, "started"), (spec.instance_id, "stopped")]


def test_powering_off_a_stopped_guest_is_an_error(fake: Backend) -> None:
    with pytest.raises(DriverError):
        fake.host.simulate_guest_poweroff(str(uuid.uuid4()))
