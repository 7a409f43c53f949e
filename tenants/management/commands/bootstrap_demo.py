"""Makes the embedded defaults the run command promises: a platform admin and a demo tenant
it owns. The local registry is the platform's (tenants.embedded_registry, set by the run
command), offered to every tenant, so the demo tenant gets no registry of its own. Idempotent;
the admin password lives in a 0600 file under the state dir and is printed, never hard-coded."""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from portal.secrets import read_or_create_secret
from tenants import services
from tenants.choices import TenantRole
from tenants.models import Membership, Tenant


class Command(BaseCommand):
    help = "Create the demo admin and the demo tenant; print the login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")
        parser.add_argument("--tenant", default="demo")

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

        self.stdout.write(f"demo tenant: {tenant.slug}")
        self.stdout.write(f"login: {admin.username} / {password}")
        self.stdout.write(f"(password kept in {password_file})")
