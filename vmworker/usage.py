"""The usage sampler: a compute host's CPU and memory figures of its running HyperVMs.

A daemon thread in the host worker's main process reads every running guest of this host every
``SAMPLE_INTERVAL_S`` with one bulk stats call (``Host.guest_stats``), turns each guest's CPU time
into the CPUs it kept busy since the previous reading, and hands the batch of samples to
``publish`` (vmworker/tasks.py wires it to portal.services.usage, which keeps the last samples per
instance in Redis: a message per tick, never a database write). A guest seen for the first time
gives its first sample at the next tick (a CPU figure needs two readings); a guest whose CPU time
went backwards (a new domain under the same id) starts over. Every failure (libvirtd away, Redis
away) is logged and the thread carries on at the next tick; it never takes the worker down. No
Django here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from vmworker.driver.guest import GuestStats

logger = logging.getLogger("vmworker.usage")

SAMPLE_INTERVAL_S = 3.0
STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class UsageSample:
    instance_id: str
    at: float  # unix time of the reading
    cpu_cores: float  # CPUs kept busy since the previous reading (0.5: half of one)
    memory_bytes: int  # what its QEMU process holds (the domain's size where not measured)

    def as_message(self) -> dict:
        return {
            "instance_id": self.instance_id,
            "t": round(self.at, 3),
            "cpu": self.cpu_cores,
            "mem": self.memory_bytes,
        }


@dataclass(frozen=True)
class _Reading:
    monotonic_s: float
    cpu_time_ns: int


class UsageSampler:
    def __init__(
        self,
        *,
        read_stats: Callable[[], dict[str, GuestStats]],
        publish: Callable[[list[UsageSample]], None],
        interval_s: float = SAMPLE_INTERVAL_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read_stats = read_stats
        self._publish = publish
        self._interval_s = interval_s
        self._clock = clock
        self._monotonic = monotonic
        self._previous: dict[str, _Reading] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="usage-sampler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = STOP_WAIT_S) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.tick()

    def tick(self) -> None:
        """One reading and one publish; failures are logged, never raised."""
        try:
            samples = self.sample()
        except Exception:
            logger.warning("usage.read_failed", exc_info=True)
            return
        if not samples:
            return
        try:
            self._publish(samples)
        except Exception:
            logger.warning("usage.publish_failed", extra={"samples": len(samples)}, exc_info=True)

    def sample(self) -> list[UsageSample]:
        stats = self._read_stats()
        now, at = self._monotonic(), self._clock()
        samples = []
        for instance_id, figures in stats.items():
            reading = _Reading(monotonic_s=now, cpu_time_ns=figures.cpu_time_ns)
            previous = self._previous.get(instance_id)
            self._previous[instance_id] = reading
            elapsed_s = now - previous.monotonic_s if previous else 0.0
            if previous is None or elapsed_s <= 0 or figures.cpu_time_ns < previous.cpu_time_ns:
                continue
            cpu_cores = (figures.cpu_time_ns - previous.cpu_time_ns) / (elapsed_s * 1e9)
            memory = figures.rss_bytes if figures.rss_bytes is not None else figures.memory_bytes
            samples.append(UsageSample(instance_id, at, round(cpu_cores, 4), memory))
        for gone in self._previous.keys() - stats.keys():
            del self._previous[gone]
        return samples
