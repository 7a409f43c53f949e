"""The Celery app: Redis broker, JSON only, late acks (a task is redelivered if its worker
dies, so every task must be idempotent)."""

import os

from celery import Celery

# A server started by hand gets production settings (no debug pages); developers opt into dev.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings.prod")

app = Celery("portal")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Compute hosts run their own app (vmworker/celery.py: ``celery -A vmworker worker``, no Django):
# the portal sends their tasks by name to each host's queue and never runs them.
