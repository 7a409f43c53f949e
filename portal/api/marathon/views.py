"""The Marathon-compatible ``/v2`` API: thin views that parse the request, call one service or
selector, and render Marathon's shapes (``render``). Errors leave as Marathon error bodies
(``errors``); the tenant and role come from ``auth``. Every endpoint, status code and quirk
follows shared/marathon/API-NOTES.md."""

from __future__ import annotations

import json
import uuid

from django.db import transaction
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from portal import selectors
from portal.api.marathon import render
from portal.api.marathon.auth import SAFE_METHODS, marathon_access_resolve
from portal.api.marathon.errors import (
    MarathonApiError,
    app_not_found,
    invalid_json,
    marathon_error_response,
    task_not_found,
)
from portal.api.marathon.event_stream import EVENT_STREAM_MEDIA_TYPE, event_stream_frames
from portal.api.marathon.throttle import marathon_throttle_check
from portal.choices import INSTANCE_ACTIVE, InstanceStatus
from portal.marathon import AppDefinition, MarathonValidationError, merge_app_definition, parse_app_definition
from portal.models import App, Deployment
from portal.platform_policy import platform_policy
from portal.services import apps as app_services
from portal.stream_security import StreamCredentials, StreamGuard, request_origin_allowed, too_many_streams_message
from tenants.choices import TenantRole

FOREIGN_ORIGIN_MESSAGE = (
    "The session may stream /v2/events only from the portal's own origin: use an API token from elsewhere."
)
ROLLBACK_COMPANION_FIELDS = frozenset({"id", "version"})
TASK_STATUS_FILTERS = {
    "running": (InstanceStatus.RUNNING, InstanceStatus.HEALTHY, InstanceStatus.UNHEALTHY),
    "staging": (InstanceStatus.STAGED, InstanceStatus.PULLING, InstanceStatus.PREPARING, InstanceStatus.BOOTING),
}


# ---- request parsing ------------------------------------------------------------------------------


def query_flag(request, name: str, default: bool = False) -> bool:
    """A boolean query parameter; Python clients send ``True``/``False``, the spec ``true``/``false``."""
    raw = request.GET.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered not in ("true", "false"):
        raise MarathonApiError(400, f"Query parameter '{name}' must be 'true' or 'false', not '{raw}'.")
    return lowered == "true"


def _reject_constant(constant: str) -> object:
    raise ValueError(f"{constant} is not a JSON number")


