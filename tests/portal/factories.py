"""Factories for the portal's rows: compute hosts, apps with a stored version, instances.

They write rows only (no quota claims, no events, no boots): for placement and engine tests
that need a given state of the world. Tests of the services' own writes call the services."""

import factory
from django.utils import timezone

from portal.choices import InstanceStatus, VirtType
from portal.marathon import parse_app_definition
from portal.models import App, AppVersion, ComputeHost, Instance
from tests.tenants.factories import TenantFactory

DEFINITION = {
    "cmd": "sleep 3600",
    "cpus": 0.1,
    "mem": 64,
    "container": {"docker": {"image": "127.0.0.1:5000/demo/hello:latest"}},
}


class ComputeHostFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ComputeHost

    name = factory.Sequence(lambda n: f"host-{n}")
    queue = factory.LazyAttribute(lambda host: f"host.{host.name}")
    libvirt_uri = "qemu:///system"
    vcpus = 8
    memory_mib = 16384
    virt_type = VirtType.QEMU
    last_heartbeat_at = factory.LazyFunction(timezone.now)


class AppFactory(factory.django.DjangoModelFactory):
    """An app and its current version; `definition` (Marathon JSON fields) is merged into
    DEFINITION and parsed as the API would."""

    class Meta:
        model = App
        skip_postgeneration_save = True

    tenant = factory.SubFactory(TenantFactory)
    marathon_id = factory.Sequence(lambda n: f"/app-{n}")

    @factory.post_generation
    def definition(app, create, extracted, **kwargs):
        if not create:
            return
        AppVersionFactory(app=app, definition_fields=extracted or {})


class AppVersionFactory(factory.django.DjangoModelFactory):
    """A new version of `app`, made its current one."""

    class Meta:
        model = AppVersion
        exclude = ("definition_fields",)
        skip_postgeneration_save = True

    app = factory.SubFactory(AppFactory)
    version = factory.Sequence(lambda n: f"2026-12-05T00:00:{n % 60:02d}.{n:03d}Z")
    definition_fields: dict = {}
    definition = factory.LazyAttribute(
        lambda version: parse_app_definition(
            {**DEFINITION, **version.definition_fields, "id": version.app.marathon_id}
        ).to_stored()
    )

    @factory.post_generation
    def make_current(version, create, extracted, **kwargs):
        if create and extracted is not False:
            App.objects.filter(pk=version.app_id).update(current_version=version)
            version.app.current_version = version


class InstanceFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Instance

    app = factory.SubFactory(AppFactory)
    tenant = factory.LazyAttribute(lambda instance: instance.app.tenant)
    version = factory.LazyAttribute(lambda instance: instance.app.current_version)
    status = InstanceStatus.STAGED
    vcpus = 1
    memory_mib = 64
    host = None
    host_ports = factory.LazyFunction(list)
