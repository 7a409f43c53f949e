"""Celery entry points of a compute host: the only place where the ORM meets the runtime.

A host's worker consumes its own queue (``host.<name>``) and is configured by environment:
``HYPERVM_HOST_NAME`` (this host), ``HYPERVM_STATE_DIR``, ``HYPERVM_LIBVIRT_URI``,
``HYPERVM_VIRT_TYPE`` (force kvm/qemu; default: boot probe). At start it registers the host
(capacity, virt type), heartbeats from a thread and starts the console agent (a thread that streams
the guest logs of this host's instances, vmworker.console_agent). Tasks take ids, load rows, call the runtime
and move the instance through its state machine by compare-and-swap: a re-delivered task
finds the row already moved on (or the runtime finds the domain it made) and does no harm.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from datetime import datetime
from functools import cache
from pathlib import Path

from celery import shared_task
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from django.conf import settings
from django.utils import timezone

from portal.choices import INSTANCE_ACTIVE, INSTANCE_UP, InstanceStatus
from portal.marathon import AppDefinition
from portal.marathon.app_definition import HealthCheckProbe, NetworkMode
from portal.models import Instance
from portal.selectors import image_pull_allowance
from portal.services.deployments import app_record_launch_success, instance_disk_mib
from portal.services.hosts import host_heartbeat, host_ports_block, host_queue, host_register
from portal.services.images import instance_image_claim
from portal.services.instances import instance_transition
from tenants.embedded_registry import platform_registry_hosts
from tenants.errors import QuotaExceeded
from tenants.registry_address import AddressRefused, check_image_registry
from tenants.selectors import registry_for_image
from vmworker.console_agent import ConsoleAgent
from vmworker.driver.errors import DriverError
from vmworker.driver.spec import PortForward
from vmworker.failures import MAX_RETRIES, failure_is_transient, retry_countdown_s
from vmworker.images.credentials import RegistryCredentials
from vmworker.images.errors import ImageError, ImageUnpacksTooLarge
from vmworker.images.unpack import LIMIT_TENANT_QUOTA
from vmworker.network.tenant import NetworkAttachment, TenantNetwork, instance_mac
from vmworker.runtime import (
    HostPortBusy,
    HyperVMRuntime,
    InstanceNotFound,
    InstanceSpec,
    RuntimeFailure,
    RuntimeSettings,
)

logger = logging.getLogger(__name__)
_heartbeat_stop = threading.Event()
_console_agents: list = []  # the running ConsoleAgent, for the shutdown signal


def host_name() -> str | None:
    return os.environ.get("HYPERVM_HOST_NAME")


@cache
def runtime() -> HyperVMRuntime:
    # Not under the repo: QEMU runs as libvirt-qemu and must traverse every parent directory.
    state_dir = Path(os.environ.get("HYPERVM_STATE_DIR", f"/var/lib/hypervm/hosts/{host_name() or 'local'}"))
    return HyperVMRuntime(
        RuntimeSettings(
            state_dir=state_dir,
            libvirt_uri=os.environ.get("HYPERVM_LIBVIRT_URI", "qemu:///system"),
            virt_type=os.environ.get("HYPERVM_VIRT_TYPE") or None,
            publish_host_ip=os.environ.get("HYPERVM_PUBLISH_HOST_IP", "127.0.0.1"),
            max_unpacked_bytes=settings.IMAGE_MAX_UNPACKED_MIB * 1024 * 1024,
        )
    )


def _register(name: str) -> None:
    started = time.monotonic()
    probe = runtime().probe()
    capabilities = runtime().host.capabilities()
    host_register(
        name=name,
        libvirt_uri=runtime().settings.libvirt_uri,
        vcpus=capabilities.cpus,
        memory_mib=capabilities.memory_mib,
        virt_type=probe["virt_type"],
        probe_s=probe.get("probe_s") or round(time.monotonic() - started, 3),
        publish_ip=runtime().settings.publish_host_ip,
    )


@worker_ready.connect
def register_this_host(sender=None, **kwargs) -> None:
    name = host_name()
    if not name:
        return  # a portal-only worker
    _register(name)
    thread = threading.Thread(target=_heartbeat_loop, args=(name,), name="host-heartbeat", daemon=True)
    thread.start()
    _start_console_agent(name)


@worker_process_init.connect
def fresh_runtime_per_process(**kwargs) -> None:
    """A pool process must not share the parent's libvirt connection (a process forked after
    the parent connected would inherit its socket), so it makes its own runtime; and it warms
    the file-backed parts now (initramfs and kernel lookups: ~0.5 s) rather than during the
    first boot it runs."""
    runtime.cache_clear()
    if not host_name():
        return
    try:
        runtime().initramfs()
        runtime().boot_kernel()
    except Exception:  # the first boot will report it with its instance
        logger.warning("host.warm_up_failed", exc_info=True)


@worker_shutting_down.connect
def stop_heartbeat(**kwargs) -> None:
    _heartbeat_stop.set()
    if _console_agents:
        _console_agents.pop().stop()


def _start_console_agent(name: str) -> None:
    """Serves console backlogs and streams this host's guest logs (see vmworker.console_agent)."""
    from channels.layers import DEFAULT_CHANNEL_LAYER, channel_layers

    if not settings.CHANNEL_LAYERS:
        return
    agent = ConsoleAgent(
        host_name=name,
        instances_dir=runtime().instances_dir,
        # Its own layer instance: its connections belong to the agent's event loop.
        layer_factory=lambda: channel_layers.make_backend(DEFAULT_CHANNEL_LAYER),
    )
    agent.start()
    _console_agents.append(agent)


