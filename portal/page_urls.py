from django.urls import path

from portal import views

urlpatterns = [
    path("t/<str:tenant_slug>/apps/", views.AppListView.as_view(), name="app-list"),
    path("t/<str:tenant_slug>/apps/deploy/", views.DeployView.as_view(), name="app-deploy"),
    path("t/<str:tenant_slug>/apps/<int:app_id>/", views.AppDetailView.as_view(), name="app-detail"),
    path("t/<str:tenant_slug>/apps/<int:app_id>/usage/", views.AppUsageView.as_view(), name="app-usage"),
    path("t/<str:tenant_slug>/apps/<int:app_id>/action/", views.AppActionView.as_view(), name="app-action"),
    path("platform/hosts/", views.HostsView.as_view(), name="platform-hosts"),
]
