"""The Celery app: Redis broker, JSON only, late acks (a task is redelivered if its worker
dies, so every task must be idempotent)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.dev")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# The host side is not a Django app; its Celery glue is vmworker/tasks.py.
app.autodiscover_tasks(["vmworker"])