def _heartbeat_loop(name: str) -> None:
    from django.db import close_old_connections

    while not _heartbeat_stop.wait(settings.HOST_HEARTBEAT_INTERVAL_S):
        try:
            if not host_heartbeat(name=name):
                _register(name)
        except Exception:
            logger.warning("host.heartbeat_failed", extra={"host": name}, exc_info=True)
        finally:
            close_old_connections()


def _credentials(instance: Instance, image: str) -> tuple[RegistryCredentials | None, bool]:
    """The tenant's registry for the image's host, else the platform's embedded one: credentials
    read here, in the worker (they never travel through the broker), and whether TLS is verified."""
    registry = registry_for_image(tenant=instance.tenant, image=image)
    if registry is None:
        return None, True
    password = registry.pull_password()
    credentials = RegistryCredentials(registry.username, password) if registry.username else None
    return credentials, not registry.insecure


def guest_ports(definition: AppDefinition, host_ports: list[int]) -> tuple[list[PortForward], dict[str, str]]:
    """Host forwards and the $PORTi environment, Marathon style: host networking gives the app
    its host ports to bind ($PORT0...); bridge mappings forward to the container port."""
    ip = runtime().settings.publish_host_ip
    env: dict[str, str] = {}
    if definition.network_mode is NetworkMode.HOST:
        guest = list(host_ports)
    else:
        mappings = [
            m for m in (definition.container.port_mappings if definition.container else ()) if m.host_port is not None
        ]
        guest = [mapping.container_port or host_port for mapping, host_port in zip(mappings, host_ports, strict=True)]
    for index, port in enumerate(guest):
        env[f"PORT{index}"] = str(port)
    if guest:
        env["PORT"] = str(guest[0])
        env["PORTS"] = ",".join(str(port) for port in guest)
    forwards = [
        PortForward(host_ip=ip, host_port=host_port, guest_port=guest_port)
        for host_port, guest_port in zip(host_ports, guest, strict=True)
    ]
    return forwards, env


def instance_spec(instance: Instance) -> InstanceSpec:
    definition = AppDefinition.from_stored(instance.version.definition)
    image = definition.container.docker.image
    credentials, tls_verify = _credentials(instance, image)
    forwards, port_env = guest_ports(definition, instance.host_ports)
    allowance = image_pull_allowance(tenant=instance.tenant)
    return InstanceSpec(
        image=image,
        instance_id=str(instance.pk),
        name=f"{instance.app.marathon_id.strip('/').replace('/', '-')}-{str(instance.pk)[:8]}",
        credentials=credentials,
        tls_verify=tls_verify,
        shell_command=definition.cmd,
        command=tuple(definition.args) if definition.args else None,
        env={
            **port_env,
            "MARATHON_APP_ID": instance.app.marathon_id,
            "MARATHON_APP_VERSION": instance.version.version,
            "MESOS_TASK_ID": instance.task_id,
            **dict(definition.env),
        },
        user=definition.user,
        vcpus=instance.vcpus,
        memory_mib=instance.memory_mib,
        # Marathon's cpus are shares, not a cap (as in Mesos by default): a hard CFS quota of 0.1
        # CPU would make a TCG boot ten times slower. HYPERVM_ENFORCE_CPU_QUOTA=1 caps it.
        cpu_quota_pct=max(1, round(definition.cpus * 100 / instance.vcpus))
        if os.environ.get("HYPERVM_ENFORCE_CPU_QUOTA") == "1" and definition.cpus < instance.vcpus
        else None,
        ports=tuple(forwards),
        metadata={"tenant": instance.tenant.slug, "app": instance.app.marathon_id, "host": host_name() or ""},
        stop_grace_s=_kill_grace_s(definition),
        network=network_attachment(instance),
        overlay_size_mib=instance_disk_mib(definition),
        disk_quota_left_bytes=allowance.disk_left_bytes,
        disk_quota_held_digests=allowance.held_digests,
    )


