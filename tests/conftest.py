import time

import pytest

pytest_plugins = [
    "tests.support.fixtures",
    "tests.support.portal_fixtures",
    "tests.support.live_stack",
    "tests.support.browser",
]


@pytest.fixture(scope="session", autouse=True)
def _flush_survives_deadlocks():
    """A transactional test's teardown TRUNCATEs every table while the live stack's processes
    (portal worker, beat, host workers) still query the test database; PostgreSQL may pick the
    TRUNCATE as a deadlock victim. The flush is safe to run again, so it is, a bounded number of times."""
    from django.db import OperationalError
    from django.db.backends.postgresql.operations import DatabaseOperations

    flush = DatabaseOperations.execute_sql_flush

    def flush_retrying(self, sql_list):
        for attempt in range(5):
            try:
                return flush(self, sql_list)
            except OperationalError as exc:
                if "deadlock detected" not in str(exc) or attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))

    DatabaseOperations.execute_sql_flush = flush_retrying
    yield
    DatabaseOperations.execute_sql_flush = flush
