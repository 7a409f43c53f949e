"""Which host-side failures are worth another try: the one place that decides it.

Transient: the failure says nothing about the instance, only about now — libvirtd unreachable
(``ConnectionFailed``), the registry unreachable, timing out, answering 5xx or 429
(``RegistryUnavailable``). A host task retries those a bounded number of times with exponential
backoff and jitter. Everything else is permanent — an image that does not exist or is invalid,
one that unpacks to more than its limit (``ImageUnpacksTooLarge``: the same image unpacks to the
same size), credentials refused, nothing to run, a guest that failed to start its app — and fails the
instance at once with its reason; the deployment engine's own launch backoff takes over.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from vmworker.driver.errors import ConnectionFailed
from vmworker.images.errors import RegistryUnavailable

TRANSIENT_FAILURES: tuple[type[BaseException], ...] = (ConnectionFailed, RegistryUnavailable)
MAX_RETRIES = 3
RETRY_BASE_S = 2.0
RETRY_CAP_S = 30.0


def failure_is_transient(error: BaseException) -> bool:
    """Also a failure class that says so itself (``transient = True``: the runtime's VolumeBusy)."""
    return isinstance(error, TRANSIENT_FAILURES) or getattr(type(error), "transient", False) is True


def retry_countdown_s(retries_done: int, *, jitter: Callable[[], float] = random.random) -> float:
    """``RETRY_BASE_S * 2^n``, spread by ±50 % so hosts retrying together do not stay in step, capped."""
    exponential = RETRY_BASE_S * 2**retries_done
    return round(min(RETRY_CAP_S, exponential * (0.5 + jitter())), 3)
