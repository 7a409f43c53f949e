"""What this platform allows in an app definition beyond Marathon's own rules.

Contract: ``PlatformPolicy`` is a frozen value the caller builds from its settings and passes to
``parse_app_definition`` / ``merge_app_definition`` (the parser imports no Django). Its defaults
are the platform's default settings, so a caller that passes none still gets the safe policy,
never an open one. Every cap is inclusive ("at most N") and the 422 names it with "(platform
limit)". The defaults admit Marathon's own defaults (e.g. a health check's 300 s grace period)
and the examples Marathon documents.

Why each bound exists, for a multi-tenant host:
* fixed host ports: a tenant may only take ports from the range the platform allocates from,
  never one the platform itself serves (portal, embedded registry, ...), else it could take a
  platform port on a host where that service is not running and receive its traffic;
* times: a stop holds the instance's host work for up to ``taskKillGracePeriodSeconds``, a
  health probe holds a probe thread for ``timeoutSeconds``; tenant-chosen values are capped so
  no app can hold shared work for long;
* sizes: every count and string ends up in database rows, the guest's config image and the
  guest init's command lines; none may grow without bound.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_HOST_PORT_MIN = 20000
DEFAULT_HOST_PORT_MAX = 30000
# The App row's id column is 255 characters: a longer id is refused by path, not by the database.
MAX_APP_ID_CHARS = 255


@dataclass(frozen=True)
class PlatformPolicy:
    host_port_min: int = DEFAULT_HOST_PORT_MIN
    host_port_max: int = DEFAULT_HOST_PORT_MAX
    reserved_host_ports: frozenset[int] = frozenset()

    # Times, seconds.
    max_task_kill_grace_period_s: int = 120
    max_health_grace_period_s: int = 3600
    max_health_interval_s: int = 3600
    max_health_timeout_s: int = 60
    max_health_delay_s: int = 3600
    max_health_consecutive_failures: int = 100
    max_backoff_s: int = 3600
    max_backoff_factor: float = 10.0
    max_launch_delay_s: int = 3600
    max_unreachable_s: int = 86400

    # Sizes of one instance and of the app.
    max_instances: int = 100
    max_cpus: float = 64.0
    max_memory_mib: float = 65536.0
    max_disk_mib: float = 1048576.0
    max_volume_size_mib: int = 1048576

    # Counts and lengths of what the definition carries.
    max_app_id_chars: int = MAX_APP_ID_CHARS
    max_cmd_chars: int = 32768
    max_args: int = 256
    max_arg_chars: int = 8192
    max_env_vars: int = 256
    max_env_name_chars: int = 255
    max_env_value_chars: int = 32768
    max_labels: int = 128
    max_label_key_chars: int = 255
    max_label_value_chars: int = 4096
    max_ports: int = 32
    max_health_checks: int = 8
    max_volumes: int = 16
    max_constraints: int = 32
    max_dependencies: int = 64
    max_name_chars: int = 255  # user, role, health check path, volume paths, accepted roles

    def host_port_problem(self, port: int) -> str | None:
        """Why a fixed (non-zero) host port cannot be taken, or None when it can."""
        if not self.host_port_min <= port <= self.host_port_max:
            return (
                f"host port {port} is outside the platform's host port range "
                f"{self.host_port_min}-{self.host_port_max}; use 0 to have one allocated"
            )
        if port in self.reserved_host_ports:
            return f"host port {port} is reserved by the platform; use 0 to have one allocated"
        return None
