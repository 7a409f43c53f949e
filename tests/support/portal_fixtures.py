"""Fixtures for portal/tenants tests: users with a role in a tenant, API clients."""

import pytest
from rest_framework.test import APIClient

from tests.tenants.factories import MembershipFactory, TenantFactory, UserFactory


@pytest.fixture
def tenant(db):
    return TenantFactory()


@pytest.fixture
def other_tenant(db):
    return TenantFactory()


@pytest.fixture
def member_of(db):
    """member_of(tenant, role) -> a user holding that role in that tenant."""

    def make(tenant, role):
        return MembershipFactory(tenant=tenant, role=role).user

    return make


@pytest.fixture
def platform_admin(db):
    return UserFactory(is_staff=True)


@pytest.fixture
def client_for():
    """client_for(user) -> a DRF client authenticated as user (session-less force_authenticate)."""

    def make(user):
        client = APIClient()
        if user is not None:
            client.force_authenticate(user)
        return client

    return make


@pytest.fixture
def login(client):
    """login(user) -> Django's test client with that user's session (for the pages)."""

    def as_user(user):
        client.force_login(user)
        return client

    return as_user


def compute_host_create(name: str, **fields):
    """A ComputeHost row with no worker behind it (heartbeat now, TCG); ``fields`` override."""
    from django.utils import timezone

    from portal.models import ComputeHost

    defaults = {
        "queue": f"host.{name}",
        "libvirt_uri": "qemu:///system",
        "vcpus": 8,
        "memory_mib": 16384,
        "virt_type": "qemu",
        "last_heartbeat_at": timezone.now(),
    }
    return ComputeHost.objects.create(name=name, **(defaults | fields))
