"""Celery entry points of the portal (beat and engine); host tasks live in vmworker.tasks."""

from celery import shared_task


@shared_task(name="portal.converge_app", acks_late=True)
def converge_app(app_id: int) -> None:
    from portal.services.deployments import app_converge

    app_converge(app_id=app_id)


@shared_task(name="portal.reconcile", acks_late=True)
def reconcile() -> None:
    from portal.services.hosts import reconcile_all

    reconcile_all()
