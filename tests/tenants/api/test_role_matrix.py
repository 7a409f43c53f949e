"""Who may do what: every role against every tenant-scoped action, through the real API."""

import pytest

from tenants.choices import TenantRole
from tests.tenants.factories import UserFactory

V, D, A, OWN = TenantRole.VIEWER, TenantRole.DEVELOPER, TenantRole.ADMIN, TenantRole.OWNER
STAFF, OUTSIDER = "platform-admin", "outsider"

# (method, path template, body, {actor: expected status})
MATRIX = [
    ("get", "/api/v1/tenants/{t}/", None, {V: 200, D: 200, A: 200, OWN: 200, STAFF: 200, OUTSIDER: 404}),
    ("get", "/api/v1/tenants/{t}/members/", None, {V: 200, D: 200, A: 200, OWN: 200, STAFF: 200, OUTSIDER: 404}),
    (
        "post",
        "/api/v1/tenants/{t}/members/",
        {"username": "newcomer", "role": "developer"},
        {V: 403, D: 403, A: 201, OWN: 201, STAFF: 201, OUTSIDER: 404},
    ),
    (
        "post",
        "/api/v1/tenants/{t}/members/",
        {"username": "newcomer", "role": "owner"},
        {V: 403, D: 403, A: 403, OWN: 201, STAFF: 201, OUTSIDER: 404},
    ),
    ("get", "/api/v1/tenants/{t}/quota/", None, {V: 200, D: 200, A: 200, OWN: 200, STAFF: 200, OUTSIDER: 404}),
    (
        "patch",
        "/api/v1/tenants/{t}/quota/",
        {"vcpus": 3},
        {V: 403, D: 403, A: 403, OWN: 403, STAFF: 200, OUTSIDER: 404},
    ),
    ("get", "/api/v1/tenants/{t}/registries/", None, {V: 200, D: 200, A: 200, OWN: 200, STAFF: 200, OUTSIDER: 404}),
    (
        "post",
        "/api/v1/tenants/{t}/registries/",
        {"name": "r", "url": "https://registry.example.test"},
        {V: 403, D: 403, A: 201, OWN: 201, STAFF: 201, OUTSIDER: 404},
    ),
    (
        "post",
        "/api/v1/tenants/",
        {"slug": "brand-new", "name": "Brand new"},
        {V: 403, D: 403, A: 403, OWN: 403, STAFF: 201, OUTSIDER: 403},
    ),
]

CASES = [
    pytest.param(method, path, body, actor, expected, id=f"{method}:{path}:{body and body.get('role', '')}:{actor}")
    for method, path, body, expectations in MATRIX
    for actor, expected in expectations.items()
]


@pytest.mark.django_db
@pytest.mark.parametrize("method,path,body,actor,expected", CASES)
def test_role_matrix(tenant, member_of, client_for, method, path, body, actor, expected):
    UserFactory(username="newcomer")
    if actor == STAFF:
        user = UserFactory(is_staff=True)
    elif actor == OUTSIDER:
        user = UserFactory()
    else:
        user = member_of(tenant, actor)
    response = getattr(client_for(user), method)(path.format(t=tenant.slug), body, format="json")
    assert response.status_code == expected, response.content
