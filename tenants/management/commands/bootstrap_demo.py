"""Makes the embedded defaults the run command promises: a platform admin, a demo tenant
it owns, and (when given) the local registry as the demo tenant's registry. Idempotent; the
admin password lives in a 0600 file under the state dir and is printed, never hard-coded."""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from portal.secrets import read_or_create_secret
from tenants import services
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.models import ImageRegistry, Membership, Tenant


class Command(BaseCommand):
    help = "Create the demo admin, the demo tenant and its local registry; print the login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--tenant", default="demo")
        parser.add_argument("--registry-url", default="", help="e.g. http://127.0.0.1:5000")
        parser.add_argument("--registry-username", default="")
        parser.add_argument(
            "--registry-password-file", default="", help="file holding the registry password (never on argv)"
        )

    @transaction.atomic
    def handle(self, *args, **options):
        password_file = Path(settings.STATE_DIR) / "secrets" / "demo-admin-password"
        password = read_or_create_secret(password_file, make=lambda: secrets.token_urlsafe(12))
        User = get_user_model()
        admin, _ = User.objects.get_or_create(username=options["username"], defaults={"email": "admin@example.test"})
        admin.is_staff = admin.is_superuser = admin.is_active = True
        admin.set_password(password)
        admin.save()

        tenant = Tenant.objects.filter(slug=options["tenant"]).first()
        if tenant is None:
            tenant = services.tenant_create(actor=admin, slug=options["tenant"], name="Demo", owner=admin)
        Membership.objects.get_or_create(tenant=tenant, user=admin, defaults={"role": TenantRole.OWNER})

        if options["registry_url"]:
            registry_password = ""
            if options["registry_password_file"]:
                registry_password = Path(options["registry_password_file"]).read_text().strip()
            access = tenant_access_resolve(user=admin, slug=tenant.slug)
            fields = {
                "url": options["registry_url"],
                "username": options["registry_username"],
                "password": registry_password,
                "insecure": True,
            }
            existing = ImageRegistry.objects.for_tenant(tenant).filter(name="local").first()
            if existing is None:
                services.registry_create(access=access, name="local", **fields)
            else:
                services.registry_update(access=access, registry=existing, **fields)

        self.stdout.write(f"demo tenant: {tenant.slug}")
        self.stdout.write(f"login: {admin.username} / {password}")
        self.stdout.write(f"(password kept in {password_file})")
