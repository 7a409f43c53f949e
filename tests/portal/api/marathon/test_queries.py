"""/v2 reads do not grow in queries with the number of apps (the load run's reads: issue 12)."""

import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db


def queries_of(api, path: str) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as captured:
        response = api.get(path)
    assert response.status_code == 200
    return len(captured), json.loads(response.content)


@pytest.mark.parametrize("path", ["/v2/apps", "/v2/apps?embed=apps.tasks", "/v2/groups"])
def test_an_app_list_reads_as_many_rows_for_seven_apps_as_for_two(api, make_app, path):
    make_app("/a", instances=2)
    make_app("/b", instances=0, healthChecks=[{"protocol": "COMMAND", "command": {"value": "true"}}])
    api.get(path)  # the token's last use is written at most once a minute: not in the counts below
    two, _ = queries_of(api, path)
    for index in range(5):
        make_app(f"/more-{index}", instances=index % 2)
    seven, body = queries_of(api, path)
    assert seven == two
    if path.startswith("/v2/apps"):
        staged = {app["id"]: app["tasksStaged"] for app in body["apps"]}
        assert staged == {"/a": 2, "/b": 0, **{f"/more-{index}": index % 2 for index in range(5)}}