def _charge_image(instance_id: str, prepared) -> None:
    """The image's unpacked size goes on the tenant's disk quota before the VM is made; a
    concurrent pull may have taken what was left since this one was capped."""
    try:
        instance_image_claim(
            instance_id=instance_id, manifest_digest=prepared.manifest_digest, unpacked_bytes=prepared.unpacked_bytes
        )
    except QuotaExceeded as exc:
        left_bytes = max(0, exc.limit - exc.used) * 1024 * 1024
        raise ImageUnpacksTooLarge(prepared.reference, limit_bytes=left_bytes, limit_source=LIMIT_TENANT_QUOTA) from exc


def network_attachment(instance: Instance) -> NetworkAttachment | None:
    """The instance's NIC on its tenant network, from the address the portal allocated at placement."""
    from portal.services.networks import network_attachment_of

    found = network_attachment_of(instance)
    if found is None:
        return None
    network, allocation = found
    prefix = network.subnet.rsplit("/", 1)[1]
    return NetworkAttachment(
        network=TenantNetwork.for_network_id(str(network.pk)),
        mac=instance_mac(str(instance.pk), "tenant"),
        ip_cidr=f"{allocation.address}/{prefix}",
    )


TRANSITIONAL = (
    InstanceStatus.STAGED,
    InstanceStatus.PULLING,
    InstanceStatus.PREPARING,
    InstanceStatus.BOOTING,
    InstanceStatus.STOPPING,
)
RESEND_BOOT_S = 60
PHASE_TO_STATUS = {"preparing": InstanceStatus.PREPARING, "booting": InstanceStatus.BOOTING}


@shared_task(name="vmworker.boot_instance", acks_late=True, bind=True, max_retries=MAX_RETRIES)
def boot_instance(self, instance_id: str) -> None:
    instance = Instance.objects.select_related("app", "version", "tenant", "host").filter(pk=instance_id).first()
    if instance is None:
        return
    if instance_transition(instance_id=instance_id, to=InstanceStatus.PULLING) is None and instance.status not in (
        InstanceStatus.PULLING,
        InstanceStatus.PREPARING,
        InstanceStatus.BOOTING,
    ):
        return  # already running, stopped or failed: a re-delivered task does nothing
    refused = _registry_refused(instance)
    if refused:
        instance_transition(
            instance_id=instance_id, to=InstanceStatus.FAILED, launch_failed=True, failure_reason=refused[:1000]
        )
        return
    try:
        result = runtime().boot(
            instance_spec(instance),
            on_phase=lambda phase: (
                phase in PHASE_TO_STATUS and instance_transition(instance_id=instance_id, to=PHASE_TO_STATUS[phase])
            ),
            on_image=lambda prepared: _charge_image(instance_id, prepared),
        )
    except HostPortBusy as exc:
        # Not the app's fault: the port goes on the host's blocked list and the replacement
        # placed by the engine gets another one (a fixed hostPort waits until it is free).
        host_ports_block(name=host_name(), ports=[port.host_port for port in exc.ports])
        instance_transition(instance_id=instance_id, to=InstanceStatus.FAILED, failure_reason=str(exc)[:1000])
        return
    except (ImageError, RuntimeFailure, DriverError) as exc:
        if failure_is_transient(exc) and self.request.retries < self.max_retries:
            _retry_later(self, instance_id, exc)
        tail = getattr(exc, "console_tail", "") or ""
        logger.warning("instance.boot_failed", extra={"instance_id": instance_id, "reason": str(exc)})
        instance_transition(
            instance_id=instance_id,
            to=InstanceStatus.FAILED,
            launch_failed=True,
            failure_reason=str(exc)[:1000],
            console_tail=tail[-4000:],
            exit_code=getattr(exc, "exit_code", None),
        )
        return
    instance_transition(instance_id=instance_id, to=InstanceStatus.BOOTING)  # when resumed from PULLING
    if not Instance.objects.filter(pk=instance_id, status=InstanceStatus.BOOTING).exists():
        runtime().remove(instance_id)  # stopped (or failed) while it booted: its quota is gone, so is the VM
        return
    if (
        instance_transition(
            instance_id=instance_id,
            to=InstanceStatus.RUNNING,
            timings_s=result.timings_s,
            # The tenant-network address from placement; without one, the user-net NIC's.
            ip_address=instance.ip_address or ("10.0.2.15" if result.ports else ""),
            failure_reason="",  # a retry's or a placement wait's note is over
        )
        is not None
    ):
        app_record_launch_success(app_id=instance.app_id)


