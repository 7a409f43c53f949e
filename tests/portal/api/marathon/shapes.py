"""What a Marathon client accepts: the keys marathon-python 0.13.0 parses (client_accepted_keys.json,
generated from its model constructors; a copy of shared/marathon/client-accepted-keys.json) and
Marathon's error body."""

import json
import re
from pathlib import Path

ACCEPTED = json.loads((Path(__file__).parent / "client_accepted_keys.json").read_text())["objects"]
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def accepted_keys(prefix: str) -> set[str]:
    (entry,) = [value for name, value in ACCEPTED.items() if name.startswith(prefix + " ") or name == prefix]
    return set(entry["keys"])


def unknown_keys(prefix: str, obj: dict) -> set[str]:
    return set(obj) - accepted_keys(prefix)


def app_unknown_keys(app: dict) -> dict[str, set[str]]:
    """Keys of an app JSON (and its nested objects) that the client cannot parse, by where they are."""
    found = {
        "app": unknown_keys("app", app),
        "app.upgradeStrategy": unknown_keys("app.upgradeStrategy", app["upgradeStrategy"]),
        "app.versionInfo": unknown_keys("app.versionInfo", app.get("versionInfo", {})),
        "app.lastTaskFailure": unknown_keys("app.lastTaskFailure", app.get("lastTaskFailure", {})),
    }
    if container := app.get("container"):
        found["app.container"] = unknown_keys("app.container", container)
        for mapping in container.get("portMappings", []):
            found["app.container.portMappings[]"] = unknown_keys("app.container.portMappings[]", mapping)
    for definition in app.get("portDefinitions", []):
        found["app.portDefinitions[]"] = unknown_keys("app.portDefinitions[]", definition)
    for task in app.get("tasks", []):
        found |= {f"app.{name}": keys for name, keys in task_unknown_keys(task).items()}
    return {name: keys for name, keys in found.items() if keys}


def task_unknown_keys(task: dict) -> dict[str, set[str]]:
    found = {"task": unknown_keys("task", task)}
    for address in task["ipAddresses"]:
        found["task.ipAddresses[]"] = unknown_keys("task.ipAddresses[]", address)
    for result in task["healthCheckResults"]:
        found["task.healthCheckResults[]"] = unknown_keys("task.healthCheckResults[]", result)
    return {name: keys for name, keys in found.items() if keys}


def marathon_error(response, status: int) -> dict:
    """The JSON body of a Marathon error answer, after checking its status and media type."""
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    body = json.loads(response.content)
    assert isinstance(body["message"], str) and body["message"]
    return body
