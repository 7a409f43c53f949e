"""Registry passwords: encrypted at rest, write-only in the API, never in logs or audit."""

import logging

import pytest
from django.db import connection

from tenants.choices import TenantRole
from tenants.crypto import secret_decrypt
from tenants.models import AuditEntry, ImageRegistry

pytestmark = pytest.mark.django_db
PASSWORD = "s3cr3t-Registry-Pa55"


def test_password_is_stored_encrypted_and_never_returned(tenant, member_of, client_for, caplog):
    caplog.set_level(logging.DEBUG)
    client = client_for(member_of(tenant, TenantRole.ADMIN))
    created = client.post(
        f"/api/v1/tenants/{tenant.slug}/registries/",
        {"name": "corp", "url": "https://registry.corp.test", "username": "robot", "password": PASSWORD},
        format="json",
    )
    assert created.status_code == 201
    assert PASSWORD not in created.content.decode() and created.json()["has_password"] is True
    path = f"/api/v1/tenants/{tenant.slug}/registries/{created.json()['id']}/"
    for body in (client.get(path).content, client.get(f"/api/v1/tenants/{tenant.slug}/registries/").content):
        assert PASSWORD.encode() not in body and b"password_encrypted" not in body

    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM tenants_imageregistry WHERE id = %s", [created.json()["id"]])
        raw_row = repr(cursor.fetchone())
    assert PASSWORD not in raw_row
    stored = bytes(ImageRegistry.objects.get().password_encrypted)
    assert stored.startswith(b"gAAAAA")  # a Fernet token
    assert secret_decrypt(stored) == PASSWORD

    assert PASSWORD not in caplog.text
    assert PASSWORD not in repr(list(AuditEntry.objects.values_list("data", flat=True)))


def test_password_can_be_replaced_and_cleared(tenant, member_of, client_for):
    client = client_for(member_of(tenant, TenantRole.OWNER))
    created = client.post(
        f"/api/v1/tenants/{tenant.slug}/registries/",
        {"name": "corp", "url": "https://registry.corp.test", "username": "robot", "password": PASSWORD},
        format="json",
    ).json()
    path = f"/api/v1/tenants/{tenant.slug}/registries/{created['id']}/"
    client.patch(path, {"password": "other-one"}, format="json")
    assert secret_decrypt(ImageRegistry.objects.get().password_encrypted) == "other-one"
    moved = client.patch(path, {"username": "robot2"}, format="json")
    assert moved.status_code == 422 and "password" in moved.json()  # the password was entered for robot
    renamed = client.patch(path, {"username": "robot2", "password": "for-robot2"}, format="json")
    assert renamed.json()["has_password"] is True
    assert client.patch(path, {"password": ""}, format="json").json()["has_password"] is False