def _registry_refused(instance: Instance) -> str:
    """Checked again here, where the pull happens, against this host's DNS: the registry of the
    image must not be one of the platform's own addresses (a name may resolve elsewhere than it
    did at admission). The reason, or "" when the pull may go ahead."""
    definition = AppDefinition.from_stored(instance.version.definition)
    registry_host = definition.container.docker.image_reference.registry_host
    try:
        check_image_registry(registry_host, allowed=platform_registry_hosts())
    except AddressRefused as refused:
        return f"the image's registry {registry_host} is not one the platform pulls from: {refused}"
    return ""


@shared_task(name="vmworker.stop_instance", acks_late=True, bind=True, max_retries=MAX_RETRIES)
def stop_instance(self, instance_id: str) -> None:
    """Asks the guest to stop the app and returns at once (a few seconds of socket I/O at most):
    a host worker slot is never held for the grace the tenant chose. The instance stays
    STOPPING; this host's reconcile ends it (``_stop_step``). Sent again, it changes nothing:
    the first request's deadline stands."""
    instance = Instance.objects.select_related("version").filter(pk=instance_id).first()
    if instance is None or instance.status != InstanceStatus.STOPPING:
        return  # ended already (a re-delivered task), or never asked to stop
    try:
        _stop_step(instance)
    except DriverError as exc:
        if not failure_is_transient(exc) or self.request.retries >= self.max_retries:
            raise  # left STOPPING: the host's reconcile asks again
        _retry_later(self, instance_id, exc)


def _kill_grace_s(definition: AppDefinition) -> int | None:
    """The app's taskKillGracePeriodSeconds (None: the runtime's default), never above today's
    platform cap: a version stored before the cap (a day-long grace) is relaunched and stopped
    with the cap."""
    grace_s = definition.task_kill_grace_period_s
    if grace_s is None:
        return None
    return min(grace_s, settings.APP_DEFINITION_LIMITS["max_task_kill_grace_period_s"])


def _stop_grace_s(instance: Instance) -> int | None:
    """The grace its guest was given."""
    return _kill_grace_s(AppDefinition.from_stored(instance.version.definition))


def _stop_step(instance: Instance) -> None:
    """Asks for the stop if nobody did yet (a no-op when asked before: its deadline stands), then
    ends the instance once the runtime says the stop is over (the app exited, the VM is gone,
    or the deadline passed and the VM was destroyed)."""
    instance_id = str(instance.pk)
    try:
        if runtime().stop_request(instance_id) is None:
            runtime().request_stop(instance_id, grace_s=_stop_grace_s(instance))
        status = runtime().stop_progress(instance_id)
    except InstanceNotFound:
        instance_transition(instance_id=instance_id, to=InstanceStatus.STOPPED)  # never booted on this host
        return
    if status is not None:
        instance_transition(instance_id=instance_id, to=InstanceStatus.STOPPED, exit_code=status.exit_code)


def _retry_later(task, instance_id: str, exc: BaseException) -> None:
    """Raises celery's Retry: the same task again on this host's queue after a backoff. The
    instance keeps its state (a retried boot resumes from it); the reason shows meanwhile."""
    countdown = retry_countdown_s(task.request.retries)
    reason = f"retry {task.request.retries + 1} of {task.max_retries} in {countdown:.0f} s: {exc}"
    logger.warning(
        "instance.task_retry", extra={"instance_id": instance_id, "task": task.name, "countdown_s": countdown}
    )
    Instance.objects.filter(pk=instance_id).update(failure_reason=reason[:1000])
    raise task.retry(countdown=countdown, exc=exc, queue=host_queue(host_name()))


