"""Locust users for bench/bench_api_load.py: each is one tenant's Marathon client (an API token
pinned to its tenant). Reads: GET /v2/apps, /v2/tasks, /v2/deployments and the tenant's quota on
/api/v1; deploys: POST /v2/apps of a zero-instance app, then its DELETE (?force=true), so the
figures are the API's own path (admission, policy, quota lock, deployment rows), not VM boots.

The tokens come from the 0600 file named by HYPERVM_LOAD_TOKENS_FILE (lines "slug token"), never
from a command line. Runs only under locust (gevent), started by the bench."""

from __future__ import annotations

import itertools
import os
import uuid
from pathlib import Path

from locust import HttpUser, between, task

_TENANTS = [
    line.split(" ", 1) for line in Path(os.environ["HYPERVM_LOAD_TOKENS_FILE"]).read_text().splitlines() if line
]
_NEXT = itertools.cycle(range(len(_TENANTS)))
IMAGE = os.environ["HYPERVM_LOAD_IMAGE"]


class TenantClient(HttpUser):
    wait_time = between(0.05, 0.15)

    def on_start(self) -> None:
        self.slug, token = _TENANTS[next(_NEXT)]
        self.client.headers.update({"Authorization": f"Token {token}", "Content-Type": "application/json"})

    @task(3)
    def list_apps(self) -> None:
        self.client.get("/v2/apps", name="read GET /v2/apps")

    @task(3)
    def list_tasks(self) -> None:
        self.client.get("/v2/tasks", name="read GET /v2/tasks")

    @task(2)
    def list_deployments(self) -> None:
        self.client.get("/v2/deployments", name="read GET /v2/deployments")

    @task(2)
    def quota(self) -> None:
        self.client.get(f"/api/v1/tenants/{self.slug}/quota/", name="read GET /api/v1/tenants/<slug>/quota/")

    @task(1)
    def deploy_and_delete(self) -> None:
        app_id = f"/load-{uuid.uuid4().hex[:10]}"
        definition = {
            "id": app_id,
            "instances": 0,
            "cpus": 0.1,
            "mem": 64,
            "container": {"docker": {"image": IMAGE}},
        }
        with self.client.post("/v2/apps", json=definition, name="deploy POST /v2/apps", catch_response=True) as answer:
            if answer.status_code != 201:
                answer.failure(f"{answer.status_code}: {answer.text[:200]}")
                return
        self.client.delete(f"/v2/apps{app_id}?force=true", name="deploy DELETE /v2/apps/<id>")
