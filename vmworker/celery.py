"""The compute host's own Celery app (``celery -A vmworker worker -Q host.<name>``): configured from
the host's environment (vmworker.host_config), no Django settings, no portal code. Its tasks are
vmworker.tasks; what it sends (instance, host, volume and usage reports) goes to the portal's
queue, the app's default one. JSON only and late acks, as on the portal's side: a task is
redelivered if its worker dies, so every host task is idempotent."""

from celery import Celery

from vmworker import host_config

app = Celery("vmworker", include=["vmworker.tasks"])
app.conf.update(
    broker_url=host_config.broker_url(),
    broker_connection_retry_on_startup=True,
    result_backend=None,
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_default_queue=host_config.portal_queue(),
    worker_hijack_root_logger=True,
)
