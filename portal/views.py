"""Server-rendered pages of the deploy domain: app list, Deploy, app page, hosts.

Tenant and role checks come from tenants.views.TenantPageView (tenants.access, the one rule):
non-members get 404, viewers may look, developers and up may post. Every app lookup is
narrowed to the tenant first. Writes call portal.services.apps, nothing else. A page asked
with ``?fragment=1`` answers only its live part, which the page's script re-fetches when an
event arrives on its WebSocket (see LIVE-CONTRACT: the state shown always comes from PostgreSQL)."""

from __future__ import annotations

import json
import logging
import uuid

import redis
from django.conf import settings
from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from portal import selectors
from portal.choices import INSTANCE_ACTIVE, INSTANCE_UP, DeploymentStatus
from portal.forms import DEMO_IMAGE, DeployForm, MarathonJsonForm, ScaleForm, demo_registry
from portal.phases import instance_phases
from portal.services import apps as app_services
from portal.services.hosts import warm_start_rates
from portal.services.usage import usage_series
from tenants.choices import TenantRole
from tenants.errors import DomainError
from tenants.selectors import registry_list_for_deploy
from tenants.views import PlatformAdminView, TenantPageView

logger = logging.getLogger(__name__)

JSON_MODE = "json"


class AppPageView(TenantPageView):
    write_role = TenantRole.DEVELOPER

    def app_or_404(self, app_id: int):
        return get_object_or_404(selectors.app_list(tenant=self.tenant), pk=app_id)

    def render_live(self, template: str, fragment: str, **context):
        """The whole page, or only its live fragment when the page's script asks for it."""
        context |= {
            "can_write": self.access.allows(TenantRole.DEVELOPER),
            "last_event_id": selectors.event_last_id(tenant=self.tenant),
        }
        return self.render(fragment if self.request.GET.get("fragment") else template, **context)


class AppListView(AppPageView):
    def get(self, request, tenant_slug):
        registry = demo_registry(registry_list_for_deploy(tenant=self.tenant))
        return self.render_live(
            "portal/app_list.html",
            "portal/_app_list_live.html",
            rows=selectors.app_list_rows(tenant=self.tenant),
            deleting=selectors.app_list_deleting(tenant=self.tenant),
            demo_registry=registry,
            demo_image=DEMO_IMAGE,
        )


class DeployView(AppPageView):
    def forms(self, data=None):
        mode = (data or self.request.GET).get("mode", "")
        registries = registry_list_for_deploy(tenant=self.tenant)
        # The app list's "Deploy the demo image" names the registry and image; the form's own
        # defaults (portal.forms.DeployForm) do the rest.
        initial = {name: self.request.GET[name] for name in ("registry", "image") if name in self.request.GET}
        form = DeployForm(data if mode != JSON_MODE else None, registries=registries, initial=initial)
        json_form = MarathonJsonForm(
            data if mode == JSON_MODE else None, initial={"definition_json": self.example_json(registries)}
        )
        return mode, form, json_form

    @staticmethod
    def example_json(registries) -> str:
        """A definition to start from: the demo image when a registry holding it is offered."""
        local = demo_registry(registries)
        image = f"{local.host}/{DEMO_IMAGE}" if local else "registry.example.com:5000/team/web:1.0"
        example = {
            "id": "/hello",
            "instances": 1,
            "cpus": 0.5,
            "mem": 128,
            "container": {"docker": {"image": image}, "portMappings": [{"containerPort": 8080, "hostPort": 0}]},
            "networks": [{"mode": "container/bridge"}],
            "healthChecks": [{"protocol": "HTTP", "path": "/", "portIndex": 0}],
        }
        return json.dumps(example, indent=2)

    def get(self, request, tenant_slug):
        mode, form, json_form = self.forms()
        return self.render_deploy(mode, form, json_form)

    def render_deploy(self, mode, form, json_form, status=200):
        response = self.render(
            "portal/deploy.html", mode=mode or "form", form=form, json_form=json_form, json_mode=JSON_MODE
        )
        response.status_code = status
        return response

    def post(self, request, tenant_slug):
        mode, form, json_form = self.forms(request.POST)
        chosen = json_form if mode == JSON_MODE else form
        definition = chosen.definition() if chosen.is_valid() else None
        if definition is not None:
            try:
                deployment = app_services.app_create(access=self.access, definition=definition)
            except DomainError as exc:
                chosen.add_domain_error(exc)
            else:
                messages.success(request, f"Deploying {definition.id}: {definition.instances} instance(s).")
                return redirect("app-detail", tenant_slug=tenant_slug, app_id=deployment.app_id)
        return self.render_deploy(mode, form, json_form, status=422)


