"""portal 0007: the sessions made while the portal shared its host with tenants' apps (their
cookies went to every app a member visited) are deleted when the portal moves to its own host."""

from datetime import timedelta

import pytest
from django.contrib.sessions.backends.db import SessionStore
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("portal", "0006_volumes")]
AFTER = [("portal", "0007_delete_exposed_sessions")]


def migrate(targets) -> None:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)


def test_the_move_to_the_portals_own_host_ends_every_earlier_session():
    migrate(BEFORE)
    try:
        store = SessionStore()
        store["_auth_user_id"] = "1"
        store.set_expiry(timezone.now() + timedelta(days=1))
        store.create()
        assert SessionStore().exists(store.session_key)

        migrate(AFTER)

        assert not SessionStore().exists(store.session_key)
    finally:
        migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())  # back to the latest
