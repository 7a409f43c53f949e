"""Routes of the Marathon-compatible API, mounted at the site root (clients append ``/v2/...``
to the base URL they are given).

App ids hold slashes, so ``/v2/apps/<rest>`` is routed by suffix as Marathon does: the reserved
suffixes (``/restart``, ``/tasks``, ``/tasks/<taskId>``, ``/versions``, ``/versions/<v>``) are
tried first and the app id is everything before them; doubled slashes (``/v2/apps//web``, which
marathon-python sends for absolute ids) are dropped.
"""

from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from portal.api.marathon import views
from portal.api.marathon.errors import MarathonApiError, marathon_error_response

app_view = views.AppView.as_view()
app_restart_view = views.AppRestartView.as_view()
app_tasks_view = views.AppTasksView.as_view()
app_task_view = views.AppTaskView.as_view()
app_versions_view = views.AppVersionsView.as_view()
app_version_view = views.AppVersionView.as_view()


def resolve_app_path(rest: str):
    """(view, kwargs) for the part of the URL after ``/v2/apps/``."""
    segments = [segment for segment in rest.split("/") if segment]

    def app_id(count: int) -> str:
        return "/" + "/".join(segments[:count])

    if len(segments) >= 2 and segments[-1] == "restart":
        return app_restart_view, {"app_id": app_id(-1)}
    if len(segments) >= 2 and segments[-1] == "tasks":
        return app_tasks_view, {"app_id": app_id(-1)}
    if len(segments) >= 3 and segments[-2] == "tasks":
        return app_task_view, {"app_id": app_id(-2), "task_id": segments[-1]}
    if len(segments) >= 2 and segments[-1] == "versions":
        return app_versions_view, {"app_id": app_id(-1)}
    if len(segments) >= 3 and segments[-2] == "versions":
        return app_version_view, {"app_id": app_id(-2), "version": segments[-1]}
    if segments:
        return app_view, {"app_id": app_id(len(segments))}
    return None, {}


@csrf_exempt  # the view it routes to decides (sessions are CSRF-checked in auth)
def app_path_route(request, rest: str):
    view, kwargs = resolve_app_path(rest)
    if view is None:
        return views.AppsView.as_view()(request)
    return view(request, **kwargs)


@csrf_exempt
def not_found_route(request, rest: str = ""):
    return marathon_error_response(MarathonApiError(404, f"{request.path} is not a Marathon API resource"))


urlpatterns = [
    path("ping", views.PingView.as_view(), name="marathon-ping"),
    path("metrics", views.MetricsView.as_view(), name="marathon-metrics"),
    path("v2/info", views.InfoView.as_view(), name="marathon-info"),
    path("v2/leader", views.LeaderView.as_view(), name="marathon-leader"),
    path("v2/apps", views.AppsView.as_view(), name="marathon-apps"),
    path("v2/apps/", views.AppsView.as_view()),
    path("v2/apps/<path:rest>", app_path_route, name="marathon-app"),
    path("v2/tasks", views.TasksView.as_view(), name="marathon-tasks"),
    path("v2/tasks/delete", views.TasksDeleteView.as_view(), name="marathon-tasks-delete"),
    path("v2/deployments", views.DeploymentsView.as_view(), name="marathon-deployments"),
    path("v2/deployments/<str:deployment_id>", views.DeploymentView.as_view(), name="marathon-deployment"),
    path("v2/groups", views.GroupView.as_view(), name="marathon-groups"),
    path("v2/groups/<path:group_id>", views.GroupView.as_view(), name="marathon-group"),
    path("v2/queue", views.QueueView.as_view(), name="marathon-queue"),
    path("v2/events", views.EventsView.as_view(), name="marathon-events"),
    path("v2/<path:rest>", not_found_route),
]