def json_body(request) -> object:
    if not request.body:
        raise invalid_json("the request body is empty")
    try:
        return json.loads(request.body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid_json(str(error)) from None


def json_object_body(request) -> dict:
    body = json_body(request)
    if not isinstance(body, dict):
        raise invalid_json(f"expected a JSON object, got {type(body).__name__}")
    return body


def canonical_app_id(raw: str) -> str:
    """``//a/b/`` -> ``/a/b``: marathon-python doubles the slash of absolute ids."""
    return "/" + "/".join(segment for segment in raw.split("/") if segment)


# ---- responses ------------------------------------------------------------------------------------


def deployment_response(deployment: Deployment, *, status: int = 200, location: str | None = None) -> JsonResponse:
    response = JsonResponse(render.deployment_result(deployment), status=status)
    response["Marathon-Deployment-Id"] = str(deployment.id)
    if location is not None:
        response["Location"] = location
    return response


# ---- the base view --------------------------------------------------------------------------------


@method_decorator(csrf_exempt, name="dispatch")  # token clients have no CSRF token; sessions are checked in auth
class MarathonView(View):
    """Authenticates, checks the role the method needs, and turns errors into Marathon bodies."""

    requires_authentication = True
    read_role = TenantRole.VIEWER
    write_role = TenantRole.DEVELOPER

    def dispatch(self, request, *args, **kwargs):
        try:
            method = request.method.lower()
            handler = getattr(self, method, None) if method in self.http_method_names else None
            if handler is None:
                raise MarathonApiError(405, f"{request.method} is not allowed on {request.path}")
            if self.requires_authentication:
                self.access = marathon_access_resolve(request)
                marathon_throttle_check(request, user=self.access.actor, view=self)
                self.access.require(self.read_role if request.method in SAFE_METHODS else self.write_role)
                self.renderer = render.TenantRenderer(
                    self.access.tenant, start_kind=render.wants_start_kind(request.GET.getlist("embed"))
                )
            return handler(request, *args, **kwargs)
        except Exception as exc:
            response = marathon_error_response(exc)
            if response is None:
                raise
            return response

    @property
    def tenant(self):
        return self.access.tenant

    def app_or_404(self, app_id: str) -> App:
        app = selectors.app_get(tenant=self.tenant, marathon_id=app_id)
        if app is None:
            raise app_not_found(app_id)
        return app


# ---- liveness and server info ---------------------------------------------------------------------


class PingView(MarathonView):
    requires_authentication = False

    def get(self, request):
        return HttpResponse("pong", content_type="text/plain")


class InfoView(MarathonView):
    def get(self, request):
        return JsonResponse(render.info_json(tenant=self.tenant, host=request.get_host()))


class LeaderView(MarathonView):
    def get(self, request):
        return JsonResponse({"leader": request.get_host()})


class MetricsView(MarathonView):
    def get(self, request):
        gauges = {
            "apps": {"value": selectors.app_list(tenant=self.tenant).count()},
            "instances.active": {"value": selectors.instance_list(tenant=self.tenant).count()},
            "deployments.running": {"value": selectors.deployment_list_running(tenant=self.tenant).count()},
        }
        return JsonResponse(
            {"version": "4.0.0", "gauges": gauges, "counters": {}, "histograms": {}, "meters": {}, "timers": {}}
        )


class QueueView(MarathonView):
    def get(self, request):
        # Launches wait in the deployment, not in an offer queue: there is nothing to list.
        return JsonResponse({"queue": []})


# ---- apps -----------------------------------------------------------------------------------------


class AppsView(MarathonView):
    def get(self, request):
        apps = selectors.app_list(
            tenant=self.tenant,
            id_contains=request.GET.get("id") or None,
            cmd_contains=request.GET.get("cmd") or None,
            label=request.GET.get("label") or None,
        )
        embeds = render.AppEmbeds.from_query(request.GET.getlist("embed"), default=render.LIST_EMBEDS)
        return JsonResponse({"apps": self.renderer.apps(list(apps), embeds)})

    def post(self, request):
        definition = parse_app_definition(json_object_body(request), policy=platform_policy())
        deployment = app_services.app_create(
            access=self.access, definition=definition, force=query_flag(request, "force")
        )
        app = self.app_or_404(definition.id)
        body = self.renderer.app(app, render.AppEmbeds(tasks=True))
        response = JsonResponse(body, status=201)
        response["Location"] = definition.id
        response["Marathon-Deployment-Id"] = str(deployment.id)
        return response

    def put(self, request):
        """Create or update several apps; all of them change, or none (one transaction)."""
        body = json_body(request)
        if not isinstance(body, list):
            raise invalid_json(f"expected a JSON array of apps, got {type(body).__name__}")
        partial = query_flag(request, "partialUpdate", default=True)
        force = query_flag(request, "force")
        changes = self._parse_app_list(body, partial=partial)
        with transaction.atomic():
            deployments = [
                app_services.app_create(access=self.access, definition=definition, force=force)
                if app is None
                else app_services.app_update(access=self.access, app=app, definition=definition, force=force)
                for app, definition in changes
            ]
        if not deployments:
            raise invalid_json("the array holds no apps")
        return deployment_response(deployments[-1])

    def _parse_app_list(self, bodies: list, *, partial: bool) -> list[tuple[App | None, AppDefinition]]:
        """Every app's definition, or one 422 listing the bad fields of all of them (``/(i)/path``)."""
        changes, details = [], []
        for index, app_body in enumerate(bodies):
            try:
                if not isinstance(app_body, dict) or not isinstance(app_body.get("id"), str):
                    raise MarathonValidationError([{"path": "/id", "errors": ["is required"]}])
                app = selectors.app_get(tenant=self.tenant, marathon_id=canonical_app_id(app_body["id"]))
                changes.append((app, _changed_definition(app, app_body, partial=partial)))
            except MarathonValidationError as error:
                details += [{**detail, "path": f"/({index}){detail['path'].rstrip('/')}"} for detail in error.details]
        if details:
            raise MarathonValidationError(details)
        return changes


def _changed_definition(app: App | None, body: dict, *, partial: bool) -> AppDefinition:
    """The definition a PUT/PATCH body asks for: merged into the stored one (partial update), or
    complete on its own. The URL's id wins over the body's."""
    if app is None:
        definition = parse_app_definition(body, policy=platform_policy())
    elif partial:
        definition = merge_app_definition(selectors.app_definition(app), body, policy=platform_policy())
    else:
        definition = parse_app_definition({**body, "id": app.marathon_id}, policy=platform_policy())
    assert isinstance(definition, AppDefinition)
    return definition


class AppView(MarathonView):
    def get(self, request, app_id: str):
        embeds = render.AppEmbeds.from_query(request.GET.getlist("embed"), default=render.SINGLE_APP_EMBEDS)
        return JsonResponse({"app": self.renderer.app(self.app_or_404(app_id), embeds)})

    def put(self, request, app_id: str):
        body = json_object_body(request)
        force = query_flag(request, "force")
        app = selectors.app_get(tenant=self.tenant, marathon_id=app_id)
        if _is_rollback(body):
            app = app or self.app_or_404(app_id)
            deployment = app_services.app_rollback(access=self.access, app=app, version=body["version"], force=force)
            return deployment_response(deployment)
        if app is None:  # the portal creates on PUT, as Marathon does
            definition = _changed_definition(None, {**body, "id": app_id}, partial=False)
            deployment = app_services.app_create(access=self.access, definition=definition, force=force)
            return deployment_response(deployment, status=201, location=app_id)
        definition = _changed_definition(app, body, partial=query_flag(request, "partialUpdate", default=True))
        return deployment_response(
            app_services.app_update(access=self.access, app=app, definition=definition, force=force)
        )

    def patch(self, request, app_id: str):
        body = json_object_body(request)
        force = query_flag(request, "force")
        app = self.app_or_404(app_id)
        if _is_rollback(body):
            deployment = app_services.app_rollback(access=self.access, app=app, version=body["version"], force=force)
            return deployment_response(deployment)
        definition = _changed_definition(app, body, partial=True)
        return deployment_response(
            app_services.app_update(access=self.access, app=app, definition=definition, force=force)
        )

    def delete(self, request, app_id: str):
        app = self.app_or_404(app_id)
        return deployment_response(
            app_services.app_delete(access=self.access, app=app, force=query_flag(request, "force"))
        )


def _is_rollback(body: dict) -> bool:
    """``{"version": v}`` alone (with ``id`` at most) re-deploys a stored version."""
    if body.get("version") is None:
        return False
    if not isinstance(body["version"], str):
        raise MarathonValidationError([{"path": "/version", "errors": ["must be a version string"]}])
    if set(body) - ROLLBACK_COMPANION_FIELDS:
        raise MarathonValidationError(
            [{"path": "/version", "errors": ["The 'version' field may only be combined with the 'id' field."]}]
        )
    return True


class AppRestartView(MarathonView):
    def post(self, request, app_id: str):
        app = self.app_or_404(app_id)
        return deployment_response(
            app_services.app_restart(access=self.access, app=app, force=query_flag(request, "force"))
        )


class AppVersionsView(MarathonView):
    def get(self, request, app_id: str):
        app = self.app_or_404(app_id)
        return JsonResponse({"versions": list(selectors.app_versions(app).values_list("version", flat=True))})


class AppVersionView(MarathonView):
    def get(self, request, app_id: str, version: str):
        app = self.app_or_404(app_id)
        stored = selectors.app_versions(app).filter(version=version).first()
        if stored is None:
            raise MarathonApiError(404, f"App '{app_id}' does not exist in version {version}")
        return JsonResponse(self.renderer.app_version(app, stored))


# ---- tasks ----------------------------------------------------------------------------------------


def kill_flags(request) -> tuple[bool, bool, bool]:
    """(scale, force, wipe) of a kill request; wipe also destroys the tasks' persistent volumes."""
    scale, wipe = query_flag(request, "scale"), query_flag(request, "wipe")
    if scale and wipe:
        raise MarathonApiError(400, "scale=true and wipe=true cannot be combined.")
    return scale, query_flag(request, "force"), wipe


class AppTasksView(MarathonView):
    def get(self, request, app_id: str):
        app = self.app_or_404(app_id)
        instances = selectors.instance_list(tenant=self.tenant, app=app)
        return JsonResponse({"tasks": [self.renderer.task(instance) for instance in instances]})

    def delete(self, request, app_id: str):
        app = self.app_or_404(app_id)
        scale, force, wipe = kill_flags(request)
        instances = selectors.instance_list(tenant=self.tenant, app=app)
        if host := request.GET.get("host"):
            instances = instances.filter(host__name=host)
        instances = list(instances)
        deployment = app_services.instance_kill(
            access=self.access, instances=instances, scale=scale, force=force, wipe=wipe
        )
        if scale and deployment is not None:
            return deployment_response(deployment)
        return JsonResponse({"tasks": [self.renderer.task(instance) for instance in _reloaded(instances)]})


class AppTaskView(MarathonView):
    def delete(self, request, app_id: str, task_id: str):
        app = self.app_or_404(app_id)
        scale, force, wipe = kill_flags(request)
        instance = selectors.instance_by_task_id(tenant=self.tenant, task_id=task_id)
        if instance is None or instance.app_id != app.pk or instance.status not in INSTANCE_ACTIVE:
            raise task_not_found(task_id)
        deployment = app_services.instance_kill(
            access=self.access, instances=[instance], scale=scale, force=force, wipe=wipe
        )
        if scale and deployment is not None:
            return deployment_response(deployment)
        (instance,) = _reloaded([instance])
        return JsonResponse({"task": self.renderer.task(instance)})


def _reloaded(instances: list) -> list:
    for instance in instances:
        instance.refresh_from_db(fields=["status", "phase_times", "health", "host_ports", "ip_address"])
    return instances


class TasksView(MarathonView):
    def get(self, request):
        instances = selectors.instance_list(tenant=self.tenant)
        statuses = [status.lower() for status in request.GET.getlist("status") if status]
        if unknown := [status for status in statuses if status not in TASK_STATUS_FILTERS]:
            raise MarathonApiError(400, f"Unknown task status filter '{unknown[0]}': use 'running' or 'staging'.")
        if statuses:
            instances = instances.filter(
                status__in=[status for name in statuses for status in TASK_STATUS_FILTERS[name]]
            )
        return JsonResponse({"tasks": [self.renderer.task(instance) for instance in instances]})


class TasksDeleteView(MarathonView):
    def post(self, request):
        body = json_object_body(request)
        task_ids = body.get("ids")
        if not isinstance(task_ids, list) or not all(isinstance(task_id, str) for task_id in task_ids):
            raise MarathonValidationError([{"path": "/ids", "errors": ["must be an array of task id strings"]}])
        scale, force, wipe = kill_flags(request)
        found = [self._instance_or_skip(task_id) for task_id in task_ids]
        instances = list(
            {instance.pk: instance for instance in found if instance and instance.status in INSTANCE_ACTIVE}.values()
        )
        deployment = app_services.instance_kill(
            access=self.access, instances=instances, scale=scale, force=force, wipe=wipe
        )
        if scale and deployment is not None:
            return deployment_response(deployment)
        return JsonResponse({"tasks": [self.renderer.task(instance) for instance in _reloaded(instances)]})

    def _instance_or_skip(self, task_id: str):
        """Unknown ids are skipped, as Marathon does; a malformed one is a 400."""
        _, separator, instance_uuid = task_id.rpartition(".instance-")
        try:
            uuid.UUID(instance_uuid)
        except ValueError:
            separator = ""
        if not separator:
            raise MarathonApiError(400, f"Task id '{task_id}' is malformed.")
        return selectors.instance_by_task_id(tenant=self.tenant, task_id=task_id)


# ---- deployments ----------------------------------------------------------------------------------


class DeploymentsView(MarathonView):
    def get(self, request):
        deployments = selectors.deployment_list_running(tenant=self.tenant)
        return JsonResponse([render.deployment_json(deployment) for deployment in deployments], safe=False)


class DeploymentView(MarathonView):
    def delete(self, request, deployment_id: str):
        deployment = self._running_deployment_or_404(deployment_id)
        rollback = app_services.deployment_cancel(
            access=self.access, deployment=deployment, force=query_flag(request, "force")
        )
        if rollback is None:
            return HttpResponse(status=202)
        return deployment_response(rollback)

    def _running_deployment_or_404(self, deployment_id: str) -> Deployment:
        try:
            key = uuid.UUID(deployment_id)
        except ValueError:
            key = None
        deployment = selectors.deployment_list_running(tenant=self.tenant).filter(pk=key).first() if key else None
        if deployment is None:
            raise MarathonApiError(404, f"DeploymentPlan {deployment_id} does not exist")
        return deployment


# ---- groups ---------------------------------------------------------------------------------------


class GroupView(MarathonView):
    """Groups have no rows: they are the id prefixes of the tenant's apps."""

    def get(self, request, group_id: str = "/"):
        group_id = canonical_app_id(group_id)
        apps_json = self.renderer.apps(list(selectors.app_list(tenant=self.tenant)), render.LIST_EMBEDS)
        group = render.group_tree(apps_json, group_id, empty_version=render.marathon_timestamp(self.tenant.created_at))
        if group is None:
            raise MarathonApiError(404, f"Group '{group_id}' does not exist")
        return JsonResponse(group)


# ---- events ---------------------------------------------------------------------------------------


class EventsView(MarathonView):
    def get(self, request):
        if EVENT_STREAM_MEDIA_TYPE not in request.headers.get("Accept", ""):
            raise MarathonApiError(405, f"GET /v2/events needs the header 'Accept: {EVENT_STREAM_MEDIA_TYPE}'.")
        token = request.marathon_token
        if token is None and not request_origin_allowed(request):
            raise MarathonApiError(403, FOREIGN_ORIGIN_MESSAGE)
        credentials = StreamCredentials(
            user_id=self.access.actor.pk,
            slug=self.tenant.slug,
            session_key=None if token is not None else request.session.session_key,
            token_id=token.pk if token is not None else None,
        )
        guard = StreamGuard.open(credentials)
        if guard is None:
            raise MarathonApiError(429, too_many_streams_message())
        frames = event_stream_frames(
            tenant=self.tenant,
            event_types=frozenset(event_type for event_type in request.GET.getlist("event_type") if event_type),
            remote_address=request.META.get("REMOTE_ADDR", ""),
            guard=guard,
        )
        response = StreamingHttpResponse(frames, content_type=EVENT_STREAM_MEDIA_TYPE)
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a proxy in front must not buffer the stream
        return response
