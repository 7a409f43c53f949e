"""Celery entry points of a compute host: messages in, the runtime, messages out.

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
compare-and-swap: a re-delivered task or a repeated report does no harm. The host reads and
writes no database: its heartbeat is a host report (capacity, warm pool, the VMs it runs, the
volume files it holds) from which the portal decides what is stuck or left over
(portal.services.host_sync) and sends commands back (remove_instances, delete_volumes); the
periodic reconcile acts on the portal's plan of this host.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from functools import cache
from pathlib import Path

from celery import current_app, shared_task
from celery.signals import worker_process_init, worker_ready, worker_shutting_down

from vmworker import host_config, report_signing, storage, warm_pool
from vmworker.console_agent import ConsoleAgent
from vmworker.driver.errors import DriverError
from vmworker.exec_agent import ExecAgent
from vmworker.failures import MAX_RETRIES, failure_is_transient, retry_countdown_s
from vmworker.health_probes import HealthProbe, run_probe
from vmworker.images.errors import ImageError
from vmworker.registry_address import AddressRefused, check_image_registry
from vmworker.runtime import HostPortBusy, HyperVMRuntime, InstanceNotFound, InvalidSpec, RuntimeSettings
from vmworker.runtime_types import RuntimeFailure
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


def host_queue(name: str | None) -> str:
    """This host's own queue (portal.services.hosts.host_queue names it the same)."""
    return f"host.{name}"


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
            max_unpacked_bytes=host_config.image_max_unpacked_bytes(),
            warm_pool=bool(warm_pool_target().sizes),
        )
    )


_registration: dict = {}  # this host's capacity and virt type, measured once at start


def host_report(name: str, *, register: bool = False) -> dict:
    """What this host says of itself (portal.services.host_sync): its capacity and virt type,
    its warm pool, when its worker started, the instance VMs it runs and the volume files in its
    pool. The portal decides from it what is stuck or left over, and sends commands back."""
    if not _registration:
        started = time.monotonic()
        probe = runtime().probe()
        capabilities = runtime().host.capabilities()
        _registration.update(
            libvirt_uri=runtime().settings.libvirt_uri,
            vcpus=capabilities.cpus,
            memory_mib=capabilities.memory_mib,
            virt_type=probe["virt_type"],
            probe_s=probe.get("probe_s") or round(time.monotonic() - started, 3),
            publish_ip=runtime().settings.publish_host_ip,
        )
    report = {
        "name": name,
        **_registration,
        "register": register,
        "worker_started_at": WORKER_STARTED_AT,
        "boot_timeout_s": runtime().settings.boot_timeout_s,
    }
    # What libvirt is asked for may fail (libvirtd restarting): the heartbeat goes without it, so
    # the host stays up and its VMs run on; the portal decides nothing from a part not sent.
    observed = (
        ("warm_pool", warm_pool_report),
        ("instance_ids", lambda: sorted(runtime().live_instance_ids())),
        ("volume_names", lambda: sorted(runtime().host.list_volumes(storage.pool_name(name)))),
    )
    for key, observe in observed:
        try:
            report[key] = observe()
        except Exception:
            logger.warning("host.report_part_failed", extra={"host": name, "part": key}, exc_info=True)
    return report


def send_host_report(name: str, *, register: bool = False) -> None:
    send_to_portal(HOST_REPORT_TASK, [host_report(name, register=register)], expires=host_config.heartbeat_expiry_s())


def _register(name: str) -> None:
    send_host_report(name, register=True)


@worker_ready.connect
def register_this_host(sender=None, **kwargs) -> None:
    name = host_name()
    if not name:
        return  # a portal-only worker
    if host_config.host_key() is None:
        logger.error(
            "host.no_report_key: HYPERVM_HOST_KEY_FILE is not set; a portal that requires signed reports drops them all"
        )
    if host_config.ksm_enabled():
        _ksm_on()
    _register(name)
    thread = threading.Thread(target=_heartbeat_loop, args=(name,), name="host-heartbeat", daemon=True)
    thread.start()
    if warm_pool_target().sizes:
        pool_thread = threading.Thread(target=_warm_pool_loop, args=(name,), name="warm-pool", daemon=True)
        pool_thread.start()
        _warm_pool_threads.append(pool_thread)
    _start_console_agent(name)
    _start_usage_sampler(name)


KSM_RUN = Path("/sys/kernel/mm/ksm/run")


