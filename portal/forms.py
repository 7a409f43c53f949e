"""Deploy forms. Both build a Marathon app definition and leave every rule about it to the
pure parser (portal.marathon), the same one the API uses; these forms only check shapes a
browser field can get wrong (a number that is not a number) and map the parser's error
paths back to the field that produced them."""

from __future__ import annotations

import json

from django import forms

from portal.marathon import MarathonValidationError, parse_app_definition
from portal.platform_policy import platform_policy
from tenants.embedded_registry import EmbeddedRegistry
from tenants.errors import DomainError

NO_HEALTH_CHECK = ""
HEALTH_CHECK_CHOICES = [(NO_HEALTH_CHECK, "None"), ("HTTP", "HTTP"), ("TCP", "TCP")]
FULL_REFERENCE = ""

# Marathon error path prefix -> the form field that produced it (longest prefix first).
FIELD_BY_PATH = (
    ("/container/docker/image", "image"),
    ("/container/portMappings", "ports"),
    ("/healthChecks", "health_check"),
    ("/networks", "ports"),
    ("/instances", "instances"),
    ("/cpus", "cpus"),
    ("/mem", "mem"),
    ("/cmd", "cmd"),
    ("/env", "env"),
    ("/id", "app_id"),
)
# QuotaExceeded names a quota resource; the definition path that asked for it.
PATH_BY_QUOTA_RESOURCE = {
    "vcpus": "/cpus",
    "memory_mib": "/mem",
    "instances": "/instances",
    "published_ports": "/container/portMappings",
}


def domain_error_path(exc: DomainError) -> str:
    """Where in the definition a service's refusal points (an existing id is about /id)."""
    return PATH_BY_QUOTA_RESOURCE.get(exc.field or "", exc.field or "/id")


def _path_matches(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "(")


def field_for_path(path: str | None) -> str | None:
    for prefix, field in FIELD_BY_PATH:
        if path and _path_matches(path, prefix):
            return field
    return None


def registry_label(registry) -> str:
    if isinstance(registry, EmbeddedRegistry):
        return f"{registry.name} ({registry.host}, the platform's registry, read-only)"
    return f"{registry.name} ({registry.host})"


class DeployForm(forms.Form):
    app_id = forms.CharField(
        label="App id", max_length=255, initial="/hello", help_text="Lowercase path, e.g. /hello or /shop/web."
    )
    registry = forms.ChoiceField(label="Registry", required=False)
    image = forms.CharField(
        label="Image", max_length=512, help_text="repository:tag in that registry, e.g. demo/hello:latest."
    )
    cmd = forms.CharField(label="Command", required=False, help_text="Optional; run with /bin/sh -c.")
    cpus = forms.FloatField(label="vCPUs", initial=0.5)
    mem = forms.IntegerField(label="Memory (MiB)", initial=128)
    instances = forms.IntegerField(label="Instances", initial=1)
    ports = forms.CharField(
        label="Ports", required=False, help_text="Container ports, comma-separated; each is published on a host port."
    )
    env = forms.CharField(
        label="Environment", required=False, widget=forms.Textarea(attrs={"rows": 3}), help_text="KEY=value per line."
    )
    health_check = forms.ChoiceField(label="Health check", choices=HEALTH_CHECK_CHOICES, required=False)
    health_path = forms.CharField(label="Health check path", required=False, initial="/", help_text="HTTP only.")

    def __init__(self, *args, registries=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.registries = {str(r.pk): r for r in registries}
        self.fields["registry"].choices = [(pk, registry_label(r)) for pk, r in self.registries.items()] + [
            (FULL_REFERENCE, "None: the image is a full reference")
        ]

    def clean_ports(self) -> list[int]:
        ports = []
        for item in self.cleaned_data["ports"].replace(" ", ",").split(","):
            if item.strip():
                try:
                    ports.append(int(item))
                except ValueError:
                    raise forms.ValidationError(f"'{item}' is not a port number.") from None
        return ports

    def clean_env(self) -> dict[str, str]:
        env = {}
        for number, line in enumerate(self.cleaned_data["env"].splitlines(), start=1):
            if line.strip():
                name, sep, value = line.partition("=")
                if not sep:
                    raise forms.ValidationError(f"Line {number} is not KEY=value.")
                env[name.strip()] = value
        return env

    def image_reference(self) -> str:
        image = self.cleaned_data["image"].strip()
        registry = self.registries.get(self.cleaned_data["registry"])
        if registry is None or image.startswith(f"{registry.host}/"):  # already a full reference
            return image
        return f"{registry.host}/{image.lstrip('/')}"

    def marathon_json(self) -> dict:
        data = self.cleaned_data
        definition: dict = {
            "id": data["app_id"].strip(),
            "instances": data["instances"],
            "cpus": data["cpus"],
            "mem": data["mem"],
            "container": {"type": "DOCKER", "docker": {"image": self.image_reference()}},
            "networks": [{"mode": "container/bridge"}],
        }
        if data["cmd"].strip():
            definition["cmd"] = data["cmd"].strip()
        if data["ports"]:
            definition["container"]["portMappings"] = [{"containerPort": p, "hostPort": 0} for p in data["ports"]]
        if data["env"]:
            definition["env"] = data["env"]
        if data["health_check"]:
            check = {"protocol": data["health_check"], "portIndex": 0, "intervalSeconds": 2, "gracePeriodSeconds": 120}
            if data["health_check"] == "HTTP":
                check["path"] = data["health_path"].strip() or "/"
            definition["healthChecks"] = [check]
        return definition

    def definition(self):
        """The parsed AppDefinition, or None with every parser error placed at its field."""
        try:
            return parse_app_definition(self.marathon_json(), policy=platform_policy())
        except MarathonValidationError as exc:
            for detail in exc.details:
                self.add_path_errors(detail["path"], detail["errors"])
            return None

    def add_path_errors(self, path: str | None, messages: list[str]) -> None:
        field = field_for_path(path)
        # A message about a part of the field (a port, a variable) keeps its path.
        exact = any(path == prefix for prefix, name in FIELD_BY_PATH if name == field)
        for message in messages:
            if field is None:
                self.add_error(None, f"{path}: {message}")
            else:
                self.add_error(field, message if exact else f"{message} ({path})")

    def add_domain_error(self, exc: DomainError) -> None:
        self.add_path_errors(domain_error_path(exc), [exc.message])


class MarathonJsonForm(forms.Form):
    """The "paste Marathon JSON" mode: malformed JSON is reported by line and column, and each
    parser error by its path (``path_errors``, rendered next to the textarea)."""

    definition_json = forms.CharField(label="Marathon app definition (JSON)", widget=forms.Textarea(attrs={"rows": 18}))

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.path_errors: list[dict] = []
        self.json_error_position: tuple[int, int] | None = None

    def clean_definition_json(self) -> dict:
        text = self.cleaned_data["definition_json"]
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            self.json_error_position = (exc.lineno, exc.colno)
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}.", code="json"
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError('The definition must be a JSON object: {"id": "/hello", ...}.')
        return value

    def definition(self):
        try:
            return parse_app_definition(self.cleaned_data["definition_json"], policy=platform_policy())
        except MarathonValidationError as exc:
            self.path_errors = list(exc.details)
            self.add_error(
                "definition_json", f"The definition has {len(exc.details)} invalid field(s), listed beside it."
            )
            return None

    def add_domain_error(self, exc: DomainError) -> None:
        self.path_errors.append({"path": domain_error_path(exc), "errors": [exc.message]})
        self.add_error("definition_json", exc.message)


class ScaleForm(forms.Form):
    instances = forms.IntegerField(min_value=0, max_value=1000)
