from django.urls import path
from rest_framework.routers import SimpleRouter

from portal.api import views as deploy_views
from tenants.api import views

router = SimpleRouter()
router.register("tenants", views.TenantViewSet, basename="tenant")
router.register(r"tenants/(?P<tenant_slug>[^/.]+)/members", views.MembershipViewSet, basename="membership")
router.register(r"tenants/(?P<tenant_slug>[^/.]+)/registries", views.ImageRegistryViewSet, basename="registry")
router.register(r"tenants/(?P<tenant_slug>[^/.]+)/audit", views.AuditEntryViewSet, basename="audit")
router.register("tokens", views.ApiTokenViewSet, basename="token")
router.register(r"tenants/(?P<tenant_slug>[^/.]+)/apps", deploy_views.AppViewSet, basename="app")
router.register(r"tenants/(?P<tenant_slug>[^/.]+)/instances", deploy_views.InstanceViewSet, basename="instance")
router.register(r"tenants/(?P<tenant_slug>[^/.]+)/deployments", deploy_views.DeploymentViewSet, basename="deployment")
router.register(r"tenants/(?P<tenant_slug>[^/.]+)/networks", deploy_views.NetworkViewSet, basename="network")
router.register(r"tenants/(?P<tenant_slug>[^/.]+)/volumes", deploy_views.VolumeViewSet, basename="volume")

urlpatterns = [
    path("tenants/<str:tenant_slug>/quota/", views.QuotaView.as_view(), name="quota"),
    *router.urls,
]