def _ksm_on() -> None:
    try:
        KSM_RUN.write_text("1\n")
        logger.info("host.ksm_on")
    except OSError:
        logger.warning("host.ksm_unavailable", exc_info=True)


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
    agent = ConsoleAgent(
        host_name=name,
        instances_dir=runtime().instances_dir,
        # Its own layer instance: its connections belong to the agent's event loop.
        layer_factory=host_config.channel_layer,
    )
    agent.start()
    _console_agents.append(agent)
    # Shells into this host's instances (vmworker.exec_agent): its own layer too.
    shells = ExecAgent(
        host_name=name,
        control_socket=runtime().control_socket,
        max_sessions_per_tenant=host_config.exec_max_sessions_per_tenant(),
        layer_factory=host_config.channel_layer,
    )
    shells.start()
    _console_agents.append(shells)


def _start_usage_sampler(name: str) -> None:
    """Measures this host's guests and sends the samples to the portal's queue (see vmworker.usage;
    the portal keeps only its samples of this host's instances, portal.services.usage)."""

    def publish(samples: list[UsageSample]) -> None:
        samples_sent = [sample.as_message() for sample in samples]
        send_to_portal(USAGE_REPORT_TASK, [name, samples_sent], expires=USAGE_REPORT_EXPIRES_S)

    sampler = UsageSampler(
        read_stats=runtime().guest_usage, publish=publish, interval_s=host_config.usage_sample_interval_s()
    )
    sampler.start()
    _usage_samplers.append(sampler)


WARM_POOL_INTERVAL_S = 1.0
WARM_POOL_STOP_WAIT_S = 20.0  # within ./scripts/run's Ctrl-C (tests allow 60 s for the whole stop)


def _warm_pool_loop(name: str) -> None:
    """Keeps this host's pool of paused blank VMs at its target (vmworker.warm_pool): discards
    dead ones, then boots one blank VM at a time, and only while no boot of this host is in
    progress, so a refill never takes the CPU from a real boot."""
    while not _heartbeat_stop.wait(WARM_POOL_INTERVAL_S):
        try:
            warm_pool.sweep(runtime())
            if warm_pool.boots_in_progress(runtime()):
                continue
            warm_pool.refill_one(runtime(), warm_pool_target())
        except Exception:
            logger.warning("host.warm_pool_failed", extra={"host": name}, exc_info=True)


def warm_pool_report() -> dict:
    """For the heartbeat: per shape, the paused blank VMs ready and the target."""
    ready = warm_pool.ready_counts(runtime())
    return {
        shape.label: {"ready": ready.get(shape, 0), "target": size} for shape, size in warm_pool_target().sizes.items()
    }


def _heartbeat_loop(name: str) -> None:
    while not _heartbeat_stop.wait(host_config.heartbeat_interval_s()):
        try:
            send_host_report(name)
        except Exception:
            logger.warning("host.heartbeat_failed", extra={"host": name}, exc_info=True)


INSTANCE_REPORT_TASK = "portal.instance_report"
HOST_REPORT_TASK = "portal.host_report"
VOLUME_REPORT_TASK = "portal.volume_report"
USAGE_REPORT_TASK = "portal.usage_report"
USAGE_REPORT_EXPIRES_S = 30  # a late batch is worth less than none: the next one comes


def send_to_portal(task: str, args: list, kwargs: dict | None = None, **options) -> None:
    """A message to the portal's queue, signed with this host's key (vmworker.report_signing):
    the portal takes a report only from the host it speaks for."""
    kwargs = dict(kwargs or {}) | {"sent_at": time.time()}
    key = host_config.host_key()
    if key is not None:
        kwargs[report_signing.SIGNATURE_KWARG] = report_signing.sign(key, task, args, kwargs)
    current_app.send_task(task, args=args, kwargs=kwargs, **options)


RECONCILE_MAX_AGE_S = 60.0  # a plan older than this is stale (the portal sends one every 2 s)


def _from_portal(task: str, args: list, signature, sent_at, max_age_s: float) -> bool:
    """A command is acted on only when the portal signed it with this host's key (over the task,
    its positional arguments and when it was sent) and it is at most ``max_age_s`` old: another
    host that can write to this host's queue cannot make it boot, stop or delete anything. A host
    without a key (HYPERVM_HOST_KEY_FILE unset, a development set-up) takes every command."""
    key = host_config.host_key()
    if key is None:
        return True
    kwargs = {"sent_at": sent_at}
    fresh = isinstance(sent_at, int | float) and -COMMAND_CLOCK_SKEW_S <= time.time() - sent_at <= max_age_s
    if fresh and report_signing.verify(key, task, args, kwargs, signature):
        return True
    logger.warning("host.command_refused", extra={"task": task, "signed": bool(signature), "fresh": fresh})
    return False


