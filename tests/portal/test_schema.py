import pytest


@pytest.mark.django_db
def test_openapi_schema_lists_the_tenant_endpoints(client, platform_admin):
    client.force_login(platform_admin)
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    for path in (
        "/api/v1/tenants/",
        "/api/v1/tenants/{tenant_slug}/members/",
        "/api/v1/tenants/{tenant_slug}/quota/",
        "/api/v1/tenants/{tenant_slug}/registries/{id}/check/",
        "/api/v1/tokens/",
        "/api/v1/tenants/{tenant_slug}/apps/",
        "/api/v1/tenants/{tenant_slug}/apps/{id}/scale/",
        "/api/v1/tenants/{tenant_slug}/instances/",
        "/api/v1/tenants/{tenant_slug}/deployments/{id}/",
    ):
        assert path in paths


@pytest.mark.django_db
def test_docs_page_uses_only_vendored_assets(client, platform_admin):
    client.force_login(platform_admin)
    page = client.get("/api/v1/docs/").content.decode()
    assert "swagger-ui" in page
    assert "cdn." not in page and "https://" not in page.split("<body")[0]
