"""The usage sampler against the fake driver: CPU time turned into CPUs used between two
readings, memory as measured, guests that come and go, and failures that never stop it."""

from __future__ import annotations

import uuid

import pytest

from vmworker.driver.fake import FakeHost
from vmworker.driver.guest import GuestStats
from vmworker.driver.spec import DomainSpec
from vmworker.usage import UsageSampler

MIB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def start_guest(host: FakeHost, tmp_path, *, memory_mib: int = 128) -> str:
    instance_id = str(uuid.uuid4())
    spec = DomainSpec(
        instance_id=instance_id,
        kernel=tmp_path / "vmlinuz",
        initrd=tmp_path / "initrd",
        cmdline="",
        virt_type="qemu",
        vcpus=2,
        memory_mib=memory_mib,
        console_log=tmp_path / f"{instance_id}.log",
        metadata={"tenant": "t", "app": "a"},
    )
    host.define_and_start(spec)
    return instance_id


@pytest.fixture
def host() -> FakeHost:
    return FakeHost(check_paths=False)


def test_cpu_used_between_two_readings_and_the_memory_held(host, tmp_path):
    instance_id = start_guest(host, tmp_path)
    published = []
    clock = Clock()
    sampler = UsageSampler(read_stats=host.guest_stats, publish=published.append, monotonic=clock)
    host.simulate_guest_usage(instance_id, cpu_load=0.0, rss_bytes=70 * MIB, cpu_time_ns=0)

    sampler.tick()  # the first reading: no CPU figure yet
    host.simulate_guest_usage(instance_id, cpu_load=0.0, rss_bytes=70 * MIB, cpu_time_ns=1_500_000_000)
    clock.now += 3.0  # 1.5 s of CPU in 3 s
    sampler.tick()

    assert len(published) == 1
    [sample] = published[0]
    assert (sample.instance_id, sample.cpu_cores, sample.memory_bytes) == (instance_id, 0.5, 70 * MIB)
    assert set(sample.as_message()) == {"instance_id", "t", "cpu", "mem"}


def test_a_guest_that_went_away_is_forgotten_and_a_restarted_one_starts_over(host, tmp_path):
    first = start_guest(host, tmp_path)
    clock = Clock()
    sampler = UsageSampler(read_stats=host.guest_stats, publish=lambda _: None, monotonic=clock)
    sampler.sample()
    host.get_guest(first).destroy()
    clock.now += 3

    assert sampler.sample() == []
    assert sampler._previous == {}


def test_cpu_time_going_backwards_gives_no_negative_sample(tmp_path):
    readings = iter([{"i": GuestStats(5_000_000_000, 1, MIB, MIB)}, {"i": GuestStats(1_000, 1, MIB, MIB)}])
    clock = Clock()
    sampler = UsageSampler(read_stats=lambda: next(readings), publish=lambda _: None, monotonic=clock)

    sampler.sample()
    clock.now += 3

    assert sampler.sample() == []


def test_a_failing_driver_or_publisher_never_raises(host, tmp_path):
    def broken():
        raise RuntimeError("libvirtd went away")

    def refusing(samples):
        raise ConnectionError("redis went away")

    clock = Clock()
    UsageSampler(read_stats=broken, publish=refusing, monotonic=clock).tick()
    start_guest(host, tmp_path)
    sampler = UsageSampler(read_stats=host.guest_stats, publish=refusing, monotonic=clock)
    sampler.tick()
    clock.now += 3
    sampler.tick()  # publishes, which fails: logged, not raised


def test_the_thread_samples_on_its_interval_and_stops(host, tmp_path):
    import threading

    start_guest(host, tmp_path)
    got = threading.Event()
    sampler = UsageSampler(read_stats=host.guest_stats, publish=lambda samples: got.set(), interval_s=0.05)

    sampler.start()
    try:
        assert got.wait(timeout=5)
    finally:
        sampler.stop()
    assert not sampler._thread.is_alive()
