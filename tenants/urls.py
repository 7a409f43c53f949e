from django.urls import path

from tenants import views

urlpatterns = [
    path("", views.home, name="home"),
    path("switch/", views.tenant_switch, name="tenant-switch"),
    path("t/<str:tenant_slug>/", views.TenantOverviewView.as_view(), name="tenant-overview"),
    path("t/<str:tenant_slug>/members/", views.TenantMembersView.as_view(), name="tenant-members"),
    path(
        "t/<str:tenant_slug>/members/<int:membership_id>/",
        views.TenantMemberEditView.as_view(),
        name="tenant-member-edit",
    ),
    path("t/<str:tenant_slug>/registries/", views.TenantRegistriesView.as_view(), name="tenant-registries"),
    path("t/<str:tenant_slug>/audit/", views.TenantAuditView.as_view(), name="tenant-audit"),
    path(
        "t/<str:tenant_slug>/registries/<int:registry_id>/",
        views.TenantRegistryEditView.as_view(),
        name="tenant-registry-edit",
    ),
    path("platform/tenants/", views.PlatformTenantsView.as_view(), name="platform-tenants"),
    path("platform/tenants/<str:tenant_slug>/quota/", views.PlatformQuotaView.as_view(), name="platform-quota"),
    path("account/tokens/", views.TokensView.as_view(), name="tokens"),
]
