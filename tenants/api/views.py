from django.contrib.auth import get_user_model
from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response

from tenants import selectors, services
from tenants.api import serializers as s
from tenants.api.base import TenantScopedAPIView, TenantScopedViewSet
from tenants.choices import TenantRole
from tenants.filtersets import ImageRegistryFilterSet, MembershipFilterSet, TenantFilterSet
from tenants.models import ApiToken, AuditEntry, ImageRegistry, Membership, Tenant
from tenants.tasks import check_registry


def _validated(serializer_class, data, **kwargs):
    serializer = serializer_class(data=data, **kwargs)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


class TenantViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Tenants the caller belongs to (platform admins: all). Platform admins create tenants."""

    serializer_class = s.TenantSerializer
    filterset_class = TenantFilterSet
    lookup_field = "slug"
    queryset = Tenant.objects.all()

    def get_queryset(self):
        queryset = Tenant.objects.visible_to(self.request.user)
        token = self.request.auth
        if isinstance(token, ApiToken) and token.tenant_id:
            queryset = queryset.filter(pk=token.tenant_id)
        return queryset

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["roles"] = dict(Membership.objects.filter(user=self.request.user).values_list("tenant_id", "role"))
        return context

    @extend_schema(request=s.TenantCreateSerializer, responses={201: s.TenantSerializer})
    def create(self, request):
        data = _validated(s.TenantCreateSerializer, request.data)
        owner = None
        if data.get("owner"):
            owner = get_user_model().objects.filter(username=data["owner"], is_active=True).first()
            if owner is None:
                raise ValidationError({"owner": [f"No active user '{data['owner']}'."]})
        tenant = services.tenant_create(actor=request.user, slug=data["slug"], name=data["name"], owner=owner)
        return Response(self.get_serializer(tenant).data, status=status.HTTP_201_CREATED)


class AuditEntryViewSet(TenantScopedViewSet, mixins.ListModelMixin):
    """The tenant's audit log, newest first (admins and owners): membership, registry, token and
    quota changes, every shell (``exec.shell``) and one-shot command (``exec.run``) in its
    instances. Filter by ``action``."""

    queryset = AuditEntry.objects.select_related("actor").order_by("-created_at", "-id")
    serializer_class = s.AuditEntrySerializer
    filterset_fields = ["action"]
    default_read_role = TenantRole.ADMIN


class MembershipViewSet(TenantScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Members of a tenant. Owners and admins add members, change roles and remove them;
    only owners touch the owner role; the last owner stays."""

    queryset = Membership.objects.select_related("user")
    serializer_class = s.MembershipSerializer
    filterset_class = MembershipFilterSet

    @extend_schema(request=s.MembershipCreateSerializer, responses={201: s.MembershipSerializer})
    def create(self, request, tenant_slug):
        data = _validated(s.MembershipCreateSerializer, request.data)
        membership = services.membership_add(access=self.access, username=data["username"], role=data["role"])
        return Response(self.get_serializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.MembershipUpdateSerializer, responses={200: s.MembershipSerializer})
    def partial_update(self, request, tenant_slug, pk=None):
        data = _validated(s.MembershipUpdateSerializer, request.data)
        membership = services.membership_change_role(
            access=self.access, membership=self.get_object(), role=data["role"]
        )
        return Response(self.get_serializer(membership).data)

    def destroy(self, request, tenant_slug, pk=None):
        services.membership_remove(access=self.access, membership=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)


class QuotaView(TenantScopedAPIView):
    """Limits and current usage. Members read; platform admins set (PUT all, PATCH some).
    A limit may be set below current usage: nothing is stopped, new work is refused."""

    required_roles = {"put": TenantRole.VIEWER, "patch": TenantRole.VIEWER}  # the service demands staff

    def _body(self):
        lines = selectors.quota_report(tenant=self.tenant)
        return {
            "tenant": self.tenant.slug,
            "limits": {line.resource: line.limit for line in lines},
            "usage": {line.resource: line.used for line in lines},
            "over_limit": [line.resource for line in lines if line.over],
        }

    @extend_schema(responses=s.QuotaSerializer)
    def get(self, request, tenant_slug):
        return Response(self._body())

    def _update(self, request, serializer_class):
        data = _validated(serializer_class, request.data)
        services.quota_update(actor=request.user, tenant=self.tenant, limits=dict(data))
        return Response(self._body())

    @extend_schema(request=s.QuotaLimitsSerializer, responses=s.QuotaSerializer)
    def put(self, request, tenant_slug):
        return self._update(request, s.QuotaLimitsSerializer)

    @extend_schema(request=s.QuotaLimitsPatchSerializer, responses=s.QuotaSerializer)
    def patch(self, request, tenant_slug):
        return self._update(request, s.QuotaLimitsPatchSerializer)


class ImageRegistryViewSet(TenantScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Registries the tenant pulls from. Owners and admins manage them; the password is
    write-only and stored encrypted."""

    queryset = ImageRegistry.objects.all()
    serializer_class = s.ImageRegistrySerializer
    filterset_class = ImageRegistryFilterSet

    def create(self, request, tenant_slug):
        data = _validated(s.ImageRegistrySerializer, request.data)
        registry = services.registry_create(access=self.access, **data)
        return Response(self.get_serializer(registry).data, status=status.HTTP_201_CREATED)

    def _update(self, request, partial: bool):
        data = _validated(s.ImageRegistrySerializer, request.data, partial=partial)
        registry = services.registry_update(access=self.access, registry=self.get_object(), **data)
        return Response(self.get_serializer(registry).data)

    def update(self, request, tenant_slug, pk=None):
        return self._update(request, partial=False)

    def partial_update(self, request, tenant_slug, pk=None):
        return self._update(request, partial=True)

    def destroy(self, request, tenant_slug, pk=None):
        services.registry_delete(access=self.access, registry=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={202: None})
    @action(detail=True, methods=["post"])
    def check(self, request, tenant_slug, pk=None):
        """Queue a connectivity + credentials check; the result lands on the registry
        (last_check_ok, last_check_message)."""
        registry = self.get_object()
        transaction.on_commit(lambda: check_registry.delay(registry.pk))
        return Response({"detail": "Check queued."}, status=status.HTTP_202_ACCEPTED)


class ApiTokenViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """The caller's own API tokens. The secret is returned once, at creation."""

    serializer_class = s.ApiTokenSerializer
    queryset = ApiToken.objects.all()

    def get_queryset(self):
        return selectors.api_token_list(user=self.request.user, seen_by=self._request_token())

    def _request_token(self) -> ApiToken | None:
        return self.request.auth if isinstance(self.request.auth, ApiToken) else None

    @extend_schema(request=s.ApiTokenCreateSerializer, responses={201: s.ApiTokenCreatedSerializer})
    def create(self, request):
        data = _validated(s.ApiTokenCreateSerializer, request.data)
        tenant = None
        if data.get("tenant"):
            tenant = selectors.tenant_list(user=request.user).filter(slug=data["tenant"]).first()
            if tenant is None:
                raise ValidationError({"tenant": ["No such tenant."]})
        token, key = services.api_token_create(
            user=request.user, name=data["name"], tenant=tenant, minted_by=self._request_token()
        )
        body = s.ApiTokenSerializer(token).data | {"token": key}
        return Response(body, status=status.HTTP_201_CREATED)

    def destroy(self, request, pk=None):
        token = self.get_queryset().filter(pk=pk).first()
        if token is None:
            raise NotFound("No such token.")
        services.api_token_revoke(user=request.user, token=token)
        return Response(status=status.HTTP_204_NO_CONTENT)