COMMAND_CLOCK_SKEW_S = 60.0


def send_report(report: dict) -> None:
    """To the portal's queue (the Celery app's default one): the portal writes, never the host."""
    send_to_portal(INSTANCE_REPORT_TASK, [report])


def report_instance(instance_id, state: str | None, **fields) -> None:
    """What this host observes of one of its instances now (portal.services.host_reports): a
    state (pulling, preparing, booting, running, failed, lost, stopped) or None (a note only)."""
    send_report({"instance_id": str(instance_id), "host": host_name() or "", "state": state, **fields})


REPORTED_PHASES = ("preparing", "booting")


@shared_task(name="vmworker.boot_instance", acks_late=True, bind=True, max_retries=MAX_RETRIES)
def boot_instance(
    self, instance_id: str, spec_message: dict, signature: str = "", sent_at: float | None = None
) -> None:
    """Boots the instance the portal's spec describes (portal.services.instance_specs). A
    re-delivered message finds the instance's records and reports what it is (the runtime never
    makes a second VM); one older than this host keeps an ended instance's records is refused.
    An instance that ended while it booted gets its "running" report refused by the portal,
    which sends its removal back."""
    if not _from_portal(self.name, [instance_id, spec_message], signature, sent_at, host_config.instance_retention_s()):
        return
    spec_sent_at = spec_message.get("sent_at") if isinstance(spec_message, dict) else None
    if isinstance(spec_sent_at, int | float) and time.time() - spec_sent_at > host_config.instance_retention_s():
        logger.warning("instance.boot_message_expired", extra={"instance_id": instance_id})
        return
    phase = ["pulling"]  # the last phase reported: a retry's report repeats it (level-triggered)
    report_instance(instance_id, "pulling")
    refused = _registry_refused(spec_message)
    if refused:
        report_instance(instance_id, "failed", launch_failed=True, error=refused)
        return

    def on_phase(name: str) -> None:
        if name in REPORTED_PHASES:
            phase[0] = name
            report_instance(instance_id, name)

    def on_image(prepared) -> None:
        # Its unpacked size goes on the tenant's disk quota (the portal claims it; the unpack
        # was capped at what the spec said was left).
        report_instance(
            instance_id, None, image={"digest": prepared.manifest_digest, "unpacked_bytes": prepared.unpacked_bytes}
        )

    try:
        spec = spec_from_message(
            spec_message,
            publish_host_ip=runtime().settings.publish_host_ip,
            host_name=host_name() or "",
            host_key=host_config.host_key(),
        )
        if spec.instance_id != str(instance_id):
            raise InvalidSpec("the spec is another instance's")
        holders_ended = {str(holder) for holder in spec_message.get("volume_holders_ended") or ()}
        result = runtime().boot(
            spec,
            on_phase=on_phase,
            on_image=on_image,
            volume_holder_ended=lambda holder: holder in holders_ended,
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
        check_image_registry(registry_host, allowed=host_config.platform_registry_hosts())
    except AddressRefused as refused:
        return f"the image's registry {registry_host} is not one the platform pulls from: {refused}"
    return ""


@shared_task(name="vmworker.stop_instance", acks_late=True, bind=True, max_retries=MAX_RETRIES)
def stop_instance(
    self, instance_id: str, grace_s: int | None = None, signature: str = "", sent_at: float | None = None
) -> None:
    """Asks the guest to stop the app (SIGKILL after ``grace_s``, the app's kill grace the portal
    sent) and returns at once (a few seconds of socket I/O at most): a host worker slot is never
    held for the grace the tenant chose. This host's reconcile ends the stop (``_stop_step``).
    Sent again, it changes nothing: the first request's deadline stands."""
    if not _from_portal(self.name, [instance_id, grace_s], signature, sent_at, host_config.instance_retention_s()):
        return
    try:
        _stop_step(instance_id, grace_s)
    except DriverError as exc:
        if not failure_is_transient(exc) or self.request.retries >= self.max_retries:
            raise  # left STOPPING: the host's reconcile asks again
        _retry_later(self, instance_id, exc)


@shared_task(name="vmworker.destroy_volume", acks_late=True, bind=True, max_retries=MAX_RETRIES)
def destroy_volume(
    self, volume_id: str, pool_name: str, volume_name: str, signature: str = "", sent_at: float | None = None
) -> None:
    """Deletes a wiped (or deleted app's) volume through the pool API, then reports it gone (the
    portal drops its row and quota claim). Sent again, it finds the volume gone and only confirms."""
    args = [volume_id, pool_name, volume_name]
    if not _from_portal(self.name, args, signature, sent_at, host_config.instance_retention_s()):
        return
    try:
        runtime().volume_delete(pool_name, volume_name)
    except DriverError as exc:
        if failure_is_transient(exc) and self.request.retries < self.max_retries:
            raise self.retry(
                countdown=retry_countdown_s(self.request.retries), exc=exc, queue=host_queue(host_name())
            ) from exc
        raise  # left destroying: this host's reconcile deletes it
    send_volume_report(volume_id, destroyed=True)


def send_volume_report(volume_id: str, *, used_bytes: int | None = None, destroyed: bool = False) -> None:
    send_to_portal(
        VOLUME_REPORT_TASK, [host_name() or "", str(volume_id)], {"used_bytes": used_bytes, "destroyed": destroyed}
    )


@shared_task(name="vmworker.remove_instances", acks_late=True, bind=True)
def remove_instances(self, name: str, instance_ids: list, signature: str = "", sent_at: float | None = None) -> None:
    """The portal says these instances have ended: their VMs and files go (none of them here is
    a no-op). One that fails is logged; the next host report lists it again."""
    if name != host_name() or not _from_portal(
        self.name, [name, instance_ids], signature, sent_at, host_config.heartbeat_expiry_s()
    ):
        return
    for instance_id in instance_ids:
        try:
            runtime().remove(str(uuid.UUID(str(instance_id))))
        except Exception:
            logger.warning("host.instance_remove_failed", extra={"instance_id": str(instance_id)}, exc_info=True)


@shared_task(name="vmworker.delete_volumes", acks_late=True, bind=True)
def delete_volumes(
    self, name: str, pool_name: str, volume_names: list, signature: str = "", sent_at: float | None = None
) -> None:
    """Volume files of this host's pool that no volume row names (the portal checked): deleted.
    Only names the platform gives, and only in this host's own pool."""
    if name != host_name() or pool_name != storage.pool_name(name):
        return
    if not _from_portal(
        self.name, [name, pool_name, volume_names], signature, sent_at, host_config.heartbeat_expiry_s()
    ):
        return
    for volume_name in volume_names:
        volume_name = str(volume_name)
        if not volume_name.startswith(storage.VOLUME_NAME_PREFIX):
            continue
        try:
            runtime().volume_delete(pool_name, volume_name)
            logger.warning("host.volume_unknown_deleted", extra={"host": name, "volume": volume_name})
        except Exception:
            logger.warning("host.volume_delete_failed", extra={"volume": volume_name}, exc_info=True)


def _volumes_round(plan_volumes: list[dict]) -> None:
    """This host's volumes (the plan's): the blocks each holds now (the app page's "used") go to
    the portal when they changed, and destroying ones no live instance holds are deleted (a
    destroy task lost or failed)."""
    for volume in plan_volumes:
        try:
            pool_name, volume_name = str(volume["pool_name"]), str(volume["volume_name"])
            if not volume["destroying"]:
                used_bytes = runtime().volume_used_bytes(pool_name, volume_name)
                if used_bytes is not None and used_bytes != volume.get("used_bytes"):
                    send_volume_report(volume["volume_id"], used_bytes=used_bytes)
            elif not volume["holder_active"]:
                runtime().volume_delete(pool_name, volume_name)
                send_volume_report(volume["volume_id"], destroyed=True)
        except Exception:
            logger.warning("host.volume_round_failed", extra={"volume_id": str(volume.get("volume_id"))}, exc_info=True)


def _stop_step(instance_id: str, grace_s: int | None) -> None:
    """Asks for the stop if nobody did yet (a no-op when asked before: its deadline stands), then
    reports the instance stopped once the runtime says the stop is over (the app exited, the VM
    is gone, or the deadline passed and the VM was destroyed)."""
    try:
        if runtime().stop_request(instance_id) is None:
            runtime().request_stop(instance_id, grace_s=grace_s)
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


@shared_task(name="vmworker.reconcile_host", acks_late=True, bind=True)
def reconcile_host(
    self,
    name: str,
    probes: list | None = None,
    plan: dict | None = None,
    signature: str = "",
    sent_at: float | None = None,
) -> None:
    """The portal's plan of this host (portal.services.host_sync.host_plan) against what libvirt
    and the instance files say: stops moved on, up instances whose VM vanished or whose app exited
    reported, then the health probes the portal sent of the instances that still run, the sweep
    and the volumes. One instance whose files or VM misbehave (garbage records, a failing release)
    is logged with its id and skipped: the host's work for the others goes on."""
    if name != host_name() or not isinstance(plan, dict):
        return
    if not _from_portal(self.name, [name, probes, plan], signature, sent_at, RECONCILE_MAX_AGE_S):
        return
    running = set()
    for instance_id, grace_s in dict(plan.get("stopping") or {}).items():
        try:
            _stop_step(str(instance_id), grace_s)
        except Exception:
            logger.warning("host.reconcile_instance_failed", extra={"instance_id": str(instance_id)}, exc_info=True)
    for instance_id in plan.get("up") or ():
        try:
            if _reconcile_up(str(instance_id)):
                running.add(str(instance_id))
        except Exception:
            logger.warning("host.reconcile_instance_failed", extra={"instance_id": str(instance_id)}, exc_info=True)
    for instance_id in plan.get("booting") or ():
        try:
            _reconcile_booting(str(instance_id))
        except Exception:
            logger.warning("host.reconcile_instance_failed", extra={"instance_id": str(instance_id)}, exc_info=True)
    stages = (
        ("health", lambda: _health_round([p for p in probes or () if str(p.get("instance_id")) in running])),
        ("sweep", lambda: _sweep_host(name, plan)),
        ("volumes", lambda: _volumes_round(list(plan.get("volumes") or ()))),
    )
    for stage, run in stages:
        try:
            run()
        except Exception:
            logger.warning("host.reconcile_stage_failed", extra={"host": name, "stage": stage}, exc_info=True)


def _reconcile_booting(instance_id: str) -> None:
    """An instance the portal still has booting whose app runs here: its "running" report was lost
    (the broker or the portal's database went away meanwhile) and goes again. A boot under way, a
    boot that never came or one that failed is the boot task's and the portal's to report."""
    if warm_pool.boots_in_progress(runtime(), instance_id):
        return  # its own report follows
    try:
        status = runtime().status(instance_id)
    except InstanceNotFound:
        return
    if status.state == "running":
        logger.warning("instance.running_reported_again", extra={"instance_id": instance_id})
        report_instance(instance_id, "running", user_net=bool(status.ports))


def _reconcile_up(instance_id: str) -> bool:
    """Reports an up instance whose VM vanished or whose app exited; True when it still runs."""
    try:
        status = runtime().status(instance_id)
    except InstanceNotFound:
        status = None
    if status is None or status.state == "lost":
        reason = "the VM disappeared (its QEMU process ended without an exit report)"
        report_instance(
            instance_id,
            "lost",
            launch_failed=True,
            error=reason,
            console_tail=runtime().console_tail(instance_id)[-4000:],
        )
        _release(instance_id)
        return False
    if status.state == "exited":
        reason = f"the app exited with code {status.exit_code}" + (" (OOM)" if status.oom else "")
        report_instance(
            instance_id, "failed", launch_failed=True, error=reason, exit_code=status.exit_code, oom=status.oom
        )
        _release(instance_id)
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


def _release(instance_id: str) -> None:
    """An instance that ended by itself: its domain remnant and its tenant network go from this host."""
    try:
        runtime().release(instance_id)
    except InstanceNotFound:
        pass  # its folder is gone already (pruned, or never made here)


def _sweep_host(name: str, plan: dict) -> None:
    """What no live instance needs any more: tenant networks on this libvirtd that no domain
    uses and no live instance holds an address on (the plan's; skipped while a boot is under
    way, which makes its network before its domain), and the folders of instances ended longer
    ago than HOST_INSTANCE_RETENTION_S that the plan does not name live (so per-round work does
    not grow with every instance ever run)."""
    if not warm_pool.boots_in_progress(runtime()):
        try:
            runtime().network_sweep(wanted_network_ids={str(n) for n in plan.get("networks") or ()})
        except Exception:
            logger.warning("host.network_sweep_failed", extra={"host": name}, exc_info=True)
    keep = {str(instance_id) for instance_id in plan.get("active") or ()}
    runtime().prune_ended(retention_s=host_config.instance_retention_s(), keep=keep)
