from django.db import models


class InstanceStatus(models.TextChoices):
    STAGED = "staged"
    PULLING = "pulling"
    PREPARING = "preparing"
    BOOTING = "booting"
    RUNNING = "running"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    LOST = "lost"


S = InstanceStatus
# Allowed transitions: to-state -> the states it may come from. Every transition is a
# compare-and-swap on this table, so a re-delivered task that finds the row already moved
# on does nothing.
INSTANCE_TRANSITIONS: dict[str, frozenset[str]] = {
    S.PULLING: frozenset({S.STAGED}),
    S.PREPARING: frozenset({S.STAGED, S.PULLING}),
    S.BOOTING: frozenset({S.STAGED, S.PULLING, S.PREPARING}),
    S.RUNNING: frozenset({S.BOOTING}),
    S.HEALTHY: frozenset({S.RUNNING, S.UNHEALTHY}),
    S.UNHEALTHY: frozenset({S.RUNNING, S.HEALTHY}),
    S.STOPPING: frozenset({S.STAGED, S.PULLING, S.PREPARING, S.BOOTING, S.RUNNING, S.HEALTHY, S.UNHEALTHY}),
    S.STOPPED: frozenset({S.STOPPING, S.RUNNING, S.HEALTHY, S.UNHEALTHY, S.BOOTING}),
    S.FAILED: frozenset({S.STAGED, S.PULLING, S.PREPARING, S.BOOTING, S.RUNNING, S.HEALTHY, S.UNHEALTHY, S.STOPPING}),
    S.LOST: frozenset({S.STAGED, S.PULLING, S.PREPARING, S.BOOTING, S.RUNNING, S.HEALTHY, S.UNHEALTHY, S.STOPPING}),
}
INSTANCE_ACTIVE = frozenset(
    {S.STAGED, S.PULLING, S.PREPARING, S.BOOTING, S.RUNNING, S.HEALTHY, S.UNHEALTHY, S.STOPPING}
)
INSTANCE_TERMINAL = frozenset({S.STOPPED, S.FAILED, S.LOST})
INSTANCE_UP = frozenset({S.RUNNING, S.HEALTHY, S.UNHEALTHY})

# Marathon's task state per instance status (for events and /v2 alike: marathon_task_state).
MARATHON_TASK_STATE = {
    S.STAGED: "TASK_STAGING",
    S.PULLING: "TASK_STAGING",
    S.PREPARING: "TASK_STAGING",
    S.BOOTING: "TASK_STARTING",
    S.RUNNING: "TASK_RUNNING",
    S.HEALTHY: "TASK_RUNNING",
    S.UNHEALTHY: "TASK_RUNNING",
    S.STOPPING: "TASK_KILLING",
    S.STOPPED: "TASK_KILLED",
    S.FAILED: "TASK_FAILED",
    S.LOST: "TASK_LOST",
}


def marathon_task_state(status: str, exit_code: int | None) -> str:
    """As Marathon reports it: a task the platform stopped (kill, scale down, replacement,
    failed health, app deletion) is TASK_KILLED; one whose app exited 0 by itself
    TASK_FINISHED; any other end of the app TASK_FAILED; a VM that vanished TASK_LOST."""
    if status == S.FAILED and exit_code == 0:
        return "TASK_FINISHED"
    return MARATHON_TASK_STATE[status]


class DeploymentStatus(models.TextChoices):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DeploymentKind(models.TextChoices):
    START = "start"  # a new app: StartApplication, ScaleApplication
    SCALE = "scale"  # only the count changes: ScaleApplication
    RESTART = "restart"  # a config change or restart: rolling replacement, RestartApplication
    STOP = "stop"  # app deletion: StopApplication


class HostState(models.TextChoices):
    UP = "up"
    DOWN = "down"


class VirtType(models.TextChoices):
    KVM = "kvm"
    QEMU = "qemu"


class VolumeState(models.TextChoices):
    """A persistent volume's life: ``reserved`` (admitted and claimed, not yet on a host),
    ``created`` (its host made it), ``destroying`` (wiped or its app deleted: its host deletes
    it once no live instance holds it; the row and its claim go when the host confirms)."""

    RESERVED = "reserved"
    CREATED = "created"
    DESTROYING = "destroying"