@shared_task(name="vmworker.reconcile_host", acks_late=True)
def reconcile_host(name: str) -> None:
    """What libvirt and the instance files say, against what the database says; then health.
    One instance whose files or VM misbehave (garbage records, a failing release) is logged
    with its id and skipped: the host's work for the others goes on."""
    if name != host_name():
        return
    healthy_candidates = []
    for instance in Instance.objects.select_related("app", "version").filter(
        host__name=name, status__in=(*INSTANCE_UP, InstanceStatus.STOPPING)
    ):
        try:
            if instance.status == InstanceStatus.STOPPING:
                _stop_step(instance)
            elif _reconcile_up(instance):
                healthy_candidates.append(instance)
        except Exception:
            logger.warning("host.reconcile_instance_failed", extra={"instance_id": str(instance.pk)}, exc_info=True)
    stages = (
        ("health", lambda: _health_round(healthy_candidates)),
        ("orphans", lambda: _destroy_orphans(name)),
        ("stuck", lambda: _retry_stuck(name)),
        ("sweep", lambda: _sweep_host(name)),
    )
    for stage, run in stages:
        try:
            run()
        except Exception:
            logger.warning("host.reconcile_stage_failed", extra={"host": name, "stage": stage}, exc_info=True)


def _reconcile_up(instance: Instance) -> bool:
    """Marks an up instance whose VM vanished or whose app exited; True when it still runs."""
    try:
        status = runtime().status(str(instance.pk))
    except InstanceNotFound:
        status = None
    if status is None or status.state == "lost":
        reason = "the VM disappeared (its QEMU process ended without an exit report)"
        instance_transition(
            instance_id=instance.pk,
            to=InstanceStatus.LOST,
            launch_failed=True,
            failure_reason=reason,
            console_tail=runtime().console_tail(str(instance.pk))[-4000:],
        )
        _release(instance)
        return False
    if status.state == "exited":
        reason = f"the app exited with code {status.exit_code}" + (" (OOM)" if status.oom else "")
        instance_transition(
            instance_id=instance.pk,
            to=InstanceStatus.FAILED,
            launch_failed=True,
            failure_reason=reason,
            exit_code=status.exit_code,
            oom_killed=status.oom,
        )
        _release(instance)
        return False
    return True


# Health probes run in a bounded pool of this worker process, not in the reconcile task: a
# round waits at most HEALTH_ROUND_S for them (a COMMAND check may take its timeout + 5 s), so
# it never holds one of the host queue's few slots for long; a probe still running is not
# started again by the next round, its result is written when it ends.
HEALTH_PROBE_THREADS = 8
HEALTH_ROUND_S = 3.0
_probe_pool: ThreadPoolExecutor | None = None
_probing: set[str] = set()
_probing_lock = threading.Lock()


def _health_round(instances: list[Instance]) -> None:
    global _probe_pool
    futures = []
    with _probing_lock:
        if instances and _probe_pool is None:
            _probe_pool = ThreadPoolExecutor(max_workers=HEALTH_PROBE_THREADS, thread_name_prefix="health-probe")
        for instance in instances:
            if str(instance.pk) in _probing:
                continue
            _probing.add(str(instance.pk))
            futures.append(_probe_pool.submit(_check_health_in_pool, instance))
    futures_wait(futures, timeout=HEALTH_ROUND_S)


def _check_health_in_pool(instance: Instance) -> None:
    from django.db import connection

    try:
        _check_health(instance)
    except Exception:
        logger.warning("instance.health_check_failed", extra={"instance_id": str(instance.pk)}, exc_info=True)
    finally:
        with _probing_lock:
            _probing.discard(str(instance.pk))
        connection.close()  # this thread's own connection: a pool thread must not keep one open


def _release(instance: Instance) -> None:
    """An instance that ended by itself: its domain remnant and its tenant network go from this host."""
    try:
        runtime().release(str(instance.pk))
    except InstanceNotFound:
        pass  # its folder is gone already (pruned, or never made here)


