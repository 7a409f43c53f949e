"""An instance's boot timeline for the pages: each phase (pulling, preparing, booting, running,
healthy) with when it was entered and how long it lasted, from Instance.phase_times (status ->
ISO timestamp the status was entered)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from portal.choices import InstanceStatus

TIMELINE = (
    InstanceStatus.PULLING,
    InstanceStatus.PREPARING,
    InstanceStatus.BOOTING,
    InstanceStatus.RUNNING,
    InstanceStatus.HEALTHY,
)


@dataclass(frozen=True)
class Phase:
    name: str
    state: str  # done | current | pending
    entered_at: datetime | None
    duration_s: float | None  # None while current or never entered


def _parsed(phase_times: dict) -> dict[str, datetime]:
    return {status: datetime.fromisoformat(stamp) for status, stamp in phase_times.items() if stamp}


def instance_phases(instance, *, health_checked: bool = True) -> list[Phase]:
    """The timeline; without health checks an instance is never "healthy", so that phase is left out."""
    entered = _parsed(instance.phase_times or {})
    moments = sorted(entered.values())
    phases = []
    for name in TIMELINE if health_checked else TIMELINE[:-1]:
        start = entered.get(name)
        if start is None:
            phases.append(Phase(name=name, state="pending", entered_at=None, duration_s=None))
            continue
        later = [moment for moment in moments if moment > start]
        if instance.status == name or not later:
            phases.append(Phase(name=name, state="current", entered_at=start, duration_s=None))
        else:
            phases.append(
                Phase(name=name, state="done", entered_at=start, duration_s=(later[0] - start).total_seconds())
            )
    return phases
