"""Deploy forms. Both build a Marathon app definition and leave every rule about it to the
pure parser (portal.marathon), the same one the API uses; these forms only check shapes a
browser field can get wrong (a number that is not a number) and map the parser's error
paths back to the field that produced them."""

from __future__ import annotations

import json

from django import forms

from portal.marathon import MarathonValidationError, parse_app_definition
from portal.platform_policy import platform_policy
from tenants.demo_image import DEMO_REFERENCE_PATH, HTTPD_PORT
from tenants.embedded_registry import EmbeddedRegistry
from tenants.errors import DomainError

NO_HEALTH_CHECK = ""
HEALTH_CHECK_CHOICES = [(NO_HEALTH_CHECK, "None"), ("HTTP", "HTTP"), ("TCP", "TCP")]
FULL_REFERENCE = ""
DEMO_IMAGE = DEMO_REFERENCE_PATH
DEMO_REGISTRY_NAME = "local"
EXAMPLE_REPOSITORY = "team/web:1.0"

# Marathon error path prefix -> the form field that produced it (longest prefix first).
FIELD_BY_PATH = (
    ("/container/docker/image", "image"),
    ("/container/portMappings", "ports"),
    ("/container/volumes", "volumes"),
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
    "volumes": "/container/volumes",
    # The form sets no writable layer size (the platform default): volumes are the disk it asks for.
    "disk_mib": "/container/volumes",
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
        return f"{registry.name} (platform registry)"  # its host is in the Image hint: the label stays short
    return f"{registry.name} ({registry.host})"


def demo_registry(registries):
    """Where the demo image is: the platform's embedded registry, else a tenant registry named local."""
    embedded = next((r for r in registries if isinstance(r, EmbeddedRegistry)), None)
    return embedded or next((r for r in registries if r.name == DEMO_REGISTRY_NAME), None)


def image_hint(registry, *, demo) -> str:
    """What the Image field expects with this registry chosen (None: no registry, a full reference)."""
    if registry is None:
        example = f"{demo.host}/{DEMO_IMAGE}" if demo else f"registry.example.com/{EXAMPLE_REPOSITORY}"
        return (
            f"A full reference: registry host, repository and tag, e.g. {example}. "
            "Without a registry host it names an image on Docker Hub (docker.io)."
        )
    if registry is demo:
        example = f"{DEMO_IMAGE} (the demo web server, port {HTTPD_PORT})"
    else:
        example = EXAMPLE_REPOSITORY
    owner = ", the platform's, pull only" if isinstance(registry, EmbeddedRegistry) else ""
    return f"repository:tag in {registry.name} ({registry.host}{owner}), e.g. {example}."


class HintedSelect(forms.Select):
    """A select whose options carry the hint of another field (``data-hint``); portal.js shows the
    chosen option's hint in the element named by ``data-hint-target``, without a round trip."""

    def __init__(self, *args, hints: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.hints = hints or {}

    def create_option(self, name, value, label, selected, index, subindex=None, attrs=None):
        option = super().create_option(name, value, label, selected, index, subindex=subindex, attrs=attrs)
        if str(value) in self.hints:
            option["attrs"]["data-hint"] = self.hints[str(value)]
        return option


class DeployForm(forms.Form):
    app_id = forms.CharField(
        label="App id", max_length=255, initial="/hello", help_text="Lowercase path, e.g. /hello or /shop/web."
    )
    registry = forms.ChoiceField(label="Registry", required=False, widget=HintedSelect)
    image = forms.CharField(label="Image", max_length=512)
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
    volumes = forms.CharField(
        label="Persistent volumes",
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="containerPath:size in MiB per line (data:512), mounted at /mnt/mesos/sandbox/<containerPath>. "
        "Each instance gets its own, kept across restarts and upgrades; counts toward the disk quota.",
    )
    health_check = forms.ChoiceField(label="Health check", choices=HEALTH_CHECK_CHOICES, required=False)
    health_path = forms.CharField(label="Health check path", required=False, initial="/", help_text="HTTP only.")

    def __init__(self, *args, registries=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.registries = {str(r.pk): r for r in registries}
        demo = demo_registry(registries)
        registry = self.fields["registry"]
        registry.choices = [(pk, registry_label(r)) for pk, r in self.registries.items()] + [
            (FULL_REFERENCE, "None: the image is a full reference")
        ]
        # A first deploy: the registry holding the demo image (else the tenant's first), and
        # what the demo image needs to reach healthy (its port, a check on it).
        registry.initial = str(demo.pk) if demo else next(iter(self.registries), FULL_REFERENCE)
        if demo:
            self.fields["ports"].initial = str(HTTPD_PORT)
            self.fields["health_check"].initial = "HTTP"
            self.fields["image"].widget.attrs["placeholder"] = DEMO_IMAGE
        hints = {pk: image_hint(r, demo=demo) for pk, r in self.registries.items()}
        hints[FULL_REFERENCE] = image_hint(None, demo=demo)
        registry.widget.hints = hints
        # Before self["image"] exists: a bound field copies its field's help text when made.
        self.fields["image"].help_text = hints.get(str(self["registry"].value() or ""), hints[FULL_REFERENCE])
        registry.widget.attrs["data-hint-target"] = f"{self['image'].auto_id}_help"

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

    def clean_volumes(self) -> list[tuple[str, int]]:
        volumes = []
        for number, line in enumerate(self.cleaned_data["volumes"].splitlines(), start=1):
            if line.strip():
                path, sep, size = line.strip().rpartition(":")
                try:
                    size_mib = int(size)
                except ValueError:
                    size_mib = None
                if not sep or size_mib is None:
                    raise forms.ValidationError(f"Line {number} is not containerPath:size (data:512).")
                volumes.append((path.strip(), size_mib))
        return volumes

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
        if data["volumes"]:
            definition["container"]["volumes"] = [
                {"containerPath": path, "mode": "RW", "persistent": {"size": size}} for path, size in data["volumes"]
            ]
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
