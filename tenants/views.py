"""Server-rendered pages for tenancy. Each view resolves the tenant through tenants.access
(the same rule as the API), parses a form, calls one service, renders."""

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render
from django.views import View

from tenants import selectors, services
from tenants.access import tenant_access_resolve
from tenants.choices import TenantRole
from tenants.context_processors import SESSION_TENANT_KEY
from tenants.embedded_registry import embedded_registry
from tenants.errors import DomainError
from tenants.forms import MemberAddForm, MemberRoleForm, QuotaForm, RegistryForm, TenantCreateForm, TokenCreateForm
from tenants.models import ApiToken, AuditEntry, ImageRegistry, Membership, Tenant
from tenants.tasks import check_registry


def _apply_domain_error(form, exc: DomainError) -> None:
    form.add_error(exc.field if exc.field in form.fields else None, exc.message)


class TenantPageView(LoginRequiredMixin, View):
    """Base for pages under /t/<slug>/: non-members get 404, members below
    ``write_role`` may look but not post."""

    read_role = TenantRole.VIEWER
    write_role = TenantRole.ADMIN

    def dispatch(self, request, *args, **kwargs):
        if not request.user.is_authenticated:
            return self.handle_no_permission()
        self.access = tenant_access_resolve(user=request.user, slug=kwargs["tenant_slug"])
        needed = self.read_role if request.method in ("GET", "HEAD") else self.write_role
        if not self.access.allows(needed):
            raise DjangoPermissionDenied(f"This needs the {needed} role in this tenant.")
        request.session[SESSION_TENANT_KEY] = self.access.tenant.slug
        return super().dispatch(request, *args, **kwargs)

    @property
    def tenant(self) -> Tenant:
        return self.access.tenant

    def render(self, template: str, **context):
        context |= {"tenant": self.tenant, "access": self.access, "can_admin": self.access.allows(TenantRole.ADMIN)}
        return render(self.request, template, context)


@login_required
def home(request):
    tenants = selectors.tenant_list(user=request.user)
    slug = request.session.get(SESSION_TENANT_KEY)
    tenant = tenants.filter(slug=slug).first() if slug else None
    tenant = tenant or tenants.first()
    if tenant is None:
        return render(request, "tenants/no_tenant.html")
    return redirect("tenant-overview", tenant_slug=tenant.slug)


@login_required
def tenant_switch(request):
    if request.method != "POST":
        return redirect("home")
    slug = request.POST.get("tenant", "")
    access = tenant_access_resolve(user=request.user, slug=slug)
    request.session[SESSION_TENANT_KEY] = access.tenant.slug
    return redirect("tenant-overview", tenant_slug=access.tenant.slug)


class TenantOverviewView(TenantPageView):
    def get(self, request, tenant_slug):
        return self.render(
            "tenants/overview.html",
            quota_lines=selectors.quota_report(tenant=self.tenant),
            disk_breakdown=selectors.quota_disk_breakdown(tenant=self.tenant),
            member_count=selectors.membership_list(tenant=self.tenant).count(),
            registry_count=selectors.registry_list(tenant=self.tenant).count(),
            platform_registry=embedded_registry(),
        )


class TenantMembersView(TenantPageView):
    def get(self, request, tenant_slug, form=None):
        return self.render(
            "tenants/members.html",
            members=selectors.membership_list(tenant=self.tenant),
            form=form or MemberAddForm(),
            roles=TenantRole.choices,
        )

    def post(self, request, tenant_slug):
        form = MemberAddForm(request.POST)
        if form.is_valid():
            try:
                services.membership_add(access=self.access, **form.cleaned_data)
            except DomainError as exc:
                _apply_domain_error(form, exc)
            else:
                messages.success(request, f"Added {form.cleaned_data['username']}.")
                return redirect("tenant-members", tenant_slug=tenant_slug)
        return self.get(request, tenant_slug, form=form)


class TenantAuditView(TenantPageView):
    """The tenant's audit log (admins and owners), newest first."""

    read_role = TenantRole.ADMIN
    page_size = 200

    def get(self, request, tenant_slug):
        entries = AuditEntry.objects.for_tenant(self.tenant).select_related("actor").order_by("-created_at", "-id")
        return self.render("tenants/audit.html", entries=entries[: self.page_size])


class TenantMemberEditView(TenantPageView):
    def post(self, request, tenant_slug, membership_id):
        membership = get_object_or_404(Membership.objects.for_tenant(self.tenant), pk=membership_id)
        try:
            if request.POST.get("action") == "remove":
                services.membership_remove(access=self.access, membership=membership)
                messages.success(request, f"Removed {membership.user.username}.")
            else:
                form = MemberRoleForm(request.POST)
                if not form.is_valid():
                    messages.error(request, "Pick a valid role.")
                else:
                    services.membership_change_role(
                        access=self.access, membership=membership, role=form.cleaned_data["role"]
                    )
                    messages.success(request, f"{membership.user.username} is now {form.cleaned_data['role']}.")
        except DomainError as exc:
            messages.error(request, exc.message)
        return redirect("tenant-members", tenant_slug=tenant_slug)