class AppDetailView(AppPageView):
    def get(self, request, tenant_slug, app_id):
        app = self.app_or_404(app_id)
        instances = list(selectors.instance_list(tenant=self.tenant, app=app))
        ended = list(selectors.instance_list_recent_ended(tenant=self.tenant, app=app))
        deployments = list(selectors.deployment_list(tenant=self.tenant, app=app))
        console_instance = instances[0] if instances else (ended[0] if ended else None)
        chosen = request.GET.get("instance")
        if chosen:
            console_instance = next((i for i in instances + ended if str(i.pk) == chosen), console_instance)
        definition = selectors.app_definition(app)
        checked = bool(definition.health_checks)
        return self.render_live(
            "portal/app_detail.html",
            "portal/_app_detail_live.html",
            app=app,
            definition=definition,
            backoff_until=app.next_launch_at if app.next_launch_at and app.next_launch_at > timezone.now() else None,
            counts=selectors.app_counts(app, definition),
            versions=selectors.app_versions(app)[:20],
            deployments=deployments,
            running_deployment=next((d for d in deployments if d.status == DeploymentStatus.RUNNING), None),
            instances=[(i, instance_phases(i, health_checked=checked)) for i in instances],
            ended=[(i, instance_phases(i, health_checked=checked)) for i in ended],
            console_instance=console_instance,
            scale_form=ScaleForm(initial={"instances": definition.instances}),
            volumes=list(selectors.volume_list(tenant=self.tenant, app=app)),
            live_statuses=INSTANCE_ACTIVE,
            shell_statuses=INSTANCE_UP,
        )


class AppUsageView(AppPageView):
    """The app's live instances with their last CPU/memory samples, for the page's charts
    (static/js/usage.js polls it): ``cpu`` in CPUs, ``mem`` in bytes, ``t`` unix time. Without
    Redis (where samples live) the instances come with no samples and ``samples_available`` false,
    not a 500 on every poll."""

    def get(self, request, tenant_slug, app_id):
        app = self.app_or_404(app_id)
        instances = list(selectors.instance_list(tenant=self.tenant, app=app))
        try:
            series, available = usage_series(instance_ids=[i.pk for i in instances]), True
        except redis.RedisError:
            logger.warning("views.usage_unavailable", exc_info=True)
            series, available = {}, False
        rows = [
            {
                "id": str(i.pk),
                "status": i.status,
                "vcpus": i.vcpus,
                "memory_bytes": i.memory_mib * 1024 * 1024,
                "samples": series.get(str(i.pk), []),
            }
            for i in instances
        ]
        return JsonResponse(
            {"interval_s": settings.USAGE_SAMPLE_INTERVAL_S, "samples_available": available, "instances": rows}
        )


class AppActionView(AppPageView):
    """POST action=scale|restart|stop|delete|rollback|kill; each calls one service."""

    def post(self, request, tenant_slug, app_id):
        app = self.app_or_404(app_id)
        action = request.POST.get("action", "")
        force = request.POST.get("force") == "on"
        try:
            note = self.act(app, action, force)
        except DomainError as exc:
            messages.error(request, exc.message)
        else:
            if note is None:
                messages.error(request, "Unknown action or bad input; nothing was changed.")
            else:
                messages.success(request, note)
                if action == "delete":
                    return redirect("app-list", tenant_slug=tenant_slug)
        return redirect("app-detail", tenant_slug=tenant_slug, app_id=app.pk)

    def act(self, app, action: str, force: bool) -> str | None:
        access, post = self.access, self.request.POST
        if action == "scale":
            form = ScaleForm(post)
            if not form.is_valid():
                return None
            count = form.cleaned_data["instances"]
            app_services.app_scale(access=access, app=app, instances=count, force=force)
            return f"Scaling {app.marathon_id} to {count}."
        if action == "stop":
            app_services.app_scale(access=access, app=app, instances=0, force=force)
            return f"Stopping {app.marathon_id} (scaled to 0)."
        if action == "restart":
            app_services.app_restart(access=access, app=app, force=force)
            return f"Restarting {app.marathon_id}: new VMs replace the old ones."
        if action == "rollback":
            version = post.get("version", "")
            app_services.app_rollback(access=access, app=app, version=version, force=force)
            return f"Redeploying {app.marathon_id} at version {version}."
        if action == "delete":
            app_services.app_delete(access=access, app=app, force=True)
            return f"Deleting {app.marathon_id}: its VMs are being stopped."
        if action == "kill":
            try:
                instance_id = uuid.UUID(post.get("instance", ""))
            except ValueError:
                return None
            instance = selectors.instance_list(tenant=self.tenant, app=app).filter(pk=instance_id).first()
            if instance is None:
                return None
            app_services.instance_kill(access=access, instances=[instance])
            return f"Killed instance {str(instance.pk)[:8]}; a replacement starts."
        return None


class HostsView(PlatformAdminView):
    def get(self, request):
        template = "portal/_hosts_live.html" if request.GET.get("fragment") else "portal/hosts.html"
        hosts = list(selectors.host_list_with_usage())
        rates = warm_start_rates(hosts)
        for host in hosts:
            host.warm_rate = rates[host.pk]
        return render(request, template, {"hosts": hosts})
