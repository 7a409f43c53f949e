"""The one viewset base for tenant-scoped endpoints. It resolves the tenant from the URL
through tenants.access (non-members get 404), checks the role the action needs, and
narrows the queryset to the tenant. Subclasses declare queryset, serializer_class and
``required_roles``; they never filter by tenant themselves."""

from rest_framework import viewsets
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import SAFE_METHODS
from rest_framework.views import APIView

from tenants.access import TenantAccess, tenant_access_resolve
from tenants.choices import TenantRole
from tenants.models import ApiToken


class TenantScopedMixin:
    required_roles: dict[str, str] = {}
    default_read_role = TenantRole.VIEWER
    default_write_role = TenantRole.ADMIN
    access: TenantAccess

    def _action_name(self, request) -> str:
        return getattr(self, "action", None) or request.method.lower()

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        token = request.auth if isinstance(request.auth, ApiToken) else None
        self.access = tenant_access_resolve(user=request.user, slug=kwargs["tenant_slug"], token=token)
        action = self._action_name(request)
        needed = self.required_roles.get(
            action, self.default_read_role if request.method in SAFE_METHODS else self.default_write_role
        )
        if not self.access.allows(needed):
            raise PermissionDenied(f"This needs the {needed} role in this tenant.")

    @property
    def tenant(self):
        return self.access.tenant

    def get_queryset(self):
        queryset = super().get_queryset()
        if getattr(self, "swagger_fake_view", False):  # OpenAPI generation has no request
            return queryset.none()
        return queryset.for_tenant(self.tenant)


class TenantScopedViewSet(TenantScopedMixin, viewsets.GenericViewSet):
    pass


class TenantScopedAPIView(TenantScopedMixin, APIView):
    def get_queryset(self):  # APIViews here work on the tenant itself
        raise NotImplementedError
