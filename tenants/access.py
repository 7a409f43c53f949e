"""Tenant authorization: the one place that decides who reaches which tenant and with what
role. API viewsets, UI views and WebSocket consumers all call ``tenant_access_resolve``; a
tenant the user may not see is reported as not found, never as forbidden, so ids of other
tenants leak nothing."""

from dataclasses import dataclass

from django.db.models import OuterRef, Subquery
from django.http import Http404

from tenants.choices import TenantRole, role_at_least
from tenants.models import ApiToken, Membership, Tenant


class TenantNotFound(Http404):
    pass


class RoleRequired(Exception):
    def __init__(self, minimum: str):
        super().__init__(f"This needs the {minimum} role in this tenant.")
        self.minimum = minimum


@dataclass(frozen=True)
class TenantAccess:
    tenant: Tenant
    role: str | None  # the membership role; None for a platform admin without membership
    is_platform_admin: bool
    actor: object = None  # the user acting; services write it to the audit log

    def allows(self, minimum: str) -> bool:
        return self.is_platform_admin or role_at_least(self.role, minimum)

    def require(self, minimum: str) -> None:
        if not self.allows(minimum):
            raise RoleRequired(minimum)

    @property
    def effective_role(self) -> str | None:
        return TenantRole.OWNER if self.is_platform_admin else self.role


def tenant_access_resolve(*, user, slug: str, token: ApiToken | None = None) -> TenantAccess:
    if token is not None and token.tenant_id is not None and token.tenant.slug != slug:
        raise TenantNotFound("No such tenant.")
    # One query on every API request: the tenant as the visibility rule gives it, with the
    # user's role in it (none for a platform admin who is no member).
    membership_role = Membership.objects.filter(tenant=OuterRef("pk"), user=user).order_by().values("role")[:1]
    tenant = Tenant.objects.visible_to(user).filter(slug=slug).annotate(_role=Subquery(membership_role)).first()
    if tenant is None:
        raise TenantNotFound("No such tenant.")
    role = tenant.__dict__.pop("_role")
    return TenantAccess(tenant=tenant, role=role, is_platform_admin=bool(user.is_staff), actor=user)
