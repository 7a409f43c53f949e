"""Celery entry points of the portal (beat, engine, and what compute hosts report); host tasks
live in vmworker.tasks and are sent to them by name."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

# A report that meets the database gone (restarting, unreachable) is applied again once it is
# back, in order of arrival at most 2+4+...+30 s later (about 3 min in all); the compare-and-swap
# transitions make a late or repeated report harmless. What is lost past that is healed by the
# host's next heartbeat and reconcile (portal.services.host_sync).
DATABASE_GONE = (OperationalError, InterfaceError)
DATABASE_RETRY = {
    "autoretry_for": DATABASE_GONE,
    "retry_backoff": 2,
    "retry_backoff_max": 30,
    "retry_jitter": False,
    "max_retries": 10,
}


@shared_task(name="portal.converge_app", acks_late=True)
def converge_app(app_id: int) -> None:
    from portal.services.deployments import app_converge

    app_converge(app_id=app_id)


@shared_task(name="portal.reconcile", acks_late=True)
def reconcile() -> None:
    from portal.services.hosts import reconcile_all

    reconcile_all()


def _from_host(task: str, host_name, args: list, kwargs: dict, signature, *, max_age_s: float) -> bool:
    """Signed by the host it speaks for, and sent at most ``max_age_s`` ago (portal.services.host_keys)."""
    from portal.services.host_keys import report_from_host

    return report_from_host(
        task=task, host_name=host_name, args=args, kwargs=kwargs, signature=signature, max_age_s=max_age_s
    )


def _heartbeat_max_age_s() -> float:
    from django.conf import settings

    return settings.HOST_HEARTBEAT_EXPIRY_S


def _report_max_age_s() -> float:
    """An instance or volume report: applied late after the database was away (DATABASE_RETRY)."""
    from django.conf import settings

    return settings.HOST_INSTANCE_RETENTION_S


@shared_task(name="portal.instance_report", acks_late=True, **DATABASE_RETRY)
def instance_report(report: dict, signature: str = "", sent_at: float | None = None) -> None:
    """A compute host's report on one of its instances (portal.services.host_reports)."""
    from portal.services.host_reports import instance_report_apply

    host_name = report.get("host") if isinstance(report, dict) else None
    signed = {"sent_at": sent_at}
    if _from_host("portal.instance_report", host_name, [report], signed, signature, max_age_s=_report_max_age_s()):
        instance_report_apply(report=report)


@shared_task(name="portal.usage_report", acks_late=False)
def usage_report(host_name: str, samples: list, signature: str = "", sent_at: float | None = None) -> None:
    """A compute host's usage samples of its instances (portal.services.usage): at most once,
    a lost batch is the next one's gap."""
    from portal.services.usage import usage_record

    signed = {"sent_at": sent_at}
    if _from_host(
        "portal.usage_report", host_name, [host_name, samples], signed, signature, max_age_s=_heartbeat_max_age_s()
    ):
        usage_record(host_name=host_name, samples=samples)


@shared_task(name="portal.host_report", acks_late=False)
def host_report(report: dict, signature: str = "", sent_at: float | None = None) -> None:
    """A compute host's report on itself (portal.services.host_sync): at most once, the next
    heartbeat's report comes."""
    from portal.services.host_sync import host_report_apply

    host_name = report.get("name") if isinstance(report, dict) else None
    signed = {"sent_at": sent_at}
    if _from_host("portal.host_report", host_name, [report], signed, signature, max_age_s=_heartbeat_max_age_s()):
        host_report_apply(report=report)


@shared_task(name="portal.volume_report", acks_late=True, **DATABASE_RETRY)
def volume_report(
    host_name: str,
    volume_id: str,
    used_bytes=None,
    destroyed: bool = False,
    signature: str = "",
    sent_at: float | None = None,
) -> None:
    """A compute host's report on one of its volumes (portal.services.host_sync)."""
    from portal.services.host_sync import volume_report_apply

    kwargs = {"used_bytes": used_bytes, "destroyed": destroyed, "sent_at": sent_at}
    args = [host_name, volume_id]
    if _from_host("portal.volume_report", host_name, args, kwargs, signature, max_age_s=_report_max_age_s()):
        volume_report_apply(host_name=host_name, volume_id=volume_id, used_bytes=used_bytes, destroyed=destroyed)
