"""Celery entry points of a compute host: the only place where the ORM meets the runtime.

A host's worker consumes its own queue (``host.<name>``) and is configured by environment:
``HYPERVM_HOST_NAME`` (this host), ``HYPERVM_STATE_DIR``, ``HYPERVM_LIBVIRT_URI``,
``HYPERVM_VIRT_TYPE`` (force kvm/qemu; default: boot probe). At start it registers the host
(capacity, virt type), heartbeats from a thread and starts the console agent (a thread that streams
the guest logs of this host's instances, vmworker.console_agent), the exec agent (shells into
them, vmworker.exec_agent) and the usage sampler (a thread
that measures them and sends the samples to portal.services.usage, vmworker.usage). A boot task
gets the instance's whole spec from the portal (portal.services.instance_specs). What the host
sees of an instance (its boot phases, running, failed, lost, stopped, a retry) goes back as an
instance report, a task on the portal's queue (portal.services.host_reports) that applies it by
compare-and-swap: a re-delivered task or a repeated report does no harm. Issue 12 moves the
reads and writes still here (health, volumes, heartbeats, stuck boots) to messages too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from datetime import datetime
from functools import cache
from pathlib import Path

from celery import current_app, shared_task
from celery.signals import worker_process_init, worker_ready, worker_shutting_down
from django.conf import settings
from django.utils import timezone

from portal.choices import INSTANCE_ACTIVE, INSTANCE_UP, InstanceStatus, VolumeState
from portal.marathon import AppDefinition
from portal.models import Instance
from portal.services.hosts import host_heartbeat, host_queue, host_register
from portal.services.images import instance_image_claim
from portal.services.volumes import volume_destroyed
from tenants.embedded_registry import platform_registry_hosts
from tenants.errors import QuotaExceeded
from tenants.registry_address import AddressRefused, check_image_registry
from vmworker import warm_pool
from vmworker.console_agent import ConsoleAgent
from vmworker.driver.errors import DriverError
from vmworker.exec_agent import ExecAgent
from vmworker.failures import MAX_RETRIES, failure_is_transient, retry_countdown_s
from vmworker.health_probes import HealthProbe, run_probe
from vmworker.images.errors import ImageError, ImageUnpacksTooLarge
from vmworker.images.unpack import LIMIT_TENANT_QUOTA
from vmworker.runtime import (
    HostPortBusy,
    HyperVMRuntime,
    InstanceNotFound,
    InvalidSpec,
    RuntimeFailure,
    RuntimeSettings,
)
from vmworker.spec_message import spec_from_message
from vmworker.usage import UsageSample, UsageSampler

logger = logging.getLogger(__name__)
# When this worker started: the module is imported by the main process before it forks its pool,
# so every pool process sees the main process's time. A boot phase entered before it was run by
# an earlier worker of this host (see _retry_if_stuck).
WORKER_STARTED_AT = time.time()
_heartbeat_stop = threading.Event()
_console_agents: list = []  # the running ConsoleAgent and ExecAgent, for the shutdown signal
_usage_samplers: list = []  # the running UsageSampler, for the shutdown signal
_warm_pool_threads: list[threading.Thread] = []  # the warm pool's refill loop, for the shutdown signal


def host_name() -> str | None:
    return os.environ.get("HYPERVM_HOST_NAME")


@cache
def warm_pool_target() -> warm_pool.PoolTarget:
    """HYPERVM_WARM_POOL ("<vcpus>x<MiB>:<count>,...", empty: no pool) and
    HYPERVM_WARM_POOL_BUDGET_MIB (default: what the counts add up to)."""
    value = os.environ.get("HYPERVM_WARM_POOL", "")
    target = warm_pool.parse_pool_setting(value, 0)
    budget = os.environ.get("HYPERVM_WARM_POOL_BUDGET_MIB")
    total = sum(shape.memory_mib * count for shape, count in target.sizes.items())
    return warm_pool.parse_pool_setting(value, int(budget) if budget else total)


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
            warm_pool=bool(warm_pool_target().sizes),
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
    if warm_pool_target().sizes:
        pool_thread = threading.Thread(target=_warm_pool_loop, args=(name,), name="warm-pool", daemon=True)
        pool_thread.start()
        _warm_pool_threads.append(pool_thread)
    _start_console_agent(name)
    _start_usage_sampler(name)


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
    while _console_agents:
        _console_agents.pop().stop()
    if _usage_samplers:
        _usage_samplers.pop().stop()
    while _warm_pool_threads:
        _stop_warm_pool(_warm_pool_threads.pop())


def _stop_warm_pool(thread: threading.Thread) -> None:
    """A stopping host worker's paused blank VMs go with it. A refill under way (one blank boot,
    2.7-4.1 s under TCG, measured) ends first; past WARM_POOL_STOP_WAIT_S its half-made VM is
    discarded here too (boot_blank's own clean-up then finds it gone)."""
    thread.join(timeout=WARM_POOL_STOP_WAIT_S)
    try:
        removed = warm_pool.discard_unclaimed(runtime())
    except Exception:
        logger.warning("host.warm_pool_discard_failed", exc_info=True)
        return
    if removed:
        logger.info("host.warm_pool_discarded", extra={"pool_ids": removed})


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
    # Shells into this host's instances (vmworker.exec_agent): its own layer too.
    shells = ExecAgent(
        host_name=name,
        control_socket=runtime().control_socket,
        max_sessions_per_tenant=settings.EXEC_MAX_SESSIONS_PER_TENANT_PER_HOST,
        layer_factory=lambda: channel_layers.make_backend(DEFAULT_CHANNEL_LAYER),
    )
    shells.start()
    _console_agents.append(shells)


def _start_usage_sampler(name: str) -> None:
    """Measures this host's guests and sends the samples to the portal's queue (see vmworker.usage;
    the portal keeps only its samples of this host's instances, portal.services.usage)."""

    def publish(samples: list[UsageSample]) -> None:
        samples_sent = [sample.as_message() for sample in samples]
        current_app.send_task(USAGE_REPORT_TASK, args=[name, samples_sent], expires=USAGE_REPORT_EXPIRES_S)

    sampler = UsageSampler(
        read_stats=runtime().guest_usage, publish=publish, interval_s=settings.USAGE_SAMPLE_INTERVAL_S
    )
    sampler.start()
    _usage_samplers.append(sampler)


WARM_POOL_INTERVAL_S = 1.0
WARM_POOL_STOP_WAIT_S = 20.0  # within ./scripts/run's Ctrl-C (tests allow 60 s for the whole stop)


def _warm_pool_loop(name: str) -> None:
    """Keeps this host's pool of paused blank VMs at its target (vmworker.warm_pool): discards
    dead ones, then boots one blank VM at a time, and only while no boot of this host is in
    progress, so a refill never takes the CPU from a real boot."""
    from django.db import close_old_connections

    while not _heartbeat_stop.wait(WARM_POOL_INTERVAL_S):
        try:
            warm_pool.sweep(runtime())
            if warm_pool.boots_in_progress(runtime()):
                continue
            warm_pool.refill_one(runtime(), warm_pool_target())
        except Exception:
            logger.warning("host.warm_pool_failed", extra={"host": name}, exc_info=True)
        finally:
            close_old_connections()


def warm_pool_report() -> dict:
    """For the heartbeat: per shape, the paused blank VMs ready and the target."""
    ready = warm_pool.ready_counts(runtime())
    return {
        shape.label: {"ready": ready.get(shape, 0), "target": size} for shape, size in warm_pool_target().sizes.items()
    }


def _heartbeat_loop(name: str) -> None:
    from django.db import close_old_connections

    while not _heartbeat_stop.wait(settings.HOST_HEARTBEAT_INTERVAL_S):
        try:
            if not host_heartbeat(name=name, warm_pool=warm_pool_report()):
                _register(name)
        except Exception:
            logger.warning("host.heartbeat_failed", extra={"host": name}, exc_info=True)
        finally:
            close_old_connections()


def instance_ended(instance_id: str) -> bool:
    """Whether the database says this instance has ended (or never was): its VM may go."""
    return not Instance.objects.filter(pk=instance_id, status__in=INSTANCE_ACTIVE).exists()


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


INSTANCE_REPORT_TASK = "portal.instance_report"
USAGE_REPORT_TASK = "portal.usage_report"
USAGE_REPORT_EXPIRES_S = 30  # a late batch is worth less than none: the next one comes
BOOT_STEPS = (InstanceStatus.STAGED, InstanceStatus.PULLING, InstanceStatus.PREPARING, InstanceStatus.BOOTING)


def send_report(report: dict) -> None:
    """To the portal's queue (the Celery app's default one): the portal writes, never the host."""
    current_app.send_task(INSTANCE_REPORT_TASK, args=[report])


def report_instance(instance_id, state: str | None, **fields) -> None:
    """What this host observes of one of its instances now (portal.services.host_reports): a
    state (pulling, preparing, booting, running, failed, lost, stopped) or None (a note only)."""
    send_report({"instance_id": str(instance_id), "host": host_name() or "", "state": state, **fields})


PHASE_TO_STATUS = {"preparing": InstanceStatus.PREPARING, "booting": InstanceStatus.BOOTING}


@shared_task(name="vmworker.boot_instance", acks_late=True, bind=True, max_retries=MAX_RETRIES)
def boot_instance(self, instance_id: str, spec_message: dict) -> None:
    """Boots the instance the portal's spec describes (portal.services.instance_specs)."""
    instance = Instance.objects.select_related("app", "version", "tenant", "host").filter(pk=instance_id).first()
    if instance is None:
        return
    if instance.status not in BOOT_STEPS:
        return  # already running, stopped or failed: a re-delivered task does nothing
    phase = ["pulling"]  # the last phase reported: a retry's report repeats it (level-triggered)
    report_instance(instance_id, "pulling")
    refused = _registry_refused(spec_message)
    if refused:
        report_instance(instance_id, "failed", launch_failed=True, error=refused)
        return

    def on_phase(name: str) -> None:
        if name in PHASE_TO_STATUS:
            phase[0] = name
            report_instance(instance_id, name)

    try:
        spec = spec_from_message(
            spec_message, publish_host_ip=runtime().settings.publish_host_ip, host_name=host_name() or ""
        )
        if spec.instance_id != str(instance_id):
            raise InvalidSpec("the spec is another instance's")
        result = runtime().boot(
            spec,
            on_phase=on_phase,
            on_image=lambda prepared: _charge_image(instance_id, prepared),
            volume_holder_ended=instance_ended,
        )
    except HostPortBusy as exc:
        # Not the app's fault: the port goes on the host's blocked list and the replacement
        # placed by the engine gets another one (a fixed hostPort waits until it is free).
        report_instance(
            instance_id, "failed", error=str(exc), host_ports_blocked=[port.host_port for port in exc.ports]
        )
        return
    except (ImageError, RuntimeFailure, DriverError) as exc:
        if failure_is_transient(exc) and self.request.retries < self.max_retries:
            _retry_later(self, instance_id, exc, state=phase[0])
        tail = getattr(exc, "console_tail", "") or ""
        logger.warning("instance.boot_failed", extra={"instance_id": instance_id, "reason": str(exc)})
        report_instance(
            instance_id,
            "failed",
            launch_failed=True,
            error=str(exc),
            console_tail=tail[-4000:],
            exit_code=getattr(exc, "exit_code", None),
        )
        return
    volume_used_bytes = {
        volume.volume_id: runtime().volume_used_bytes(volume.pool_name, volume.volume_name) or 0
        for volume in spec.volumes
    }
    if not Instance.objects.filter(pk=instance_id, status__in=BOOT_STEPS).exists():
        report_instance(instance_id, None, volume_used_bytes=volume_used_bytes)  # made, whatever comes next
        runtime().remove(instance_id)  # stopped (or failed) while it booted: its quota is gone, so is the VM
        return
    report_instance(
        instance_id,
        "running",
        timings_s=result.timings_s,
        user_net=bool(result.ports),
        volume_used_bytes=volume_used_bytes,
    )


def _registry_refused(spec_message: dict) -> str:
    """Checked again here, where the pull happens, against this host's DNS: the registry of the
    image must not be one of the platform's own addresses (a name may resolve elsewhere than it
    did at admission), nor outside this host's own allowlist. The reason, or "" when the pull
    may go ahead."""
    registry_host = str(spec_message.get("registry_host", ""))
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


@shared_task(name="vmworker.destroy_volume", acks_late=True, bind=True, max_retries=MAX_RETRIES)
def destroy_volume(self, volume_id: str, pool_name: str, volume_name: str) -> None:
    """Deletes a wiped (or deleted app's) volume through the pool API, then its row and quota
    claim go. Sent again, it finds the volume gone and only confirms."""
    try:
        runtime().volume_delete(pool_name, volume_name)
    except DriverError as exc:
        if failure_is_transient(exc) and self.request.retries < self.max_retries:
            raise self.retry(
                countdown=retry_countdown_s(self.request.retries), exc=exc, queue=host_queue(host_name())
            ) from exc
        raise  # left destroying: this host's reconcile sends it again
    volume_destroyed(volume_id=volume_id)


def _volumes_round(name: str) -> None:
    """This host's volumes: the blocks each holds now (the app page's "used"), and the destroying
    ones no live instance holds deleted (a destroy task lost or failed)."""
    from portal.models import Volume

    for volume in Volume.objects.select_related("instance").filter(host__name=name):
        try:
            if volume.state != VolumeState.DESTROYING:
                used_bytes = runtime().volume_used_bytes(volume.pool_name, volume.volume_name)
                if used_bytes is not None and used_bytes != volume.used_bytes:
                    Volume.objects.filter(pk=volume.pk).update(used_bytes=used_bytes)
            elif volume.instance is None or volume.instance.status not in INSTANCE_ACTIVE:
                runtime().volume_delete(volume.pool_name, volume.volume_name)
                volume_destroyed(volume_id=volume.pk)
        except Exception:
            logger.warning("host.volume_round_failed", extra={"volume_id": str(volume.pk)}, exc_info=True)
    _delete_unknown_volumes(name)


def _delete_unknown_volumes(name: str) -> None:
    """Volume files in this host's pool that no row names are left over (a row goes only after
    its file, and is made before it: e.g. a tenant deleted by an operator): their data goes.
    The pool is listed before the rows are read, so a volume being made is never taken for one."""
    from portal.models import Volume
    from portal.models.volume import VOLUME_NAME_PREFIX
    from portal.services.volumes import POOL_NAME_PREFIX

    pool_name = f"{POOL_NAME_PREFIX}{name}"
    found = {}
    for volume_name in runtime().host.list_volumes(pool_name):
        try:
            if volume_name.startswith(VOLUME_NAME_PREFIX):
                found[uuid.UUID(volume_name.removeprefix(VOLUME_NAME_PREFIX))] = volume_name
        except ValueError:
            continue  # not a name the platform gives: not ours to delete
    if not found:
        return
    known = set(Volume.objects.filter(pk__in=list(found)).values_list("pk", flat=True))
    for volume_id, volume_name in found.items():
        if volume_id not in known:
            logger.warning("host.volume_unknown_deleted", extra={"host": name, "volume": volume_name})
            runtime().volume_delete(pool_name, volume_name)


def _stop_grace_s(instance: Instance) -> int | None:
    """The grace its guest was given."""
    from portal.services.instance_specs import kill_grace_s

    return kill_grace_s(AppDefinition.from_stored(instance.version.definition))


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
        report_instance(instance_id, "stopped")  # never booted on this host
        return
    if status is not None:
        report_instance(instance_id, "stopped", exit_code=status.exit_code)


def _retry_later(task, instance_id: str, exc: BaseException, *, state: str | None = None) -> None:
    """Raises celery's Retry: the same task again on this host's queue after a backoff. The
    instance keeps its state (a retried boot resumes from it); the reason, the attempt and the
    time of the next one show meanwhile (``instance_retry_note``)."""
    countdown = retry_countdown_s(task.request.retries)
    logger.warning(
        "instance.task_retry", extra={"instance_id": instance_id, "task": task.name, "countdown_s": countdown}
    )
    retry = {"attempt": task.request.retries + 1, "attempts": task.max_retries + 1, "retry_in_s": countdown}
    report_instance(instance_id, state, retry=retry | {"error": str(exc)})
    raise task.retry(countdown=countdown, exc=exc, queue=host_queue(host_name()))


@shared_task(name="vmworker.reconcile_host", acks_late=True)
def reconcile_host(name: str, probes: list | None = None) -> None:
    """What libvirt and the instance files say, against what the database says; then the health
    probes the portal sent (portal.services.health) of the instances that still run.
    One instance whose files or VM misbehave (garbage records, a failing release) is logged
    with its id and skipped: the host's work for the others goes on."""
    if name != host_name():
        return
    running = set()
    for instance in Instance.objects.select_related("app", "version").filter(
        host__name=name, status__in=(*INSTANCE_UP, InstanceStatus.STOPPING)
    ):
        try:
            if instance.status == InstanceStatus.STOPPING:
                _stop_step(instance)
            elif _reconcile_up(instance):
                running.add(str(instance.pk))
        except Exception:
            logger.warning("host.reconcile_instance_failed", extra={"instance_id": str(instance.pk)}, exc_info=True)
    stages = (
        ("health", lambda: _health_round([p for p in probes or () if str(p.get("instance_id")) in running])),
        ("orphans", lambda: _destroy_orphans(name)),
        ("stuck", lambda: _retry_stuck(name)),
        ("sweep", lambda: _sweep_host(name)),
        ("volumes", lambda: _volumes_round(name)),
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
        report_instance(
            instance.pk,
            "lost",
            launch_failed=True,
            error=reason,
            console_tail=runtime().console_tail(str(instance.pk))[-4000:],
        )
        _release(instance)
        return False
    if status.state == "exited":
        reason = f"the app exited with code {status.exit_code}" + (" (OOM)" if status.oom else "")
        report_instance(
            instance.pk, "failed", launch_failed=True, error=reason, exit_code=status.exit_code, oom=status.oom
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


def _health_round(probes: list[dict]) -> None:
    global _probe_pool
    futures = []
    with _probing_lock:
        if probes and _probe_pool is None:
            _probe_pool = ThreadPoolExecutor(max_workers=HEALTH_PROBE_THREADS, thread_name_prefix="health-probe")
        for probe in probes:
            instance_id = str(probe["instance_id"])
            if instance_id in _probing:
                continue
            _probing.add(instance_id)
            futures.append(_probe_pool.submit(_probe_in_pool, instance_id, probe))
    futures_wait(futures, timeout=HEALTH_ROUND_S)


def _probe_in_pool(instance_id: str, message: dict) -> None:
    """Runs one probe the portal sent and reports its result; the portal judges it."""
    try:
        alive, cause = run_probe(
            HealthProbe.from_message(message["check"]),
            host_ports=[int(port) for port in message["host_ports"]],
            publish_ip=runtime().settings.publish_host_ip,
            exec_check=lambda command, timeout_s: runtime().exec_check(instance_id, command, timeout_s),
        )
        report_instance(instance_id, None, health={"alive": alive, "cause": cause})
    except Exception:
        logger.warning("instance.health_check_failed", extra={"instance_id": instance_id}, exc_info=True)
    finally:
        with _probing_lock:
            _probing.discard(instance_id)


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
    """Instances whose boot task died (a worker crash): a boot stuck past the boot timeout fails
    (and is replaced). A boot never run is the portal's to send again
    (portal.services.instance_specs.instance_boots_resend). STOPPING ones are not stuck: the
    reconcile ends each stop itself at its deadline (``_stop_step``)."""
    now = timezone.now()
    boot_limit_s = runtime().settings.boot_timeout_s * 3
    for instance in Instance.objects.filter(host__name=name, status__in=BOOT_STEPS).exclude(
        status=InstanceStatus.STAGED
    ):
        try:
            _retry_if_stuck(instance, now, boot_limit_s)
        except Exception:
            logger.warning("host.retry_stuck_failed", extra={"instance_id": str(instance.pk)}, exc_info=True)


def _retry_if_stuck(instance: Instance, now, boot_limit_s: float) -> None:
    entered = instance.phase_times.get(instance.status)
    entered_at = datetime.fromisoformat(entered) if entered else now
    age_s = (now - entered_at).total_seconds()
    if entered_at.timestamp() < WORKER_STARTED_AT:
        # Its boot task ran in this host's previous worker, which died (SIGKILL, a crash): with
        # acks_late on Redis the message comes back only after the visibility timeout (an
        # hour), so the half-made instance goes now and the engine places a replacement.
        _fail_stuck(instance, "the host's worker restarted during the boot", launch_failed=False)
    elif age_s > boot_limit_s:
        _fail_stuck(instance, f"the boot did not finish within {boot_limit_s:.0f} s", launch_failed=True)


def _fail_stuck(instance: Instance, reason: str, *, launch_failed: bool) -> None:
    try:
        runtime().remove(str(instance.pk))
    except InstanceNotFound:
        pass  # the boot died before it made the instance's folder (e.g. while pulling)
    report_instance(instance.pk, "failed", launch_failed=launch_failed, error=reason)
