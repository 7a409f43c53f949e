"""Builders for app definition payloads and a helper that returns a failed parse's errors by path."""

from __future__ import annotations

import copy

from portal.marathon import MarathonValidationError, parse_app_definition

BRIDGE_WEB_APP = {
    "id": "/shop/web",
    "container": {
        "type": "DOCKER",
        "docker": {"image": "127.0.0.1:5000/demo/http:1.0"},
        "portMappings": [{"containerPort": 8080, "hostPort": 0, "name": "http"}],
    },
    "networks": [{"mode": "container/bridge"}],
    "healthChecks": [{"protocol": "HTTP", "path": "/health", "portIndex": 0}],
}


def bridge_web_app(**overrides: object) -> dict:
    return {**copy.deepcopy(BRIDGE_WEB_APP), **overrides}


def command_app(**overrides: object) -> dict:
    return {"id": "/sleeper", "cmd": "sleep 3600", **overrides}


def errors_by_path(data: object, **parse_options: object) -> dict[str, list[str]]:
    try:
        parse_app_definition(data, **parse_options)
    except MarathonValidationError as error:
        return {detail["path"]: detail["errors"] for detail in error.details}
    raise AssertionError("the definition parsed, but errors were expected")
