"""/api/v1/tenants/<slug>/apps|instances|deployments|networks: the native REST API of the deploy domain.

Tenant scoping and roles come from tenants.api.base (the one rule). App bodies are Marathon
app definitions (the same parser as /v2); bad ones answer 422 with Marathon's ``details``."""

from django.db.models import Count
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import ParseError
from rest_framework.response import Response

from portal.api.serializers import (
    AppSerializer,
    AppVersionSerializer,
    DeploymentSerializer,
    InstanceSerializer,
    NetworkSerializer,
    ScaleSerializer,
)
from portal.choices import DeploymentStatus
from portal.marathon import MarathonValidationError, merge_app_definition, parse_app_definition
from portal.models import App, Deployment, Instance, Network
from portal.platform_policy import platform_policy
from portal.selectors import app_definition
from portal.services import apps as app_services
from tenants.api.base import TenantScopedViewSet
from tenants.choices import TenantRole

WRITE = TenantRole.DEVELOPER


def _marathon_422(exc: MarathonValidationError) -> Response:
    return Response(exc.as_marathon_json(), status=status.HTTP_422_UNPROCESSABLE_ENTITY)


def _deployment_response(deployment, code=status.HTTP_202_ACCEPTED) -> Response:
    return Response(DeploymentSerializer(deployment).data if deployment else {}, status=code)


class AppViewSet(TenantScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """Apps of the tenant. POST/PUT take a Marathon app definition; changes answer 202 with
    the deployment that carries them out."""

    queryset = App.objects.filter(deleting=False).select_related("current_version")
    serializer_class = AppSerializer
    filterset_fields = ["marathon_id"]
    required_roles = {"create": WRITE, "update": WRITE, "destroy": WRITE, "scale": WRITE, "restart": WRITE}

    def _body(self, request) -> dict:
        if not isinstance(request.data, dict):
            raise ParseError("The body must be a JSON object (a Marathon app definition).")
        return request.data

    @extend_schema(request=dict, responses={202: DeploymentSerializer})
    def create(self, request, tenant_slug):
        try:
            definition = parse_app_definition(self._body(request), policy=platform_policy())
        except MarathonValidationError as exc:
            return _marathon_422(exc)
        return _deployment_response(
            app_services.app_create(access=self.access, definition=definition), status.HTTP_201_CREATED
        )

    @extend_schema(request=dict, responses={202: DeploymentSerializer})
    def update(self, request, tenant_slug, pk=None):
        app = self.get_object()
        body = {k: v for k, v in self._body(request).items() if k != "id"}
        try:
            definition = merge_app_definition(app_definition(app), body, policy=platform_policy())
        except MarathonValidationError as exc:
            return _marathon_422(exc)
        force = request.query_params.get("force", "").lower() == "true"
        return _deployment_response(
            app_services.app_update(access=self.access, app=app, definition=definition, force=force)
        )

    def destroy(self, request, tenant_slug, pk=None):
        force = request.query_params.get("force", "").lower() == "true"
        return _deployment_response(app_services.app_delete(access=self.access, app=self.get_object(), force=force))

    @extend_schema(request=ScaleSerializer, responses={202: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def scale(self, request, tenant_slug, pk=None):
        data = ScaleSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _deployment_response(
            app_services.app_scale(
                access=self.access,
                app=self.get_object(),
                instances=data.validated_data["instances"],
                force=data.validated_data["force"],
            )
        )

    @extend_schema(request=None, responses={202: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def restart(self, request, tenant_slug, pk=None):
        return _deployment_response(
            app_services.app_restart(
                access=self.access, app=self.get_object(), force=request.query_params.get("force") == "true"
            )
        )

    @extend_schema(responses=AppVersionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def versions(self, request, tenant_slug, pk=None):
        versions = self.get_object().versions.order_by("-created_at")
        page = self.paginate_queryset(versions)
        return self.get_paginated_response(AppVersionSerializer(page, many=True).data)


class InstanceViewSet(TenantScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    queryset = Instance.objects.select_related("app", "host", "version").order_by("-created_at")
    serializer_class = InstanceSerializer
    filterset_fields = {"app__marathon_id": ["exact"], "status": ["exact"]}


class NetworkViewSet(TenantScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """The tenant's networks (read-only: they are made on first use and removed when unused)."""

    queryset = Network.objects.annotate(addresses_in_use=Count("allocations")).order_by("name")
    serializer_class = NetworkSerializer
    filterset_fields = ["name"]


class DeploymentViewSet(TenantScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    queryset = Deployment.objects.order_by("-created_at")
    serializer_class = DeploymentSerializer
    filterset_fields = {"app_marathon_id": ["exact"], "status": ["exact"]}
    required_roles = {"destroy": WRITE}

    @extend_schema(request=None, responses={202: DeploymentSerializer})
    def destroy(self, request, tenant_slug, pk=None):
        deployment = self.get_object()
        if deployment.status != DeploymentStatus.RUNNING:
            return Response({"detail": "This deployment has finished."}, status=status.HTTP_409_CONFLICT)
        rollback = app_services.deployment_cancel(
            access=self.access, deployment=deployment, force=request.query_params.get("force") == "true"
        )
        return _deployment_response(rollback)