def _sweep_host(name: str) -> None:
    """What no live instance needs any more: tenant networks on this libvirtd that no domain
    uses and no live instance holds an address on (some instance ended without a stop, e.g. a
    killed QEMU, or a release failed), and the folders of instances ended longer ago than
    HOST_INSTANCE_RETENTION_S (so per-round work does not grow with every instance ever run)."""
    from portal.services.networks import network_ids_in_use

    try:
        runtime().network_sweep(wanted_network_ids=network_ids_in_use())
    except Exception:
        logger.warning("host.network_sweep_failed", extra={"host": name}, exc_info=True)
    live = Instance.objects.filter(host__name=name, status__in=INSTANCE_ACTIVE).values_list("pk", flat=True)
    runtime().prune_ended(retention_s=settings.HOST_INSTANCE_RETENTION_S, keep={str(pk) for pk in live})


def _destroy_orphans(name: str) -> None:
    """VMs this host runs whose instance has ended or no longer exists (e.g. its app was
    deleted while a stop failed): the database is the truth, the VM goes."""
    running = runtime().live_instance_ids()
    if not running:
        return
    live = {
        str(pk)
        for pk in Instance.objects.filter(pk__in=running, status__in=INSTANCE_ACTIVE).values_list("pk", flat=True)
    }
    for instance_id in running - live:
        try:
            runtime().remove(instance_id)
        except Exception:
            logger.warning("host.orphan_remove_failed", extra={"instance_id": instance_id}, exc_info=True)


def _retry_stuck(name: str) -> None:
    """Instances whose boot task died (a worker crash, a lost message): a boot stuck past the
    boot timeout fails (and is replaced); a boot never run is sent again. STOPPING ones are not
    stuck: the reconcile ends each stop itself at its deadline (``_stop_step``)."""
    now = timezone.now()
    boot_limit_s = runtime().settings.boot_timeout_s * 3
    for instance in Instance.objects.select_related("host").filter(host__name=name, status__in=TRANSITIONAL):
        try:
            _retry_if_stuck(instance, now, boot_limit_s)
        except Exception:
            logger.warning("host.retry_stuck_failed", extra={"instance_id": str(instance.pk)}, exc_info=True)


def _retry_if_stuck(instance: Instance, now, boot_limit_s: float) -> None:
    entered = instance.phase_times.get(instance.status)
    age_s = (now - datetime.fromisoformat(entered)).total_seconds() if entered else 0
    if instance.status == InstanceStatus.STAGED:
        if age_s > RESEND_BOOT_S:  # placed, but its boot message never ran
            _restart_clock(instance, now)
            boot_instance.apply_async(args=[str(instance.pk)], queue=instance.host.queue)
    elif instance.status != InstanceStatus.STOPPING and age_s > boot_limit_s:
        runtime().remove(str(instance.pk))
        instance_transition(
            instance_id=instance.pk,
            to=InstanceStatus.FAILED,
            launch_failed=True,
            failure_reason=f"the boot did not finish within {boot_limit_s:.0f} s",
        )


def _restart_clock(instance: Instance, now) -> None:
    """A message was sent again: wait a full period before the next resend (no flooding)."""
    Instance.objects.filter(pk=instance.pk, status=instance.status).update(
        phase_times={**instance.phase_times, instance.status: now.isoformat()}
    )


# What an HTTP probe reads of an answer: its status line only (a 3xx is a result, never followed).
HTTP_PROBE_READ_BYTES = 4096
HTTP_STATUS_LINE = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})(?: |\r|\n|$)")


def _probe(check, instance: Instance) -> tuple[bool, str]:
    """(healthy, cause). COMMAND runs inside the guest (exit 0 = healthy); HTTP/HTTPS/TCP go to
    one of the instance's own published ports on the host's publish address, and nowhere else:
    a stored check naming another port (a row older than the API's policy) fails without a
    connection, so a health check is never a port scanner or an HTTP client for the host."""
    if check.probe is HealthCheckProbe.COMMAND:
        try:
            code = runtime().exec_check(str(instance.pk), check.command, check.timeout_s)
        except RuntimeFailure as exc:
            return False, f"command check failed: {exc}"
        return code == 0, f"command exited with code {code}"
    host_port, refusal = probe_port(check, instance.host_ports)
    if host_port is None:
        return False, refusal
    address = (runtime().settings.publish_host_ip, host_port)
    if check.probe is HealthCheckProbe.TCP:
        try:
            with socket.create_connection(address, timeout=check.timeout_s):
                return True, ""
        except OSError as exc:
            return False, f"TCP connect failed: {exc}"
    try:
        code = http_probe_status(
            address, check.path or "/", tls=check.probe is HealthCheckProbe.HTTPS, timeout_s=check.timeout_s
        )
    except (OSError, ValueError) as exc:
        return False, f"HTTP request failed: {exc}"
    return 200 <= code < 400, f"HTTP {code}"