class TenantRegistriesView(TenantPageView):
    def get(self, request, tenant_slug, form=None):
        return self.render(
            "tenants/registries.html",
            registries=selectors.registry_list(tenant=self.tenant),
            embedded=embedded_registry(),
            form=form or RegistryForm(),
        )

    def post(self, request, tenant_slug):
        form = RegistryForm(request.POST)
        if form.is_valid():
            try:
                registry = services.registry_create(access=self.access, **form.cleaned_data)
            except DomainError as exc:
                _apply_domain_error(form, exc)
            else:
                transaction.on_commit(lambda: check_registry.delay(registry.pk))
                messages.success(request, f"Added registry {registry.name}; checking it now.")
                return redirect("tenant-registries", tenant_slug=tenant_slug)
        return self.get(request, tenant_slug, form=form)


class TenantRegistryEditView(TenantPageView):
    def post(self, request, tenant_slug, registry_id):
        registry = get_object_or_404(ImageRegistry.objects.for_tenant(self.tenant), pk=registry_id)
        if request.POST.get("action") == "remove":
            services.registry_delete(access=self.access, registry=registry)
            messages.success(request, f"Removed registry {registry.name}.")
        else:
            transaction.on_commit(lambda: check_registry.delay(registry.pk))
            messages.info(request, f"Checking {registry.name}… reload to see the result.")
        return redirect("tenant-registries", tenant_slug=tenant_slug)


class PlatformAdminView(LoginRequiredMixin, View):
    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated and not request.user.is_staff:
            raise DjangoPermissionDenied("Platform admins only.")
        return super().dispatch(request, *args, **kwargs)


class PlatformTenantsView(PlatformAdminView):
    def get(self, request, form=None):
        rows = [(t, selectors.quota_report(tenant=t)) for t in Tenant.objects.all()]
        return render(request, "tenants/platform_tenants.html", {"rows": rows, "form": form or TenantCreateForm()})

    def post(self, request):
        form = TenantCreateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            owner = None
            if data["owner"]:
                owner = get_user_model().objects.filter(username=data["owner"], is_active=True).first()
                if owner is None:
                    form.add_error("owner", f"No active user '{data['owner']}'.")
            if form.is_valid():
                try:
                    tenant = services.tenant_create(
                        actor=request.user, slug=data["slug"], name=data["name"], owner=owner
                    )
                except DomainError as exc:
                    _apply_domain_error(form, exc)
                else:
                    messages.success(request, f"Created tenant {tenant.slug}.")
                    return redirect("platform-tenants")
        return self.get(request, form=form)


class PlatformQuotaView(PlatformAdminView):
    def get(self, request, tenant_slug, form=None):
        tenant = get_object_or_404(Tenant, slug=tenant_slug)
        form = form or QuotaForm(initial=tenant.quota.limits())
        return render(
            request,
            "tenants/platform_quota.html",
            {"tenant": tenant, "form": form, "quota_lines": selectors.quota_report(tenant=tenant)},
        )

    def post(self, request, tenant_slug):
        tenant = get_object_or_404(Tenant, slug=tenant_slug)
        form = QuotaForm(request.POST)
        if form.is_valid():
            try:
                services.quota_update(actor=request.user, tenant=tenant, limits=form.cleaned_data)
            except DomainError as exc:
                _apply_domain_error(form, exc)
            else:
                messages.success(request, f"Quota of {tenant.slug} saved.")
                return redirect("platform-quota", tenant_slug=tenant_slug)
        return self.get(request, tenant_slug, form=form)


class TokensView(LoginRequiredMixin, View):
    def get(self, request, form=None, new_key=None):
        tokens = ApiToken.objects.filter(user=request.user).select_related("tenant")
        return render(
            request, "tenants/tokens.html", {"tokens": tokens, "form": form or TokenCreateForm(), "new_key": new_key}
        )

    def post(self, request):
        if request.POST.get("action") == "revoke":
            token = get_object_or_404(ApiToken.objects.filter(user=request.user), pk=request.POST.get("token_id"))
            services.api_token_revoke(user=request.user, token=token)
            messages.success(request, f"Revoked {token.name}.")
            return redirect("tokens")
        form = TokenCreateForm(request.POST)
        if form.is_valid():
            tenant = None
            if form.cleaned_data["tenant"]:
                tenant = selectors.tenant_list(user=request.user).filter(slug=form.cleaned_data["tenant"]).first()
                if tenant is None:
                    form.add_error("tenant", "No such tenant.")
            if form.is_valid():
                try:
                    _, key = services.api_token_create(user=request.user, name=form.cleaned_data["name"], tenant=tenant)
                except DomainError as exc:
                    _apply_domain_error(form, exc)
                else:
                    return self.get(request, new_key=key)
        return self.get(request, form=form)
