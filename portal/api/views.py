"""/api/v1/tenants/<slug>/apps|instances|deployments|networks: the native REST API of the deploy domain.

Tenant scoping and roles come from tenants.api.base (the one rule). App bodies are Marathon
app definitions (the same parser as /v2); bad ones answer 422 with Marathon's ``details``."""

from django.db.models import Count
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ParseError, PermissionDenied
from rest_framework.response import Response

from portal.api.serializers import (
    AppSerializer,
    AppVersionSerializer,
    DeploymentSerializer,
    ExecRequestSerializer,
    ExecResultSerializer,
    InstanceSerializer,
    NetworkSerializer,
    ScaleSerializer,
    VolumeSerializer,
)
from portal.choices import DeploymentStatus
from portal.marathon import MarathonValidationError, merge_app_definition, parse_app_definition
from portal.models import App, Deployment, Instance, Network, Volume
from portal.platform_policy import platform_policy
from portal.selectors import app_counts_many, app_definition
from portal.services import apps as app_services
from portal.services import exec as exec_services
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

    def list(self, request, *args, **kwargs):
        """One query for every listed app's counts, whatever the page's size."""
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        apps = list(page) if page is not None else list(queryset)
        definitions = {app.pk: app_definition(app) for app in apps}
        context = self.get_serializer_context() | {
            "definitions": definitions,
            "counts": app_counts_many(apps, definitions),
        }
        data = self.get_serializer(apps, many=True, context=context).data
        return self.get_paginated_response(data) if page is not None else Response(data)

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
    required_roles = {"exec": WRITE}

    @extend_schema(request=ExecRequestSerializer, responses={200: ExecResultSerializer})
    @action(detail=True, methods=["post"], url_path="exec")
    def exec(self, request, tenant_slug, pk=None):
        """Runs one command in the instance's container (``/bin/sh -c`` of the quoted arguments, as
        the app's user with its env) and answers its output (stdout and stderr together) and exit
        code; see portal.services.exec for the caps. Every call is in the audit log."""
        body = ExecRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            result = exec_services.exec_run(
                access=self.access,
                instance_id=pk,
                command=body.validated_data["command"],
                timeout=body.validated_data.get("timeout"),
            )
        except exec_services.ExecCommandInvalid as exc:
            field = "timeout" if str(exc).startswith("timeout") else "command"
            return Response({field: [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        except exec_services.ExecRefused as exc:
            raise PermissionDenied(str(exc)) from None
        except exec_services.InstanceNotFound as exc:
            raise NotFound(str(exc)) from None
        except exec_services.InstanceNotRunning as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        except exec_services.ExecUnavailable as exc:
            return Response(
                {"detail": str(exc) or "The instance's host did not answer."}, status=status.HTTP_502_BAD_GATEWAY
            )
        return Response(
            {
                "output": result.output.decode("utf-8", "replace"),
                "exit_code": result.exit_code,
                "timed_out": result.timed_out,
                "truncated": result.truncated,
            }
        )


class NetworkViewSet(TenantScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """The tenant's networks (read-only: they are made on first use and removed when unused)."""

    queryset = Network.objects.annotate(addresses_in_use=Count("allocations")).order_by("name")
    serializer_class = NetworkSerializer
    filterset_fields = ["name"]


class VolumeViewSet(TenantScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    """The tenant's persistent volumes (read-only: made with their app's instances, destroyed by a
    wipe or the app's deletion). A deleted app's volumes stay listed, ``destroying``, until their
    host has deleted them."""

    queryset = Volume.objects.select_related("host").order_by("app_marathon_id", "slot", "container_path")
    serializer_class = VolumeSerializer
    filterset_fields = {"app_marathon_id": ["exact"], "state": ["exact"]}


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