def probe_port(check, host_ports: list[int]) -> tuple[int | None, str]:
    """The host port a check may probe (None and why not): Marathon's ``port`` only when it is
    one of the instance's own published ports, else the one at ``portIndex``."""
    own = [int(port) for port in host_ports]
    if check.port is not None:
        if check.port not in own:
            return None, f"port {check.port} is not one of the instance's published ports {own}: not probed"
        return check.port, ""
    index = check.port_index or 0
    if not 0 <= index < len(own):
        return None, "the health check has no port to probe"
    return own[index], ""


def http_probe_status(address: tuple[str, int], path: str, *, tls: bool, timeout_s: float) -> int:
    """GET ``path`` and the answer's status code, within ``timeout_s`` in all (an app that
    answers a byte at a time cannot hold a probe thread longer). Redirects are results, never
    followed; at most HTTP_PROBE_READ_BYTES are read. HTTPS is not verified (as Marathon: the
    app's certificate is its own business; the address is the instance's port)."""
    if not path.startswith("/") or any(c in path for c in "\r\n "):
        raise ValueError(f"bad path {path!r}")
    deadline = time.monotonic() + timeout_s
    request = f"GET {path} HTTP/1.0\r\nHost: {address[0]}:{address[1]}\r\nUser-Agent: hypervm-health\r\n"
    with socket.create_connection(address, timeout=timeout_s) as raw:
        connection = raw
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            raw.settimeout(max(0.01, deadline - time.monotonic()))
            connection = context.wrap_socket(raw, server_hostname=None)
        connection.sendall(f"{request}Connection: close\r\n\r\n".encode("ascii", "strict"))
        answer = b""
        while b"\n" not in answer and len(answer) < HTTP_PROBE_READ_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no status line within the timeout")
            connection.settimeout(remaining)
            chunk = connection.recv(HTTP_PROBE_READ_BYTES - len(answer))
            if not chunk:
                break
            answer += chunk
    match = HTTP_STATUS_LINE.match(answer)
    if match is None:
        raise ValueError("the answer is not HTTP")
    return int(match.group(1))


def _check_health(instance: Instance) -> None:
    definition = AppDefinition.from_stored(instance.version.definition)
    if not definition.health_checks:
        return
    now = timezone.now()
    health = dict(instance.health)
    last = health.get("lastCheckAt")
    check = definition.health_checks[0]
    if last and (now - datetime.fromisoformat(last)).total_seconds() < check.interval_s:
        return
    stamp = now.isoformat()
    health["lastCheckAt"] = stamp
    # Claim this round first (compare-and-swap on the health record): two reconcile tasks
    # running at once on this host must not both probe, nor both count a failure.
    if not Instance.objects.filter(pk=instance.pk, health=instance.health).update(health=health):
        return
    alive, cause = _probe(check, instance)
    health["alive"] = alive
    if alive:
        health.setdefault("firstSuccess", stamp)
        health["lastSuccess"] = stamp
        health["consecutiveFailures"] = 0
    else:
        health["lastFailure"] = stamp
        health["lastFailureCause"] = cause
        running_since = datetime.fromisoformat(instance.phase_times.get(InstanceStatus.RUNNING, stamp))
        in_grace = "firstSuccess" not in health and (now - running_since).total_seconds() < check.grace_period_s
        if not in_grace:
            health["consecutiveFailures"] = health.get("consecutiveFailures", 0) + 1
    Instance.objects.filter(pk=instance.pk).update(health=health)
    if alive:
        instance_transition(instance_id=instance.pk, to=InstanceStatus.HEALTHY, health=health)
    elif health.get("consecutiveFailures", 0):
        instance_transition(instance_id=instance.pk, to=InstanceStatus.UNHEALTHY, health=health)
        limit = check.max_consecutive_failures
        if limit and health["consecutiveFailures"] >= limit:
            from portal.services.deployments import instance_stop

            instance.refresh_from_db()
            instance_stop(instance, reason=f"unhealthy: {cause}")
