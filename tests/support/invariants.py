"""The platform's invariants, audited against the real parts after a fault: the database, each
host's libvirt domains and instance folders, and the quota claims.

- every instance the database has up runs as exactly one VM, on its own host (domain + folder);
- no host runs a VM whose instance has ended or does not exist (no orphans, no duplicates);
- every instance that ended, ended in exactly one terminal state;
- the instance quota claims are exactly the live instances' (usage is the sum of the claims).
"""

from __future__ import annotations

from pathlib import Path

from django.db import close_old_connections

from portal.choices import INSTANCE_ACTIVE, INSTANCE_TERMINAL, INSTANCE_UP
from portal.models import Instance
from portal.services.instances import CLAIM_KIND
from tenants.models import ResourceClaim


def audit(host_state_dirs: dict[str, Path]) -> list[str]:
    """Problems found, empty when every invariant holds. host_state_dirs: host name -> the
    state dir of its worker (each host's domains are found through its own runtime)."""
    from vmworker.runtime import HyperVMRuntime, RuntimeSettings

    close_old_connections()
    problems: list[str] = []
    vms = {
        name: HyperVMRuntime(RuntimeSettings(state_dir=state_dir)).live_instance_ids()
        for name, state_dir in host_state_dirs.items()
    }
    instances = {str(row.pk): row for row in Instance.objects.select_related("host")}
    active = {pk for pk, row in instances.items() if row.status in INSTANCE_ACTIVE}
    for pk, row in instances.items():
        running_on = sorted(name for name, ids in vms.items() if pk in ids)
        if row.status in INSTANCE_UP and running_on != [row.host.name]:
            problems.append(f"instance {pk} is {row.status} on {row.host.name} but runs on {running_on}")
        ended_in = sorted(set(row.phase_times) & INSTANCE_TERMINAL)
        if len(ended_in) > 1 or (row.status in INSTANCE_TERMINAL and ended_in != [row.status]):
            problems.append(f"instance {pk} is {row.status} and ended in {ended_in}")
    for name, ids in vms.items():
        for orphan in sorted(ids - active):
            state = instances[orphan].status if orphan in instances else "not in the database"
            problems.append(f"host {name} runs a VM for instance {orphan} ({state})")
    claimed = set(ResourceClaim.objects.filter(owner_kind=CLAIM_KIND).values_list("owner_id", flat=True))
    if claimed != active:
        problems.append(f"instance claims without a live instance: {sorted(claimed - active)}")
        problems.append(f"live instances without a claim: {sorted(active - claimed)}")
    return problems
